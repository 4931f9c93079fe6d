"""arca serve starts on an empty data folder with no configuration and answers /health."""

from __future__ import annotations

import httpx

from tests.conftest import ArcaProcess


def test_serve_on_empty_data_dir_without_config(arca_server: ArcaProcess) -> None:
    r = httpx.get(arca_server.base_url + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["dicomweb"] == "/dicom-web"
    assert body["dimse"] == {"ae_title": "ARCA", "port": arca_server.dimse_port}
    assert "arca serving DICOMweb at http://127.0.0.1:" in arca_server.log_text()
    # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM (exit by signal).
    assert arca_server.stop() in (0, -15)
    assert "arca shutting down" in arca_server.log_text()
    assert "Application shutdown complete" in arca_server.log_text()
