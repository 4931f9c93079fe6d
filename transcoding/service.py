"""The seam ``dicomweb`` and ``dimse`` use to transcode, extract frames and render.

Implemented by :class:`transcoding.pool.Transcoder` (process pool, codec registry, cache).
Sources are Part-10 bytes or a local file path; storage types never cross this seam.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

Source = bytes | Path

RENDER_PIPELINE_VERSION = 1
"""Bump whenever transcoding/render.py changes the pixels it produces (VOI, photometric
handling, resampling): it is part of every rendered image's cache key and ETag, so cached
renderings and clients' copies of the old output are not served as the new one."""


@dataclass(frozen=True)
class RenderParams:
    """PS3.18 §8.3.5.1 rendered-resource query parameters."""

    media_type: str = "image/jpeg"
    """image/jpeg, image/png or image/gif."""
    quality: int | None = None
    """1..100, for lossy media types."""
    viewport: tuple[int, int] | None = None
    """(columns, rows) of the output, aspect ratio kept."""
    window: tuple[float, float, str] | None = None
    """(center, width, function: LINEAR | LINEAR_EXACT | SIGMOID)."""


@cache
def library_versions() -> str:
    """Versions of the libraries whose code decides a rendition's bytes."""
    names = ("pydicom", "numpy", "pillow", "pylibjpeg-openjpeg", "pyjpegls", "pylibjpeg-libjpeg")
    return ",".join(f"{n}={_version(n)}" for n in names)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def render_cache_key(instance_key: str, frame: int | None, params: RenderParams) -> str:
    """The rendition-cache key (and ETag seed) of one rendered image: the instance (its
    SHA-256) and every input that changes the output bytes (PS3.18 §8.3.5.1 parameters,
    the frame, the pipeline version, the libraries)."""
    window = params.window
    parts = (
        f"rendered/v{RENDER_PIPELINE_VERSION}",
        library_versions(),
        instance_key,
        f"frame={frame if frame is not None else '-'}",
        f"media={params.media_type}",
        f"quality={params.quality if params.quality is not None else '-'}",
        f"viewport={'x'.join(map(str, params.viewport)) if params.viewport else '-'}",
        f"window={','.join(map(repr, window)) if window else '-'}",
    )
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class TranscoderService(Protocol):
    def can_encode(self, transfer_syntax_uid: str) -> bool: ...

    def can_decode(self, transfer_syntax_uid: str) -> bool: ...

    async def transcode(
        self, source: Source, target_syntax: str, *, cache_key: str | None = None
    ) -> bytes:
        """The whole instance as a Part-10 file in ``target_syntax`` (pixel-identical for
        lossless targets; lossy targets set LossyImageCompression, ratio and method).
        ``cache_key`` (e.g. the instance's sha256) enables the rendition cache.
        Raises NoCodec, CorruptPixelData, WorkerCrashed."""
        ...

    async def frames(
        self, source: Source, frame_numbers: list[int], target_syntax: str | None
    ) -> list[bytes]:
        """Frames (1-based) as bare bitstreams in ``target_syntax``; None means decompressed
        native pixels (little endian, PS3.18 §8.7.3.5.x octet-stream layout)."""
        ...

    async def render(
        self,
        source: Source,
        frame: int | None,
        params: RenderParams,
        *,
        cache_key: str | None = None,
    ) -> bytes:
        """A consumer-format image of one frame (first when None) per PS3.18 §8.3.5.
        ``cache_key`` (from :func:`render_cache_key`) enables the rendition cache."""
        ...

    async def cached(self, cache_key: str, kind: str) -> bytes | None:
        """A cached rendition (``kind``: transfer syntax or media type), None when absent:
        lets a caller skip opening the source."""
        ...
