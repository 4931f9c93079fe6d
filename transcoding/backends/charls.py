"""pyjpegls (CharLS): JPEG-LS lossless and near-lossless, encode and decode."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom import uid

from transcoding.backends import Backend
from transcoding.backends.pydicom_encoder import encode_with_pydicom
from transcoding.frame_info import EncodedFrame, FrameInfo

JPEG_LS_NEAR = 2
"""NEAR parameter for JPEG-LS near-lossless: every sample within +/-2 of the original."""


def _encode_jls(arr: np.ndarray[Any, Any], info: FrameInfo, target: str) -> EncodedFrame:
    options: dict[str, Any] = {}
    if target == uid.JPEGLSNearLossless:
        options["jls_error"] = JPEG_LS_NEAR
    data = encode_with_pydicom(arr, info, target, "pyjpegls", **options)
    return EncodedFrame(data, info.photometric_interpretation)


CHARLS = Backend(
    name="pyjpegls",
    modules=("jpeg_ls",),
    decodes=frozenset({uid.JPEGLSLossless, uid.JPEGLSNearLossless}),
    encodes=frozenset({uid.JPEGLSLossless, uid.JPEGLSNearLossless}),
    encode_frame=_encode_jls,
)
