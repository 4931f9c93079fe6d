"""The seam ``dicomweb`` and ``dimse`` use to transcode, extract frames and render.

Implemented by :class:`transcoding.pool.Transcoder` (process pool, codec registry, cache).
Sources are Part-10 bytes or a local file path; storage types never cross this seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Source = bytes | Path


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

    async def render(self, source: Source, frame: int | None, params: RenderParams) -> bytes:
        """A consumer-format image of one frame (first when None) per PS3.18 §8.3.5."""
        ...
