"""Accept parsing and negotiation with the header strings real clients send."""

from __future__ import annotations

import pytest

from conformance.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_LS_LOSSLESS,
)
from dicomweb.media import (
    DICOM_JSON,
    DICOM_XML,
    OCTET_STREAM,
    MalformedContentType,
    NotAcceptable,
    UnsupportedMediaType,
    negotiate_dicom,
    negotiate_frames,
    negotiate_metadata,
    negotiate_rendered,
    parse_accept,
    parse_stow_content_type,
)

DICOMWEB_CLIENT_INSTANCE = 'multipart/related; type="application/dicom"'
DICOMWEB_CLIENT_FRAMES = 'multipart/related; type="*/*"'
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
CURL = "*/*"


def everything(uid: str) -> bool:
    return True


def test_parse_quoted_and_unquoted_params() -> None:
    [a] = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=1.2.3')
    [b] = parse_accept("Multipart/Related;type=application/dicom;Transfer-Syntax=1.2.3")
    assert a.type == b.type == "multipart/related"
    assert a.part_type == b.part_type == "application/dicom"
    assert a.transfer_syntaxes == b.transfer_syntaxes == ("1.2.3",)


def test_parse_q_values_order_and_zero() -> None:
    ranges = parse_accept("image/png;q=0.5, image/jpeg, image/gif;q=0, text/html;q=bogus")
    assert [r.type for r in ranges] == ["image/jpeg", "text/html", "image/png"]


def test_quoted_comma_list_is_one_range() -> None:
    [r] = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax="1.2.840.10008.1.2.1,'
        '1.2.840.10008.1.2.4.90"'
    )
    assert r.transfer_syntaxes == (EXPLICIT_VR_LITTLE_ENDIAN, JPEG_2000_LOSSLESS)


def test_absent_accept_is_anything() -> None:
    assert [r.type for r in parse_accept(None)] == ["*/*"]
    assert [r.type for r in parse_accept("")] == ["*/*"]


def test_dicom_default_keeps_stored_syntax() -> None:
    acc = negotiate_dicom(parse_accept(DICOMWEB_CLIENT_INSTANCE), single_part_ok=False)
    assert acc.multipart and acc.any_syntax
    assert acc.target_for(JPEG_2000_LOSSLESS, everything) == JPEG_2000_LOSSLESS


def test_dicom_explicit_syntax_transcodes_when_not_stored() -> None:
    header = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS_LOSSLESS}'
    acc = negotiate_dicom(parse_accept(header), single_part_ok=False)
    assert acc.target_for(JPEG_LS_LOSSLESS, everything) == JPEG_LS_LOSSLESS
    assert acc.target_for(EXPLICIT_VR_LITTLE_ENDIAN, everything) == JPEG_LS_LOSSLESS
    assert acc.target_for(EXPLICIT_VR_LITTLE_ENDIAN, lambda uid: False) is None


def test_dicom_star_and_curl() -> None:
    for header in (CURL, 'multipart/related; type="application/dicom"; transfer-syntax=*'):
        acc = negotiate_dicom(parse_accept(header), single_part_ok=False)
        assert acc.multipart
        assert acc.target_for(JPEG_BASELINE_8BIT, lambda uid: False) == JPEG_BASELINE_8BIT


def test_dicom_single_part_only_where_allowed() -> None:
    acc = negotiate_dicom(parse_accept("application/dicom"), single_part_ok=True)
    assert not acc.multipart
    with pytest.raises(NotAcceptable, match="multipart/related"):
        negotiate_dicom(parse_accept("application/dicom"), single_part_ok=False)
    with pytest.raises(NotAcceptable):
        negotiate_dicom(parse_accept("image/png"), single_part_ok=True)


def test_frames_dicomweb_client_star_type_gets_stored_bitstream() -> None:
    t = negotiate_frames(parse_accept(DICOMWEB_CLIENT_FRAMES), JPEG_2000_LOSSLESS, None)
    assert (t.media_type, t.transfer_syntax, t.transcode, t.multipart) == (
        "image/jp2",
        JPEG_2000_LOSSLESS,
        False,
        True,
    )


def test_frames_ohif_octet_star_gets_stored_bitstream() -> None:
    t = negotiate_frames(parse_accept(OHIF_FRAMES), JPEG_LS_LOSSLESS, None)
    assert (t.media_type, t.transfer_syntax, t.transcode) == (
        OCTET_STREAM,
        JPEG_LS_LOSSLESS,
        False,
    )


def test_frames_native_octet_stream() -> None:
    for stored in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        t = negotiate_frames(
            parse_accept('multipart/related; type="application/octet-stream"'), stored, None
        )
        assert (t.media_type, t.transfer_syntax, t.transcode) == (
            OCTET_STREAM,
            EXPLICIT_VR_LITTLE_ENDIAN,
            False,
        )


def test_frames_octet_stream_of_compressed_needs_decoding() -> None:
    header = 'multipart/related; type="application/octet-stream"'
    t = negotiate_frames(parse_accept(header), JPEG_2000_LOSSLESS, everything)
    assert (t.media_type, t.transfer_syntax, t.transcode) == (
        OCTET_STREAM,
        EXPLICIT_VR_LITTLE_ENDIAN,
        True,
    )
    with pytest.raises(NotAcceptable, match="no transcoder"):
        negotiate_frames(parse_accept(header), JPEG_2000_LOSSLESS, None)


def test_frames_other_compressed_type_transcodes() -> None:
    t = negotiate_frames(
        parse_accept('multipart/related; type="image/jls"'), EXPLICIT_VR_LITTLE_ENDIAN, everything
    )
    assert (t.media_type, t.transfer_syntax, t.transcode) == ("image/jls", JPEG_LS_LOSSLESS, True)
    with pytest.raises(NotAcceptable):
        negotiate_frames(
            parse_accept('multipart/related; type="image/jls"'),
            EXPLICIT_VR_LITTLE_ENDIAN,
            lambda uid: False,
        )


def test_frames_q_values_prefer_stored_when_acceptable() -> None:
    header = 'multipart/related; type="image/jls"; q=0.9, multipart/related; type="image/jp2"'
    t = negotiate_frames(parse_accept(header), JPEG_2000_LOSSLESS, everything)
    assert (t.media_type, t.transcode) == ("image/jp2", False)


def test_metadata_negotiation() -> None:
    assert negotiate_metadata(parse_accept("application/dicom+json")).media_type == DICOM_JSON
    assert negotiate_metadata(parse_accept("application/json")).media_type == DICOM_JSON
    assert negotiate_metadata(parse_accept(None)).media_type == DICOM_JSON
    xml = negotiate_metadata(parse_accept('multipart/related; type="application/dicom+xml"'))
    assert xml.media_type == DICOM_XML and xml.multipart
    with pytest.raises(NotAcceptable, match="application/dicom\\+json"):
        negotiate_metadata(parse_accept("text/html"))


def test_rendered_negotiation() -> None:
    assert negotiate_rendered(parse_accept(None)) == "image/jpeg"
    assert negotiate_rendered(parse_accept("image/png")) == "image/png"
    assert negotiate_rendered(parse_accept("image/webp, image/gif;q=0.2")) == "image/gif"
    with pytest.raises(NotAcceptable):
        negotiate_rendered(parse_accept("application/pdf"))


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0"',
        "multipart/related; type=application/dicom; boundary=0f3cf5c0-70e0",
        "Multipart/Related; boundary=0f3cf5c0-70e0",
    ],
)
def test_stow_content_type_spellings(header: str) -> None:
    assert parse_stow_content_type(header).boundary == "0f3cf5c0-70e0"


def test_stow_content_type_rejections() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_stow_content_type("application/dicom")
    with pytest.raises(UnsupportedMediaType):
        parse_stow_content_type('multipart/related; type="application/dicom+json"; boundary=x')
    with pytest.raises(UnsupportedMediaType):
        parse_stow_content_type(None)
    with pytest.raises(MalformedContentType):
        parse_stow_content_type('multipart/related; type="application/dicom"')
