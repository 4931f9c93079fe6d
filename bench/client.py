"""A lean DICOMweb client for the benchmark: raw ``http.client`` so the client is not the limit.

Multipart responses are never parsed into objects: the body is read with ``readinto`` into one
reused buffer and the parts are counted by finding the boundary delimiter (PS3.18 §8.7.3.2
multipart/related; RFC 2046 §5.1.1 delimiters ``--boundary``), so the client costs one memory
copy per byte. Run as ``python -m bench.client URL ACCEPT`` it retrieves once and prints a JSON
line (used inside the remote-site network namespace).
"""

from __future__ import annotations

import http.client
import json
import queue
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BUFFER = 1 << 20

NATIVE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
J2K_LOSSLESS = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
JLS_LOSSLESS = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"


class BenchHTTPError(Exception):
    """The server answered with a non-success status or broke the connection."""


@dataclass(frozen=True)
class Transfer:
    """One response: how many multipart parts, how many body bytes, how long to the last byte."""

    status: int
    parts: int
    nbytes: int
    seconds: float
    first_byte: float


def connect(url: str, timeout: float = 600) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)


def _target(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + (f"?{u.query}" if u.query else "")


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    return None


def get(
    url: str,
    accept: str,
    conn: http.client.HTTPConnection | None = None,
    keep: bytearray | None = None,
) -> Transfer:
    """GET ``url`` and drain the body, counting multipart parts; ``keep`` collects the body."""
    own = conn is None
    c = conn or connect(url)
    start = time.perf_counter()
    try:
        c.request("GET", _target(url), headers={"Accept": accept})
        r = c.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        c.close()
        raise BenchHTTPError(f"GET {url}: {exc!r}") from exc
    first = time.perf_counter() - start
    boundary = _boundary(r.getheader("Content-Type", ""))
    delim = b"--" + boundary if boundary else b""
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    nbytes = hits = 0
    tail = b""
    try:
        while True:
            n = r.readinto(view)
            if not n:
                break
            nbytes += n
            if keep is not None:
                keep += view[:n]
            if delim:
                hits += buf.count(delim, 0, n)
                # A delimiter split across two reads: search the seam (tail + head) alone.
                hits += (tail + bytes(view[: len(delim) - 1])).count(delim)
                # The last len(delim)-1 bytes of the stream so far (not just of this read:
                # a read may be shorter than the delimiter).
                tail = (tail + bytes(view[max(0, n - len(delim) + 1) : n]))[1 - len(delim) :]
    except (OSError, http.client.HTTPException) as exc:
        c.close()
        raise BenchHTTPError(f"GET {url}: body broken after {nbytes} bytes: {exc!r}") from exc
    finally:
        if own:
            c.close()
    seconds = time.perf_counter() - start
    if r.status >= 300:
        raise BenchHTTPError(f"GET {url}: HTTP {r.status} {r.reason}")
    # Every part is preceded by a delimiter; the close delimiter adds one more.
    parts = max(0, hits - 1) if delim else (1 if nbytes else 0)
    return Transfer(r.status, parts, nbytes, seconds, first)


def stow_body(paths: Sequence[Path], boundary: str) -> list[bytes]:
    """A STOW-RS multipart/related request body (PS3.18 §10.5) as a list of byte pieces."""
    pieces: list[bytes] = []
    for p in paths:
        pieces.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        pieces.append(p.read_bytes())
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    return pieces


def post_stow(
    base_url: str, pieces: list[bytes], boundary: str, conn: http.client.HTTPConnection
) -> int:
    """POST one prepared STOW-RS body to ``{base}/studies``; returns the HTTP status."""
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    length = sum(len(p) for p in pieces)
    try:
        conn.putrequest("POST", _target(base_url + "/studies"))
        conn.putheader("Content-Type", ctype)
        conn.putheader("Accept", DICOM_JSON)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        for p in pieces:
            conn.send(p)
        r = conn.getresponse()
        r.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise BenchHTTPError(f"STOW {base_url}: {exc!r}") from exc
    return r.status


def concurrent_gets(urls: Iterable[str], accept: str, connections: int) -> tuple[int, int, float]:
    """GET every URL over ``connections`` persistent connections; (parts, bytes, seconds)."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    count = 0
    for u in urls:
        todo.put(u)
        count += 1
    totals = [0, 0]
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            try:
                u = todo.get_nowait()
            except queue.Empty:
                break
            conn = conn or connect(u)
            try:
                t = get(u, accept, conn)
            except BenchHTTPError as exc:
                conn = None
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                totals[0] += t.parts
                totals[1] += t.nbytes
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise BenchHTTPError(f"{len(errors)} of {count} requests failed; first: {errors[0]}")
    return totals[0], totals[1], seconds


def main(argv: list[str]) -> int:
    """``python -m bench.client URL ACCEPT``: one retrieve, result as a JSON line."""
    url, accept = argv[0], argv[1]
    out: dict[str, object]
    try:
        t = get(url, accept)
        out = {
            "ok": True,
            "parts": t.parts,
            "bytes": t.nbytes,
            "seconds": t.seconds,
            "first_byte": t.first_byte,
        }
    except BenchHTTPError as exc:
        out = {"ok": False, "error": str(exc)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
