"""storage.ingest_workers: incoming objects prepared in worker processes.

Real processes (forkserver), real files; a worker is killed with SIGKILL to break the pool."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.statuses import StowFailure
from storage.errors import IngestRejected, StoreUnavailable
from storage.ingest import Analysis, prepare
from storage.ingest_workers import IngestWorkers
from tests.data import small_ct


@pytest.fixture
def workers() -> Iterator[IngestWorkers]:
    pool = IngestWorkers(2)
    try:
        yield pool
    finally:
        pool.close()


def _job(path: Path) -> functools.partial[Analysis]:
    return functools.partial(prepare, path, bulkdata_threshold=1024, bulkdata_base="")


def _object(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(small_ct() if data is None else data)
    return path


async def _until_ready(workers: IngestWorkers, tmp_path: Path) -> None:
    """Start the pool (its first object is prepared here) and wait for a worker to answer."""
    await workers.run(_job(_object(tmp_path, "first.dcm")))
    deadline = time.monotonic() + 60
    while not workers.ready:
        assert time.monotonic() < deadline, "no ingest worker started within 60 s"
        await asyncio.sleep(0.05)


async def test_objects_wait_for_no_worker_to_start(workers: IngestWorkers, tmp_path: Path) -> None:
    """The first object starts the pool but is prepared at once in a thread."""
    analysis = await workers.run(_job(_object(tmp_path, "a.dcm")))
    assert analysis.sop_uid
    assert workers.in_process == 1
    assert not workers.ready


async def test_a_worker_prepares_what_a_thread_would(
    workers: IngestWorkers, tmp_path: Path
) -> None:
    await _until_ready(workers, tmp_path)
    before = workers.in_process
    path = _object(tmp_path, "b.dcm")
    here = _job(path)()
    there = await workers.run(_job(path))
    assert workers.in_process == before, "prepared in the server process, not in a worker"
    assert workers.worker_pids() and os.getpid() not in workers.worker_pids()
    assert there == here


async def test_a_rejection_comes_back_with_its_reason(
    workers: IngestWorkers, tmp_path: Path
) -> None:
    await _until_ready(workers, tmp_path)
    before = workers.in_process
    junk = _object(tmp_path, "junk.dcm", b"not DICOM at all" * 10)
    with pytest.raises(IngestRejected) as here:
        _job(junk)()
    with pytest.raises(IngestRejected) as there:
        await workers.run(_job(junk))
    assert workers.in_process == before
    assert there.value.failure is StowFailure.CANNOT_UNDERSTAND
    assert (there.value.failure, there.value.message) == (here.value.failure, here.value.message)


async def test_a_dead_worker_costs_no_object(tmp_path: Path) -> None:
    workers = IngestWorkers(1)
    try:
        await _a_dead_worker_costs_no_object(workers, tmp_path)
    finally:
        workers.close()


async def _a_dead_worker_costs_no_object(workers: IngestWorkers, tmp_path: Path) -> None:
    await _until_ready(workers, tmp_path)
    [pid] = workers.worker_pids()
    os.kill(pid, signal.SIGKILL)
    before = workers.in_process
    analysis = await workers.run(_job(_object(tmp_path, "c.dcm")))
    assert analysis == _job(tmp_path / "c.dcm")()
    assert workers.rebuilds == 1
    assert workers.in_process == before + 1
    # The next objects go to a new pool once it is up.
    await _until_ready(workers, tmp_path)
    before = workers.in_process
    await workers.run(_job(_object(tmp_path, "d.dcm")))
    assert workers.in_process == before


async def test_more_objects_than_workers_wait_for_one(
    workers: IngestWorkers, tmp_path: Path
) -> None:
    await _until_ready(workers, tmp_path)
    before = workers.in_process
    paths = [_object(tmp_path, f"many{i}.dcm") for i in range(8)]
    # One caller gives up while it waits: its worker must serve the others all the same.
    gave_up = asyncio.ensure_future(workers.run(_job(paths[0])))
    results = asyncio.gather(*(workers.run(_job(p)) for p in paths[1:]))
    await asyncio.sleep(0)
    gave_up.cancel()
    done = await results
    assert workers.in_process == before
    assert [a.sop_uid for a in done] == [_job(p)().sop_uid for p in paths[1:]]
    with pytest.raises(asyncio.CancelledError):
        await gave_up


def test_another_event_loop_prepares_in_its_own_threads(tmp_path: Path) -> None:
    """The workers are driven by the loop that started them; another loop is not refused."""
    workers = IngestWorkers(1)
    try:
        asyncio.run(_until_ready(workers, tmp_path))
        before = workers.in_process
        analysis = asyncio.run(workers.run(_job(_object(tmp_path, "other.dcm"))))
        assert analysis.sop_uid
        assert workers.in_process == before + 1
    finally:
        workers.close()


async def test_a_storage_error_in_a_worker_comes_back_as_itself(
    workers: IngestWorkers, tmp_path: Path
) -> None:
    """The archive's own errors (here: the spooled file vanished) keep their type, so the
    STOW-RS / C-STORE answer is the same as when the server prepares the object itself."""
    await _until_ready(workers, tmp_path)
    before = workers.in_process
    gone = tmp_path / "gone.dcm"
    with pytest.raises(StoreUnavailable) as here:
        _job(gone)()
    with pytest.raises(StoreUnavailable) as there:
        await workers.run(_job(gone))
    assert workers.in_process == before
    assert str(there.value) == str(here.value)
