"""Status and failure-reason codes fixed by the standard.

STOW-RS failure reasons (PS3.18 §10.5.3, Table 10.5.3-2 / -3) reuse the C-STORE status codes of
PS3.4 Annex B.2.3 and the general statuses of PS3.7 Annex C; the same values go into
FailedSOPSequence/FailureReason (0008,1197) and WarningReason (0008,1196).
"""

from __future__ import annotations

import enum


class StowFailure(enum.IntEnum):
    """Why an instance was not stored (FailureReason, 0008,1197; C-STORE status)."""

    PROCESSING_FAILURE = 0x0110
    """PS3.7 C.4.2: a general failure in processing the operation."""
    DUPLICATE_SOP_INSTANCE = 0x0111
    """PS3.7 C.4.3: the SOP Instance UID is already stored with other content."""
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    """PS3.7 C.4.9 (refused): the SOP class is not a storage class arca supports."""
    OUT_OF_RESOURCES = 0xA700
    """PS3.4 B.2.3: refused, out of resources."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """PS3.4 B.2.3: error, data set does not match SOP class (also: study UID differs from
    the one in the STOW request URL, PS3.18 §10.5.3)."""
    CANNOT_UNDERSTAND = 0xC000
    """PS3.4 B.2.3: error, cannot understand (does not parse, required UIDs missing)."""


class StowWarning(enum.IntEnum):
    """Why an instance was stored with a caveat (WarningReason, 0008,1196)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    """PS3.4 B.2.3: some attributes were coerced (e.g. trailing padding, charset repair)."""
    ELEMENTS_DISCARDED = 0xB006
    """PS3.4 B.2.3: some elements were discarded."""
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    """PS3.4 B.2.3: stored, but the data set does not match the SOP class."""
