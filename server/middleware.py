"""ASGI middleware of the composition root: a quiet access log and a last-resort error guard.

- :class:`AccessLog` writes one line per request (method, path, status, bytes, time). Successful
  reads are logged at DEBUG, because a viewer opening one study makes hundreds of frame
  requests; writes, errors and slow requests at INFO, so the default log shows what matters.
- :class:`LastResortErrors` catches what no layer translated: it logs the traceback once and,
  if the response has not started, answers ``500`` with a JSON body that carries no trace.
- :class:`BriefStartupFailure` keeps a start-up failure that was already explained in one log
  line from being followed by a traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb.file_body import ZERO_COPY_SEND

access_logger = logging.getLogger("arca.access")
error_logger = logging.getLogger("arca.errors")

QUIET_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SLOW_SECONDS = 2.0


class AccessLog:
    """One log line per HTTP request; quiet for fast successful reads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                sent += int(message.get("count") or 0)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            method = str(scope.get("method", ""))
            quiet = method in QUIET_METHODS and 0 < status < 400 and elapsed < SLOW_SECONDS
            path = str(scope.get("path", ""))
            query = scope.get("query_string", b"")
            if query:
                path += "?" + query.decode("latin-1")
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            access_logger.log(
                logging.DEBUG if quiet else logging.INFO,
                '%s "%s %s" %s %d bytes %.1f ms',
                peer,
                method,
                path,
                status or "-",
                sent,
                elapsed * 1000,
            )


class LastResortErrors:
    """Turn an untranslated exception into a logged traceback and a bare ``500`` JSON answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_logger.exception(
                "unhandled error in %s %s", scope.get("method"), scope.get("path")
            )
            if started:
                # Too late for a status: returning leaves the response incomplete and the
                # server closes the connection, so the client sees a truncated answer.
                return
            body = json.dumps(
                {"error": "internal server error", "detail": "see the arca server log"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class BriefStartupFailure:
    """Lifespan: when start-up fails for a reason already logged in one line (a port taken,
    the index unreachable), tell the server that line instead of Starlette's traceback."""

    def __init__(self, app: ASGIApp, reason: Callable[[], str | None]) -> None:
        self.app = app
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            reason = self.reason()
            if message["type"] == "lifespan.startup.failed" and reason is not None:
                # Already logged by the lifespan; an empty message keeps uvicorn quiet.
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, send_wrapper)
