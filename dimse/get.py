"""Query/Retrieve C-GET SCP: matched instances go back over the requesting association
(PS3.4 C.4.3).

The C-STORE sub-operations run on the same association with arca in the SCU role: the
requestor must have proposed the storage SOP classes with SCP/SCU Role Selection (PS3.7
D.3.3.4) giving itself the SCP role, which arca's storage contexts accept. Each instance is
sent in its stored transfer syntax when the requestor accepted it, else transcoded to one it
did accept; an instance no accepted context can carry fails its own sub-operation (its UID goes
into FailedSOPInstanceUIDList) and the others proceed. pynetdicom's Get SCP sends the Pending
responses with the counts and the final status.

Statuses (PS3.4 C.4.3.1.4): 0xFF00 pending; 0x0000 success; 0xB000 some sub-operations failed
or had warnings; 0xA702 all failed; 0xFE00 cancelled; 0x0124 not authorized; 0xA701 / 0xA900 /
0xC000 via :mod:`dimse.status`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dimse import uids
from dimse.ae_policy import AePolicy, Operation
from dimse.bridge import LoopBridge
from dimse.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS
from dimse.identifiers import level_of
from dimse.retrieve import (
    MAX_SUBOPERATIONS,
    choose_syntax,
    parse_part10,
    placeholder,
    read_instance,
    resolve,
)
from dimse.status import (
    CANCEL,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    Service,
    failure_dataset,
    status_dataset,
)
from storage.archive import ArchiveService
from storage.errors import InvalidQuery
from storage.model import InstanceLocation
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dimse")

GET_SOP_CLASSES = {
    uids.PATIENT_ROOT_GET: True,
    uids.STUDY_ROOT_GET: False,
}

GetYield = int | tuple[Dataset | int, Dataset | None]


class GetSCP:
    """The EVT_C_GET handler: yields the number of sub-operations, then each data set."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService | None,
        bridge: LoopBridge,
        policy: AePolicy,
    ) -> None:
        self._archive = archive
        self._transcoder = transcoder
        self._bridge = bridge
        self._policy = policy

    def handle_get(self, event: Event) -> Iterator[GetYield]:
        calling = event.assoc.requestor.ae_title
        if not self._policy.may(calling, Operation.RETRIEVE):
            yield 1
            yield status_dataset(REFUSED_NOT_AUTHORIZED, f"{calling} may not retrieve"), None
            return
        patient_root = GET_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID), False)
        try:
            identifier: Dataset = event.identifier
            level = level_of(identifier, PATIENT_ROOT_LEVELS if patient_root else STUDY_ROOT_LEVELS)
            locations = self._bridge.run(
                resolve(self._archive, identifier, level, patient_root=patient_root)
            )
            if len(locations) > MAX_SUBOPERATIONS:
                raise InvalidQuery(f"{len(locations)} instances match; at most 65535 per C-GET")
        except Exception as exc:
            # pynetdicom reads the count first; 1 lets the failure status through.
            yield 1
            yield failure_dataset(exc, Service.GET), None
            return
        yield len(locations)
        for loc in locations:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self._dataset_for(event, loc)

    def _dataset_for(self, event: Event, loc: InstanceLocation) -> Dataset:
        # Contexts on which arca may act as Storage SCU: role selection gave the requestor SCP.
        accepted = [
            str(cx.transfer_syntax[0])
            for cx in event.assoc.accepted_contexts
            if str(cx.abstract_syntax) == loc.sop_class_uid and cx.as_scu
        ]
        choice = choose_syntax(loc, accepted, self._transcoder)
        if choice.transfer_syntax is None:
            log.info("C-GET: no accepted context can carry %s", loc.sop_instance_uid)
            return placeholder(loc)
        try:
            data = self._bridge.run(read_instance(self._archive, loc))
            if choice.transcode and self._transcoder is not None:
                data = self._bridge.run(
                    self._transcoder.transcode(data, choice.transfer_syntax, cache_key=loc.sha256)
                )
            return parse_part10(data)
        except Exception:
            log.exception("C-GET: cannot provide %s", loc.sop_instance_uid)
            return placeholder(loc)
