"""A real uvicorn server on a free loopback port serving ``build_routes`` over a real archive.

One server per test session, two DICOMweb roots on the same archive: ``/dicom-web`` with the
real transcoder (one worker process) and ``/no-codec`` without one, for the 406 paths. The
server runs in its own thread and event loop (the archive is opened inside that loop), and the
tests drive it over HTTP only: dicomweb-client, httpx. It runs uvicorn with arca's own
protocol (server.zero_copy, as ``arca serve`` does); ``plain_url`` serves the same app through
uvicorn's stock protocol, without zero-copy send, to compare the two.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.applications import Starlette

from config.settings import HttpSettings, Settings, StorageSettings, TranscodingSettings
from dicomweb.routes import build_routes
from server.zero_copy import ZeroCopyHttpToolsProtocol
from tests.data import testdata

MAX_STOW_BYTES = 24 * 1024 * 1024


@dataclass
class DicomwebServer:
    url: str
    """Base of the DICOMweb root with a transcoder, e.g. http://127.0.0.1:PORT/dicom-web."""
    no_codec_url: str
    """The same archive without a transcoder."""
    spool: Path
    """Where the server spools request bodies."""
    plain_url: str
    """``url`` served by uvicorn's own httptools protocol (no zero-copy send)."""

    def client(self, root: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(root or self.url)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)


class _ServerThread(threading.Thread):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(daemon=True, name="dicomweb-test-server")
        self.data_dir = data_dir
        self.sock, self.port = _listener()
        self.plain_sock, self.plain_port = _listener()
        self.servers: list[uvicorn.Server] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the fixture
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from storage.archive import open_archive
        from transcoding.pool import Transcoder

        settings = Settings(
            http=HttpSettings(max_stow_bytes=MAX_STOW_BYTES),
            storage=StorageSettings(data_dir=self.data_dir / "data"),
            transcoding=TranscodingSettings(workers=1),
        )
        spool = self.data_dir / "spool"
        archive = await open_archive(settings.storage)
        transcoder = Transcoder(settings.transcoding, self.data_dir / "cache")
        no_codec = replace(settings, http=replace(settings.http, dicomweb_root="/no-codec"))
        routes = build_routes(archive, transcoder, settings, spool)
        routes += build_routes(archive, None, no_codec, spool)
        app = Starlette(routes=routes)
        serving = []
        for sock, http in ((self.sock, ZeroCopyHttpToolsProtocol), (self.plain_sock, "httptools")):
            config = uvicorn.Config(
                app, log_level="warning", lifespan="off", access_log=False, http=http
            )
            server = uvicorn.Server(config)
            self.servers.append(server)
            serving.append(asyncio.ensure_future(server.serve(sockets=[sock])))
        while not all(s.started for s in self.servers) and not any(f.done() for f in serving):
            await asyncio.sleep(0.01)
        self.ready.set()
        try:
            await asyncio.gather(*serving)
        finally:
            await transcoder.aclose()
            close = getattr(archive, "close", None) or getattr(archive, "aclose", None)
            if close is not None:
                await close()


@pytest.fixture(scope="session")
def dicomweb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomwebServer]:
    thread = _ServerThread(tmp_path_factory.mktemp("dicomweb"))
    thread.start()
    assert thread.ready.wait(60), "DICOMweb test server did not start"
    if thread.error is not None:
        raise thread.error
    base = f"http://127.0.0.1:{thread.port}"
    yield DicomwebServer(
        url=base + "/dicom-web",
        no_codec_url=base + "/no-codec",
        spool=thread.data_dir / "spool",
        plain_url=f"http://127.0.0.1:{thread.plain_port}/dicom-web",
    )
    for server in thread.servers:
        server.should_exit = True
    thread.join(30)


def _listener() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


@pytest.fixture
def dw(dicomweb_server: DicomwebServer) -> DicomwebServer:
    return dicomweb_server


# -- data ------------------------------------------------------------------------------------


@dataclass
class Instance:
    """A test object with fresh UIDs, as Part-10 bytes and as a data set."""

    data: bytes
    ds: Dataset

    @property
    def study(self) -> str:
        return str(self.ds.StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.ds.SeriesInstanceUID)

    @property
    def sop(self) -> str:
        return str(self.ds.SOPInstanceUID)


def make_instance(
    name: str,
    *,
    patient_id: str,
    study: str | None = None,
    series: str | None = None,
    patient_name: str = "Doe^Jane",
    study_date: str = "20240115",
) -> Instance:
    """pydicom test file ``name`` with fresh UIDs (and the given patient / study)."""
    ds = pydicom.dcmread(testdata(name))
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = study_date
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return Instance(data, pydicom.dcmread(io.BytesIO(data)))


def unique_patient() -> str:
    return "DW-" + generate_uid(prefix=None)[-16:]


def make_series(name: str, count: int) -> list[Instance]:
    """``count`` instances of pydicom test file ``name`` in one new series of a new patient."""
    first = make_instance(name, patient_id=unique_patient())
    pid = str(first.ds.PatientID)
    rest = [
        make_instance(name, patient_id=pid, study=first.study, series=first.series)
        for _ in range(count - 1)
    ]
    return [first, *rest]


def open_fds() -> int:
    """Descriptors open in this process (the test servers run in it)."""
    return len(os.listdir("/proc/self/fd"))


def multipart_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """A minimal, independent multipart/related reader for checking responses."""
    boundary = ""
    for piece in content_type.split(";"):
        name, _, value = piece.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    assert boundary, f"no boundary in {content_type!r}"
    delimiter = b"\r\n--" + boundary.encode()
    text = b"\r\n" + body if not body.startswith(b"\r\n") else body
    pieces = text.split(delimiter)
    assert pieces[-1].startswith(b"--"), "no closing delimiter"
    parts = []
    for piece in pieces[1:-1]:
        head, _, content = piece.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                k, _, v = line.partition(b":")
                headers[k.decode().strip().lower()] = v.decode().strip()
        parts.append((headers, content))
    return parts
