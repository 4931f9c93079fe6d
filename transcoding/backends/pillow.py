"""Pillow (libjpeg-turbo): encodes JPEG Baseline (Process 1), 8-bit only.

pydicom 3 has no JPEG baseline encoder, Pillow does. Colour is written as YCbCr with 4:2:2
sub-sampling, which PS3.5 8.2.1 calls YBR_FULL_422; greyscale stays MONOCHROME1/2.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom import uid

from transcoding.backends import Backend
from transcoding.errors import NoCodec
from transcoding.frame_info import EncodedFrame, FrameInfo

JPEG_QUALITY = 90


def _encode_jpeg(arr: np.ndarray[Any, Any], info: FrameInfo, target: str) -> EncodedFrame:
    from PIL import Image  # the worker imports Pillow only when it encodes

    # PS3.5 A.4.1 / 8.2.1: Process 1 carries 8-bit unsigned samples only.
    if info.bits_allocated != 8 or info.bits_stored > 8 or info.pixel_representation != 0:
        raise NoCodec(
            f"JPEG Baseline holds only 8-bit unsigned samples; this image has Bits Stored "
            f"{info.bits_stored}, Pixel Representation {info.pixel_representation}"
        )
    pi = info.photometric_interpretation
    buf = io.BytesIO()
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").save(
            buf, format="JPEG", quality=JPEG_QUALITY
        )
        return EncodedFrame(buf.getvalue(), pi, 8)
    if pi == "RGB":
        # subsampling=1 is 4:2:2 (horizontal only): exactly what YBR_FULL_422 means.
        Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB").save(
            buf, format="JPEG", quality=JPEG_QUALITY, subsampling=1
        )
        return EncodedFrame(buf.getvalue(), "YBR_FULL_422", 8)
    raise NoCodec(f"JPEG Baseline encoding of Photometric Interpretation {pi} is not supported")


PILLOW = Backend(
    name="pillow",
    modules=("PIL",),
    decodes=frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit}),
    encodes=frozenset({uid.JPEGBaseline8Bit}),
    encode_frame=_encode_jpeg,
)
