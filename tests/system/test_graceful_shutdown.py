"""SIGTERM drains: a STOW-RS request that is arriving when the signal comes is completed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartArca
from tests.data import ct_series
from tests.system.http import instance_uids, streamed_parts

pytestmark = pytest.mark.slow


def test_sigterm_lets_a_running_stow_finish(start_arca: StartArca, tmp_path: Path) -> None:
    series = ct_series(10, tmp_path / "src")
    arca = start_arca("--no-dimse")
    first_part_sent = threading.Event()

    def body() -> Iterator[bytes]:
        for i, chunk in enumerate(streamed_parts(p.read_bytes() for p in series.paths)):
            yield chunk
            if i == 0:
                first_part_sent.set()
            time.sleep(0.1)

    def signal_when_uploading() -> None:
        first_part_sent.wait(60)
        assert arca.process is not None
        arca.process.send_signal(signal.SIGTERM)

    killer = threading.Thread(target=signal_when_uploading)
    killer.start()
    with httpx.Client(timeout=120) as client:
        r = client.post(
            arca.dicomweb_url + "/studies",
            content=body(),
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary='
                "arca-test-boundary",
                "Accept": "application/dicom+json",
            },
        )
    killer.join()
    assert r.status_code == 200, r.text[:300]
    assert arca.process is not None
    # A stop by signal is a clean exit that says so (uvicorn re-raises the signal after its
    # shutdown; arca's own handler only notes it).
    assert arca.process.wait(timeout=60) == 0
    assert "arca shutting down" in arca.log_text()
    assert "arca stopped (SIGTERM)" in arca.log_text()

    arca.start()
    with httpx.Client(timeout=60) as client:
        assert instance_uids(client, arca.dicomweb_url, series.study_uid) == set(
            series.sop_instance_uids
        )
