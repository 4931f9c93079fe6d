"""Helpers around the real DICOM peers the DIMSE tests use (DCMTK, pynetdicom, httpx)."""

from __future__ import annotations

import email.parser
import email.policy
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom

DCMTK_TIMEOUT = 60


def dcmtk(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool by full path (pynetdicom's same-named scripts shadow them)."""
    return subprocess.run(
        [f"/usr/bin/{tool}", *args],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT,
        cwd=cwd,
    )


def dataset_part(data: bytes) -> bytes:
    """The data set of a Part-10 file: the bytes after the File Meta Information group."""
    assert data[128:132] == b"DICM", "not a Part-10 file"
    pos = 132
    while data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return data[pos:]


def transfer_syntax_of(data: bytes) -> str:
    import io

    return str(
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


def wado_instance(dicomweb: str, study: str, series: str, sop: str) -> bytes:
    """One instance over WADO-RS as stored (transfer-syntax=*), the one part's bytes."""
    url = f"{dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    rsp = httpx.get(
        url,
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    parts = multipart_parts(rsp.headers["content-type"], rsp.content)
    assert len(parts) == 1
    return parts[0]


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    return [part.get_payload(decode=True) for part in message.iter_parts()]  # type: ignore[union-attr,misc]


def qido(dicomweb: str, path: str, **params: str) -> list[dict[str, object]]:
    rsp = httpx.get(f"{dicomweb}/{path}", params=params, timeout=30)
    assert rsp.status_code == 200, rsp.text
    return list(rsp.json())


def dciodvfy_errors(path: Path) -> set[str]:
    """The ``Error - ...`` lines dicom3tools' dciodvfy reports for a file."""
    out = subprocess.run(
        ["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60
    )
    return {line.strip() for line in (out.stderr + out.stdout).splitlines() if "Error" in line}


@contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung peer)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@contextmanager
def storescp(port: int, out_dir: Path, ae_title: str = "DEST") -> Iterator[subprocess.Popen[str]]:
    """DCMTK storescp on ``port`` writing exactly what it receives (+B) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", ae_title, "+xa", "+B", "-od", str(out_dir), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_listening(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_listening(port: int, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def findscu(
    port: int, model: str, keys: list[str], out_dir: Path, *, aet: str = "FINDSCU"
) -> list[pydicom.Dataset]:
    """DCMTK findscu (``-P`` patient root, ``-S`` study root, ``-W`` worklist) with ``-k``
    keys; the responses' identifiers, read back from the files ``-X`` writes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [model, "-aet", aet, "-aec", "ARCA", "-X", "-od", str(out_dir)]
    for key in keys:
        args += ["-k", key]
    done = dcmtk("findscu", *args, "127.0.0.1", str(port))
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
