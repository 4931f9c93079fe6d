"""The index schema (SQLAlchemy Core, dialect-neutral) and which columns answer which keys.

One row per patient, study, series, instance. Each level keeps the columns QIDO-RS / C-FIND
match on (PN also in a normalized form for case-insensitive and fuzzy matching) and a JSON
text of that level's attributes (DICOM JSON, PS3.18 F.2) for return keys and
``includefield=all``. The schema is created by the Alembic migrations in
``storage/migrations``; this module must stay in step with them (a test compares them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)

metadata = MetaData()

# Columns filled from object attributes are TEXT: real-world values exceed their VR's length
# and PostgreSQL would refuse them (SQLite ignores lengths); UIDs are validated before.
# Dates/times are digit strings of fixed length (DA YYYYMMDD, TM HHMMSSFFFFFF, DT
# YYYYMMDDHHMMSSFFFFFF, see storage.ingest): range matching is then lexicographic comparison,
# identical on SQLite and PostgreSQL whatever the database's collation.
patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", Text, nullable=False),
    Column("issuer_of_patient_id", Text, nullable=False),
    Column("patient_name", Text),
    Column("patient_name_norm", Text),
    Column("patient_birth_date", Text),
    Column("patient_sex", Text),
    Column("attributes_json", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_identity"),
)
Index("ix_patients_name_norm", patients.c.patient_name_norm)
# Prefix wildcards on the PATIENT level (C-FIND Patient Root), like the studies' (0003, 0004).
Index(
    "ix_patients_name_pattern",
    patients.c.patient_name_norm,
    postgresql_ops={"patient_name_norm": "text_pattern_ops"},
)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("patient_pk", Integer, ForeignKey("patients.id"), nullable=False),
    Column("study_date", Text),
    Column("study_time", Text),
    Column("accession_number", Text),
    Column("study_id", Text),
    Column("referring_physician_name", Text),
    Column("referring_physician_name_norm", Text),
    Column("study_description", Text),
    # The study's own copy of the patient attributes it arrived with (migration 0002): study,
    # series and instance queries match these, so studies of different patients that share
    # a PatientID (or have none) never match on another patient's name.
    Column("patient_id", Text),
    Column("patient_name", Text),
    Column("patient_name_norm", Text),
    Column("patient_birth_date", Text),
    Column("patient_sex", Text),
    Column("attributes_json", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("last_access_at", String(32)),
)
Index("ix_studies_patient_pk", studies.c.patient_pk)
Index("ix_studies_date_time", studies.c.study_date, studies.c.study_time)
Index("ix_studies_accession", studies.c.accession_number)
Index("ix_studies_study_id", studies.c.study_id)
Index("ix_studies_patient_id", studies.c.patient_id)
Index("ix_studies_patient_name_norm", studies.c.patient_name_norm)
# Prefix wildcards (``DOE*`` → LIKE 'DOE%') use a b-tree only under the "C" collation; on
# PostgreSQL these pattern-ops indexes serve them whatever the database's collation
# (migration 0003; on SQLite they are plain indexes, which case_sensitive_like lets LIKE use).
Index(
    "ix_studies_patient_name_pattern",
    studies.c.patient_name_norm,
    postgresql_ops={"patient_name_norm": "text_pattern_ops"},
)
# The default study order (storage.index.compile._order), expression for expression: a study
# list walks this index and stops after one page instead of sorting every match (0004).
Index(
    "ix_studies_list_order",
    func.coalesce(studies.c.study_date, literal_column("''")).desc(),
    func.coalesce(studies.c.study_time, literal_column("''")).desc(),
    studies.c.study_uid,
)
Index(
    "ix_studies_accession_pattern",
    studies.c.accession_number,
    postgresql_ops={"accession_number": "text_pattern_ops"},
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_pk", Integer, ForeignKey("studies.id"), nullable=False),
    Column("modality", Text),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("series_date", Text),
    Column("series_time", Text),
    Column("body_part_examined", Text),
    Column("pps_start_date", Text),
    Column("pps_start_time", Text),
    Column("attributes_json", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)
Index("ix_series_study_pk", series.c.study_pk)
Index("ix_series_modality", series.c.modality)
Index("ix_series_pps_start", series.c.pps_start_date, series.c.pps_start_time)
# ModalitiesInStudy of a page's studies and matching on it, from the index alone (0004).
Index("ix_series_study_modality", series.c.study_pk, series.c.modality)

# One row per item of a series' RequestAttributesSequence (0040,0275): sequence matching
# (PS3.4 C.2.2.2.6) needs one item to match every sub-key.
series_requests = Table(
    "series_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
    Column("requested_procedure_id", Text),
    Column("scheduled_procedure_step_id", Text),
    Column("accession_number", Text),
)
Index("ix_series_requests_series_pk", series_requests.c.series_pk)
Index("ix_series_requests_sps_id", series_requests.c.scheduled_procedure_step_id)
Index("ix_series_requests_rp_id", series_requests.c.requested_procedure_id)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_pk", Integer, ForeignKey("series.id"), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("content_date", Text),
    Column("content_time", Text),
    Column("acquisition_datetime", Text),
    Column("transfer_syntax_uid", Text, nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("tier", String(8), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=False),
    Column("frames_json", Text),
    Column("pixel_json", Text, nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("attributes_json", Text, nullable=False),
    Column("stored_at", String(32), nullable=False),
    Column("last_access_at", String(32)),
)
Index("ix_instances_series_pk_number", instances.c.series_pk, instances.c.instance_number)
Index("ix_instances_sop_class", instances.c.sop_class_uid)
Index("ix_instances_blob_key", instances.c.blob_key)
# InstanceAvailability: does a study / series have an instance on the cold tier (0004).
# Partial, so it holds only the cold instances; the literal lets PostgreSQL prove it applies.
_COLD = instances.c.tier == literal_column("'cold'")
Index("ix_instances_cold", instances.c.series_pk, postgresql_where=_COLD, sqlite_where=_COLD)

# Modality Worklist items (PS3.4 K.6), maintained by the dimse/HL7 side; flattened on the
# first Scheduled Procedure Step item for matching, the full item kept as DICOM JSON.
worklist_items = Table(
    "worklist_items",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("accession_number", Text),
    Column("patient_id", Text),
    Column("patient_name", Text),
    Column("patient_name_norm", Text),
    Column("scheduled_station_ae_title", Text),
    Column("modality", Text),
    Column("sps_start_date", Text),
    Column("sps_start_time", Text),
    Column("sps_id", Text),
    Column("requested_procedure_id", Text),
    Column("dataset_json", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("updated_at", String(32), nullable=False),
)
Index("ix_worklist_station_ae", worklist_items.c.scheduled_station_ae_title)
Index("ix_worklist_sps_start", worklist_items.c.sps_start_date, worklist_items.c.sps_start_time)
Index("ix_worklist_modality", worklist_items.c.modality)
Index("ix_worklist_patient_id", worklist_items.c.patient_id)
Index("ix_worklist_accession", worklist_items.c.accession_number)


class ColumnKind(enum.Enum):
    TEXT = "text"
    PN = "pn"
    """Matched on the ``<name>_norm`` sibling column (case-folded, accents stripped)."""
    INT = "int"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    UID = "uid"


@dataclass(frozen=True)
class MatchColumn:
    """Where the index keeps an attribute's value for matching."""

    level: str
    column: str
    kind: ColumnKind


MATCH_COLUMNS: dict[int, MatchColumn] = {
    0x0010_0020: MatchColumn("PATIENT", "patient_id", ColumnKind.TEXT),
    0x0010_0021: MatchColumn("PATIENT", "issuer_of_patient_id", ColumnKind.TEXT),
    0x0010_0010: MatchColumn("PATIENT", "patient_name", ColumnKind.PN),
    0x0010_0030: MatchColumn("PATIENT", "patient_birth_date", ColumnKind.DATE),
    0x0010_0040: MatchColumn("PATIENT", "patient_sex", ColumnKind.TEXT),
    0x0020_000D: MatchColumn("STUDY", "study_uid", ColumnKind.UID),
    0x0008_0020: MatchColumn("STUDY", "study_date", ColumnKind.DATE),
    0x0008_0030: MatchColumn("STUDY", "study_time", ColumnKind.TIME),
    0x0008_0050: MatchColumn("STUDY", "accession_number", ColumnKind.TEXT),
    0x0020_0010: MatchColumn("STUDY", "study_id", ColumnKind.TEXT),
    0x0008_0090: MatchColumn("STUDY", "referring_physician_name", ColumnKind.PN),
    0x0008_1030: MatchColumn("STUDY", "study_description", ColumnKind.TEXT),
    0x0020_000E: MatchColumn("SERIES", "series_uid", ColumnKind.UID),
    0x0008_0060: MatchColumn("SERIES", "modality", ColumnKind.TEXT),
    0x0020_0011: MatchColumn("SERIES", "series_number", ColumnKind.INT),
    0x0008_103E: MatchColumn("SERIES", "series_description", ColumnKind.TEXT),
    0x0008_0021: MatchColumn("SERIES", "series_date", ColumnKind.DATE),
    0x0008_0031: MatchColumn("SERIES", "series_time", ColumnKind.TIME),
    0x0018_0015: MatchColumn("SERIES", "body_part_examined", ColumnKind.TEXT),
    0x0040_0244: MatchColumn("SERIES", "pps_start_date", ColumnKind.DATE),
    0x0040_0245: MatchColumn("SERIES", "pps_start_time", ColumnKind.TIME),
    0x0008_0018: MatchColumn("IMAGE", "sop_uid", ColumnKind.UID),
    0x0008_0016: MatchColumn("IMAGE", "sop_class_uid", ColumnKind.UID),
    0x0020_0013: MatchColumn("IMAGE", "instance_number", ColumnKind.INT),
    0x0008_0023: MatchColumn("IMAGE", "content_date", ColumnKind.DATE),
    0x0008_0033: MatchColumn("IMAGE", "content_time", ColumnKind.TIME),
    0x0008_002A: MatchColumn("IMAGE", "acquisition_datetime", ColumnKind.DATETIME),
}
"""Attribute tag → the column that matches it."""

STUDY_PATIENT_COLUMNS: dict[int, MatchColumn] = {
    0x0010_0020: MatchColumn("STUDY", "patient_id", ColumnKind.TEXT),
    0x0010_0010: MatchColumn("STUDY", "patient_name", ColumnKind.PN),
    0x0010_0030: MatchColumn("STUDY", "patient_birth_date", ColumnKind.DATE),
    0x0010_0040: MatchColumn("STUDY", "patient_sex", ColumnKind.TEXT),
}
"""Patient attributes as each study recorded them: used by queries below the PATIENT level."""

REQUEST_ATTRIBUTES_SEQUENCE = 0x0040_0275
REQUEST_ITEM_COLUMNS: dict[int, MatchColumn] = {
    0x0040_1001: MatchColumn("SERIES", "requested_procedure_id", ColumnKind.TEXT),
    0x0040_0009: MatchColumn("SERIES", "scheduled_procedure_step_id", ColumnKind.TEXT),
    0x0008_0050: MatchColumn("SERIES", "accession_number", ColumnKind.TEXT),
}
"""Sub-keys of RequestAttributesSequence the index can match (series_requests columns)."""

LEVEL_TABLES = {"PATIENT": patients, "STUDY": studies, "SERIES": series, "IMAGE": instances}
