"""Indexes for prefix wildcard matching (``DOE*``) of PatientName and AccessionNumber.

PostgreSQL uses a b-tree for ``LIKE 'DOE%'`` only under the "C" collation or with
``text_pattern_ops``; these indexes make prefix wildcards indexed whatever the database's
collation. On SQLite they are ordinary indexes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_studies_patient_name_pattern",
            ["patient_name_norm"],
            unique=False,
            postgresql_ops={"patient_name_norm": "text_pattern_ops"},
        )
        batch_op.create_index(
            "ix_studies_accession_pattern",
            ["accession_number"],
            unique=False,
            postgresql_ops={"accession_number": "text_pattern_ops"},
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_accession_pattern")
        batch_op.drop_index("ix_studies_patient_name_pattern")
