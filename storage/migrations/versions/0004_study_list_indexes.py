"""Indexes for the study list at scale (issue #5): order, computed attributes, wildcards.

- ``ix_studies_list_order``: the default study order of ``storage.index.compile._order``,
  expression for expression, so a study list (newest first, one page) walks the index and
  stops after the page instead of sorting every study.
- ``ix_series_study_modality``: ModalitiesInStudy of a page's studies (and matching on it)
  answered from the index alone.
- ``ix_instances_cold``: partial (only instances on the cold tier): InstanceAvailability of a
  page's studies / series (PS3.3 C.4.23.1.1) without visiting their hot instances.
- ``ix_patients_name_pattern``: prefix wildcards on PatientName at the PATIENT level
  (``text_pattern_ops`` on PostgreSQL, as 0003 did for studies; a plain index on SQLite).

The indexes are built inside the migration's transaction (not CONCURRENTLY): on a large
PostgreSQL index, writes wait while ``instances`` is scanned once for the partial index.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_studies_list_order",
        "studies",
        [
            sa.text("coalesce(study_date, '') DESC"),
            sa.text("coalesce(study_time, '') DESC"),
            sa.text("study_uid"),
        ],
        unique=False,
    )
    op.create_index("ix_series_study_modality", "series", ["study_pk", "modality"], unique=False)
    op.create_index(
        "ix_instances_cold",
        "instances",
        ["series_pk"],
        unique=False,
        postgresql_where=sa.text("tier = 'cold'"),
        sqlite_where=sa.text("tier = 'cold'"),
    )
    op.create_index(
        "ix_patients_name_pattern",
        "patients",
        ["patient_name_norm"],
        unique=False,
        postgresql_ops={"patient_name_norm": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_patients_name_pattern", table_name="patients")
    op.drop_index("ix_instances_cold", table_name="instances")
    op.drop_index("ix_series_study_modality", table_name="series")
    op.drop_index("ix_studies_list_order", table_name="studies")
