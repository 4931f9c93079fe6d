"""The reference table the codec tests run over: sample objects x target transfer syntaxes.

Each source file (pydicom's test files and pydicom-data) is classified by what its pixels
decode to; EXPECTED says, for each class and target syntax, the Photometric Interpretation the
transcoded instance must carry, or NO_CODEC when the target cannot hold such pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import uid

NO_CODEC = "NoCodec"

MONO16 = "mono 16-bit"
MONO8 = "mono 8-bit"
RGB = "RGB (incl. JPEG YBR and J2K YBR_RCT, which decode to RGB)"
YBR_FULL = "YBR_FULL stored natively or RLE"
PALETTE = "PALETTE COLOR"

# source file -> class of its decoded pixels
SOURCES: dict[str, str] = {
    "CT_small.dcm": MONO16,  # Explicit VR LE, signed
    "MR_small_bigendian.dcm": MONO16,  # Explicit VR Big Endian
    "MR_small_RLE.dcm": MONO16,
    "MR_small_jp2klossless.dcm": MONO16,
    "MR_small_jpeg_ls_lossless.dcm": MONO16,
    "emri_small_jpeg_2k_lossless.dcm": MONO16,  # 10-frame Enhanced MR, 12 bits stored
    "693_UNCI.dcm": MONO16,  # real CT slice, pydicom-data
    "693_J2KR.dcm": MONO16,
    "JPEG-LL.dcm": MONO16,  # JPEG lossless process 14
    "image_dfl.dcm": MONO8,  # Deflated Explicit VR LE
    "JPGLosslessP14SV1_1s_1f_8b.dcm": MONO8,  # JPEG lossless SV1, US
    "SC_rgb_rle_2frame.dcm": RGB,
    "US1_J2KR.dcm": RGB,  # YBR_RCT
    "SC_rgb_jpeg_dcmtk.dcm": RGB,  # JPEG baseline, YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+np.dcm": RGB,  # JPEG baseline, YBR_FULL_422
    "SC_rgb_jls_lossy_line.dcm": RGB,  # JPEG-LS near-lossless
    "SC_ybr_full_uncompressed.dcm": YBR_FULL,
    "OBXXXX1A_rle.dcm": PALETTE,
}

TARGETS: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.JPEGBaseline8Bit,
)

LOSSY_TARGETS = frozenset({uid.JPEGLSNearLossless, uid.JPEG2000, uid.JPEGBaseline8Bit})

_LOSSLESS_MONO = {
    uid.ExplicitVRLittleEndian: "MONOCHROME2",
    uid.RLELossless: "MONOCHROME2",
    uid.JPEGLSLossless: "MONOCHROME2",
    uid.JPEGLSNearLossless: "MONOCHROME2",
    uid.JPEG2000Lossless: "MONOCHROME2",
    uid.JPEG2000: "MONOCHROME2",
}

# (class, target) -> PhotometricInterpretation of the result, or NO_CODEC
EXPECTED: dict[tuple[str, str], str] = {
    **{(MONO16, t): pi for t, pi in _LOSSLESS_MONO.items()},
    (MONO16, uid.JPEGBaseline8Bit): NO_CODEC,  # process 1 is 8-bit only (PS3.5 A.4.1)
    **{(MONO8, t): pi for t, pi in _LOSSLESS_MONO.items()},
    (MONO8, uid.JPEGBaseline8Bit): "MONOCHROME2",
    (RGB, uid.ExplicitVRLittleEndian): "RGB",
    (RGB, uid.RLELossless): "RGB",
    (RGB, uid.JPEGLSLossless): "RGB",
    (RGB, uid.JPEGLSNearLossless): "RGB",
    (RGB, uid.JPEG2000Lossless): "YBR_RCT",  # PS3.5 A.4.4: reversible colour transform
    (RGB, uid.JPEG2000): "YBR_ICT",  # irreversible colour transform
    (RGB, uid.JPEGBaseline8Bit): "YBR_FULL_422",  # PS3.5 8.2.1
    (YBR_FULL, uid.ExplicitVRLittleEndian): "YBR_FULL",
    (YBR_FULL, uid.RLELossless): "YBR_FULL",
    (YBR_FULL, uid.JPEGLSLossless): "YBR_FULL",
    (YBR_FULL, uid.JPEGLSNearLossless): "YBR_FULL",
    (YBR_FULL, uid.JPEG2000Lossless): "YBR_FULL",
    (YBR_FULL, uid.JPEG2000): "YBR_FULL",
    (YBR_FULL, uid.JPEGBaseline8Bit): "YBR_FULL_422",
    (PALETTE, uid.ExplicitVRLittleEndian): "PALETTE COLOR",
    (PALETTE, uid.RLELossless): "PALETTE COLOR",
    (PALETTE, uid.JPEGLSLossless): "PALETTE COLOR",
    (PALETTE, uid.JPEGLSNearLossless): NO_CODEC,  # lossy palette indices are wrong colours
    (PALETTE, uid.JPEG2000Lossless): "PALETTE COLOR",
    (PALETTE, uid.JPEG2000): NO_CODEC,
    (PALETTE, uid.JPEGBaseline8Bit): NO_CODEC,
}

# Lowest acceptable PSNR (dB, peak = the source's dynamic range) per lossy target.
MIN_PSNR: dict[str, float] = {
    uid.JPEGLSNearLossless: 40.0,  # NEAR=2: every sample within +/-2
    uid.JPEG2000: 32.0,  # 5:1 compression ratio; small noisy 12-bit MR is the worst case
    uid.JPEGBaseline8Bit: 30.0,  # quality 90
}

# LossyImageCompressionMethod (0028,2114) per lossy target, PS3.3 C.7.6.1.1.5.1
LOSSY_METHOD: dict[str, str] = {
    uid.JPEGLSNearLossless: "ISO_14495_1",
    uid.JPEG2000: "ISO_15444_1",
    uid.JPEGBaseline8Bit: "ISO_10918_1",
}


@dataclass(frozen=True)
class Case:
    source: str
    target: str
    expected_photometric: str

    @property
    def id(self) -> str:
        return f"{self.source}->{uid.UID(self.target).keyword or self.target}"


CASES: list[Case] = [
    Case(source, target, EXPECTED[(kind, target)])
    for source, kind in SOURCES.items()
    for target in TARGETS
]
