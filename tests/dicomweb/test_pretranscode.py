"""Pre-transcoding (issue #5): a transcoded series retrieve puts the rest of its study into the
rendition cache in the same syntax, in the background, through a real ``arca serve`` and its
real codec pool. Progress is read from ``/health`` (``pretranscode`` and ``transcoding``
counters) with a deadline; nothing here waits a fixed time."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.conftest import ArcaProcess, StartArca
from tests.data import Series, ct_series, multipart_related, stow_content_type
from tests.dicomweb.conftest import multipart_parts

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEADLINE = 180.0


def _accept(syntax: str) -> dict[str, str]:
    return {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'}


def _study(tmp: Path, series: int, per_series: int | list[int]) -> list[Series]:
    study = generate_uid()
    counts = per_series if isinstance(per_series, list) else [per_series] * series
    return [
        ct_series(n, tmp / f"s{k}", study_uid=study, series_number=k + 1, prefix=f"s{k}")
        for k, n in enumerate(counts)
    ]


def _stow(http: httpx.Client, series: list[Series]) -> None:
    body = multipart_related([p.read_bytes() for s in series for p in s.paths])
    r = http.post("/studies", content=body, headers={"Content-Type": stow_content_type()})
    assert r.status_code == 200, r.text


def _health(server: ArcaProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.base_url + "/health", timeout=30).json()
    return body


def _wait_idle(server: ArcaProcess, studies_done: int) -> dict[str, Any]:
    """/health once ``studies_done`` pre-transcode requests have finished and none is queued."""
    deadline = time.monotonic() + DEADLINE
    while True:
        h = _health(server)
        p = h["pretranscode"]
        if p["studies_done"] >= studies_done and p["queued"] == 0:
            return h
        assert time.monotonic() < deadline, f"pre-transcode not done: {h}"
        time.sleep(0.1)


def _retrieve(http: httpx.Client, series: Series, syntax: str) -> list[pydicom.Dataset]:
    r = http.get(f"/studies/{series.study_uid}/series/{series.series_uid}", headers=_accept(syntax))
    assert r.status_code == 200, r.text
    parts = multipart_parts(r.content, r.headers["content-type"])
    assert len(parts) == len(series)
    out = []
    sent = EXPLICIT_LE if syntax == "*" else syntax  # the test data is stored as EXPLICIT_LE
    for headers, data in parts:
        assert f"transfer-syntax={sent}" in headers["content-type"]
        out.append(pydicom.dcmread(io.BytesIO(data)))
    return out


def _pixels_by_uid(series: Series) -> dict[str, np.ndarray]:
    return {str(ds.SOPInstanceUID): ds.pixel_array for ds in map(pydicom.dcmread, series.paths)}


def test_transcoded_series_retrieve_pretranscodes_the_rest_of_the_study(
    start_arca: StartArca, tmp_path: Path
) -> None:
    server = start_arca("--transcoding-workers", "2")
    s1, s2, s3 = _study(tmp_path, 3, 4)
    with httpx.Client(base_url=server.dicomweb_url, timeout=120) as http:
        _stow(http, [s1, s2, s3])
        before = _health(server)
        assert before["pretranscode"]["studies_queued"] == 0

        # A stored-syntax retrieve (explicit, and `*`) queues nothing and runs no codec.
        _retrieve(http, s1, EXPLICIT_LE)
        _retrieve(http, s1, "*")
        h = _health(server)
        assert h["pretranscode"]["studies_queued"] == 0
        assert h["transcoding"]["transcode_jobs"] == 0

        # The viewer's first series as JPEG 2000 lossless: 4 live jobs, then the 8 other
        # instances of the study in the background, one job at a time.
        _retrieve(http, s1, J2K_LOSSLESS)
        h = _wait_idle(server, studies_done=1)
        p = h["pretranscode"]
        assert p["studies_queued"] == 1
        assert p["transcoded"] == len(s2) + len(s3)
        assert p["failed"] == 0 and p["capped"] == 0
        assert p["peak_jobs"] == 1 and p["active_jobs"] == 0
        # Exactly one job per instance: the background skipped the live request's instances.
        assert h["transcoding"]["transcode_jobs"] == len(s1) + len(s2) + len(s3)

        # The next series costs no codec job and is pixel-identical to what was stored.
        jobs, hits = h["transcoding"]["transcode_jobs"], h["transcoding"]["cache_hits"]
        got = _retrieve(http, s2, J2K_LOSSLESS)
        h = _health(server)
        assert h["transcoding"]["transcode_jobs"] == jobs
        assert h["transcoding"]["cache_hits"] == hits + len(s2)
        stored = _pixels_by_uid(s2)
        assert {str(ds.SOPInstanceUID) for ds in got} == set(stored)
        for ds in got:
            assert ds.file_meta.TransferSyntaxUID == J2K_LOSSLESS
            assert np.array_equal(ds.pixel_array, stored[str(ds.SOPInstanceUID)])
        # Asked again for the same (study, syntax): deduplicated, not queued again.
        assert h["pretranscode"]["studies_queued"] == 1
        assert h["pretranscode"]["requests_deduplicated"] == 1

        # Lossless pre-transcoding made nothing lossy: a JPEG 2000 (lossy) retrieve of series 3
        # runs its own 4 jobs. That lossy syntax was asked for, so the rest of the study is
        # pre-transcoded into exactly it (and only it).
        _retrieve(http, s3, J2K_LOSSY)
        h = _wait_idle(server, studies_done=2)
        assert h["transcoding"]["transcode_jobs"] == jobs + len(s3) + len(s1) + len(s2)
        assert h["pretranscode"]["peak_jobs"] == 1
        jobs = h["transcoding"]["transcode_jobs"]
        lossy = _retrieve(http, s1, J2K_LOSSY)
        assert _health(server)["transcoding"]["transcode_jobs"] == jobs
        assert all(ds.LossyImageCompression == "01" for ds in lossy)


def test_pretranscode_can_be_turned_off(start_arca: StartArca, tmp_path: Path) -> None:
    server = start_arca(env={"ARCA_PREFETCH_PRETRANSCODE": "false"})
    s1, s2 = _study(tmp_path, 2, 2)
    with httpx.Client(base_url=server.dicomweb_url, timeout=120) as http:
        _stow(http, [s1, s2])
        _retrieve(http, s1, J2K_LOSSLESS)
        h = _health(server)
        assert h["pretranscode"] is None
        jobs = h["transcoding"]["transcode_jobs"]
        _retrieve(http, s2, J2K_LOSSLESS)
        assert _health(server)["transcoding"]["transcode_jobs"] == jobs + len(s2)


def test_instance_cap_and_one_background_job_over_several_studies(
    start_arca: StartArca, tmp_path: Path
) -> None:
    server = start_arca("--transcoding-workers", "2", "--prefetch-pretranscode-max-instances", "3")
    studies = [_study(tmp_path / f"study{i}", 2, [1, 5]) for i in range(3)]
    with httpx.Client(base_url=server.dicomweb_url, timeout=120) as http:
        for study in studies:
            _stow(http, study)
        for first, _rest in studies:
            _retrieve(http, first, J2K_LOSSLESS)
        h = _wait_idle(server, studies_done=3)
        p = h["pretranscode"]
        assert p["studies_queued"] == 3
        assert p["transcoded"] == 3 * 3 and p["capped"] == 3 * 2
        assert p["peak_jobs"] == 1


def test_shutdown_with_a_pretranscode_queue_pending(start_arca: StartArca, tmp_path: Path) -> None:
    server = start_arca("--transcoding-workers", "1")
    studies = [_study(tmp_path / f"study{i}", 2, [1, 20]) for i in range(3)]
    with httpx.Client(base_url=server.dicomweb_url, timeout=120) as http:
        for study in studies:
            _stow(http, study)
        for first, _rest in studies:
            _retrieve(http, first, J2K_LOSSLESS)
    pending = _health(server)["pretranscode"]
    assert pending["queued"] >= 2, pending  # precondition: 60 encodes queued on one worker
    # A graceful exit (uvicorn re-raises the SIGTERM it handled); stop() SIGKILLs after
    # STOP_TIMEOUT, which would be -SIGKILL.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log_text()
    cached = [f for f in (server.data_dir / "cache").iterdir() if not f.name.endswith(".tmp")]
    # 3 live + fewer than the 60 queued: the queue was dropped, not drained, at shutdown.
    assert len(cached) < 3 + 60
    assert "Traceback" not in server.log_text()
