"""DCMTK peers for the DIMSE figures: storescu (C-STORE ingest), movescu + storescp (C-MOVE).

Always the Debian binaries by full path: pynetdicom installs same-named scripts into the
virtualenv's ``bin/`` that would shadow them.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
MOVESCU = "/usr/bin/movescu"


class DimseError(Exception):
    """A DCMTK tool failed or reported failed sub-operations."""


class NoDimseListener(DimseError):
    """The archive under test has no DIMSE listener: its DIMSE figures cannot be measured."""


def c_store(port: int, called_ae: str, paths: Sequence[Path], timeout: float = 900) -> float:
    """Send ``paths`` over one association with storescu; returns the wall seconds."""
    cmd = [STORESCU, "-aet", "BENCHSCU", "-aec", called_ae, "127.0.0.1", str(port)]
    cmd += [str(p) for p in paths]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or "E:" in done.stderr:
        raise DimseError(f"storescu exit {done.returncode}: {done.stderr.strip()[-400:]}")
    return seconds


class StoreSCP:
    """A DCMTK storescp on a free port that receives C-MOVE sub-operations and discards them.

    ``--ignore`` receives every object completely but does not write it, so the destination's
    disk is not part of the figure for either archive.
    """

    def __init__(self, port: int, ae_title: str) -> None:
        self.port = port
        self.ae_title = ae_title
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [STORESCP, "-aet", self.ae_title, "+xa", "--ignore", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return
            time.sleep(0.1)
        raise DimseError(f"storescp did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


# movescu -d prints each C-MOVE-RSP's counters (PS3.7 §9.1.4.1.2: Number of Completed /
# Failed Sub-operations) as "Completed Suboperations       : 20"; "none" when absent.
_COMPLETED = re.compile(r"Completed Suboperations\s*:\s*(\d+)")
_FAILED = re.compile(r"Failed Suboperations\s*:\s*(\d+)")


def c_move_series(
    port: int,
    called_ae: str,
    destination_ae: str,
    study_uid: str,
    series_uid: str,
    scu_ae: str = "BENCHSCU",
    timeout: float = 900,
) -> tuple[int, float]:
    """C-MOVE one series (study root, SERIES level); (completed sub-operations, seconds)."""
    cmd = [
        MOVESCU,
        "-d",
        "-S",
        "-aet",
        scu_ae,
        "-aec",
        called_ae,
        "-aem",
        destination_ae,
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        f"SeriesInstanceUID={series_uid}",
        "127.0.0.1",
        str(port),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    completed = [int(m) for m in _COMPLETED.findall(text)]
    failed = [int(m) for m in _FAILED.findall(text)]
    if done.returncode != 0 or (failed and failed[-1]):
        raise DimseError(f"movescu exit {done.returncode}: {text.strip()[-400:]}")
    return (completed[-1] if completed else 0), seconds
