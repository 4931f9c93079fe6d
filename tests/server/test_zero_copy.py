"""ASGI zero-copy send on uvicorn (server.zero_copy), against a real uvicorn on loopback.

A small ASGI app sends bodies that mix ``http.response.body`` bytes with files sent by
``http.response.zerocopysend``; the tests read them with httpx and with raw sockets (a
reader slow enough that the socket's buffer fills, a client that leaves mid-body, TLS).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import uvicorn

from server.zero_copy import EXTENSION, ZeroCopyHttpToolsProtocol

HEAD = b"--part\r\n\r\n"
FILE_BYTES = 3 * 1024 * 1024 + 17  # several socket buffers: sendfile must wait and resume


class _App:
    """``/parts?n=N``: N times HEAD + the file; ``/slice?offset=&count=``; ``/position``:
    the file from its current position (no offset, no count); ``/long``: a file larger than
    the Content-Length; ``/scope``: the extensions the request was offered."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        extensions = dict(scope.get("extensions") or {})
        self.seen.append(extensions)
        query = {k: int(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
        route = scope["path"]
        if route == "/scope":
            body = b"zero-copy" if EXTENSION in extensions else b"none"
            await _start(send, len(body))
            await send({"type": "http.response.body", "body": body})
            return
        with open(self.path, "rb") as f:
            if route == "/parts":
                n = query.get("n", 1)
                await _start(send, n * (len(HEAD) + FILE_BYTES))
                for _ in range(n):
                    await send({"type": "http.response.body", "body": HEAD, "more_body": True})
                    await _send_file(send, extensions, f, 0, FILE_BYTES)
                await send({"type": "http.response.body", "body": b""})
            elif route == "/slice":
                await _start(send, query["count"])
                await _send_file(send, extensions, f, query["offset"], query["count"])
                await send({"type": "http.response.body", "body": b""})
            elif route == "/position":
                f.seek(1000)
                await _start(send, FILE_BYTES - 1000)
                await send({"type": EXTENSION, "file": f, "more_body": False})
            elif route == "/long":
                await _start(send, 10)
                await send({"type": EXTENSION, "file": f, "count": 11})


async def _start(send: Any, length: int) -> None:
    headers = [(b"content-length", str(length).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _send_file(send: Any, extensions: dict[str, Any], f: Any, offset: int, n: int) -> None:
    if EXTENSION in extensions:
        message = {"type": EXTENSION, "file": f, "offset": offset, "count": n, "more_body": True}
        await send(message)
    else:  # what an application does where the server does not offer the extension
        body = os.pread(f.fileno(), n, offset)
        await send({"type": "http.response.body", "body": body, "more_body": True})


class _Server(threading.Thread):
    def __init__(self, app: _App, **config: Any) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, http=ZeroCopyHttpToolsProtocol, lifespan="off", log_level="critical", **config
            )
        )
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> _Server:
        self.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.is_alive() and time.monotonic() < deadline, self.error
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.join(30)


@pytest.fixture
def content(tmp_path: Path) -> bytes:
    data = os.urandom(FILE_BYTES)
    (tmp_path / "blob").write_bytes(data)
    return data


@pytest.fixture
def server(tmp_path: Path, content: bytes) -> Iterator[tuple[_Server, _App]]:
    app = _App(tmp_path / "blob")
    with _Server(app) as s:
        yield s, app


def _url(s: _Server, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{s.port}{path}"


def test_files_and_bytes_arrive_whole_in_order_on_one_connection(
    server: tuple[_Server, _App], content: bytes
) -> None:
    s, app = server
    with httpx.Client(timeout=30) as http:
        first = http.get(_url(s, "/parts?n=3"))
        # The same keep-alive connection serves the next response after a zero-copy one.
        second = http.get(_url(s, "/parts?n=1"))
        offered = http.get(_url(s, "/scope"))
    assert first.content == (HEAD + content) * 3
    assert first.headers["content-length"] == str(len(first.content))
    assert second.content == HEAD + content
    assert offered.text == "zero-copy"
    assert all(EXTENSION in seen for seen in app.seen)


def test_offset_count_and_the_file_position(server: tuple[_Server, _App], content: bytes) -> None:
    s, _ = server
    with httpx.Client(timeout=30) as http:
        part = http.get(_url(s, "/slice?offset=12345&count=700000"))
        rest = http.get(_url(s, "/position"))
        head = http.head(_url(s, "/parts?n=2"))
    assert part.content == content[12345 : 12345 + 700000]
    assert rest.content == content[1000:]
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(2 * (len(HEAD) + FILE_BYTES))


def test_a_slow_reader_gets_every_byte(server: tuple[_Server, _App], content: bytes) -> None:
    """A small receive window: sendfile returns short and waits for the socket, many times."""
    s, _ = server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", s.port))
    sock.sendall(b"GET /parts?n=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = bytearray()
    expected_body = (HEAD + content) * 2
    reads = 0
    with sock:
        while True:
            head_end = got.find(b"\r\n\r\n")
            if head_end >= 0 and len(got) - head_end - 4 >= len(expected_body):
                break
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection early"
            got += chunk
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.005)
    head_end = got.find(b"\r\n\r\n")
    assert got[:15] == b"HTTP/1.1 200 OK"
    assert bytes(got[head_end + 4 :]) == expected_body


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_client_leaving_mid_body_leaves_nothing_open(
    server: tuple[_Server, _App], content: bytes
) -> None:
    s, _ = server
    with httpx.Client(timeout=30) as http:  # a first request, so the server is warmed up
        assert http.get(_url(s, "/parts?n=1")).status_code == 200
    time.sleep(0.2)
    before = _open_fds()
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", s.port))
        sock.sendall(b"GET /parts?n=8 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096)
        # Reset, not a polite close: the server's next sendfile fails with ECONNRESET/EPIPE.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    with httpx.Client(timeout=30) as http:
        assert http.get(_url(s, "/parts?n=1")).content == HEAD + content
    deadline = time.monotonic() + 10
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_fds() <= before  # the duplicate socket descriptors were closed


def test_a_file_longer_than_the_content_length_is_refused(server: tuple[_Server, _App]) -> None:
    s, _ = server
    with httpx.Client(timeout=30) as http:
        with pytest.raises(httpx.HTTPError):
            http.get(_url(s, "/long"))
        assert http.get(_url(s, "/scope")).text == "zero-copy"  # still serving


def test_not_offered_under_tls(tmp_path: Path, content: bytes) -> None:
    """sendfile would put plaintext on a TLS connection: the extension is not offered there."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject,
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    app = _App(tmp_path / "blob")
    with _Server(app, ssl_keyfile=str(key), ssl_certfile=str(cert)) as s:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=context, timeout=30) as http:
            offered = http.get(_url(s, "/scope", "https"))
            body = http.get(_url(s, "/parts?n=2", "https"))
    assert offered.text == "none"
    assert body.content == (HEAD + content) * 2
