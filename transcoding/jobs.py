"""The functions a worker process runs: picklable entry points, one per TranscoderService call.

Everything here executes inside a single-threaded pool worker, never in the server process.
Any failure leaves as a TranscodingError (NoCodec, CorruptPixelData, FrameNotFound), which
pickles back to the caller; anything unexpected becomes CorruptPixelData with its message.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydicom import Dataset

from transcoding.errors import CorruptPixelData, TranscodingError
from transcoding.frames import extract_frames
from transcoding.instance import transcode_instance
from transcoding.pixels import read_source, source_syntax
from transcoding.service import RenderParams
from transcoding.splice import splice_transcode

T = TypeVar("T")


HANG_FOR_TESTS = "ARCA_TEST_HANG_SOP_INSTANCE_UID"
"""TEST-ONLY hook, off unless this environment variable is set (tests/transcoding sets it on
the ``arca serve`` it starts): a job for the instance with this SOP Instance UID sleeps for an
hour, standing in for a hung codec, so the job timeout is tested with a real stuck worker.
``UID=SECONDS`` makes it sleep that long instead: a slow job that is not hung."""


def _hang_if_asked_for_tests(ds: Dataset) -> Dataset:
    uid, _, seconds = os.environ.get(HANG_FOR_TESTS, "").partition("=")
    if uid and ds.get("SOPInstanceUID") == uid:
        time.sleep(float(seconds) if seconds else 3600)
    return ds


def _read(source: bytes | Path) -> Dataset:
    return _hang_if_asked_for_tests(read_source(source))


def _guarded(work: Callable[[], T]) -> T:
    with warnings.catch_warnings():
        # pydicom warns about harmless quirks of real-world files; workers have no audience.
        warnings.simplefilter("ignore")
        try:
            return work()
        except TranscodingError:
            raise
        except Exception as exc:
            raise CorruptPixelData(f"{type(exc).__name__}: {exc}") from None


def transcode_job(source: bytes | Path, target: str) -> bytes:
    def work() -> bytes:
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
        except OSError as exc:
            raise CorruptPixelData(f"not a readable DICOM Part-10 file: {exc}") from None
        if os.environ.get(HANG_FOR_TESTS):
            _read(data)
        # The common case (native greyscale to a lossless syntax) without rewriting the data
        # set; None sends everything else through the general path.
        spliced = splice_transcode(data, target)
        if spliced is not None:
            return spliced
        ds = read_source(data)
        if source_syntax(ds) == target:
            return data
        return transcode_instance(ds, target)

    return _guarded(work)


def frames_job(source: bytes | Path, frame_numbers: list[int], target: str | None) -> list[bytes]:
    return _guarded(lambda: extract_frames(_read(source), frame_numbers, target))


def render_job(source: bytes | Path, frame: int | None, params: RenderParams) -> bytes:
    from transcoding.render import render_instance

    return _guarded(lambda: render_instance(_read(source), frame, params))


def warm_worker(server_pid: int | None = None) -> None:
    """Pool initializer: import the codec stack once when a worker starts, so the first
    request a fresh (or rebuilt) worker serves does not also pay ~0.5 s of imports; and,
    given the server's pid, exit when the server is gone (see :func:`exit_with`)."""
    import contextlib
    import importlib

    if server_pid is not None:
        exit_with(server_pid)

    for module in ("numpy", "pydicom.pixels", "openjpeg", "jpeg_ls", "libjpeg", "PIL.Image"):
        # a missing codec is reported by the registry; the worker still serves the rest
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def exit_with(server_pid: int) -> None:
    """End this worker as soon as process ``server_pid`` ends, however it ends.

    A worker's parent is the forkserver, not the server, and a SIGKILLed server runs no
    clean-up: without this its workers would wait on their call queue forever, holding the
    forkserver (which lives while any worker holds its alive fd) and the resource tracker
    with them. A daemon thread waits on a pidfd (Linux) of the server; it never touches
    the codecs, so jobs still run one at a time on the worker's main thread."""
    import select
    import threading

    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        os._exit(0)  # the server died before this worker finished starting
    except (AttributeError, OSError):
        return  # no pidfd here (not Linux, old kernel): the pool's shutdown still applies

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="arca-exit-with-server", daemon=True).start()


def worker_pid() -> int:
    return os.getpid()


def abort_worker_for_tests() -> None:
    """Kill the worker the way a codec segfault would (tests only: see Transcoder)."""
    os.abort()
