"""Shared fixtures: a REAL ``arca serve`` process on free loopback ports, for every test area.

``ArcaProcess`` runs ``python -m server.cli serve`` as a subprocess with its own data folder,
waits until ``GET /health`` answers, and keeps the server's log in a file; when a test fails,
the tail of the log of every server it used is attached to the report.

Fixtures:

- ``arca_server``: a fresh server for one test (stopped afterwards).
- ``start_arca``: a factory, ``start_arca("--cors-origin", "*", env={...})`` -> ArcaProcess.
- ``arca_session``: one server shared by the whole session; tests using it must create their own
  (fresh-UID) data and must not kill or restart it.
- ``arca_cli``: runs another ``arca`` subcommand (import, verify, db upgrade) as a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without ARCA_* variables (they would change settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCA_")}
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def arca_command(*args: str) -> list[str]:
    """argv that runs the ``arca`` CLI of this checkout with the test interpreter."""
    return [sys.executable, "-m", "server.cli", *args]


class ArcaProcess:
    """One ``arca serve`` subprocess on free loopback ports with its own data folder."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ae_title: str = "ARCA",
        dicomweb_root: str = "/dicom-web",
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.env = clean_environ(env)
        self.ae_title = ae_title
        self.dicomweb_root = dicomweb_root
        self.http_port = 0
        self.dimse_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.base_url + self.dicomweb_root

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def storage_args(self) -> list[str]:
        """The options that make another ``arca`` command use this server's storage."""
        args = ["--data", str(self.data_dir)]
        shared = ("--index", "--cold-store", "--s3-endpoint-url", "--s3-region", "--write-through")
        for i, arg in enumerate(self.extra_args):
            if arg in shared:
                args += [arg, self.extra_args[i + 1]]
            elif arg.split("=", 1)[0] in shared:
                args.append(arg)
        return args

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> ArcaProcess:
        """Start the server and wait until it answers HTTP; retries once on a port clash."""
        for attempt in range(3):
            if not self.http_port or attempt:
                self.http_port, self.dimse_port = free_port(), free_port()
            self._spawn()
            if self._wait_ready():
                return self
            log = self.log_tail()
            if "address already in use" not in log.lower():
                break
        self.kill()
        raise RuntimeError(f"arca serve did not come up; log {self.log_path}:\n{self.log_tail()}")

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = arca_command(
            "serve",
            "--data",
            str(self.data_dir),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--dicomweb-root",
            self.dicomweb_root,
            "--dimse-port",
            str(self.dimse_port),
            "--ae-title",
            self.ae_title,
            *self.extra_args,
        )
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(argv)}\n".encode())
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return True
            time.sleep(0.1)
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run (a crash, a power cut for the process)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL after STOP_TIMEOUT); the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def restart(self) -> ArcaProcess:
        """Stop (if running) and start again on the same data folder and ports."""
        self.stop()
        return self.start()

    # -- diagnostics -------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """The log once it contains ``text`` (lines are written after responses are sent)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def cli(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run ``arca ARGS... <this server's storage options>`` and capture its output."""
        return run_arca(*args, *self.storage_args(), env=self.env, timeout=timeout)


def run_arca(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run the ``arca`` CLI as a subprocess; stdout/stderr captured as text."""
    return subprocess.run(
        arca_command(*args),
        cwd=ROOT,
        env=dict(env) if env is not None else clean_environ(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- failure reports: attach the logs of the servers a test used ---------------------------------
_SERVERS = pytest.StashKey[list[ArcaProcess]]()
_SESSION_SERVERS: list[ArcaProcess] = []


def _track(request: pytest.FixtureRequest, proc: ArcaProcess) -> None:
    request.node.stash.setdefault(_SERVERS, []).append(proc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        used = item.stash.get(_SERVERS, []) + _SESSION_SERVERS
        for proc in used:
            report.sections.append((f"arca log ({proc.log_path})", proc.log_tail()))
    return report


StartArca = Callable[..., ArcaProcess]


@pytest.fixture
def start_arca(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartArca]:
    """Factory: ``start_arca(*extra_args, env=None, data_dir=None, ae_title="ARCA")``."""
    started: list[ArcaProcess] = []

    def start(
        *extra_args: str,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        ae_title: str = "ARCA",
        dicomweb_root: str = "/dicom-web",
        wait: bool = True,
    ) -> ArcaProcess:
        base = tmp_path_factory.mktemp("arca")
        proc = ArcaProcess(
            data_dir or base / "data",
            base / "arca.log",
            extra_args,
            env=env,
            ae_title=ae_title,
            dicomweb_root=dicomweb_root,
        )
        started.append(proc)
        _track(request, proc)
        if wait:
            proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def arca_server(start_arca: StartArca) -> ArcaProcess:
    """A fresh ``arca serve`` (SQLite index, empty data folder) for one test."""
    return start_arca()


@pytest.fixture(scope="session")
def arca_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcaProcess]:
    """One server for the session: use fresh UIDs, never kill or restart it."""
    base = tmp_path_factory.mktemp("arca-session")
    proc = ArcaProcess(base / "data", base / "arca.log")
    _SESSION_SERVERS.append(proc)
    proc.start()
    yield proc
    proc.stop()
    _SESSION_SERVERS.remove(proc)


@pytest.fixture
def arca_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``arca_cli("verify", "--data", str(d))`` -> CompletedProcess (text output)."""
    return run_arca
