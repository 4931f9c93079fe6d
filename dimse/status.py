"""The one guard that turns errors of the layers below into DIMSE statuses.

Every service handler catches at its edge and asks :func:`status_for` which status the
peer gets; nothing else in ``dimse`` chooses failure codes, and no error drops an association.

Mapping (PS3.4 B.2.3 for C-STORE, C.4.1.1.4 for C-FIND/MWL, C.4.2.1.5 / C.4.3.1.4 for
C-MOVE/C-GET):

- ``IngestRejected(failure)``: C-STORE answers the failure's own code (0x0111 duplicate,
  0x0122 SOP class not supported, 0xA900 does not match SOP class, 0xC000 cannot understand).
- ``InvalidQuery``: 0xA900 identifier does not match SOP class (C-FIND, MWL, C-MOVE, C-GET).
- ``OutOfResources``, ``StoreUnavailable``, ``BridgeTimeout``: 0xA700 out of resources
  (C-STORE, C-FIND, MWL); 0xA701 out of resources, unable to calculate the number of matches
  (C-MOVE, C-GET).
- anything else: 0x0110 processing failure (C-STORE, PS3.7 C.4.2), 0xC000 unable to process
  (C-FIND, MWL, C-MOVE, C-GET).

A peer that arca's AE policy does not allow the operation gets 0x0124 "Refused: not
authorized" (PS3.7 C.4.19).
"""

from __future__ import annotations

import enum
import logging

from pydicom.dataset import Dataset

from dimse.bridge import BridgeTimeout
from storage.errors import (
    IngestRejected,
    InvalidQuery,
    OutOfResources,
    StoreUnavailable,
)

log = logging.getLogger("arca.dimse")

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01
"""C-FIND pending: one or more optional keys were not supported (PS3.4 C.4.1.1.4)."""
CANCEL = 0xFE00
WARNING_COERCION = 0xB000
SUBOPERATIONS_WARNING = 0xB000
"""C-MOVE/C-GET: sub-operations complete, one or more failures or warnings (C.4.2.1.5)."""
REFUSED_NOT_AUTHORIZED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
"""C-MOVE/C-GET: refused, out of resources, unable to perform sub-operations."""
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
PROCESSING_FAILURE = 0x0110

_COMMENT_MAX = 64  # ErrorComment (0000,0902) is LO


class Service(enum.Enum):
    STORE = "C-STORE"
    FIND = "C-FIND"
    WORKLIST = "MWL C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


def status_for(exc: BaseException, service: Service) -> int:
    """The DIMSE status ``service`` answers when handling a request raised ``exc``."""
    if isinstance(exc, IngestRejected):
        return int(exc.failure) if service is Service.STORE else UNABLE_TO_PROCESS
    if isinstance(exc, InvalidQuery):
        return IDENTIFIER_DOES_NOT_MATCH if service is not Service.STORE else UNABLE_TO_PROCESS
    if isinstance(exc, OutOfResources | StoreUnavailable | BridgeTimeout):
        return 0xA701 if service in (Service.MOVE, Service.GET) else 0xA700
    return PROCESSING_FAILURE if service is Service.STORE else UNABLE_TO_PROCESS


def failure_dataset(exc: BaseException, service: Service) -> Dataset:
    """A status Dataset (Status + ErrorComment) for a pynetdicom handler to return."""
    status = status_for(exc, service)
    if status in (PROCESSING_FAILURE, UNABLE_TO_PROCESS) and not isinstance(exc, IngestRejected):
        log.exception("%s failed", service.value, exc_info=exc)
    else:
        log.info("%s refused with 0x%04X: %s", service.value, status, exc)
    return status_dataset(status, str(exc) or type(exc).__name__)


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        # LO: 64 characters, no backslash.
        ds.ErrorComment = comment.replace("\\", "/")[:_COMMENT_MAX]
    return ds
