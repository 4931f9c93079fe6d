"""pylibjpeg-libjpeg: decodes ISO 10918-1 JPEG (baseline, extended, lossless); no encoder."""

from __future__ import annotations

from pydicom import uid

from transcoding.backends import Backend

LIBJPEG = Backend(
    name="pylibjpeg-libjpeg",
    modules=("libjpeg", "pylibjpeg"),
    decodes=frozenset(
        {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1}
    ),
    cannot_encode={
        uid.JPEGExtended12Bit: "no installed library encodes 12-bit JPEG (process 2/4)",
        uid.JPEGLossless: "no installed library encodes JPEG lossless (process 14)",
        uid.JPEGLosslessSV1: "no installed library encodes JPEG lossless (process 14 SV1)",
    },
)
