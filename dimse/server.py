"""arca's DICOM Application Entity: the DIMSE listener on the same archive as DICOMweb.

:class:`DimseServer` builds one pynetdicom AE that accepts (PS3.7, PS3.8):

- Verification (C-ECHO) — :mod:`dimse.verification`
- every storage SOP class pynetdicom knows, in every transfer syntax it knows (C-STORE; as
  SCU for C-GET sub-operations through SCP/SCU role selection) — :mod:`dimse.storage_scp`
- Patient Root and Study Root Q/R FIND / MOVE / GET — :mod:`dimse.find`, :mod:`dimse.move`,
  :mod:`dimse.get`
- Modality Worklist FIND — :mod:`dimse.worklist`

Each association runs in its own pynetdicom thread; they reach the archive only through
:class:`dimse.bridge.LoopBridge`. ``start()`` binds ``settings.dimse.host:port`` without
blocking; ``stop()`` closes the listener and aborts open associations without waiting on
them (their threads may be parked on the bridge, i.e. on the loop that calls ``stop``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from config.settings import Settings
from dimse import uids
from dimse.acceptor import request_handler_class
from dimse.ae_policy import AePolicy
from dimse.bridge import LoopBridge
from dimse.find import FindSCP
from dimse.get import GetSCP
from dimse.move import MoveSCP
from dimse.storage_scp import StorageSCP
from dimse.verification import handle_echo
from dimse.worklist import WorklistSCP
from storage.archive import ArchiveService
from storage.worklist import WorklistStore
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dimse")

INGEST_TIMEOUT_FACTOR = 4
"""A C-STORE may wait this many network timeouts for the archive (fsync, index commit)."""


class DimseServer:
    """The DIMSE listener. ``server`` constructs it and calls ``start()`` / ``stop()``."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService | None,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        *,
        worklist: WorklistStore | None = None,
    ) -> None:
        self._settings = settings
        dimse = settings.dimse
        self._bridge = LoopBridge(loop, default_timeout=dimse.network_timeout)
        self._policy = AePolicy(dimse)
        if worklist is None and hasattr(archive, "engine"):
            # The worklist lives in the index database: same engine as the Archive.
            worklist = WorklistStore(archive.engine)
        self._store_scp = StorageSCP(
            archive,
            self._bridge,
            self._policy,
            settings.storage.data_dir / "spool" / "dimse",
            dimse.network_timeout * INGEST_TIMEOUT_FACTOR,
        )
        self._find_scp = FindSCP(archive, self._bridge, self._policy, dimse.ae_title)
        self._worklist_scp = WorklistSCP(worklist, self._bridge, self._policy)
        self._move_scp = MoveSCP(archive, transcoder, self._bridge, self._policy, dimse)
        self._get_scp = GetSCP(archive, transcoder, self._bridge, self._policy)
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the real port when settings asked for port 0."""
        if self._server is None:
            raise RuntimeError("DIMSE server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def active_associations(self) -> int:
        """Associations currently open with peers (for health checks and tests)."""
        return 0 if self._server is None else len(self._server.active_associations)

    def start(self) -> None:
        dimse = self._settings.dimse
        ae = AE(ae_title=dimse.ae_title)
        ae.maximum_associations = dimse.max_associations
        ae.network_timeout = dimse.network_timeout
        ae.acse_timeout = dimse.network_timeout
        ae.dimse_timeout = dimse.network_timeout
        # arca's own policy decides calling/called AE titles (dimse.acceptor).
        ae.require_called_aet = False
        ae.require_calling_aet = []
        # make_server + our own thread is start_server(block=False) with one difference:
        # start_server cannot pass the request handler that applies arca's AE policy.
        server = ae.make_server(
            (dimse.host, dimse.port),
            contexts=supported_contexts(),
            evt_handlers=[
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_C_STORE, self._store_scp.handle_store),
                (evt.EVT_C_FIND, self._handle_find),
                (evt.EVT_C_GET, self._get_scp.handle_get),
            ],
            server_class=ThreadedAssociationServer,
            request_handler=request_handler_class(self._policy, self._move_scp.serve),
        )
        # Association threads must not hold up shutdown: they may be parked on the bridge.
        server.daemon_threads = True
        server.block_on_close = False
        ae._servers.append(server)
        thread = threading.Thread(
            target=server.serve_forever, name=f"arca-dimse-{dimse.port}", daemon=True
        )
        thread.start()
        self._ae, self._server, self._thread = ae, server, thread
        log.info("DIMSE AE %s listening on %s:%d", dimse.ae_title, *self.address)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        associations = list(server.active_associations)
        server.shutdown()  # stops accepting; returns within one poll interval
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Abort from a helper thread: Association.abort waits for the association's own
        # thread, which may be waiting for the event loop this method runs on.
        threading.Thread(
            target=_abort_all, args=(associations,), name="arca-dimse-abort", daemon=True
        ).start()
        log.info("DIMSE AE stopped")

    def _handle_find(self, event: Event) -> Iterator[Any]:
        if str(event.request.AffectedSOPClassUID) == uids.MODALITY_WORKLIST_FIND:
            return self._worklist_scp.handle_find(event)
        return self._find_scp.handle_find(event)


def _abort_all(associations: list[Any]) -> None:
    for assoc in associations:
        try:
            if assoc.is_alive():
                assoc.abort()
        except Exception:
            log.debug("abort of %s failed", assoc.name, exc_info=True)


def supported_contexts() -> list[PresentationContext]:
    """Every context arca accepts as acceptor (pynetdicom's SOP class tables)."""
    contexts: list[PresentationContext] = []
    for uid in (uids.VERIFICATION,):
        contexts.append(_context(uid, ALL_TRANSFER_SYNTAXES[:4]))
    for storage in AllStoragePresentationContexts:
        # scu_role/scp_role True: accept a C-GET requestor's SCP/SCU Role Selection
        # (PS3.7 D.3.3.4) so C-STORE sub-operations can flow back to it.
        cx = _context(str(storage.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        cx.scu_role = True
        cx.scp_role = True
        contexts.append(cx)
    for uid in (
        uids.PATIENT_ROOT_FIND,
        uids.PATIENT_ROOT_MOVE,
        uids.PATIENT_ROOT_GET,
        uids.STUDY_ROOT_FIND,
        uids.STUDY_ROOT_MOVE,
        uids.STUDY_ROOT_GET,
        uids.MODALITY_WORKLIST_FIND,
    ):
        contexts.append(_context(uid, ALL_TRANSFER_SYNTAXES[:4]))
    return contexts


class _AcceptorContext(PresentationContext):
    """A supported context that copies cheaply.

    pynetdicom deep-copies the server's supported contexts for every association it accepts;
    with every storage class in every transfer syntax (~7,600 UIDs) that costs ~0.5 s of CPU
    per association. The UIDs are immutable strings, so a copy needs only new lists.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _AcceptorContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def _context(abstract_syntax: str, transfer_syntaxes: list[str]) -> PresentationContext:
    cx = _AcceptorContext()
    cx.abstract_syntax = abstract_syntax
    cx.transfer_syntax = list(transfer_syntaxes)
    return cx
