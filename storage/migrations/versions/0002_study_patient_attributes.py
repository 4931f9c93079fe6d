"""Each study keeps its own copy of the patient attributes it arrived with.

Study, series and instance queries match PatientName/PatientID/PatientBirthDate/PatientSex on
the study's copy: studies of different patients sharing a PatientID (or having none, as
anonymized data often does) share one patients row, and must not match on its name.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("patient_id", "patient_name", "patient_name_norm", "patient_birth_date", "patient_sex")


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Text(), nullable=True))
        batch_op.create_index("ix_studies_patient_id", ["patient_id"], unique=False)
        batch_op.create_index("ix_studies_patient_name_norm", ["patient_name_norm"], unique=False)
    # Existing studies take the values of their patient row (the best there is).
    for name in _COLUMNS:
        op.execute(
            f"UPDATE studies SET {name} = "
            f"(SELECT patients.{name} FROM patients WHERE patients.id = studies.patient_pk)"
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_patient_name_norm")
        batch_op.drop_index("ix_studies_patient_id")
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)
