"""Which attributes each query level returns and matches on (QIDO-RS and C-FIND).

Sources: PS3.18 §10.6.3.3 Tables 10.6.3-3 (study), 10.6.3-4 (series), 10.6.3-5 (instance)
for the attributes QIDO-RS returns by default; PS3.18 §10.6.1.2 Table 10.6.1-5 for the
matching keys QIDO-RS must support; PS3.4 C.6.1.1 / C.6.2.1 (Tables C.6-1 .. C.6-4, C.6-5 ..
C.6-8) for the C-FIND required (R) and unique (U) keys of the Patient Root and Study Root
models. Hand-maintained: the tables are short and stable.

Tags are ints (``0x0010_0010``); keywords in comments. ``LEVEL_OF_TAG`` says which level of
the patient/study/series/instance hierarchy an attribute belongs to (PS3.3 modules: Patient,
General Study + Patient Study, General Series + Frame of Reference + General Equipment);
everything else is an instance attribute.
"""

from __future__ import annotations

from typing import Final

PATIENT: Final = "PATIENT"
STUDY: Final = "STUDY"
SERIES: Final = "SERIES"
IMAGE: Final = "IMAGE"

# Attributes that are not stored but computed from the index (PS3.4 C.3.4, Table C.3-...).
NUMBER_OF_PATIENT_RELATED_STUDIES = 0x0020_1200
NUMBER_OF_PATIENT_RELATED_SERIES = 0x0020_1202
NUMBER_OF_PATIENT_RELATED_INSTANCES = 0x0020_1204
NUMBER_OF_STUDY_RELATED_SERIES = 0x0020_1206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x0020_1208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x0020_1209
MODALITIES_IN_STUDY = 0x0008_0061
SOP_CLASSES_IN_STUDY = 0x0008_0062

COMPUTED: Final[dict[str, frozenset[int]]] = {
    PATIENT: frozenset(
        {
            NUMBER_OF_PATIENT_RELATED_STUDIES,
            NUMBER_OF_PATIENT_RELATED_SERIES,
            NUMBER_OF_PATIENT_RELATED_INSTANCES,
        }
    ),
    STUDY: frozenset(
        {
            NUMBER_OF_STUDY_RELATED_SERIES,
            NUMBER_OF_STUDY_RELATED_INSTANCES,
            MODALITIES_IN_STUDY,
            SOP_CLASSES_IN_STUDY,
        }
    ),
    SERIES: frozenset({NUMBER_OF_SERIES_RELATED_INSTANCES}),
    IMAGE: frozenset(),
}

SPECIFIC_CHARACTER_SET = 0x0008_0005
RETRIEVE_URL = 0x0008_1190
INSTANCE_AVAILABILITY = 0x0008_0056
TIMEZONE_OFFSET_FROM_UTC = 0x0008_0201

# PS3.18 Table 10.6.3-3: study attributes returned by default.
QIDO_STUDY_DEFAULTS: Final = (
    SPECIFIC_CHARACTER_SET,
    0x0008_0020,  # StudyDate
    0x0008_0030,  # StudyTime
    0x0008_0050,  # AccessionNumber
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    0x0008_0090,  # ReferringPhysicianName
    TIMEZONE_OFFSET_FROM_UTC,
    0x0010_0010,  # PatientName
    0x0010_0020,  # PatientID
    0x0010_0030,  # PatientBirthDate
    0x0010_0040,  # PatientSex
    0x0020_000D,  # StudyInstanceUID
    0x0020_0010,  # StudyID
    NUMBER_OF_STUDY_RELATED_SERIES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
)

# PS3.18 Table 10.6.3-4: series attributes returned by default.
QIDO_SERIES_DEFAULTS: Final = (
    SPECIFIC_CHARACTER_SET,
    0x0008_0060,  # Modality
    TIMEZONE_OFFSET_FROM_UTC,
    0x0008_103E,  # SeriesDescription
    0x0020_000E,  # SeriesInstanceUID
    0x0020_0011,  # SeriesNumber
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    0x0040_0244,  # PerformedProcedureStepStartDate
    0x0040_0245,  # PerformedProcedureStepStartTime
    0x0040_0275,  # RequestAttributesSequence
)

# PS3.18 Table 10.6.3-5: instance attributes returned by default.
QIDO_INSTANCE_DEFAULTS: Final = (
    SPECIFIC_CHARACTER_SET,
    0x0008_0016,  # SOPClassUID
    0x0008_0018,  # SOPInstanceUID
    INSTANCE_AVAILABILITY,
    TIMEZONE_OFFSET_FROM_UTC,
    0x0020_0013,  # InstanceNumber
    0x0028_0010,  # Rows
    0x0028_0011,  # Columns
    0x0028_0100,  # BitsAllocated
    0x0028_0008,  # NumberOfFrames
)

# PS3.4 Table C.6-1: Patient level of the Patient Root model (R and U keys).
CFIND_PATIENT_KEYS: Final = (
    0x0010_0010,  # PatientName (R)
    0x0010_0020,  # PatientID (U)
)

DEFAULT_RETURN: Final[dict[str, tuple[int, ...]]] = {
    PATIENT: (SPECIFIC_CHARACTER_SET, *CFIND_PATIENT_KEYS, 0x0010_0030, 0x0010_0040),
    STUDY: QIDO_STUDY_DEFAULTS,
    SERIES: QIDO_SERIES_DEFAULTS,
    IMAGE: QIDO_INSTANCE_DEFAULTS,
}
"""What a query at each level returns when nothing more is asked for."""

UNIQUE_KEY: Final[dict[str, int]] = {
    PATIENT: 0x0010_0020,  # PatientID
    STUDY: 0x0020_000D,  # StudyInstanceUID
    SERIES: 0x0020_000E,  # SeriesInstanceUID
    IMAGE: 0x0008_0018,  # SOPInstanceUID
}
"""PS3.4 C.6: the unique key of each level."""

# PS3.18 Table 10.6.1-5 / PS3.4 C.6 required keys: the index must match on these.
REQUIRED_MATCHING_KEYS: Final[dict[str, frozenset[int]]] = {
    PATIENT: frozenset({0x0010_0010, 0x0010_0020}),
    STUDY: frozenset(
        {
            0x0008_0020,  # StudyDate
            0x0008_0030,  # StudyTime
            0x0008_0050,  # AccessionNumber
            MODALITIES_IN_STUDY,
            0x0008_0090,  # ReferringPhysicianName
            0x0010_0010,  # PatientName
            0x0010_0020,  # PatientID
            0x0020_000D,  # StudyInstanceUID
            0x0020_0010,  # StudyID
        }
    ),
    SERIES: frozenset(
        {
            0x0008_0060,  # Modality
            0x0020_000E,  # SeriesInstanceUID
            0x0020_0011,  # SeriesNumber
            0x0040_0244,  # PerformedProcedureStepStartDate
            0x0040_0245,  # PerformedProcedureStepStartTime
            0x0040_0275,  # RequestAttributesSequence >SPS ID, >RequestedProcedureID
        }
    ),
    IMAGE: frozenset(
        {
            0x0008_0016,  # SOPClassUID
            0x0008_0018,  # SOPInstanceUID
            0x0020_0013,  # InstanceNumber
        }
    ),
}

# Attributes of the Patient module (PS3.3 C.7.1.1) beyond group 0010 are rare; group 0010
# also holds Patient Study module attributes (age, size, weight: PS3.3 C.7.2.2), which
# belong to the study.
_PATIENT_STUDY_IN_GROUP_0010: Final = frozenset(
    {
        0x0010_1010,  # PatientAge
        0x0010_1020,  # PatientSize
        0x0010_1021,  # PatientSizeCodeSequence
        0x0010_1022,  # PatientBodyMassIndex
        0x0010_1030,  # PatientWeight
        0x0010_2180,  # Occupation
        0x0010_21B0,  # AdditionalPatientHistory
        0x0010_21C0,  # PregnancyStatus
        0x0010_2203,  # PatientSexNeutered
    }
)

# PS3.3 C.7.2.1 General Study, C.7.2.2 Patient Study (outside group 0010).
STUDY_LEVEL_TAGS: Final = frozenset(
    {
        0x0008_0020,  # StudyDate
        0x0008_0030,  # StudyTime
        0x0008_0050,  # AccessionNumber
        0x0008_0051,  # IssuerOfAccessionNumberSequence
        0x0008_0090,  # ReferringPhysicianName
        0x0008_0096,  # ReferringPhysicianIdentificationSequence
        0x0008_1030,  # StudyDescription
        0x0008_1032,  # ProcedureCodeSequence
        0x0008_1048,  # PhysiciansOfRecord
        0x0008_1060,  # NameOfPhysiciansReadingStudy
        0x0008_1080,  # AdmittingDiagnosesDescription
        0x0008_1110,  # ReferencedStudySequence
        0x0020_000D,  # StudyInstanceUID
        0x0020_0010,  # StudyID
        0x0032_1033,  # RequestingService
        0x0032_1034,  # RequestingServiceCodeSequence
        0x0032_1060,  # RequestedProcedureDescription
        0x0038_0010,  # AdmissionID
        0x0038_0500,  # PatientState
        0x0040_1012,  # ReasonForPerformedProcedureCodeSequence
        *_PATIENT_STUDY_IN_GROUP_0010,
    }
)

# PS3.3 C.7.3.1 General Series, C.7.4.1 Frame of Reference, C.7.5.1 General Equipment.
SERIES_LEVEL_TAGS: Final = frozenset(
    {
        0x0008_0021,  # SeriesDate
        0x0008_0031,  # SeriesTime
        0x0008_0060,  # Modality
        0x0008_0070,  # Manufacturer
        0x0008_0080,  # InstitutionName
        0x0008_0081,  # InstitutionAddress
        0x0008_1010,  # StationName
        0x0008_103E,  # SeriesDescription
        0x0008_1040,  # InstitutionalDepartmentName
        0x0008_1050,  # PerformingPhysicianName
        0x0008_1070,  # OperatorsName
        0x0008_1090,  # ManufacturerModelName
        0x0008_1111,  # ReferencedPerformedProcedureStepSequence
        0x0018_0015,  # BodyPartExamined
        0x0018_1000,  # DeviceSerialNumber
        0x0018_1020,  # SoftwareVersions
        0x0018_5100,  # PatientPosition
        0x0020_000E,  # SeriesInstanceUID
        0x0020_0011,  # SeriesNumber
        0x0020_0052,  # FrameOfReferenceUID
        0x0020_0060,  # Laterality
        0x0020_1040,  # PositionReferenceIndicator
        0x0040_0244,  # PerformedProcedureStepStartDate
        0x0040_0245,  # PerformedProcedureStepStartTime
        0x0040_0253,  # PerformedProcedureStepID
        0x0040_0254,  # PerformedProcedureStepDescription
        0x0040_0275,  # RequestAttributesSequence
    }
)

# Present at every level's stored attributes so each level's text decodes on its own.
SHARED_TAGS: Final = frozenset({SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET_FROM_UTC})

LEVELS: Final = (PATIENT, STUDY, SERIES, IMAGE)


def level_of_tag(tag: int) -> str:
    """The hierarchy level an attribute belongs to (instance when not patient/study/series)."""
    if tag in STUDY_LEVEL_TAGS:
        return STUDY
    if tag >> 16 == 0x0010:
        return PATIENT
    if tag in SERIES_LEVEL_TAGS:
        return SERIES
    return IMAGE


def levels_up_to(level: str) -> tuple[str, ...]:
    """The level and every level above it, top first (PATIENT .. level)."""
    return LEVELS[: LEVELS.index(level) + 1]
