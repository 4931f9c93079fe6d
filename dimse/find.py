"""Query/Retrieve C-FIND SCP: Patient Root and Study Root information models (PS3.4 C.4.1).

The identifier is parsed into the storage query model (:mod:`dimse.identifiers`), searched
through the loop bridge, and every match goes back as one Pending response carrying the
requested keys and QueryRetrieveLevel.

Statuses (PS3.4 C.4.1.1.4):

- 0xFF00 pending, one per match; 0xFF01 pending, some optional keys were not matched on
- 0x0000 success (after the last match); 0xFE00 cancelled (C-CANCEL-FIND received)
- 0x0124 the calling AE may not query
- 0xA700 out of resources; 0xA900 identifier does not match SOP class (bad level, bad
  key value); 0xC000 unable to process
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dimse import uids
from dimse.ae_policy import AePolicy, Operation
from dimse.bridge import LoopBridge
from dimse.identifiers import level_of, query_for, response_identifier
from dimse.status import (
    CANCEL,
    PENDING,
    PENDING_WARNING,
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    Service,
    failure_dataset,
    status_dataset,
)
from storage.archive import ArchiveService
from storage.query import QueryLevel

PATIENT_ROOT_LEVELS = (QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
STUDY_ROOT_LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)

FIND_SOP_CLASSES = {
    uids.PATIENT_ROOT_FIND: True,
    uids.STUDY_ROOT_FIND: False,
}
"""C-FIND SOP class UID -> whether it is the Patient Root model."""

FindYield = tuple[Dataset | int, Dataset | None]


class FindSCP:
    """The Q/R C-FIND handler (a generator per request, run in the association's thread)."""

    def __init__(
        self, archive: ArchiveService, bridge: LoopBridge, policy: AePolicy, ae_title: str
    ) -> None:
        self._archive = archive
        self._bridge = bridge
        self._policy = policy
        self._ae_title = ae_title

    def handle_find(self, event: Event) -> Iterator[FindYield]:
        calling = event.assoc.requestor.ae_title
        if not self._policy.may(calling, Operation.QUERY):
            yield status_dataset(REFUSED_NOT_AUTHORIZED, f"{calling} may not query"), None
            return
        sop_class = str(event.request.AffectedSOPClassUID)
        patient_root = FIND_SOP_CLASSES[sop_class]
        try:
            identifier: Dataset = event.identifier
            level = level_of(identifier, PATIENT_ROOT_LEVELS if patient_root else STUDY_ROOT_LEVELS)
            query = query_for(identifier, level, patient_root=patient_root)
            result = self._bridge.run(self._archive.search(query))
        except Exception as exc:
            yield failure_dataset(exc, Service.FIND), None
            return
        pending = PENDING_WARNING if result.unsupported_keys else PENDING
        for match in result.matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield pending, response_identifier(identifier, match, level, self._ae_title)
        yield SUCCESS, None


def is_find_sop_class(uid: Any) -> bool:
    return str(uid) in FIND_SOP_CLASSES
