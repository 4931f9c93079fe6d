"""ASGI's zero-copy send extension on uvicorn: file bodies go from the page cache to the socket
by ``sendfile(2)``, never through Python.

The extension (asgi.readthedocs.io, "Extensions" → "Zero Copy Send") is advertised in
``scope["extensions"]["http.response.zerocopysend"]``; the application then sends

    {"type": "http.response.zerocopysend", "file": <file object or descriptor>,
     "offset": int (optional; else the file's position), "count": int (optional; else to
     the end), "more_body": bool}

between ``http.response.body`` messages. uvicorn implements no such extension, so
:class:`ZeroCopyHttpToolsProtocol` (given to uvicorn as its ``http`` protocol class) adds it
to each request cycle of its httptools protocol. A native series retrieve thus spends its
CPU on neither reading each file into memory nor copying it into the socket (measured on
this machine: those copies were ~40% of the server's CPU per image).

Only plain-TCP connections advertise it: under TLS the kernel never sees the plaintext.

uvloop implements neither ``loop.sendfile`` nor writer callbacks on a transport's own
socket, so the file is sent through a duplicate of the socket's descriptor, waited on with
``add_writer`` while the socket's buffer is full. The transport's own queued bytes (the
status line, earlier ``http.response.body`` messages) are flushed first, so the bytes keep
their order; ``http.response.body`` messages that follow a file are written through the same
descriptor while the transport has nothing queued.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from dicomweb.file_body import ZERO_COPY_SEND as EXTENSION

FLUSH_POLL_SECONDS = 0.0005
FLUSH_POLL_MAX_SECONDS = 0.05
"""A file send re-checks the transport's queue while uvloop flushes it, first after
FLUSH_POLL_SECONDS, then twice as long each time up to this (a stalled reader)."""
GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
SUPPORTED = callable(getattr(HttpToolsProtocol, "_start_asgi_task", None))
"""The uvicorn hook this module overrides (uvicorn ≥ 0.54 has it); without it, arca serves
with uvicorn's own protocol and no zero-copy send."""


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles also take zero-copy sends."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        transport = self.transport
        if transport.get_extra_info("sslcontext") is None and _socket_fd(transport) is not None:
            cycle.__class__ = ZeroCopyCycle
            cycle.scope.setdefault("extensions", {})[EXTENSION] = {}
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # A file send waiting for the socket to drain must not outlive the connection.
        if isinstance(self.cycle, ZeroCopyCycle) and self.cycle._direct is not None:
            self.cycle._direct.wake()


class ZeroCopyCycle(RequestResponseCycle):
    """A request/response cycle that sends ``http.response.zerocopysend`` by sendfile."""

    _direct: _DirectSocket | None = None
    """Set once a file went out: later body bytes take the same path, in order."""

    async def run_asgi(self, app: Any) -> None:
        try:
            await super().run_asgi(app)
        finally:
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == EXTENSION:
            await self._send_file(message)
        elif kind == "http.response.body" and self._direct is not None:
            await self._send_direct(message)
        else:
            await super().send(message)

    async def _send_file(self, message: Any) -> None:
        if self.disconnected:
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{EXTENSION}' outside a response body.")
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = os.fstat(fd).st_size - offset
        more_body = bool(message.get("more_body", False))
        if self.scope["method"] == "HEAD" or self.chunked_encoding:
            # No body on HEAD; chunked framing of a file is read into one body message.
            body = b"" if self.scope["method"] == "HEAD" else os.pread(fd, count, offset)
            await super().send({"type": "http.response.body", "body": body, "more_body": more_body})
            return
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        direct = await self._direct_socket()
        if direct is not None:
            await direct.sendfile(fd, offset, count)
        self.expected_content_length -= count
        await self._finish(more_body)

    async def _send_direct(self, message: Any) -> None:
        if self.disconnected or self.response_complete or self.scope["method"] == "HEAD":
            await super().send(message)
            return
        body = message.get("body", b"")
        if len(body) > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        more_body = bool(message.get("more_body", False))
        direct = await self._direct_socket()
        if direct is not None and body:
            await direct.sendall(body)
        self.expected_content_length -= len(body)
        await self._finish(more_body)

    async def _finish(self, more_body: bool) -> None:
        """uvicorn's own end-of-body bookkeeping, by an empty body message."""
        await super().send({"type": "http.response.body", "body": b"", "more_body": more_body})
        if not more_body and self._direct is not None:
            self._direct.close()
            self._direct = None

    async def _direct_socket(self) -> _DirectSocket | None:
        """The socket's duplicate, once the transport has sent all it had queued (None if the
        peer went away meanwhile)."""
        pause = FLUSH_POLL_SECONDS
        while self.transport.get_write_buffer_size() and not self.disconnected:
            await asyncio.sleep(pause)
            pause = min(pause * 2, FLUSH_POLL_MAX_SECONDS)
        if self.disconnected:
            return None
        if self._direct is None:
            fd = _socket_fd(self.transport)
            if fd is None:
                return None
            self._direct = _DirectSocket(os.dup(fd), self)
        return self._direct


class _DirectSocket:
    """A duplicate descriptor of a connection's socket, written without the transport."""

    def __init__(self, fd: int, cycle: ZeroCopyCycle) -> None:
        self.sock = socket.socket(fileno=fd)
        self.fd = fd
        self.cycle = cycle
        self.loop = asyncio.get_running_loop()
        self.waiting: asyncio.Future[None] | None = None

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        while count > 0:
            sent = await self._attempt(os.sendfile, self.fd, fd, offset, count)
            if sent is None:
                return
            if sent == 0:  # the file is shorter than the count it was sent with
                raise RuntimeError(f"file ended {count} bytes before the count given to sendfile")
            offset += sent
            count -= sent

    async def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self._attempt(self.sock.send, view)
            if sent is None:
                return
            view = view[sent:]

    async def _attempt(self, write: Callable[..., int], *args: Any) -> int | None:
        """One non-blocking write, once the socket takes some; None if the peer is gone."""
        while not self.cycle.disconnected:
            try:
                return write(*args)
            except BlockingIOError:
                await self._writable()
            except OSError as exc:
                self._gone(exc)
                return None
        return None

    async def _writable(self) -> None:
        self.waiting = ready = self.loop.create_future()
        self.loop.add_writer(self.fd, _resolve, ready)
        try:
            await ready
        finally:
            self.waiting = None
            self.loop.remove_writer(self.fd)

    def wake(self) -> None:
        """The connection is gone: stop waiting for the socket (the sends see it)."""
        if self.waiting is not None:
            _resolve(self.waiting)

    def _gone(self, exc: OSError) -> None:
        if exc.errno not in GONE:
            raise exc
        # The peer went away: like uvicorn's own writes, the rest of the body is dropped;
        # the transport learns of it too and ends the cycle.
        self.cycle.disconnected = True
        self.cycle.transport.close()

    def close(self) -> None:
        self.sock.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _socket_fd(transport: asyncio.BaseTransport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    fd: int = sock.fileno()
    return fd if fd >= 0 else None
