"""Transfer syntaxes arca knows, with the media types PS3.18 pairs them with.

Source: PS3.5 Annex A (transfer syntaxes), PS3.18 §8.7.3 Tables 8.7.3-2 (single-frame/
multi-frame bulk media types) and 8.7.3-5 (transfer syntax UIDs per media type).
Hand-maintained: the set is small and changes only with new codecs in the standard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferSyntax:
    uid: str
    name: str
    encapsulated: bool
    lossy: bool
    frame_media_type: str
    """Media type of one frame in this syntax (PS3.18 Table 8.7.3-5)."""
    lossy_method: str | None = None
    """LossyImageCompressionMethod (0028,2114) value for lossy syntaxes (PS3.3 C.7.6.1.1.5.1)."""


IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_BD = "1.2.840.10008.1.2.4.103"
HEVC_MP51 = "1.2.840.10008.1.2.4.107"
HEVC_M10P51 = "1.2.840.10008.1.2.4.108"

_OCTET = "application/octet-stream"

TRANSFER_SYNTAXES: dict[str, TransferSyntax] = {
    ts.uid: ts
    for ts in (
        TransferSyntax(
            IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", False, False, _OCTET
        ),
        TransferSyntax(
            EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", False, False, _OCTET
        ),
        TransferSyntax(
            ENCAPSULATED_UNCOMPRESSED,
            "Encapsulated Uncompressed Explicit VR Little Endian",
            True,
            False,
            _OCTET,
        ),
        TransferSyntax(
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            "Deflated Explicit VR Little Endian",
            False,
            False,
            _OCTET,
        ),
        TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian", False, False, _OCTET),
        TransferSyntax(
            JPEG_BASELINE_8BIT, "JPEG Baseline (Process 1)", True, True, "image/jpeg", "ISO_10918_1"
        ),
        TransferSyntax(
            JPEG_EXTENDED_12BIT,
            "JPEG Extended (Process 2 & 4)",
            True,
            True,
            "image/jpeg",
            "ISO_10918_1",
        ),
        TransferSyntax(JPEG_LOSSLESS_P14, "JPEG Lossless (Process 14)", True, False, "image/jpeg"),
        TransferSyntax(JPEG_LOSSLESS_SV1, "JPEG Lossless SV1", True, False, "image/jpeg"),
        TransferSyntax(JPEG_LS_LOSSLESS, "JPEG-LS Lossless", True, False, "image/jls"),
        TransferSyntax(
            JPEG_LS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless", True, True, "image/jls", "ISO_14495_1"
        ),
        TransferSyntax(JPEG_2000_LOSSLESS, "JPEG 2000 Lossless", True, False, "image/jp2"),
        TransferSyntax(JPEG_2000, "JPEG 2000", True, True, "image/jp2", "ISO_15444_1"),
        TransferSyntax(HTJ2K_LOSSLESS, "HTJ2K Lossless", True, False, "image/jphc"),
        TransferSyntax(HTJ2K_LOSSLESS_RPCL, "HTJ2K Lossless RPCL", True, False, "image/jphc"),
        TransferSyntax(HTJ2K, "HTJ2K", True, True, "image/jphc", "ISO_15444_15"),
        TransferSyntax(RLE_LOSSLESS, "RLE Lossless", True, False, "image/dicom-rle"),
        TransferSyntax(MPEG2_MPML, "MPEG2 MP@ML", True, True, "video/mpeg", "ISO_13818_2"),
        TransferSyntax(MPEG2_MPHL, "MPEG2 MP@HL", True, True, "video/mpeg", "ISO_13818_2"),
        TransferSyntax(
            MPEG4_HP41, "MPEG-4 AVC/H.264 HP@4.1", True, True, "video/mp4", "ISO_14496_10"
        ),
        TransferSyntax(
            MPEG4_HP41_BD,
            "MPEG-4 AVC/H.264 BD-compatible HP@4.1",
            True,
            True,
            "video/mp4",
            "ISO_14496_10",
        ),
        TransferSyntax(
            HEVC_MP51, "HEVC/H.265 Main Profile", True, True, "video/mp4", "ISO_23008_2"
        ),
        TransferSyntax(
            HEVC_M10P51, "HEVC/H.265 Main 10 Profile", True, True, "video/mp4", "ISO_23008_2"
        ),
    )
}

# PS3.18 Table 8.7.3-5: the default transfer syntax of each frame/bulk media type, used when
# a client asks for the media type without a transfer-syntax parameter.
DEFAULT_SYNTAX_FOR_MEDIA_TYPE: dict[str, str] = {
    _OCTET: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": JPEG_BASELINE_8BIT,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": JPEG_2000_LOSSLESS,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/dicom-rle": RLE_LOSSLESS,
    "video/mpeg": MPEG2_MPML,
    "video/mp4": MPEG4_HP41,
}

# PS3.18 §8.7.3.5.2: the default transfer syntax of application/dicom.
DEFAULT_DICOM_SYNTAX = EXPLICIT_VR_LITTLE_ENDIAN


def lookup(uid: str) -> TransferSyntax | None:
    return TRANSFER_SYNTAXES.get(uid)


def is_native(uid: str) -> bool:
    ts = TRANSFER_SYNTAXES.get(uid)
    return ts is not None and not ts.encapsulated
