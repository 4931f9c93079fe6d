"""pylibjpeg-openjpeg (OpenJPEG 2.5.2): JPEG 2000 encode/decode, HTJ2K decode only.

OpenJPEG decodes HTJ2K (Part 15) codestreams but has no HT block encoder, so the HTJ2K
syntaxes cannot be produced here (NoCodec -> 406). Its encoder segfaults when two threads
encode at once (FIELD-NOTES), which is why every call runs in a single-threaded worker process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom import uid

from transcoding.backends import Backend
from transcoding.backends.pydicom_encoder import encode_with_pydicom
from transcoding.frame_info import EncodedFrame, FrameInfo

J2K_LOSSY_COMPRESSION_RATIO = 5.0
"""Bytes-in : bytes-out for JPEG 2000 (lossy). Conservative: PSNR >= 45 dB on real CT, MR and
US samples; small noisy 12-bit MR (pydicom emri_small) drops to ~34 dB."""

_HTJ2K = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)


def _encode_j2k(arr: np.ndarray[Any, Any], info: FrameInfo, target: str) -> EncodedFrame:
    lossy = target == uid.JPEG2000
    pi = info.photometric_interpretation
    options: dict[str, Any] = {"use_mct": pi == "RGB"}
    if lossy:
        options["compression_ratios"] = [J2K_LOSSY_COMPRESSION_RATIO]
    data = encode_with_pydicom(arr, info, target, "pylibjpeg", **options)
    # PS3.5 A.4.4: RGB encoded with the multiple component transform is YBR_RCT (reversible,
    # lossless) or YBR_ICT (irreversible, lossy).
    if pi == "RGB":
        pi = "YBR_ICT" if lossy else "YBR_RCT"
    return EncodedFrame(data, pi)


OPENJPEG = Backend(
    name="pylibjpeg-openjpeg",
    modules=("openjpeg", "pylibjpeg"),
    decodes=frozenset({uid.JPEG2000Lossless, uid.JPEG2000, *_HTJ2K}),
    encodes=frozenset({uid.JPEG2000Lossless, uid.JPEG2000}),
    encode_frame=_encode_j2k,
    cannot_encode={
        ts: "OpenJPEG 2.5 decodes HTJ2K but has no HTJ2K (ISO 15444-15) encoder" for ts in _HTJ2K
    },
)
