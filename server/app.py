"""The Starlette application: wires the archive, the transcoder and the DIMSE AE to the routes.

``create_app(settings)`` builds the app; its lifespan opens the archive, starts the transcoder
pool and the DIMSE listener, mounts the DICOMweb (and worklist, and viewer) routes, and closes
everything again in reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from config.settings import Settings
from dicomweb.pretranscode import PreTranscoder
from dicomweb.routes import build_routes
from dicomweb.worklist import build_worklist_routes
from dimse.server import DimseServer
from server.middleware import AccessLog, BriefStartupFailure, LastResortErrors
from server.spool import purge_stale, spool_dir
from server.viewer import VIEWER_PATH, viewer_routes
from storage.archive import Archive, open_archive
from storage.errors import StorageError
from storage.index.engine import create_engine
from storage.worklist import WorklistStore
from transcoding.pool import Transcoder

log = logging.getLogger("arca.server")

VERSION = importlib.metadata.version("arca")

# What a browser viewer (OHIF, ...) sends and must be allowed to read (Fetch standard, CORS).
CORS_ALLOW_HEADERS = ["Accept", "Content-Type", "Range", "Authorization", "If-None-Match"]
CORS_EXPOSE_HEADERS = ["Content-Type", "Content-Length", "Warning", "Content-Range", "ETag"]
CORS_ALLOW_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]


def describe_index(settings: Settings) -> str:
    """The index in a few words for logs and /health, without credentials."""
    url = settings.storage.resolved_index_url
    if url.startswith("postgresql"):
        # Neither the user info (password) nor the query (may carry one too) is shown.
        host_db = url.split("?", 1)[0].split("@", 1)[-1].split("://", 1)[-1]
        return f"PostgreSQL index at {host_db}"
    return "SQLite index"


def startup_line(settings: Settings, *, dimse_running: bool) -> str:
    """The one log line that says where arca listens and where its data lives."""
    http = settings.http
    parts = [f"arca serving DICOMweb at http://{http.host}:{http.port}{http.dicomweb_root}"]
    if dimse_running:
        parts.append(f"DIMSE AE {settings.dimse.ae_title} on port {settings.dimse.port}")
    else:
        parts.append("DIMSE off")
    if http.viewer:
        parts.append(f"OHIF viewer at http://{http.host}:{http.port}{VIEWER_PATH}/")
    storage = settings.storage
    parts.append(f"data in {storage.data_dir} ({describe_index(settings)})")
    if storage.cold_store:
        parts.append(f"cold tier {storage.cold_store}")
    return ", ".join(parts)


class StartupError(Exception):
    """A component could not start (a listener's port is taken, ...)."""


@dataclass
class Runtime:
    """What the lifespan started; read by the status endpoint."""

    archive: Archive | None = None
    transcoder: Transcoder | None = None
    pretranscoder: PreTranscoder | None = None
    dimse_running: bool = False
    started: bool = False
    startup_error: str | None = None


def create_app(settings: Settings) -> Starlette:
    """The arca HTTP application for ``settings``; nothing is opened until its lifespan runs."""
    runtime = Runtime()

    async def status(request: Request) -> JSONResponse:
        body: dict[str, Any] = {
            "status": "ok" if runtime.started else "starting",
            "service": "arca",
            "version": VERSION,
            "dicomweb": settings.http.dicomweb_root,
            "dimse": (
                {"ae_title": settings.dimse.ae_title, "port": settings.dimse.port}
                if runtime.dimse_running
                else None
            ),
            "index": describe_index(settings),
            "cold_tier": settings.storage.cold_store is not None,
            "viewer": VIEWER_PATH + "/" if settings.http.viewer else None,
            # Codec pool counters (jobs run, cache hits, timeouts, pool rebuilds).
            "transcoding": dataclasses.asdict(runtime.transcoder.stats)
            if runtime.transcoder
            else None,
            # Ingest worker processes (ready, objects prepared in the server process, rebuilds).
            "ingest_workers": runtime.archive.ingest_workers.stats()
            if runtime.archive and runtime.archive.ingest_workers
            else None,
            # Background pre-transcoding of studies (queued, done, jobs in the pool, peak).
            "pretranscode": dataclasses.asdict(runtime.pretranscoder.stats)
            if runtime.pretranscoder
            else None,
        }
        return JSONResponse(body, status_code=200 if runtime.started else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                routes = await _start_components(settings, stack, runtime)
            except (StorageError, StartupError) as exc:
                runtime.startup_error = str(exc)
                log.error("arca cannot start: %s", exc)
                raise
            app.router.routes.extend(routes)
            runtime.started = True
            log.info("%s", startup_line(settings, dimse_running=runtime.dimse_running))
            yield
            runtime.started = False
            log.info("arca shutting down")

    routes: list[BaseRoute] = [
        Route("/", status, methods=["GET"]),
        Route("/health", status, methods=["GET"]),
    ]
    middleware = [
        Middleware(BriefStartupFailure, reason=lambda: runtime.startup_error),
        *_middleware(settings),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _start_components(
    settings: Settings, stack: contextlib.AsyncExitStack, runtime: Runtime
) -> list[BaseRoute]:
    """Open the archive, start the transcoder and DIMSE; return the routes to mount.

    Everything started is registered on ``stack``, so it closes in reverse order on shutdown
    (or when a later step fails): DIMSE first (no new work), then the transcoder, then the
    archive (tier policy, index connections)."""
    archive = await open_archive(
        settings.storage, bulkdata_threshold=settings.http.bulkdata_threshold
    )
    stack.push_async_callback(archive.close)
    runtime.archive = archive
    # Placement policy between hot and cold tiers; a no-op without a cold tier.
    archive.start_tiering()
    if archive.ingest_workers is not None:
        # A server's first objects should not wait for worker processes (in the background).
        archive.ingest_workers.start()

    transcoder = Transcoder(settings.transcoding, cache_dir=settings.storage.data_dir / "cache")
    stack.push_async_callback(transcoder.aclose)
    runtime.transcoder = transcoder

    # The worklist lives in the index database; its store gets an engine of its own.
    worklist_engine = create_engine(settings.storage.resolved_index_url, immediate=True)
    stack.push_async_callback(worklist_engine.dispose)
    worklist = WorklistStore(worklist_engine)

    spool = spool_dir(settings)
    spool.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(purge_stale, spool)
    pretranscoder = None
    if settings.storage.prefetch_pretranscode:
        pretranscoder = PreTranscoder(
            archive,
            transcoder,
            max_instances=settings.storage.prefetch_pretranscode_max_instances,
            max_bytes=settings.storage.prefetch_pretranscode_max_bytes,
            pool_workers=transcoder.workers,
        )
        # Closed before the transcoder (the stack unwinds in reverse): the queue is dropped,
        # then the pool finishes the one job it may be running.
        stack.push_async_callback(pretranscoder.close)
        runtime.pretranscoder = pretranscoder
    routes = build_routes(archive, transcoder, settings, spool, pretranscoder)
    routes += build_worklist_routes(worklist, settings)
    # Viewer hook: OHIF's static build and its app-config.js, owned by server/viewer.py.
    if settings.http.viewer:
        routes += viewer_routes(settings)

    if settings.dimse.enabled:
        dimse = DimseServer(
            archive, transcoder, settings, asyncio.get_running_loop(), worklist=worklist
        )
        try:
            dimse.start()
        except OSError as exc:
            dimse_at = f"{settings.dimse.host}:{settings.dimse.port}"
            raise StartupError(f"DIMSE cannot listen on {dimse_at}: {exc}") from exc
        stack.callback(dimse.stop)
        runtime.dimse_running = True
    return routes


def _middleware(settings: Settings) -> list[Middleware]:
    # First listed is outermost: the access log sees the final status (CORS preflights too);
    # CORS headers are added to error answers as well.
    middleware = [Middleware(AccessLog)]
    origins = list(settings.http.cors_origins)
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=["*"] if "*" in origins else origins,
                allow_methods=CORS_ALLOW_METHODS,
                allow_headers=CORS_ALLOW_HEADERS,
                expose_headers=CORS_EXPOSE_HEADERS,
                max_age=600,
            )
        )
    middleware.append(Middleware(LastResortErrors))
    return middleware
