"""The functions a worker process runs: picklable entry points, one per TranscoderService call.

Everything here executes inside a single-threaded pool worker, never in the server process.
Any failure leaves as a TranscodingError (NoCodec, CorruptPixelData, FrameNotFound), which
pickles back to the caller; anything unexpected becomes CorruptPixelData with its message.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from transcoding.errors import CorruptPixelData, TranscodingError
from transcoding.frames import extract_frames
from transcoding.instance import transcode_instance
from transcoding.pixels import read_source, source_syntax
from transcoding.service import RenderParams

T = TypeVar("T")


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
        ds = read_source(source)
        if source_syntax(ds) == target:
            return source if isinstance(source, bytes) else Path(source).read_bytes()
        return transcode_instance(ds, target)

    return _guarded(work)


def frames_job(source: bytes | Path, frame_numbers: list[int], target: str | None) -> list[bytes]:
    return _guarded(lambda: extract_frames(read_source(source), frame_numbers, target))


def render_job(source: bytes | Path, frame: int | None, params: RenderParams) -> bytes:
    from transcoding.render import render_instance

    return _guarded(lambda: render_instance(read_source(source), frame, params))


def warm_worker() -> None:
    """Pool initializer: import the codec stack once when a worker starts, so the first
    request a fresh (or rebuilt) worker serves does not also pay ~0.5 s of imports."""
    import contextlib
    import importlib

    for module in ("numpy", "pydicom.pixels", "openjpeg", "jpeg_ls", "libjpeg", "PIL.Image"):
        # a missing codec is reported by the registry; the worker still serves the rest
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def worker_pid() -> int:
    return os.getpid()


def abort_worker_for_tests() -> None:
    """Kill the worker the way a codec segfault would (tests only: see Transcoder)."""
    os.abort()
