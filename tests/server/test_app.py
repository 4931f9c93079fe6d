"""The composition root as a user meets it: status, CORS, DIMSE next to DICOMweb, errors."""

from __future__ import annotations

import logging
import subprocess

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.middleware import LastResortErrors
from tests.conftest import ArcaProcess, StartArca, clean_environ, free_port, run_arca
from tests.data import small_ct
from tests.system.http import stow

ORIGIN = "http://viewer.example:3000"


def test_status_and_startup_line(arca_server: ArcaProcess) -> None:
    for path in ("/", "/health"):
        r = httpx.get(arca_server.base_url + path)
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["index"] == "SQLite index"
    expected = (
        f"arca serving DICOMweb at http://127.0.0.1:{arca_server.http_port}/dicom-web, "
        f"DIMSE AE ARCA on port {arca_server.dimse_port}, data in {arca_server.data_dir} "
        "(SQLite index)"
    )
    assert expected in arca_server.log_text()


def test_dimse_echo_and_dicomweb_share_one_process(arca_server: ArcaProcess) -> None:
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aec", "ARCA", "127.0.0.1", str(arca_server.dimse_port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr
    r = httpx.get(
        arca_server.dicomweb_url + "/worklist", headers={"Accept": "application/dicom+json"}
    )
    assert r.status_code in (200, 204)


def test_no_cors_headers_unless_configured(arca_server: ArcaProcess) -> None:
    r = httpx.get(arca_server.dicomweb_url + "/studies", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.options(
        arca_server.dicomweb_url + "/studies",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_for_a_configured_origin(start_arca: StartArca) -> None:
    arca = start_arca("--cors-origin", ORIGIN, "--no-dimse")
    r = httpx.options(
        arca.dicomweb_url + "/studies",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, range, authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("accept", "content-type", "range", "authorization"):
        assert header in allowed
    r = httpx.get(arca.dicomweb_url + "/studies", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = r.headers["access-control-expose-headers"].lower()
    for header in ("content-type", "content-length", "warning", "content-range"):
        assert header in exposed
    other = httpx.get(arca.dicomweb_url + "/studies", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert httpx.get(arca.base_url + "/health").json()["dimse"] is None
    assert "DIMSE off" in arca.log_text()


def test_a_taken_port_is_a_clear_startup_error(arca_server: ArcaProcess) -> None:
    # Same DIMSE port as a running server: this one must fail to start and say why.
    result = run_arca(
        "serve",
        "--data",
        str(arca_server.data_dir.parent / "other"),
        "--http-port",
        str(free_port()),
        "--dimse-port",
        str(arca_server.dimse_port),
        env=clean_environ(),
        timeout=120,
    )
    assert result.returncode != 0
    assert f"arca cannot start: DIMSE cannot listen on 127.0.0.1:{arca_server.dimse_port}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr  # the one line says it all


async def test_last_resort_handler_logs_trace_and_hides_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    app = Starlette(routes=[Route("/boom", boom)], middleware=[Middleware(LastResortErrors)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="arca.errors"):
        async with httpx.AsyncClient(transport=transport, base_url="http://arca") as client:
            r = await client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "internal server error", "detail": "see the arca server log"}
    assert "secret" not in r.text
    assert "unhandled error in GET /boom" in caplog.text
    assert "RuntimeError: secret internal detail" in caplog.text  # the traceback is logged


def test_access_log_is_quiet_for_reads_and_loud_for_writes_and_errors(
    arca_server: ArcaProcess,
) -> None:
    data = small_ct()
    with httpx.Client(timeout=60) as client:
        assert client.get(arca_server.base_url + "/health").status_code == 200
        assert stow(client, arca_server.dicomweb_url, [data]).status_code == 200
        assert client.get(arca_server.dicomweb_url + "/studies/1.2.3.999").status_code == 404
    # Access lines are written once a response is sent: wait for the last one.
    log = arca_server.wait_for_log('"GET /dicom-web/studies/1.2.3.999" 404')
    assert '"POST /dicom-web/studies" 200' in log
    assert '"GET /dicom-web/studies/1.2.3.999" 404' in log
    assert '"GET /health"' not in log  # successful reads are logged at DEBUG only


def test_a_series_retrieve_is_sent_whole_by_zero_copy_and_logged_with_its_bytes(
    start_arca: StartArca,
) -> None:
    """`arca serve` sends stored parts by sendfile (server.zero_copy): the body arrives whole
    and the access line counts the files' bytes too, not only the part headers."""
    arca = start_arca("--log-level", "debug")
    study, series = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.71.1"
    objects = [small_ct(study_uid=study, series_uid=series, instance_number=n) for n in range(1, 4)]
    with httpx.Client(timeout=60) as client:
        assert stow(client, arca.dicomweb_url, objects).status_code == 200
        r = client.get(f"{arca.dicomweb_url}/studies/{study}/series/{series}")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content)
    assert all(obj in r.content for obj in objects)
    path = f"/dicom-web/studies/{study}/series/{series}"
    log = arca.wait_for_log(f'"GET {path}" 200 {len(r.content)} bytes')
    assert f'"GET {path}" 200 {len(r.content)} bytes' in log
