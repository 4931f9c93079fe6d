"""The cold tier: blobs as objects in an S3-compatible store (AWS S3, MinIO, Ceph RGW).

Client library: ``obstore`` (Rust ``object_store`` behind an async Python API). Measured on
this 2-core machine against a moto server in its own process, 60 objects of 526 KB, 8 at a
time (``tests/storage_tiers/bench_s3_clients.py``):

============  ==============  ==============  =========================
client        PUT             GET             client CPU for 63 MB
============  ==============  ==============  =========================
obstore       70-110 MB/s     105-123 MB/s    0.27 s
aiobotocore   45-76 MB/s      63-110 MB/s     1.0-1.1 s
boto3+thread  66-88 MB/s      86-119 MB/s     0.8-0.9 s
============  ==============  ==============  =========================

The moto server caps all three at about the same wall-clock rate; what differs is the
client's CPU per byte (3-4x less with obstore), which is what a 2-core archive node
serving other requests has to spare. obstore is natively async (no thread pool, no event-loop
blocking), streams bodies without buffering, retries with backoff, and the same API covers
GCS and Azure Blob should the cold tier move there. aiobotocore pins botocore to a version
other than boto3's and pulls in aiohttp.

What moto alone serves, as ``python -m bench.run --only cold`` notes it (obstore GETs of 300
objects of 526 KB, 2026-11-22, load 2.5-4 on 2 cores): 550-670 objects/s (290-355 MB/s) with
one GET in flight, 460-730/s with 4, 8 or 16: about one core of moto's Python, whatever the
concurrency. That is the ceiling of any cold-tier figure measured against it.

Caveat measured here: obstore's Tokio worker threads may abort the interpreter at exit when
its client objects are still alive as Python finalizes (20% of short runs). :meth:`close`
drops the client while the event loop still runs, after which no run aborted (0 of 105);
whoever opens a store must close it (the Archive does, and the tests do).

Configuration: ``settings.storage.cold_store`` (``s3://BUCKET/PREFIX``), ``s3_endpoint_url``,
``s3_region``; credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` / ``AWS_DEFAULT_REGION`` through the library and are never logged here.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from config.settings import StorageSettings
from storage.errors import CorruptBlob, NotFound, StorageError, StoreUnavailable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# obstore raises its own classes and, on some paths, builtin OSErrors (FileNotFoundError for
# a missing object, ConnectionError / TimeoutError for the transport).
_ERRORS: tuple[type[Exception], ...] = (BaseError, OSError)
_PROBE_ERRORS: tuple[type[Exception], ...] = (StorageError, BaseError, OSError)
_MISSING: tuple[type[Exception], ...] = (NotFoundError, FileNotFoundError)
_PROBE_KEY = ".arca-probe"


@dataclass(frozen=True)
class ColdStoreLocation:
    """Where the cold tier lives: ``s3://BUCKET/PREFIX``."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> ColdStoreLocation:
        if not url.startswith("s3://"):
            raise ValueError(f"cold_store must look like s3://BUCKET/PREFIX, not {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"cold_store {url!r} names no bucket")
        return cls(bucket, prefix.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _fail(exc: BaseException, what: str, where: ColdStoreLocation) -> NoReturn:
    """Translate an obstore error into the storage error tree (once, here)."""
    if isinstance(exc, StorageError):
        raise exc
    if isinstance(exc, _MISSING):
        raise NotFound(f"{what}: no such object in {where}") from exc
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        raise StoreUnavailable(
            f"{what}: the cold store {where} rejected arca's credentials "
            "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from exc
    # Connection refused, timeouts, 5xx after retries, a missing bucket: all "not now".
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise StoreUnavailable(f"{what}: cold store {where} unavailable: {first_line}") from exc


class S3BlobReader:
    """An open cold-tier blob (implements storage.blobs.BlobReader).

    With ``expected_sha256`` the reader never hands out bytes it has not checked:
    ``read_all`` hashes before returning, ``iter_chunks`` holds the last chunk back until the
    whole object hashed right (so a client never receives a complete object with wrong bytes),
    and ``read_range`` first spools the whole object to a temporary file and checks it.
    """

    local_path: Path | None = None

    def __init__(
        self,
        store: S3BlobStore,
        key: str,
        size: int,
        expected_sha256: str | None,
    ) -> None:
        self.size = size
        self._store = store
        self._key = key
        self._expected = expected_sha256
        self._spool: Path | None = None

    async def read_range(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if self._expected is None:
            return await self._store.get_range(self._key, offset, length)
        if self._spool is None:
            self._spool = await self._store.download(self._key, None, self._expected)
        return await asyncio.to_thread(_pread_file, self._spool, offset, length)

    async def iter_chunks(self, chunk_size: int = _CHUNK) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        held: bytes | None = None
        async for chunk in self._store.stream(self._key, chunk_size):
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if self._expected is not None and digest.hexdigest() != self._expected:
            raise CorruptBlob(f"cold blob {self._key} fails its SHA-256")
        if held is not None:
            yield held

    async def read_all(self) -> bytes:
        data = await self._store.get(self._key)
        if self._expected is not None and hashlib.sha256(data).hexdigest() != self._expected:
            raise CorruptBlob(f"cold blob {self._key} fails its SHA-256")
        return data

    async def close(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            await asyncio.to_thread(spool.unlink, True)


def _pread_file(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


class S3BlobStore:
    """Blob store on an S3-compatible bucket (implements storage.blobs.BlobStore).

    Keys are the same as on the hot tier; the store's prefix (``s3://BUCKET/PREFIX``) is
    prepended by the client. Every method raises StoreUnavailable when the store cannot be
    reached or refuses the credentials, NotFound for missing objects.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        spool_dir: Path | None = None,
        request_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 10.0,
        max_retries: int = 3,
    ) -> None:
        self.location = ColdStoreLocation.parse(url)
        self.spool_dir = spool_dir
        config: dict[str, Any] = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url.rstrip("/")
        region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            config["region"] = region
        client_options: dict[str, Any] = {
            "allow_http": bool(endpoint_url and endpoint_url.startswith("http://")),
            "timeout": timedelta(seconds=request_timeout),
            "connect_timeout": timedelta(seconds=connect_timeout),
        }
        # obstore retries 10 times over 3 minutes by default: far too long for a request a
        # viewer is waiting on. Fail fast; the caller answers 503 and retries later.
        retry: dict[str, Any] = {
            "max_retries": max_retries,
            "retry_timeout": timedelta(seconds=retry_timeout),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        self._store: S3Store | None = S3Store(
            self.location.bucket,
            prefix=self.location.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=client_options,  # type: ignore[arg-type]
            retry_config=retry,  # type: ignore[arg-type]
        )

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, spool_dir: Path | None = None
    ) -> S3BlobStore:
        if not settings.cold_store:
            raise ValueError("no cold_store configured")
        return cls(
            settings.cold_store,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            spool_dir=spool_dir,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location})"

    @property
    def _s(self) -> S3Store:
        if self._store is None:
            raise StoreUnavailable(f"cold store {self.location} is closed")
        return self._store

    async def close(self) -> None:
        """Drop the client while the event loop runs (see the module docstring)."""
        self._store = None
        gc.collect()

    async def check(self) -> None:
        """Start-up probe: the bucket exists, is reachable, and takes our credentials.

        Writes, reads back and deletes a small probe object, so a read-only or wrong bucket
        fails here with a clear message instead of at the first migration.
        """
        key = f"{_PROBE_KEY}-{uuid.uuid4().hex}"
        payload = b"arca cold tier probe"
        try:
            await obstore.put_async(self._s, key, payload)
            got = await self.get(key)
            await obstore.delete_async(self._s, key)
        except _PROBE_ERRORS as exc:
            try:
                _fail(exc, "probe object", self.location)
            except StorageError as translated:
                raise StoreUnavailable(
                    f"cold store {self.location} failed its start-up check: {translated}"
                ) from exc
        if got != payload:
            raise StoreUnavailable(f"cold store {self.location} returned other bytes on probe")

    # -- BlobStore ---------------------------------------------------------------------------

    async def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` (left in place: the cold tier copies, the caller decides)."""
        try:
            await obstore.put_async(self._s, key, source, chunk_size=8 * 1024 * 1024)
        except _ERRORS as exc:
            # A failed multipart upload is aborted by the client; a failed single PUT leaves
            # nothing (S3 PUTs are atomic).
            _fail(exc, f"uploading {key}", self.location)

    async def put_bytes(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._s, key, data)
        except _ERRORS as exc:
            _fail(exc, f"uploading {key}", self.location)

    async def open(self, key: str, expected_sha256: str | None = None) -> S3BlobReader:
        try:
            meta = await obstore.head_async(self._s, key)
        except _ERRORS as exc:
            _fail(exc, f"opening {key}", self.location)
        return S3BlobReader(self, key, int(meta["size"]), expected_sha256)

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._s, key)
        except _MISSING:
            return
        except _ERRORS as exc:
            _fail(exc, f"deleting {key}", self.location)

    async def delete_many(self, keys: list[str]) -> None:
        """Delete objects in bulk (S3 DeleteObjects: up to 1,000 keys per request, where
        ``delete`` costs one request per key). Missing objects are not an error."""
        if not keys:
            return
        try:
            await obstore.delete_async(self._s, keys)
        except _MISSING:
            return
        except _ERRORS as exc:
            _fail(exc, f"deleting {len(keys)} objects", self.location)

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._s, key)
        except _MISSING:
            return False
        except _ERRORS as exc:
            _fail(exc, f"looking for {key}", self.location)
        return True

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        for key, _size, _mtime in await self.list_objects(prefix):
            yield key

    # -- beyond the BlobStore protocol -----------------------------------------------------

    async def list_objects(self, prefix: str = "") -> list[tuple[str, int, float]]:
        """(key, size, last-modified POSIX time) of every object under ``prefix``."""
        out: list[tuple[str, int, float]] = []
        async for page in self.iter_object_pages(prefix):
            out += page
        return sorted(out)

    async def iter_object_pages(
        self, prefix: str = "", page_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, int, float]]]:
        """:meth:`list_objects` a page (one S3 ListObjectsV2 response) at a time, in
        constant memory however large the bucket."""
        try:
            stream = obstore.list(self._s, prefix or None, chunk_size=page_size)
            async for batch in stream:
                yield [
                    (str(m["path"]), int(m["size"]), m["last_modified"].timestamp())
                    for m in batch
                    if not str(m["path"]).startswith(_PROBE_KEY)
                ]
        except _ERRORS as exc:
            _fail(exc, f"listing {prefix!r}", self.location)

    async def get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._s, key)
            return bytes(await result.bytes_async())
        except _ERRORS as exc:
            _fail(exc, f"reading {key}", self.location)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            return bytes(await obstore.get_range_async(self._s, key, start=offset, length=length))
        except _ERRORS as exc:
            _fail(exc, f"reading {key}", self.location)

    async def stream(self, key: str, chunk_size: int = _CHUNK) -> AsyncIterator[bytes]:
        try:
            result = await obstore.get_async(self._s, key)
            async for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)
        except _ERRORS as exc:
            _fail(exc, f"reading {key}", self.location)

    async def sha256(self, key: str) -> str:
        """SHA-256 of the stored object, read back in full (the verification of a copy)."""
        digest = hashlib.sha256()
        async for chunk in self.stream(key):
            digest.update(chunk)
        return digest.hexdigest()

    async def download(self, key: str, target: Path | None, expected_sha256: str | None) -> Path:
        """Stream the object into ``target`` (a fresh temp file when None), fsync'd, and
        check its SHA-256; raises CorruptBlob (and removes the file) on a mismatch."""
        if target is None:
            if self.spool_dir is not None:
                await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="arca-cold-", suffix=".part", dir=self.spool_dir)
            os.close(fd)
            target = Path(name)
        digest = hashlib.sha256()
        try:
            fh = await asyncio.to_thread(open, target, "wb")
            try:
                async for chunk in self.stream(key):
                    digest.update(chunk)
                    await asyncio.to_thread(fh.write, chunk)
                await asyncio.to_thread(fh.flush)
                await asyncio.to_thread(os.fsync, fh.fileno())
            finally:
                await asyncio.to_thread(fh.close)
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise CorruptBlob(f"cold blob {key} fails its SHA-256")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
