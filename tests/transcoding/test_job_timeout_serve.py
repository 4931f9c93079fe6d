"""A hung codec against a real ``arca serve``: the job times out, the worker is killed and the
pool replaced, the request gets 503 with the reason, other requests in flight are unharmed, a
multipart retrieve goes on without the hung instance, and the server keeps serving.

The hang is real (a worker process stuck in a job), made by the TEST-ONLY hook
``transcoding.jobs.HANG_FOR_TESTS``: an environment variable that only this test sets on the
server it starts names the SOP Instance UID whose jobs sleep for an hour.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.uid import generate_uid

from tests.conftest import StartArca
from tests.data import small_ct, uids_of
from tests.dicomweb.conftest import make_instance, multipart_parts
from tests.system.http import stow
from transcoding.jobs import HANG_FOR_TESTS

J2K = uid.JPEG2000Lossless
J2K_MULTIPART = f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'
JLS_FRAMES = 'multipart/related; type="image/jls"'
TIMEOUT_S = 8
"""Well above one large CR encode on a loaded 2-core machine (~0.7 s quiet, ~3 s at load 9):
a job's clock may start while it waits behind one running job (see transcoding.pool)."""


def _pool(http: httpx.Client) -> dict[str, int]:
    stats: dict[str, int] = http.get("/health").json()["transcoding"]
    return stats


def test_hung_codec_times_out_and_the_server_keeps_serving(start_arca: StartArca) -> None:
    study, heavy_series = generate_uid(), generate_uid()
    hung = small_ct(study_uid=study)
    hung_study, hung_series, hung_sop = uids_of(hung)
    # Large CR images (1955x1841, about a second of J2K encoding each) keep the other worker
    # busy across the moment the hung job's worker is killed (their jobs are resubmitted).
    heavy = [
        make_instance("RG1_UNCI.dcm", patient_id="ARCASMALL", study=study, series=heavy_series)
        for _ in range(10)
    ]
    arca = start_arca(
        "--transcoding-workers",
        "2",
        "--transcoding-job-timeout",
        str(TIMEOUT_S),
        # The series retrieve below would otherwise pre-transcode the rest of the study
        # (dicomweb.pretranscode), the hung instance too, and time it out once more at a
        # moment this test does not control.
        "--prefetch-pretranscode",
        "false",
        env={HANG_FOR_TESTS: hung_sop},
    )
    with httpx.Client(base_url=arca.base_url, timeout=120) as http:
        assert stow(http, arca.dicomweb_url, [hung, *(h.data for h in heavy)]).status_code == 200
        dw = arca.dicomweb_url
        hung_url = f"{dw}/studies/{hung_study}/series/{hung_series}/instances/{hung_sop}"

        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            hung_render = pool.submit(
                http.get, f"{hung_url}/rendered", headers={"Accept": "image/png"}
            )
            # Start the series shortly before the hung job's timeout, so its transcodes are
            # running or queued on the pool when the workers are killed.
            time.sleep(TIMEOUT_S - 2)
            heavy_response = http.get(
                f"{dw}/studies/{study}/series/{heavy_series}", headers={"Accept": J2K_MULTIPART}
            )
            rendered = hung_render.result()
            waited = time.monotonic() - started

        # The hung rendering: 503 with the reason and Retry-After, after about the timeout.
        assert rendered.status_code == 503, rendered.text
        assert "transcoding.job_timeout" in rendered.json()["error"]
        assert rendered.headers["retry-after"]
        assert TIMEOUT_S <= waited < TIMEOUT_S + 30
        # The series transcoded meanwhile on the same pool arrived whole and pixel-identical.
        assert heavy_response.status_code == 200
        parts = multipart_parts(heavy_response.content, heavy_response.headers["content-type"])
        assert len(parts) == len(heavy)
        by_uid = {h.sop: h.ds for h in heavy}
        for _, body in parts:
            got = pydicom.dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == J2K
            np.testing.assert_array_equal(got.pixel_array, by_uid[got.SOPInstanceUID].pixel_array)
        stats = _pool(http)
        assert stats["timeouts"] == 1 and stats["pool_rebuilds"] >= 1
        assert stats["resubmitted"] >= 1  # the series' jobs were on the killed pool

        # A frame that needs transcoding: same answer.
        frames = http.get(f"{hung_url}/frames/1", headers={"Accept": JLS_FRAMES})
        assert frames.status_code == 503, frames.text
        assert "transcoding.job_timeout" in frames.json()["error"]

        # A study retrieve (PS3.18 §8.7: a retrieve goes on for the other instances): every
        # other instance is sent, the hung one left out and logged with its UID and the reason.
        whole = http.get(f"{dw}/studies/{study}", headers={"Accept": J2K_MULTIPART})
        assert whole.status_code == 200
        sent = [
            pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID
            for _, b in multipart_parts(whole.content, whole.headers["content-type"])
        ]
        assert sorted(sent) == sorted(by_uid)
        log = arca.wait_for_log(f"{hung_sop} left out")
        assert f"{hung_sop} left out" in log and "job_timeout" in log

        # A client that gives up does not leave the hung worker behind: the job is still
        # watched and killed at its timeout.
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{hung_url}/frames/1", headers={"Accept": JLS_FRAMES}, timeout=1.0)
        deadline = time.monotonic() + TIMEOUT_S + 30
        while _pool(http)["timeouts"] < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _pool(http)["timeouts"] == 4

        # The server and its new workers still serve renderings and transcodes.
        heavy_url = f"{dw}/studies/{study}/series/{heavy_series}/instances/{heavy[0].sop}"
        ok = http.get(f"{heavy_url}/rendered", headers={"Accept": "image/png"})
        assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG")
        assert _pool(http)["timeouts"] == 4
        assert arca.running
