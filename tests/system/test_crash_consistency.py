"""SIGKILL while storing: after a restart every instance is whole (found, same bytes) or absent.

ARCHITECTURE.md: "An instance is visible to queries only once both the blob and the index row
are durable." This kills a real ``arca serve`` (SIGKILL, no shutdown handlers) while a 200
instance STOW-RS request is being ingested, while another one is still uploading slowly and
while single-instance STOWs commit, then restarts it on the same data folder. Once on the
embedded default, once writing through to a cold tier (moto S3 in its own process), where an
acknowledged instance must be in the object store and the kill may leave cold orphans only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.conftest import ArcaProcess, StartArca
from tests.data import Series, ct_series, small_ct, uids_of
from tests.storage_tiers.conftest import cold_store_args, moto_process
from tests.system.http import (
    instance_uids,
    retrieve_instance,
    retrieve_instance_bytes,
    stow,
    streamed_parts,
)

pytestmark = pytest.mark.slow
S3_ENV = {
    "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "arca-test"),
    "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "arca-test-secret"),
    "AWS_DEFAULT_REGION": "us-east-1",
}

N_LARGE = 200
PARTIAL_AT_LEAST = 10
"""Kill once this many instances of the large STOW are visible (and fewer than all)."""


def _sources(series: Series) -> dict[str, bytes]:
    return {
        uid: path.read_bytes()
        for uid, path in zip(series.sop_instance_uids, series.paths, strict=True)
    }


def _assert_whole_or_absent(
    client: httpx.Client, arca: ArcaProcess, study: str, series: str, sources: dict[str, bytes]
) -> set[str]:
    """Every source instance is either found with identical bytes or not found at all."""
    found = instance_uids(client, arca.dicomweb_url, study)
    assert found <= set(sources), f"unknown instances in study {study}: {found - set(sources)}"
    for sop, data in sources.items():
        if sop in found:
            got = retrieve_instance_bytes(client, arca.dicomweb_url, study, series, sop)
            assert got == data, f"instance {sop} is visible but its bytes differ"
        else:
            r = retrieve_instance(client, arca.dicomweb_url, study, series, sop)
            assert r.status_code == 404, f"{sop}: not in QIDO but WADO answers {r.status_code}"
    return found


@pytest.fixture(params=["embedded", "write-through"])
def storage_args(request: pytest.FixtureRequest) -> Iterator[tuple[str, ...]]:
    if request.param == "embedded":
        yield ()
        return
    with moto_process() as endpoint:
        bucket = f"arca-crash-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        yield (*cold_store_args(endpoint, bucket), "--write-through", "true")


def test_sigkill_during_stow_leaves_every_instance_whole_or_absent(
    start_arca: StartArca, tmp_path: Path, storage_args: tuple[str, ...]
) -> None:
    large: Series = ct_series(N_LARGE, tmp_path / "large", prefix="large")
    slow: Series = ct_series(20, tmp_path / "slow", prefix="slow", series_number=2)
    arca = start_arca(*storage_args, env=S3_ENV if storage_args else None)

    large_result: dict[str, object] = {}

    def post_large() -> None:
        with httpx.Client(timeout=600) as client:
            try:
                large_result["response"] = stow(
                    client, arca.dicomweb_url, (p.read_bytes() for p in large.paths)
                )
            except httpx.HTTPError as exc:
                large_result["error"] = exc

    stop_slow = threading.Event()

    def post_slowly() -> None:
        # One part every 0.1 s, then the body stays open (no closing delimiter) until the
        # kill: the server is killed while this request is still arriving.
        def body() -> Iterator[bytes]:
            *parts, _closing = streamed_parts(p.read_bytes() for p in slow.paths)
            for chunk in parts:
                if stop_slow.is_set():
                    return
                yield chunk
                time.sleep(0.1)
            stop_slow.wait(600)

        with httpx.Client(timeout=600) as client, contextlib.suppress(httpx.HTTPError):
            client.post(
                arca.dicomweb_url + "/studies",
                content=body(),
                headers={
                    "Content-Type": (
                        'multipart/related; type="application/dicom"; boundary=arca-test-boundary'
                    )
                },
            )

    acknowledged: dict[str, tuple[str, str, bytes]] = {}
    attempted: dict[str, tuple[str, str, bytes]] = {}
    stop_singles = threading.Event()

    def post_singles() -> None:
        # One-instance STOWs back to back: a 200 answer means durable (must survive the kill).
        with httpx.Client(timeout=60) as client:
            while not stop_singles.is_set():
                data = small_ct(patient_id="CRASHSINGLE")
                study, series, key = uids_of(data)
                attempted[key] = (study, series, data)
                try:
                    r = stow(client, arca.dicomweb_url, [data])
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged[key] = attempted[key]

    threads = [
        threading.Thread(target=post_large, name="large-stow"),
        threading.Thread(target=post_slowly, name="slow-stow"),
        threading.Thread(target=post_singles, name="single-stows"),
    ]
    for t in threads:
        t.start()
    try:
        # The large STOW's commits take ~0.1 s after its first is visible: poll on one open
        # connection, without pause, so the kill lands among them.
        deadline = time.monotonic() + 300
        visible = 0
        with httpx.Client(timeout=10) as poll:
            while time.monotonic() < deadline:
                visible = len(instance_uids(poll, arca.dicomweb_url, large.study_uid))
                if visible >= PARTIAL_AT_LEAST:
                    break
                time.sleep(0.002)
        arca.kill()
    finally:
        stop_slow.set()
        stop_singles.set()
        for t in threads:
            t.join(timeout=120)
    assert PARTIAL_AT_LEAST <= visible < N_LARGE, (
        f"{visible} of {N_LARGE} visible at the kill: the kill did not land mid-ingest"
    )
    assert "response" not in large_result, "the large STOW finished before the kill"

    arca.restart()
    with httpx.Client(timeout=60) as client:
        large_sources = _sources(large)
        found_large = _assert_whole_or_absent(
            client, arca, large.study_uid, large.series_uid, large_sources
        )
        assert len(found_large) >= visible, "instances visible before the kill were lost"

        slow_sources = _sources(slow)
        # The slow upload never completed: a STOW request that did not arrive whole stores
        # nothing (the body is spooled before ingest).
        assert (
            _assert_whole_or_absent(client, arca, slow.study_uid, slow.series_uid, slow_sources)
            == set()
        )

        singles_found = 0
        for sop, (study, series, data) in attempted.items():
            found = _assert_whole_or_absent(client, arca, study, series, {sop: data})
            if sop in acknowledged:
                assert found == {sop}, f"acknowledged instance {sop} lost by the kill"
            singles_found += len(found)

    result = arca.cli("verify")
    assert result.returncode == 0, f"arca verify failed:\n{result.stdout}\n{result.stderr}"
    # Orphan blobs (a blob written, its index commit killed) may be reported, never counted.
    expected = len(found_large) + singles_found
    assert f"{expected} instances checked" in result.stdout, result.stdout
    print(
        f"kill at {visible}/{N_LARGE} visible; after restart {len(found_large)} whole, "
        f"{N_LARGE - len(found_large)} absent; singles {len(acknowledged)} acknowledged, "
        f"{singles_found}/{len(attempted)} present; verify: {result.stdout.splitlines()[-1]}"
    )
