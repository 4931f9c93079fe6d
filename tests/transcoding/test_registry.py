"""What the registry reports it can decode and encode, and why it cannot."""

from __future__ import annotations

import pytest
from pydicom import uid

from tests.transcoding.samples import sample_file
from transcoding import registry
from transcoding.errors import NoCodec
from transcoding.pool import Transcoder

ENCODES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.JPEGBaseline8Bit,
]
DECODE_ONLY = [
    uid.ExplicitVRBigEndian,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
]


@pytest.mark.parametrize("ts", ENCODES)
def test_encodes_and_decodes(ts: str, transcoder: Transcoder) -> None:
    assert transcoder.can_encode(ts)
    assert transcoder.can_decode(ts)


@pytest.mark.parametrize("ts", DECODE_ONLY)
def test_decode_only(ts: str, transcoder: Transcoder) -> None:
    assert transcoder.can_decode(ts)
    assert not transcoder.can_encode(ts)
    with pytest.raises(NoCodec):
        registry.encoder_for(ts)


def test_htj2k_reason_is_given() -> None:
    with pytest.raises(NoCodec, match="no HTJ2K"):
        registry.encoder_for(uid.HTJ2K)


@pytest.mark.parametrize("ts", [uid.MPEG2MPML, uid.MPEG4HP41, "1.2.3.4.5.6"])
def test_video_and_unknown_syntaxes(ts: str, transcoder: Transcoder) -> None:
    assert not transcoder.can_encode(ts)
    assert not transcoder.can_decode(ts)


async def test_transcode_to_unencodable_syntax_is_no_codec(transcoder: Transcoder) -> None:
    with pytest.raises(NoCodec, match="HTJ2K"):
        await transcoder.transcode(sample_file("CT_small.dcm"), uid.HTJ2KLossless)
    with pytest.raises(NoCodec, match="Big Endian"):
        await transcoder.transcode(sample_file("CT_small.dcm"), uid.ExplicitVRBigEndian)


async def test_instance_without_pixel_data_is_rewritten(transcoder: Transcoder) -> None:
    # An SR has no pixels: any syntax carries it, no codec needed (Explicit VR LE data set).
    from tests.transcoding.samples import read

    out = await transcoder.transcode(sample_file("test-SR.dcm"), uid.JPEG2000Lossless)
    ds = read(out)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
    assert ds.SOPInstanceUID == read(sample_file("test-SR.dcm")).SOPInstanceUID
