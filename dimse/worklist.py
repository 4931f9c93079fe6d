"""Modality Worklist C-FIND SCP (PS3.4 Annex K.6, Basic Worklist Management).

The identifier becomes storage query-model keys (:mod:`dimse.identifiers`) and is matched by
:class:`storage.worklist.WorklistStore`: ScheduledProcedureStepSequence as a sequence key
(ScheduledStationAETitle, ScheduledProcedureStepStartDate/-Time ranges, Modality,
ScheduledProcedureStepID), PatientName (case-insensitive, wildcards), PatientID,
AccessionNumber, RequestedProcedureID. Cancelled items never match. Each match is returned
with the requested keys, sequence keys with the requested sub-keys of each stored item
(PS3.4 C.2.2.2.6: an empty sequence key returns the whole stored sequence).

Statuses (PS3.4 K.4.1.1.4 / C.4.1.1.4): 0xFF00 pending; 0xFF01 pending, some keys not
matched on; 0x0000 success; 0xFE00 cancelled; 0x0124 not authorized; 0xA700 out of
resources; 0xA900 identifier does not match SOP class; 0xC000 unable to process.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from dimse.ae_policy import AePolicy, Operation
from dimse.bridge import LoopBridge
from dimse.identifiers import SPECIFIC_CHARACTER_SET, match_keys
from dimse.status import (
    CANCEL,
    PENDING,
    PENDING_WARNING,
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    UNABLE_TO_PROCESS,
    Service,
    failure_dataset,
    status_dataset,
)
from storage.worklist import WorklistStore

FindYield = tuple[Dataset | int, Dataset | None]


class WorklistSCP:
    """The MWL C-FIND handler."""

    def __init__(self, store: WorklistStore | None, bridge: LoopBridge, policy: AePolicy) -> None:
        self._store = store
        self._bridge = bridge
        self._policy = policy

    def handle_find(self, event: Event) -> Iterator[FindYield]:
        calling = event.assoc.requestor.ae_title
        if not self._policy.may(calling, Operation.QUERY):
            yield status_dataset(REFUSED_NOT_AUTHORIZED, f"{calling} may not query"), None
            return
        if self._store is None:
            yield status_dataset(UNABLE_TO_PROCESS, "no worklist store configured"), None
            return
        try:
            identifier: Dataset = event.identifier
            result = self._bridge.run(self._store.search(match_keys(identifier)))
        except Exception as exc:
            yield failure_dataset(exc, Service.WORKLIST), None
            return
        pending = PENDING_WARNING if result.unsupported_keys else PENDING
        for item in result.items:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield pending, worklist_response(identifier, item.dataset)
        yield SUCCESS, None


def worklist_response(request: Dataset, stored: Dataset) -> Dataset:
    """The requested attributes of ``stored``, sequences narrowed to the requested sub-keys."""
    response = Dataset()
    if SPECIFIC_CHARACTER_SET in stored:
        response[SPECIFIC_CHARACTER_SET] = stored[SPECIFIC_CHARACTER_SET]
    for elem in request:
        tag = int(elem.tag)
        if tag == SPECIFIC_CHARACTER_SET or elem.tag.group in (0, 2):
            continue
        if tag not in stored:
            value = Sequence() if elem.VR == "SQ" else None
            response[tag] = DataElement(tag, elem.VR, value)
            continue
        found = stored[tag]
        requested_items = elem.value if elem.VR == "SQ" else None
        if found.VR == "SQ" and requested_items and len(requested_items[0]) > 0:
            narrowed = Sequence(
                worklist_response(requested_items[0], item) for item in found.value or []
            )
            response[tag] = DataElement(tag, "SQ", narrowed)
        else:
            response[tag] = found
    return response
