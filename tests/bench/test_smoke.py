"""The benchmark harness in a tiny mode: real servers, real clients, every output written.

``python -m bench.run`` with 5 instances and one repetition against arca (and Orthanc when
Debian's package is installed; the test never installs it) over the ingest, retrieve,
frames, metadata and QIDO scenarios (the remote-site, streaming and C-MOVE scenarios are
left to ``make bench``: they need root or take longer), plus the multipart part counter
the throughput figures rely on, checked against a body whose delimiters straddle reads.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import ceiling, client
from tests.bench.runner import run_bench

HTTP_FIGURES = ("stow", "wado_native", "wado_j2k_cold", "frames6", "study_metadata", "qido")


def test_harness_tiny_run_measures_every_http_figure(tmp_path: Path) -> None:
    servers = "arca,orthanc" if shutil.which("Orthanc") else "arca"
    result, latest = run_bench(
        tmp_path,
        "--quick",
        "--instances",
        "5",
        "--repeat",
        "1",
        "--metadata-instances",
        "10",
        "--servers",
        servers,
        "--only",
        "stow,cstore,wado,frames,metadata,qido",
        timeout=120,
    )
    figures = result["figures"]
    for key in HTTP_FIGURES:
        arca = figures[key]["servers"]["arca"]
        assert arca["errors"] == [], f"{key}: {arca['errors']}"
        assert arca["median"] is not None and arca["median"] > 0, (key, result["meta"]["notes"])
    if "orthanc" in servers:
        orthanc = figures["wado_native"]["servers"]["orthanc"]
        assert orthanc["median"] is not None and orthanc["median"] > 0, (
            orthanc["errors"],
            result["meta"]["notes"],
        )
        assert figures["wado_native"]["ratio_arca_over_orthanc"] is not None
    # DIMSE figures are either measured or their failure is recorded, never silently absent.
    cstore = figures["cstore"]["servers"]["arca"]
    assert cstore["samples"] or cstore["errors"]
    table = (latest / "results.md").read_text()
    assert "| figure | unit | arca |" in table
    assert "WADO-RS series, stored syntax" in table
    assert "MET" in table or "MISSED" in table
    assert (latest / "images_per_s.png").stat().st_size > 1000
    assert not (tmp_path / "work" / f"run-{result['meta']['started']}").exists()


class _Multipart(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header(
            "Content-Type", 'multipart/related; type="application/dicom"; boundary=XyZ'
        )
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def multipart_server() -> Iterator[str]:
    parts = [bytes([65 + i]) * (3 + 5 * i) for i in range(7)]
    body = b"".join(
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts
    )
    _Multipart.body = body + b"--XyZ--\r\n"
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Multipart)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("buffer", [1, 2, 3, 4, 7, 64, 1 << 20])
def test_part_counter_finds_delimiters_split_across_reads(
    multipart_server: str, buffer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "BUFFER", buffer)
    t = client.get(multipart_server, client.STORED)
    assert t.parts == 7
    assert t.nbytes == len(_Multipart.body)


def test_ceiling_server_serves_its_payloads_as_parts() -> None:
    """The ceilings' in-memory server (bench.ceiling): every payload one part, each GET on a
    kept-alive connection the whole body again."""
    payloads = [bytes([i]) * (1000 + i) for i in range(5)]
    server = ceiling.InMemorySeriesServer(payloads)
    try:
        conn = client.connect(server.url)
        for _ in range(2):
            body = bytearray()
            t = client.get(server.url, client.STORED, conn, keep=body)
            assert t.status == 200 and t.parts == 5
            for payload in payloads:
                assert payload in body
        conn.close()
    finally:
        server.close()
