"""How arca's policy and its own C-MOVE SCP plug into pynetdicom's association acceptor.

pynetdicom decides association acceptance from AE-wide lists (``require_calling_aet``); arca
decides per peer (its AE title *and* the address it connects from), so each accepted TCP
connection gets an :class:`ArcaAssociation` whose ACSE asks :class:`~dimse.ae_policy.AePolicy`
first and answers A-ASSOCIATE-RJ itself (PS3.8 §9.3.4).

C-MOVE requests are served by :mod:`dimse.move` instead of pynetdicom's built-in Move SCP:
arca opens the association to the destination itself (to choose transfer syntaxes per
instance and transcode when the destination accepts none of the stored ones) and must report
sub-operation counts even when the destination never answers (PS3.4 C.4.2.1.5), which the
built-in flow cannot. Everything else is pynetdicom's own handling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler

from dimse.ae_policy import AePolicy
from dimse.tcp import disable_nagle

log = logging.getLogger("arca.dimse")

MoveService = Callable[[Association, C_MOVE, PresentationContext], None]


class PolicyACSE(ACSE):
    """ACSE that applies :class:`AePolicy` before pynetdicom's own negotiation."""

    def __init__(self, assoc: Association, policy: AePolicy) -> None:
        super().__init__(assoc)
        self._policy = policy

    def _negotiate_as_acceptor(self) -> None:
        request: Any = self.requestor.primitive
        calling = str(request.calling_ae_title)
        called = str(request.called_ae_title)
        try:
            peer = self.assoc.requestor.address
        except ValueError:
            peer = None
        rejection = self._policy.check_association(calling, called, peer)
        if rejection is None:
            super()._negotiate_as_acceptor()
            return
        log.warning("rejecting association from %s at %s: %s", calling, peer, rejection.explanation)
        self.requestor.ae_title = calling
        self.send_reject(rejection.result, rejection.source, rejection.reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class ArcaAssociation(Association):
    """An acceptor association whose C-MOVE requests go to arca's Move SCP."""

    move_service: MoveService | None = None

    def _serve_request(self, msg: Any, context_id: int) -> None:
        try:
            self._serve(msg, context_id)
        finally:
            # While arca worked on the request the peer was waiting for answers, not idle:
            # without this a request that outlasts the network timeout (a long C-MOVE, a big
            # C-FIND) gets its association aborted the moment it completes.
            self.dul._idle_timer.restart()

    def _serve(self, msg: Any, context_id: int) -> None:
        context = self._accepted_cx.get(context_id)
        if (
            isinstance(msg, C_MOVE)
            and self.move_service is not None
            and context is not None
            and not self._sent_release
        ):
            # As pynetdicom's own dispatch does: drop stale C-CANCELs, serve, drop leftovers.
            self.dimse.cancel_req = {}
            self._is_paused = True
            try:
                self.move_service(self, msg, context)
            finally:
                self._is_paused = False
                self.dimse.cancel_req = {}
            return
        super()._serve_request(msg, context_id)


def request_handler_class(policy: AePolicy, move_service: MoveService) -> type[RequestHandler]:
    """A pynetdicom RequestHandler class that builds policy-checked arca associations."""

    class ArcaRequestHandler(RequestHandler):
        def _create_association(self) -> Association:
            assoc = super()._create_association()
            disable_nagle(self.request)
            # Swap the class and ACSE of the association pynetdicom just configured, before
            # its thread starts: every other attribute stays as pynetdicom set it.
            assoc.__class__ = ArcaAssociation
            assoc.acse = PolicyACSE(assoc, policy)
            assoc.move_service = move_service  # type: ignore[attr-defined]
            return assoc

    return ArcaRequestHandler
