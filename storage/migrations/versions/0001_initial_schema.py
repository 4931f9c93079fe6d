"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 19:47:17.420537
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.Text(), nullable=False),
        sa.Column("issuer_of_patient_id", sa.Text(), nullable=False),
        sa.Column("patient_name", sa.Text(), nullable=True),
        sa.Column("patient_name_norm", sa.Text(), nullable=True),
        sa.Column("patient_birth_date", sa.Text(), nullable=True),
        sa.Column("patient_sex", sa.Text(), nullable=True),
        sa.Column("attributes_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_identity"),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index("ix_patients_name_norm", ["patient_name_norm"], unique=False)

    op.create_table(
        "worklist_items",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.Text(), nullable=True),
        sa.Column("patient_id", sa.Text(), nullable=True),
        sa.Column("patient_name", sa.Text(), nullable=True),
        sa.Column("patient_name_norm", sa.Text(), nullable=True),
        sa.Column("scheduled_station_ae_title", sa.Text(), nullable=True),
        sa.Column("modality", sa.Text(), nullable=True),
        sa.Column("sps_start_date", sa.Text(), nullable=True),
        sa.Column("sps_start_time", sa.Text(), nullable=True),
        sa.Column("sps_id", sa.Text(), nullable=True),
        sa.Column("requested_procedure_id", sa.Text(), nullable=True),
        sa.Column("dataset_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.create_index("ix_worklist_accession", ["accession_number"], unique=False)
        batch_op.create_index("ix_worklist_modality", ["modality"], unique=False)
        batch_op.create_index("ix_worklist_patient_id", ["patient_id"], unique=False)
        batch_op.create_index(
            "ix_worklist_sps_start", ["sps_start_date", "sps_start_time"], unique=False
        )
        batch_op.create_index(
            "ix_worklist_station_ae", ["scheduled_station_ae_title"], unique=False
        )

    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("study_date", sa.Text(), nullable=True),
        sa.Column("study_time", sa.Text(), nullable=True),
        sa.Column("accession_number", sa.Text(), nullable=True),
        sa.Column("study_id", sa.Text(), nullable=True),
        sa.Column("referring_physician_name", sa.Text(), nullable=True),
        sa.Column("referring_physician_name_norm", sa.Text(), nullable=True),
        sa.Column("study_description", sa.Text(), nullable=True),
        sa.Column("attributes_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("last_access_at", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_pk"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index("ix_studies_accession", ["accession_number"], unique=False)
        batch_op.create_index("ix_studies_date_time", ["study_date", "study_time"], unique=False)
        batch_op.create_index("ix_studies_patient_pk", ["patient_pk"], unique=False)
        batch_op.create_index("ix_studies_study_id", ["study_id"], unique=False)

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("modality", sa.Text(), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.Text(), nullable=True),
        sa.Column("series_date", sa.Text(), nullable=True),
        sa.Column("series_time", sa.Text(), nullable=True),
        sa.Column("body_part_examined", sa.Text(), nullable=True),
        sa.Column("pps_start_date", sa.Text(), nullable=True),
        sa.Column("pps_start_time", sa.Text(), nullable=True),
        sa.Column("attributes_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_pk"],
            ["studies.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_uid"),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index("ix_series_modality", ["modality"], unique=False)
        batch_op.create_index(
            "ix_series_pps_start", ["pps_start_date", "pps_start_time"], unique=False
        )
        batch_op.create_index("ix_series_study_pk", ["study_pk"], unique=False)

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("content_date", sa.Text(), nullable=True),
        sa.Column("content_time", sa.Text(), nullable=True),
        sa.Column("acquisition_datetime", sa.Text(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.Text(), nullable=False),
        sa.Column("blob_key", sa.Text(), nullable=False),
        sa.Column("tier", sa.String(length=8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("number_of_frames", sa.Integer(), nullable=False),
        sa.Column("frames_json", sa.Text(), nullable=True),
        sa.Column("pixel_json", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("attributes_json", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.String(length=32), nullable=False),
        sa.Column("last_access_at", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_pk"],
            ["series.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_uid"),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index("ix_instances_blob_key", ["blob_key"], unique=False)
        batch_op.create_index(
            "ix_instances_series_pk_number", ["series_pk", "instance_number"], unique=False
        )
        batch_op.create_index("ix_instances_sop_class", ["sop_class_uid"], unique=False)

    op.create_table(
        "series_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("requested_procedure_id", sa.Text(), nullable=True),
        sa.Column("scheduled_procedure_step_id", sa.Text(), nullable=True),
        sa.Column("accession_number", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["series_pk"], ["series.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("series_requests", schema=None) as batch_op:
        batch_op.create_index("ix_series_requests_rp_id", ["requested_procedure_id"], unique=False)
        batch_op.create_index("ix_series_requests_series_pk", ["series_pk"], unique=False)
        batch_op.create_index(
            "ix_series_requests_sps_id", ["scheduled_procedure_step_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("series_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_series_requests_sps_id")
        batch_op.drop_index("ix_series_requests_series_pk")
        batch_op.drop_index("ix_series_requests_rp_id")

    op.drop_table("series_requests")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index("ix_instances_sop_class")
        batch_op.drop_index("ix_instances_series_pk_number")
        batch_op.drop_index("ix_instances_blob_key")

    op.drop_table("instances")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index("ix_series_study_pk")
        batch_op.drop_index("ix_series_pps_start")
        batch_op.drop_index("ix_series_modality")

    op.drop_table("series")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_study_id")
        batch_op.drop_index("ix_studies_patient_pk")
        batch_op.drop_index("ix_studies_date_time")
        batch_op.drop_index("ix_studies_accession")

    op.drop_table("studies")
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.drop_index("ix_worklist_station_ae")
        batch_op.drop_index("ix_worklist_sps_start")
        batch_op.drop_index("ix_worklist_patient_id")
        batch_op.drop_index("ix_worklist_modality")
        batch_op.drop_index("ix_worklist_accession")

    op.drop_table("worklist_items")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("ix_patients_name_norm")

    op.drop_table("patients")
