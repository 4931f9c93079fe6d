"""A server that dies leaves no process behind: its codec workers, its ingest workers, their
forkserver and the multiprocessing resource tracker all end with it, however it ends (SIGKILL
runs no clean-up)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ArcaProcess, StartArca

pytestmark = pytest.mark.slow


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _started_pool(arca: ArcaProcess, workers: int) -> set[int]:
    """The server's descendants once its pools are up: forkserver, tracker, workers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _descendants(arca.pid)
        if len(found) >= workers + 2:
            return found
        time.sleep(0.2)
    pytest.fail(f"the worker pools did not start: descendants {_descendants(arca.pid)}")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_no_process_outlives_the_server(start_arca: StartArca, how: str) -> None:
    arca = start_arca("--no-dimse", "--transcoding-workers", "2", "--ingest-workers", "2")
    pool = _started_pool(arca, workers=4)
    if how == "SIGKILL":
        arca.kill()
    else:
        arca.stop()  # graceful (uvicorn re-raises the signal once it has shut down)
    deadline = time.monotonic() + 20
    while _alive(pool) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pool), f"left behind after {how}: {sorted(_alive(pool))}"


def test_a_signal_to_the_whole_process_group_is_the_servers_to_act_on(
    start_arca: StartArca,
) -> None:
    """systemd's stop (KillMode=control-group), Ctrl-C in a terminal and ``kill -- -PGID``
    signal every process of the server at once. The workers leave their ending to the
    server: it shuts down cleanly, without taking their end for a crash and starting others."""
    arca = start_arca("--no-dimse", "--transcoding-workers", "2", "--ingest-workers", "2")
    pool = _started_pool(arca, workers=4)
    deadline = time.monotonic() + 60
    while httpx.get(arca.base_url + "/health").json()["ingest_workers"]["ready_workers"] < 2:
        assert time.monotonic() < deadline, "the ingest workers did not start"
        time.sleep(0.1)
    pool = _descendants(arca.pid)
    for pid in [*sorted(pool), arca.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    assert arca.process is not None
    arca.process.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _alive(pool) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pool), f"left behind: {sorted(_alive(pool))}"
    log = arca.log_text()
    assert "Application shutdown complete" in log
    assert "ingest worker" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
