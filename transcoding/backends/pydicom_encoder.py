"""Encode one frame through pydicom's encoder for a transfer syntax, with a named plugin."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.pixels.encoders.base import get_encoder

from transcoding.frame_info import FrameInfo


def encode_with_pydicom(
    arr: np.ndarray[Any, Any], info: FrameInfo, target: str, plugin: str, **options: Any
) -> bytes:
    """One frame (rows, columns[, samples]) encoded by pydicom's ``target`` encoder."""
    encoder = get_encoder(target)
    return bytes(
        encoder.encode(
            arr,
            encoding_plugin=plugin,
            rows=info.rows,
            columns=info.columns,
            samples_per_pixel=info.samples_per_pixel,
            bits_allocated=info.bits_allocated,
            bits_stored=info.bits_stored,
            pixel_representation=info.pixel_representation,
            photometric_interpretation=info.photometric_interpretation,
            number_of_frames=1,
            planar_configuration=0,
            **options,
        )
    )
