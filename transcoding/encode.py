"""Encode one decoded frame into a target transfer syntax through the registry's backend."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom import uid
from pydicom.pixels.processing import convert_color_space

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from transcoding.errors import NoCodec, TranscodingError
from transcoding.frame_info import EncodedFrame, FrameInfo
from transcoding.registry import encoder_for


def prepare_for(
    arr: np.ndarray[Any, Any], info: FrameInfo, target: str
) -> tuple[np.ndarray[Any, Any], FrameInfo]:
    """Convert a decoded frame into a layout ``target`` can carry (or raise NoCodec)."""
    ts = TRANSFER_SYNTAXES.get(target)
    pi = info.photometric_interpretation
    if ts is not None and ts.lossy and pi == "PALETTE COLOR":
        # Lossy coding of palette indices maps pixels to unrelated colours.
        raise NoCodec(f"{ts.name} would corrupt PALETTE COLOR indices; use a lossless syntax")
    if target == uid.JPEGBaseline8Bit and pi == "YBR_FULL":
        # Process 1 colour is encoded from RGB by the JPEG codec's own colour transform.
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
        info = FrameInfo(**{**info.__dict__, "photometric_interpretation": "RGB"})
    return arr, info


def encode_frame(arr: np.ndarray[Any, Any], info: FrameInfo, target: str) -> EncodedFrame:
    """One frame's bitstream in ``target``; NoCodec when this image cannot be encoded so."""
    backend = encoder_for(target)
    if backend.encode_frame is None:
        raise NoCodec(f"{backend.name} has no frame encoder for {target}")
    arr, info = prepare_for(arr, info, target)
    try:
        return backend.encode_frame(arr, info, target)
    except TranscodingError:
        raise
    except Exception as exc:
        name = TRANSFER_SYNTAXES[target].name if target in TRANSFER_SYNTAXES else target
        raise NoCodec(f"{backend.name} cannot encode this image as {name}: {exc}") from None
