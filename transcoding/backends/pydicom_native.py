"""pydicom's own pixel handling: native syntaxes (incl. deflate, big endian) and RLE Lossless.

Native targets need no frame encoder (the instance writer lays the pixels out); RLE frames are
encoded with pylibjpeg-rle when installed (~10x faster than pydicom's numpy encoder), else
with pydicom's own.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from pydicom import uid

from transcoding.backends import Backend
from transcoding.backends.pydicom_encoder import encode_with_pydicom
from transcoding.frame_info import EncodedFrame, FrameInfo

NATIVE_DECODES = frozenset(
    {
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
    }
)
# Big endian is retired (PS3.5 A.3) and not produced; deflate is plain zlib of the data set.
NATIVE_ENCODES = frozenset(
    {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian}
)


def _encode_rle(arr: np.ndarray[Any, Any], info: FrameInfo, target: str) -> EncodedFrame:
    plugin = "pylibjpeg" if importlib.util.find_spec("rle") is not None else "pydicom"
    data = encode_with_pydicom(arr, info, target, plugin)
    return EncodedFrame(data, info.photometric_interpretation)


NATIVE = Backend(
    name="pydicom",
    modules=("pydicom", "numpy"),
    decodes=NATIVE_DECODES | {uid.RLELossless},
    encodes=NATIVE_ENCODES | {uid.RLELossless},
    encode_frame=_encode_rle,
    cannot_encode={uid.ExplicitVRBigEndian: "Explicit VR Big Endian is retired (PS3.5 A.3)"},
)
