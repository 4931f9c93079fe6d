"""Storage SOP Class SCP: C-STORE into the archive (PS3.4 Annex B).

Every storage SOP class pynetdicom knows is accepted in every transfer syntax a modality may
propose (pynetdicom's ``ALL_TRANSFER_SYNTAXES``: native, deflate, big endian, the JPEG
family, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG-2/MPEG-4/HEVC). The data set is never decoded
and re-encoded: its bytes as received, behind the File Meta Information pynetdicom builds
from the presentation context, are written to a spool file which ``Archive.ingest`` consumes
through the loop bridge.

Statuses (PS3.4 B.2.3, PS3.7 C.4), all decided by :mod:`dimse.status`:

- 0x0000 success; 0xB000/0xB006/0xB007 stored with coercion/discarded elements/mismatch
- 0x0111 duplicate SOP instance (overwrite policy ``reject``, other bytes)
- 0x0122 SOP class not supported; 0x0124 calling AE may not store
- 0xA700 out of resources (disk, database, bridge timeout)
- 0xA900 data set does not match SOP class (the command's Affected SOP Class UID differs
  from the data set's SOP Class UID)
- 0xC000 cannot understand (does not parse, UIDs missing); 0x0110 processing failure
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from conformance.validation import RequestedIdentity
from dimse.ae_policy import AePolicy, Operation
from dimse.bridge import LoopBridge
from dimse.status import (
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    Service,
    failure_dataset,
    status_dataset,
)
from storage.archive import ArchiveService
from storage.errors import OutOfResources

log = logging.getLogger("arca.dimse")


class StorageSCP:
    """The EVT_C_STORE handler: one instance per DIMSE listener, shared by its threads."""

    def __init__(
        self,
        archive: ArchiveService,
        bridge: LoopBridge,
        policy: AePolicy,
        spool_dir: Path,
        ingest_timeout: float,
    ) -> None:
        self._archive = archive
        self._bridge = bridge
        self._policy = policy
        self._spool_dir = spool_dir
        self._timeout = ingest_timeout

    def handle_store(self, event: Event) -> Dataset:
        calling = event.assoc.requestor.ae_title
        if not self._policy.may(calling, Operation.STORE):
            return status_dataset(REFUSED_NOT_AUTHORIZED, f"{calling} may not store")
        spool: Path | None = None
        try:
            spool = self._write_spool(event)
            # PS3.4 B.2.3: the data set must be of the SOP class the command names; the
            # ingest checks it while it parses the data set (0xA900 otherwise).
            affected = str(event.request.AffectedSOPClassUID)
            ingest = self._archive.ingest(
                spool, requested=RequestedIdentity(sop_class_uid=affected)
            )
            outcome = self._bridge.run(ingest, self._timeout)
        except Exception as exc:
            return failure_dataset(exc, Service.STORE)
        finally:
            # ingest consumes the file on success and on rejection; this catches what is
            # left after a timeout or a failure before ingest took it.
            if spool is not None:
                with contextlib.suppress(OSError):
                    spool.unlink(missing_ok=True)
        if outcome.warnings:
            warning, note = outcome.warnings[0]
            return status_dataset(int(warning), note)
        return status_dataset(SUCCESS)

    def _write_spool(self, event: Event) -> Path:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="cstore-", suffix=".dcm", dir=self._spool_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                # Preamble + File Meta Information (from the presentation context) + the data
                # set's bytes exactly as the peer encoded them.
                f.write(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfResources(f"spool full: {exc}") from exc
            raise
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
