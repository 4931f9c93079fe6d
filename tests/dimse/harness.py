"""An arca node for the DIMSE tests: the real Archive, Transcoder, DimseServer and the
DICOMweb + worklist HTTP routes under uvicorn, on free loopback ports, in this process.

It composes the same components ``arca serve`` does, but lets a test choose what the CLI
cannot cheaply (short network timeouts, per-AE permissions). Tests drive it only through real
peers: DCMTK and pynetdicom over TCP, httpx over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from config.settings import (
    DimseSettings,
    HttpSettings,
    RemoteAE,
    Settings,
    StorageSettings,
    TranscodingSettings,
)
from dicomweb.routes import build_routes
from dicomweb.worklist import build_worklist_routes
from dimse.server import DimseServer
from storage.archive import open_archive
from storage.index.engine import create_engine
from storage.worklist import WorklistStore
from tests.conftest import free_port
from transcoding.pool import Transcoder


@dataclass
class Node:
    """A running arca node; ``stop()`` tears it down."""

    data_dir: Path
    remote_aes: tuple[RemoteAE, ...] = ()
    accept_unknown: str = "loopback"
    network_timeout: float = 5.0
    ae_title: str = "ARCA"
    max_associations: int = 32
    settings: Settings = field(init=False)
    dimse_port: int = 0
    http_port: int = 0
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)
    _closers: list[Any] = field(default_factory=list)
    dimse: DimseServer | None = None
    _uvicorn: uvicorn.Server | None = None

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> Node:
        self.http_port = free_port()
        self.settings = Settings(
            http=HttpSettings(host="127.0.0.1", port=self.http_port),
            dimse=DimseSettings(
                host="127.0.0.1",
                port=0,
                ae_title=self.ae_title,
                remote_aes=self.remote_aes,
                accept_unknown_calling_aes=self.accept_unknown,
                network_timeout=self.network_timeout,
                max_associations=self.max_associations,
            ),
            storage=StorageSettings(data_dir=self.data_dir),
            transcoding=TranscodingSettings(workers=1),
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        return self

    async def _start(self) -> None:
        settings = self.settings
        archive = await open_archive(settings.storage)
        self._closers.append(archive.close)
        transcoder = Transcoder(settings.transcoding, cache_dir=self.data_dir / "cache")
        self._closers.append(transcoder.aclose)
        engine = create_engine(settings.storage.resolved_index_url, immediate=True)
        self._closers.append(engine.dispose)
        store = WorklistStore(engine)
        spool = self.data_dir / "spool" / "http"
        spool.mkdir(parents=True, exist_ok=True)
        routes = build_routes(archive, transcoder, settings, spool)
        routes += build_worklist_routes(store, settings)
        app = Starlette(routes=routes)
        self.dimse = DimseServer(
            archive, transcoder, settings, asyncio.get_running_loop(), worklist=store
        )
        self.dimse.start()
        self.dimse_port = self.dimse.address[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.http_port, log_level="warning", lifespan="off"
        )
        self._uvicorn = uvicorn.Server(config)
        self._serve_task = asyncio.get_running_loop().create_task(self._uvicorn.serve())
        for _ in range(500):
            if self._uvicorn.started:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("uvicorn did not start")

    async def _stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serve_task, 10)
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()

    def stop(self) -> None:
        if self.dimse is not None:
            self.dimse.stop()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
