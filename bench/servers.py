"""The two archives under test, each run as our own process on free loopback ports.

``OrthancServer`` runs Debian's ``Orthanc`` binary with a JSON configuration of our own (its
DICOMweb and GDCM plugins found with ``dpkg -L``), never the Debian service; the package is
installed with apt-get when missing (policy-rc.d keeps the service from starting in a
container, and we never talk to it). ``ArcaServer`` runs ``arca serve`` from this checkout's
virtualenv on SQLite + a data folder. Both expose the same small interface the scenarios use:
a DICOMweb base URL, a DIMSE port and AE title, the server's process ids (for RSS sampling),
``restart()`` after a crash and ``alive()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
ARCA = (sys.executable, "-m", "server.cli")
"""``arca`` from this checkout (run with ``cwd=CHECKOUT``). The venv's ``arca`` script would
import the checkout the venv was installed from, which need not be the one benchmarked."""

SCU_AE = "BENCHSCU"
"""AE title of the DCMTK tools that send C-STORE and C-MOVE requests."""
DEST_AE = "BENCHDEST"
"""AE title of the DCMTK storescp that receives C-MOVE sub-operations."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError as exc:
            # An HTTP error status still means the server answers.
            if getattr(exc, "code", None) is not None and int(getattr(exc, "code", 500)) < 500:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no answer from {url} within {timeout:.0f} s")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} within {timeout:.0f} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def rss_bytes(pids: list[int]) -> int:
    """Sum of the resident set sizes of ``pids`` (VmRSS from /proc/PID/status)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class Server:
    """What every archive under test offers the scenarios."""

    name = "server"
    ae_title = "SERVER"

    def __init__(self, workdir: Path, dest_port: int) -> None:
        self.workdir = workdir
        self.dest_port = dest_port
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes: list[str] = []
        self.dimse_ok = False
        self.log_path = workdir / f"{self.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            self.command(),
            cwd=CHECKOUT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_http(self.ready_url(), self.proc, 60)
        try:
            _wait_port(self.dimse_port, self.proc, 5)
            self.dimse_ok = True
        except TimeoutError:
            # Recorded as a failure of the DIMSE figures, not of the whole run.
            self.dimse_ok = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def note_crash(self, what: str) -> None:
        """Record that the server died during ``what`` and start it again on the same data."""
        code = self.proc.returncode if self.proc is not None else None
        self.crashes.append(f"{what}: exit {code}")
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=20)
        self.proc = None

    def version(self) -> str:
        return ""


def ensure_orthanc() -> None:
    """Install Debian's Orthanc and its DICOMweb + GDCM plugins when they are missing."""
    if shutil.which("Orthanc") and _plugin_paths():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "orthanc", "orthanc-dicomweb", "orthanc-gdcm"],
        check=True,
        env=env,
    )


def _plugin_paths() -> list[str]:
    found: list[str] = []
    for package in ("orthanc-dicomweb", "orthanc-gdcm"):
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False
        ).stdout
        libs = [p for p in listing.split() if p.endswith(".so") and "/plugins/" in p]
        if not libs:
            return []
        found.append(libs[0])
    return found


class OrthancServer(Server):
    """Debian's Orthanc 1.10 with its DICOMweb plugin, configured by us."""

    name = "orthanc"
    ae_title = "ORTHANC"

    def command(self) -> list[str]:
        config = {
            "Name": "bench-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dimse_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": _plugin_paths(),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {
                "dest": [DEST_AE, "127.0.0.1", self.dest_port],
                "scu": [SCU_AE, "127.0.0.1", 104],
            },
            "DicomAlwaysAllowMove": True,
            "SaveJobs": False,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return ["Orthanc", str(path)]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/system"

    def version(self) -> str:
        try:
            with urllib.request.urlopen(self.ready_url(), timeout=5) as r:
                info = json.loads(r.read())
            return f"Orthanc {info.get('Version', '?')}"
        except OSError:
            return "Orthanc ?"


class ArcaServer(Server):
    """``arca serve`` from this checkout on SQLite + a data folder."""

    name = "arca"
    ae_title = "ARCA"

    def command(self) -> list[str]:
        return [
            *ARCA,
            "serve",
            "--data",
            str(self.workdir / "data"),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--dimse-port",
            str(self.dimse_port),
            "--ae-title",
            self.ae_title,
            "--remote-ae",
            f"{DEST_AE}=127.0.0.1:{self.dest_port}",
        ]

    def ready_url(self) -> str:
        return f"{self.base_url}/studies?limit=1"

    def version(self) -> str:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return f"arca @ {rev}" if rev else "arca"


def arca_unavailable() -> str | None:
    """Why this checkout's ``arca serve`` cannot run (the command ArcaServer runs), or None."""
    try:
        out = subprocess.run(
            [*ARCA, "serve", "--help"], cwd=CHECKOUT, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if out.returncode != 0:
        return f"exit {out.returncode}: {out.stderr.strip()[-500:]}"
    return None
