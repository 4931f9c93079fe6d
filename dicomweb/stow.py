"""STOW-RS (PS3.18 §10.5): store instances sent as multipart/related; type=application/dicom.

The body is spooled to part files (streamed, size-limited); each part is prepared (parsed,
validated, fsync'd: ``ArchiveService.prepare``) as soon as it is complete, while the rest of
the body arrives; once the whole body has parsed they are committed in order, COMMIT_BATCH
per index transaction (``ArchiveService.commit``), so a malformed or oversized request stores
nothing. Memory stays bounded however many parts a request carries: past HELD_IN_MEMORY,
prepared analyses wait on disk until their slice commits. Each part still succeeds or fails
on its own;
the response lists what was stored (ReferencedSOPSequence) and what was not
(FailedSOPSequence).

Statuses (PS3.18 §10.5.3 Table 10.5.3-1): 200 all stored, 202 some failed or were stored with
warnings, 409 none stored, 400 malformed body, 413 too large, 415 unsupported media type; and
507 when the spool has no room for the body (503 when it fails otherwise).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from starlette.requests import Request
from starlette.responses import Response

from conformance.statuses import StowFailure
from conformance.validation import RequestedIdentity
from dicomweb.dicom_json import dataset_to_json, json_array_bytes
from dicomweb.dicom_xml import json_to_xml
from dicomweb.errors import HttpError, check_uid, stow_failure_for
from dicomweb.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MetadataChoice,
    NotAcceptable,
    negotiate_metadata,
    parse_accept,
    parse_media_type,
    parse_stow_content_type,
)
from dicomweb.multipart import BodyTooLarge, Part, spool_multipart
from dicomweb.urls import BaseUrl, instance_url, study_url, warning_header
from storage.archive import ArchiveService
from storage.ingest import Analysis
from storage.model import IngestOutcome

COMMIT_BATCH = 32
"""Instances of one request committed in one index transaction."""
HELD_IN_MEMORY = 2 * COMMIT_BATCH
"""Prepared instances of one request kept in memory while its body still arrives. The
analyses of later parts (each holds the instance's metadata, 10–20 KB for a CT slice) wait
on disk until their slice commits (:class:`_SpillFile`): a request of 100,000 instances
would otherwise hold gigabytes."""
PREPARE_CONCURRENCY = 3
"""Parts of one request prepared at the same time (parsing holds the GIL; hashing and fsync
do not)."""


@dataclass(frozen=True)
class _Spilled:
    """A prepared part whose Analysis waits pickled in the request's :class:`_SpillFile`."""

    offset: int
    length: int


class _SpillFile:
    """One request's analyses past HELD_IN_MEMORY, appended to one unnamed file (``O_TMPFILE``
    where the filesystem has it) in the spool folder and read back by offset: one file per
    request however many parts it has (a file per part put 100,000 more entries in the spool
    folder for a request of 100,000 instances). Nothing is left behind by a crash; closing
    frees it."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None
        self._opening = asyncio.Lock()
        self._end = 0
        self._writing: set[asyncio.Future[None]] = set()

    async def put(self, analysis: Analysis) -> Analysis | _Spilled:
        """The analysis, written out; or kept as it is when the spool has no room."""
        data = pickle.dumps(analysis, protocol=pickle.HIGHEST_PROTOCOL)
        offset, self._end = self._end, self._end + len(data)  # reserved on the loop: no lock
        try:
            async with self._opening:
                if self._file is None:
                    self._file = await asyncio.to_thread(_unnamed_file, self._directory)
                fd = self._file.fileno()
            loop = asyncio.get_running_loop()
            write = loop.run_in_executor(None, _pwrite_all, fd, data, offset)
            self._writing.add(write)
            write.add_done_callback(self._writing.discard)
            # Shielded: a cancelled request still waits for its writes before closing the file.
            await asyncio.shield(write)
        except OSError:
            return analysis  # no room on the spool: keep this one in memory
        return _Spilled(offset, len(data))

    def load(self, prepared: list[Analysis | _Failure | _Spilled]) -> list[Analysis | _Failure]:
        """``prepared`` with each spilled analysis read back (call in a thread: it reads)."""
        loaded: list[Analysis | _Failure] = []
        for p in prepared:
            if isinstance(p, _Spilled):
                assert self._file is not None
                data = os.pread(self._file.fileno(), p.length, p.offset)
                loaded.append(pickle.loads(data))  # our own file, written by put()
            else:
                loaded.append(p)
        return loaded

    async def close(self) -> None:
        try:
            await asyncio.gather(*self._writing, return_exceptions=True)
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None


def _unnamed_file(directory: Path) -> BinaryIO:
    return tempfile.TemporaryFile(dir=directory)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    with memoryview(data) as view:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


@dataclass(frozen=True)
class _Failure:
    reason: StowFailure
    message: str
    sop_class_uid: str | None
    sop_instance_uid: str | None


def _peek_uids(path: Path) -> tuple[str | None, str | None]:
    """SOPClassUID / SOPInstanceUID of a part, for FailedSOPSequence; None when unreadable."""
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "MediaStorageSOPClassUID"],
        )
        cls = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        inst = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
        return (str(cls) if cls else None, str(inst) if inst else None)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError):
        return None, None
    except Exception:  # pydicom raises assorted errors on garbage; a peek must never fail
        return None, None


class StowService:
    """The STOW-RS endpoints; one instance per application."""

    def __init__(
        self, archive: ArchiveService, base_url: BaseUrl, spool_dir: Path, max_bytes: int
    ) -> None:
        self.archive = archive
        self.base_url = base_url
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes

    async def store(self, request: Request) -> Response:
        study = request.path_params.get("study")
        if study is not None:
            check_uid(study, "StudyInstanceUID")
        # The response format never blocks a store: an Accept this resource cannot satisfy
        # gets DICOM JSON (RFC 9110 §12.5.1 lets a server disregard Accept).
        try:
            choice = negotiate_metadata(parse_accept(request.headers.get("accept")))
        except NotAcceptable:
            choice = MetadataChoice(DICOM_JSON)
        content_type = parse_stow_content_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                raise HttpError(400, f"Content-Length {declared!r} is not a number") from None
            if too_large:
                raise BodyTooLarge(self.max_bytes)
        limit = asyncio.Semaphore(PREPARE_CONCURRENCY)
        preparing: list[asyncio.Task[Analysis | _Failure | _Spilled]] = []
        spill = _SpillFile(self.spool_dir)

        async def prepare_one(part: Part, index: int) -> Analysis | _Failure | _Spilled:
            async with limit:
                prepared = await self._prepare_part(part, study)
                if index >= HELD_IN_MEMORY and isinstance(prepared, Analysis):
                    return await spill.put(prepared)
                return prepared

        def on_part(part: Part) -> None:
            preparing.append(asyncio.ensure_future(prepare_one(part, len(preparing))))

        try:
            spooled = await spool_multipart(
                request.stream(), content_type.boundary, self.spool_dir, self.max_bytes, on_part
            )
        except BaseException:
            # Nothing of a malformed or oversized body is stored (the parser removed its files).
            for task in preparing:
                task.cancel()
            await asyncio.gather(*preparing, return_exceptions=True)
            await spill.close()
            raise
        results: list[IngestOutcome | _Failure] = []
        try:
            # Committed a slice at a time, in the request's order, each as soon as its parts
            # are prepared: one index transaction per slice, while later parts still prepare.
            for start in range(0, len(preparing), COMMIT_BATCH):
                waited = await asyncio.gather(*preparing[start : start + COMMIT_BATCH])
                if any(isinstance(p, _Spilled) for p in waited):
                    prepared = await asyncio.to_thread(spill.load, waited)
                else:
                    prepared = [p for p in waited if not isinstance(p, _Spilled)]
                ready = [p for p in prepared if isinstance(p, Analysis)]
                committed = iter(await self.archive.commit(ready))
                for p in prepared:
                    if isinstance(p, _Failure):
                        results.append(p)
                        continue
                    done = next(committed)
                    if isinstance(done, IngestOutcome):
                        results.append(done)
                    else:
                        reason, message = stow_failure_for(done)
                        results.append(_Failure(reason, message, p.sop_class_uid, p.sop_uid))
        except BaseException:
            for task in preparing:
                task.cancel()
            await asyncio.gather(*preparing, return_exceptions=True)
            raise
        finally:
            spooled.discard()
            await spill.close()
        stored = [r for r in results if isinstance(r, IngestOutcome)]
        failed = [r for r in results if isinstance(r, _Failure)]
        base = self.base_url(request)
        ds = self._response_dataset(base, study, stored, failed)
        if not failed and not any(o.warnings for o in stored):
            status = 200
        elif stored:
            status = 202
        else:
            status = 409
        obj = dataset_to_json(ds)
        # FailureReason is a code; the why, for a person, goes into Warning headers
        # (PS3.18 §8.3.4 uses Warning: 299 for such notes).
        headers = {}
        if failed:
            headers["Warning"] = warning_header(
                request, [f"{f.sop_instance_uid or 'part'}: {f.message}" for f in failed]
            )
        if choice.media_type == DICOM_XML:
            return Response(
                json_to_xml(obj), status_code=status, media_type=DICOM_XML, headers=headers
            )
        # dicomweb-client compares the Content-Type verbatim: no charset parameter.
        body = json_array_bytes([obj])[1:-1]
        return Response(
            body, status_code=status, media_type="application/dicom+json", headers=headers
        )

    async def _prepare_part(self, part: Part, study: str | None) -> Analysis | _Failure:
        part_type = parse_media_type(part.content_type or DICOM)[0]
        if part_type != DICOM:
            note = f"part Content-Type {part_type} is not {DICOM}"
            uids = await asyncio.to_thread(_peek_uids, part.path)
            return _Failure(StowFailure.CANNOT_UNDERSTAND, note, *uids)
        try:
            return await self.archive.prepare(
                part.path, requested=RequestedIdentity(study_uid=study)
            )
        except Exception as exc:  # translated per instance into a FailureReason
            reason, message = stow_failure_for(exc)
            # The part's file is still there: it names the instance in FailedSOPSequence.
            uids = await asyncio.to_thread(_peek_uids, part.path)
            return _Failure(reason, message, *uids)

    @staticmethod
    def _response_dataset(
        base: str, study: str | None, stored: list[IngestOutcome], failed: list[_Failure]
    ) -> Dataset:
        ds = Dataset()
        studies = {o.study_uid for o in stored}
        if study is not None or len(studies) == 1:
            ds.RetrieveURL = study_url(base, study or next(iter(studies)))
        ds.FailedSOPSequence = Sequence()
        for f in failed:
            item = Dataset()
            if f.sop_class_uid:
                item.ReferencedSOPClassUID = f.sop_class_uid
            if f.sop_instance_uid:
                item.ReferencedSOPInstanceUID = f.sop_instance_uid
            item.FailureReason = int(f.reason)
            ds.FailedSOPSequence.append(item)
        ds.ReferencedSOPSequence = Sequence()
        for o in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = o.sop_class_uid
            item.ReferencedSOPInstanceUID = o.sop_instance_uid
            item.RetrieveURL = instance_url(base, o.study_uid, o.series_uid, o.sop_instance_uid)
            if o.warnings:
                item.WarningReason = int(o.warnings[0][0])
            ds.ReferencedSOPSequence.append(item)
        if not failed:
            del ds.FailedSOPSequence
        if not stored:
            del ds.ReferencedSOPSequence
        return ds
