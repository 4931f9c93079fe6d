"""One small module per codec library; each says which transfer syntaxes it decodes/encodes.

A backend is only a description plus, for encoders, one ``encode_frame`` function: decoding
goes through pydicom's pixel decoders (which try their installed plugins in turn), so its header
validation (and its tested colour handling) stays in the path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transcoding.frame_info import EncodedFrame, FrameInfo

EncodeFrame = Callable[[np.ndarray[Any, Any], FrameInfo, str], EncodedFrame]


@dataclass(frozen=True)
class Backend:
    """A codec library as the registry sees it."""

    name: str
    modules: tuple[str, ...]
    """Python modules that must be importable for the backend to work."""
    decodes: frozenset[str] = frozenset()
    encodes: frozenset[str] = frozenset()
    encode_frame: EncodeFrame | None = field(default=None, compare=False)
    cannot_encode: dict[str, str] = field(default_factory=dict, compare=False)
    """Syntaxes this library is known NOT to encode, with the reason (reported with NoCodec)."""

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)
