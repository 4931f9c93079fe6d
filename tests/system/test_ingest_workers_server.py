"""``--ingest-workers``: a real server prepares STOW-RS parts in its worker processes (or, with
0, in its own threads), and says so at ``GET /health``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartArca
from tests.data import small_ct, uids_of
from tests.system.http import instance_uids, stow


def _health(client: httpx.Client, base_url: str) -> dict[str, object]:
    body: dict[str, object] = client.get(base_url + "/health").json()
    return body


def test_parts_are_prepared_in_the_workers(start_arca: StartArca) -> None:
    arca = start_arca("--no-dimse", "--ingest-workers", "2")
    with httpx.Client(timeout=60) as client:
        # The workers start with the server, in the background.
        deadline = time.monotonic() + 60
        while _health(client, arca.base_url)["ingest_workers"]["ready_workers"] < 2:  # type: ignore[index]
            assert time.monotonic() < deadline, "the ingest workers did not start"
            time.sleep(0.1)
        before = _health(client, arca.base_url)["ingest_workers"]
        assert before == {
            "workers": 2,
            "ready": True,
            "ready_workers": 2,
            "prepared_in_process": 0,
            "rebuilds": 0,
        }
        study = "1.2.826.0.1.3680043.8.498.4242"
        parts = [small_ct(study_uid=study, instance_number=i) for i in range(12)]
        # One part that is no DICOM object: its rejection comes back from a worker.
        r = stow(client, arca.dicomweb_url, [*parts[:6], b"not a DICOM object" * 20, *parts[6:]])
        assert r.status_code == 202, r.text
        failed = r.json()["00081198"]["Value"]  # FailedSOPSequence (PS3.18 §10.5.3)
        assert [item["00081197"]["Value"] for item in failed] == [[0xC000]]  # FailureReason
        assert len(r.json()["00081199"]["Value"]) == 12  # ReferencedSOPSequence
        after = _health(client, arca.base_url)["ingest_workers"]
        assert after == before, "parts were prepared in the server process"
        assert instance_uids(client, arca.dicomweb_url, study) == {uids_of(p)[2] for p in parts}


def test_zero_prepares_in_the_server(start_arca: StartArca) -> None:
    arca = start_arca("--no-dimse", "--ingest-workers", "0")
    with httpx.Client(timeout=60) as client:
        assert _health(client, arca.base_url)["ingest_workers"] is None
        part = small_ct()
        assert stow(client, arca.dicomweb_url, [part]).status_code == 200
        assert instance_uids(client, arca.dicomweb_url, uids_of(part)[0]) == {uids_of(part)[2]}


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_wrong_number_is_refused_at_start(
    arca_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, value: str
) -> None:
    done = arca_cli("serve", "--data", str(tmp_path / "data"), "--ingest-workers", value)
    assert done.returncode != 0
    assert "ingest" in done.stderr
