"""Query/Retrieve C-MOVE SCP: send matched instances to a configured destination AE
(PS3.4 C.4.2).

arca serves C-MOVE itself (see :mod:`dimse.acceptor` for why): it resolves the identifier,
opens an association to the destination as SCU proposing, per SOP class, each stored transfer
syntax and a native fallback (Explicit then Implicit VR Little Endian), and sends each
instance as stored when the destination accepted that syntax, else transcoded to one it
accepted. One Pending response per sub-operation carries the remaining / completed / failed /
warning counts; a C-CANCEL-MOVE stops before the next sub-operation.

Statuses (PS3.4 C.4.2.1.5, Table C.4-2):

- 0xFF00 pending; 0x0000 all sub-operations complete without failures or warnings
- 0xB000 complete, one or more failed or had warnings (FailedSOPInstanceUIDList)
- 0xFE00 cancelled (counts + FailedSOPInstanceUIDList)
- 0xA801 move destination unknown (not configured, or not a move destination)
- 0xA702 refused, unable to perform sub-operations: the destination could not be
  associated with (refused, not listening, or silent beyond the network timeout), or every
  sub-operation failed; counts included, nothing hangs beyond the timeouts
- 0x0124 the calling AE may not retrieve; 0xA701 / 0xA900 / 0xC000 via :mod:`dimse.status`
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext

from config.settings import DimseSettings, RemoteAE
from dimse import uids
from dimse.ae_policy import AePolicy, Operation
from dimse.bridge import LoopBridge
from dimse.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS
from dimse.identifiers import level_of
from dimse.retrieve import (
    MAX_SUBOPERATIONS,
    NATIVE_FALLBACK,
    choose_syntax,
    parse_part10,
    read_instance,
    resolve,
)
from dimse.status import (
    CANCEL,
    MOVE_DESTINATION_UNKNOWN,
    OUT_OF_RESOURCES_SUBOPERATIONS,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    SUBOPERATIONS_WARNING,
    SUCCESS,
    Service,
    status_for,
)
from dimse.tcp import disable_nagle
from storage.archive import ArchiveService
from storage.errors import InvalidQuery
from storage.model import InstanceLocation
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dimse")

MOVE_SOP_CLASSES = {
    uids.PATIENT_ROOT_MOVE: True,
    uids.STUDY_ROOT_MOVE: False,
}
MAX_CONTEXTS = 128  # odd presentation context IDs 1..255 (PS3.8 §9.3.2.2)
_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})


class _Counts:
    def __init__(self, total: int) -> None:
        self.remaining = total
        self.completed = 0
        self.failed = 0
        self.warning = 0
        self.failed_uids: list[str] = []

    def fail(self, uid: str) -> None:
        self.remaining -= 1
        self.failed += 1
        self.failed_uids.append(uid)


class MoveSCP:
    """Serves one C-MOVE request on the requesting association's own thread."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService | None,
        bridge: LoopBridge,
        policy: AePolicy,
        settings: DimseSettings,
    ) -> None:
        self._archive = archive
        self._transcoder = transcoder
        self._bridge = bridge
        self._policy = policy
        self._settings = settings

    # -- the DIMSE exchange ----------------------------------------------------------------
    def serve(self, assoc: Association, req: C_MOVE, context: PresentationContext) -> None:
        ts = context.transfer_syntax[0]
        cx_id = int(context.context_id or 0)

        def respond(status: int, counts: _Counts | None = None, *, final: bool = True) -> None:
            rsp = C_MOVE()
            rsp.MessageIDBeingRespondedTo = req.MessageID
            rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
            rsp.Status = status
            if counts is not None:
                if not final or status == CANCEL:
                    rsp.NumberOfRemainingSuboperations = counts.remaining
                rsp.NumberOfCompletedSuboperations = counts.completed
                rsp.NumberOfFailedSuboperations = counts.failed
                rsp.NumberOfWarningSuboperations = counts.warning
                if final and counts.failed_uids and status != SUCCESS:
                    ident = Dataset()
                    ident.FailedSOPInstanceUIDList = counts.failed_uids
                    raw = encode(ident, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
                    rsp.Identifier = BytesIO(raw or b"")
            assoc.dimse.send_msg(rsp, cx_id)

        calling = assoc.requestor.ae_title
        if not self._policy.may(calling, Operation.RETRIEVE):
            respond(REFUSED_NOT_AUTHORIZED)
            return
        destination = self._policy.move_destination(str(req.MoveDestination or ""))
        if destination is None:
            log.info("C-MOVE from %s to unknown destination %r", calling, req.MoveDestination)
            respond(MOVE_DESTINATION_UNKNOWN)
            return
        try:
            locations = self._locations(req, ts)
        except Exception as exc:
            log.info("C-MOVE from %s failed to resolve: %s", calling, exc)
            respond(status_for(exc, Service.MOVE))
            return
        counts = _Counts(len(locations))
        if not locations:
            respond(SUCCESS, counts)
            return
        store = self._associate(destination, locations)
        if store is None:
            for loc in locations:
                counts.fail(loc.sop_instance_uid)
            respond(OUT_OF_RESOURCES_SUBOPERATIONS, counts)
            return
        try:
            for index, loc in enumerate(locations):
                if assoc.dimse.cancel_req.pop(int(req.MessageID or 0), None) is not None:
                    respond(CANCEL, counts)
                    return
                if not assoc.is_established:
                    return  # the requestor went away: nobody to answer
                if not store.is_established:
                    counts.fail(loc.sop_instance_uid)
                else:
                    self._send_one(
                        store, loc, counts, calling, int(req.MessageID or 0), index % 65535 + 1
                    )
                respond(PENDING, counts, final=False)
        finally:
            if store.is_established:
                store.release()
        if counts.failed == 0 and counts.warning == 0:
            respond(SUCCESS, counts)
        elif counts.completed == 0 and counts.warning == 0:
            respond(OUT_OF_RESOURCES_SUBOPERATIONS, counts)
        else:
            respond(SUBOPERATIONS_WARNING, counts)

    # -- steps -----------------------------------------------------------------------------
    def _locations(self, req: C_MOVE, ts: UID) -> list[InstanceLocation]:
        patient_root = MOVE_SOP_CLASSES.get(str(req.AffectedSOPClassUID), False)
        if req.Identifier is None:
            raise InvalidQuery("C-MOVE request without an identifier")
        identifier = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        level = level_of(identifier, PATIENT_ROOT_LEVELS if patient_root else STUDY_ROOT_LEVELS)
        locations = self._bridge.run(
            resolve(self._archive, identifier, level, patient_root=patient_root)
        )
        if len(locations) > MAX_SUBOPERATIONS:
            raise InvalidQuery(f"{len(locations)} instances match; at most 65535 can be moved")
        return locations

    def _associate(
        self, destination: RemoteAE, locations: Iterable[InstanceLocation]
    ) -> Association | None:
        ae = AE(ae_title=self._settings.ae_title)
        timeout = self._settings.network_timeout
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.connection_timeout = min(timeout, 10.0)
        contexts = requested_contexts(locations)
        try:
            store = ae.associate(
                destination.host,
                destination.port,
                contexts=contexts,
                ae_title=destination.ae_title,
            )
        except Exception:
            log.exception("C-MOVE: association with %s failed", destination.ae_title)
            return None
        if store.dul.socket is not None:
            disable_nagle(store.dul.socket.socket)
        if not store.is_established:
            log.warning(
                "C-MOVE: %s at %s:%d did not accept an association",
                destination.ae_title,
                destination.host,
                destination.port,
            )
            return None
        return store

    def _send_one(
        self,
        store: Association,
        loc: InstanceLocation,
        counts: _Counts,
        originator: str,
        originator_id: int,
        message_id: int,
    ) -> None:
        accepted = [
            str(cx.transfer_syntax[0])
            for cx in store.accepted_contexts
            if str(cx.abstract_syntax) == loc.sop_class_uid
        ]
        choice = choose_syntax(loc, accepted, self._transcoder)
        if choice.transfer_syntax is None:
            log.info("C-MOVE: no accepted context can carry %s", loc.sop_instance_uid)
            counts.fail(loc.sop_instance_uid)
            return
        try:
            data = self._bridge.run(read_instance(self._archive, loc))
            if choice.transcode and self._transcoder is not None:
                data = self._bridge.run(
                    self._transcoder.transcode(data, choice.transfer_syntax, cache_key=loc.sha256)
                )
            status = store.send_c_store(
                parse_part10(data),
                msg_id=message_id,
                originator_aet=originator,
                originator_id=originator_id,
            )
            code = int(status.get("Status", 0xC000)) if status else None
        except Exception:
            log.exception("C-MOVE sub-operation for %s failed", loc.sop_instance_uid)
            code = None
        if code == SUCCESS:
            counts.remaining -= 1
            counts.completed += 1
        elif code in _WARNINGS:
            counts.remaining -= 1
            counts.warning += 1
        else:
            counts.fail(loc.sop_instance_uid)


def requested_contexts(locations: Iterable[InstanceLocation]) -> list[PresentationContext]:
    """Per SOP class: one context per stored transfer syntax, then a native fallback."""
    stored: dict[str, list[str]] = {}
    for loc in locations:
        syntaxes = stored.setdefault(loc.sop_class_uid, [])
        if loc.transfer_syntax_uid not in syntaxes:
            syntaxes.append(loc.transfer_syntax_uid)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in stored.items():
        # The stored syntax alone in its own context, so the destination cannot pick
        # another one for it and the bytes go out as stored.
        contexts += [build_context(sop_class, [ts]) for ts in syntaxes]
        contexts.append(build_context(sop_class, list(NATIVE_FALLBACK)))
    # More SOP classes than context IDs: the rest go native-only or fail (logged per
    # instance); a real series rarely mixes more than a handful of classes.
    return contexts[:MAX_CONTEXTS]
