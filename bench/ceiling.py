"""The ceiling of a series retrieve: a server with nothing to do.

It answers every GET with one prebuilt multipart/related body, kept in an unlinked file
in the page cache and sent by ``sendfile(2)`` (as arca sends stored parts: no copy in the
server at all), so a figure measured with the same client against it is what the path
between them can carry at best: on loopback, this machine's kernel copies and client (the
series' own files); over the remote site's link, that link and TCP on a fresh connection (a
body of as many parts and bytes as the JPEG 2000 series). No archive can exceed it; the
ratio of the archives' figures to it says how much room is left.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

BOUNDARY = b"bench-ceiling-boundary"


class InMemorySeriesServer:
    """A threaded HTTP/1.1 responder on a free loopback port; ``url`` serves ``payloads`` as
    the parts of one multipart/related body."""

    def __init__(self, payloads: Sequence[bytes]) -> None:
        parts = [
            b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + payload
            for payload in payloads
        ]
        body = b"\r\n".join(parts) + b"\r\n--" + BOUNDARY + b"--\r\n"
        self._head = (
            b"HTTP/1.1 200 OK\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary='
            + BOUNDARY
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        self._body = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._body.write(body)
        self._body.flush()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/series"
        threading.Thread(target=self._accept, name="bench-ceiling", daemon=True).start()

    @classmethod
    def of_files(cls, paths: Sequence[Path]) -> InMemorySeriesServer:
        return cls([p.read_bytes() for p in paths])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                if not reader.readline():
                    return
                while reader.readline() not in (b"\r\n", b""):
                    pass  # the request's headers: every request gets the series
                conn.sendall(self._head)
                conn.sendfile(self._body, 0)

    def close(self) -> None:
        self._sock.close()
        self._body.close()
