"""Rendering (PS3.18 §8.3.5): window/level math, MONOCHROME1, colour models, viewport, formats."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.pixels.processing import apply_color_lut

from tests.transcoding.samples import read, sample_file, synthetic_image
from transcoding.errors import BadRenderParams, NoCodec
from transcoding.pool import Transcoder
from transcoding.render import fit_viewport, window
from transcoding.service import RenderParams

PNG = RenderParams(media_type="image/png")


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def test_linear_window_follows_ps3_3_c_11_2_1_2_1() -> None:
    x = np.array([0.0, 44.0, 44.5, 45.0, 50.0, 54.0, 54.5, 55.0, 100.0])
    y = window(x, 50.0, 11.0, "LINEAR")
    # c - 0.5 - (w-1)/2 = 44.5 -> min; x > c - 0.5 + (w-1)/2 = 54.5 -> max
    expected = ((x - 49.5) / 10.0 + 0.5) * 255.0
    expected[x <= 44.5] = 0.0
    expected[x > 54.5] = 255.0
    np.testing.assert_allclose(y, expected)
    assert y[0] == 0.0 and y[-1] == 255.0
    assert y[4] == pytest.approx(127.5 + 255.0 / 20.0)  # x=50 sits half a step above centre-0.5


def test_linear_exact_and_sigmoid() -> None:
    x = np.array([0.0, 40.0, 45.0, 50.0, 55.0, 60.0, 100.0])
    exact = window(x, 50.0, 10.0, "LINEAR_EXACT")
    np.testing.assert_allclose(exact, [0.0, 0.0, 0.0, 127.5, 255.0, 255.0, 255.0])
    sig = window(x, 50.0, 10.0, "SIGMOID")
    assert sig[3] == pytest.approx(127.5)  # centre maps to the middle
    assert sig[4] == pytest.approx(255.0 / (1 + np.exp(-2.0)))
    assert np.all(np.diff(sig) > 0)


async def test_modality_lut_then_object_window(transcoder: Transcoder) -> None:
    stored = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    # HU = 2 * stored - 100; window 100/101 covers HU 50..150 (stored 75..125)
    data = synthetic_image(
        stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=101
    )
    out = _png(await transcoder.render(data, None, PNG))
    hu = stored * 2.0 - 100
    expected = np.clip(np.rint(window(hu, 100.0, 101.0, "LINEAR")), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 0 and out[-1, -1] == 255


async def test_request_window_overrides_the_objects(transcoder: Transcoder) -> None:
    stored = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    data = synthetic_image(stored, WindowCenter=10, WindowWidth=5)
    params = RenderParams(media_type="image/png", window=(128.0, 256.0, "LINEAR_EXACT"))
    out = _png(await transcoder.render(data, None, params))
    expected = np.clip(np.rint(window(stored * 1.0, 128.0, 256.0, "LINEAR_EXACT")), 0, 255)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


async def test_min_max_when_no_window(transcoder: Transcoder) -> None:
    stored = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    out = _png(await transcoder.render(synthetic_image(stored), None, PNG))
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])


async def test_monochrome1_is_inverted(transcoder: Transcoder) -> None:
    stored = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    mono2 = _png(await transcoder.render(synthetic_image(stored, "MONOCHROME2"), None, PNG))
    mono1 = _png(await transcoder.render(synthetic_image(stored, "MONOCHROME1"), None, PNG))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255  # the lowest value is displayed white


async def test_voi_lut_sequence(transcoder: Transcoder) -> None:
    from pydicom.dataset import Dataset

    stored = np.arange(0, 16, dtype=np.uint16).reshape(4, 4)
    item = Dataset()
    item.LUTDescriptor = [16, 0, 8]  # 16 entries from 0, 8-bit output
    # an inverting LUT; LUT Data is US or OW, written here as OW words
    item.LUTData = np.array([255 - 17 * i for i in range(16)], dtype="<u2").tobytes()
    item["LUTData"].VR = "OW"
    data = synthetic_image(stored, VOILUTSequence=[item])
    out = _png(await transcoder.render(data, None, PNG))
    np.testing.assert_array_equal(out, 255 - 17 * stored)


async def test_rgb_and_ybr_render_the_same_colours(transcoder: Transcoder) -> None:
    rgb = _png(await transcoder.render(sample_file("SC_rgb.dcm"), None, PNG))
    np.testing.assert_array_equal(rgb, read(sample_file("SC_rgb.dcm")).pixel_array)
    ybr = _png(await transcoder.render(sample_file("SC_ybr_full_uncompressed.dcm"), None, PNG))
    # the sample's YBR values were rounded when it was made: a few levels off at most
    assert np.abs(ybr.astype(int) - rgb.astype(int)).max() <= 8
    assert np.abs(ybr.astype(int) - rgb.astype(int)).mean() < 2
    ybr422 = _png(
        await transcoder.render(sample_file("SC_ybr_full_422_uncompressed.dcm"), None, PNG)
    )
    assert np.abs(ybr422.astype(int) - rgb.astype(int)).mean() < 3
    # the SC_rgb test image has pure red in its top band
    assert tuple(rgb[5, 50]) == (255, 0, 0)


async def test_palette_colour_through_its_luts(transcoder: Transcoder) -> None:
    source = sample_file("OBXXXX1A.dcm")
    out = _png(await transcoder.render(source, None, PNG))
    ds = read(source)
    lut = apply_color_lut(ds.pixel_array, ds)
    expected = (lut >> 8).astype(np.uint8) if lut.dtype.itemsize == 2 else lut
    assert out.shape == (600, 800, 3)
    np.testing.assert_array_equal(out, expected)
    assert np.any(out[..., 0] != out[..., 2])  # really colour


async def test_viewport_keeps_aspect(transcoder: Transcoder) -> None:
    params = RenderParams(media_type="image/png", viewport=(128, 128))
    out = _png(await transcoder.render(sample_file("US1_J2KR.dcm"), None, params))
    assert out.shape[:2] == (96, 128)  # 640x480 -> 128x96
    wide = RenderParams(media_type="image/jpeg", viewport=(200, 50))
    image = Image.open(io.BytesIO(await transcoder.render(sample_file("693_J2KR.dcm"), 1, wide)))
    assert image.format == "JPEG" and image.size == (50, 50)
    assert fit_viewport((512, 256), (100, 100)) == (100, 50)


async def test_jpeg_quality(transcoder: Transcoder) -> None:
    source = sample_file("US1_UNCR.dcm")
    low = await transcoder.render(source, None, RenderParams(quality=10))
    high = await transcoder.render(source, None, RenderParams(quality=95))
    assert len(low) < len(high) / 2


async def test_animated_gif_for_multiframe(transcoder: Transcoder) -> None:
    data = await transcoder.render(sample_file("emri_small.dcm"), None, RenderParams("image/gif"))
    image = Image.open(io.BytesIO(data))
    assert image.format == "GIF" and image.n_frames == 10
    single = await transcoder.render(sample_file("emri_small.dcm"), 3, RenderParams("image/gif"))
    assert Image.open(io.BytesIO(single)).n_frames == 1


async def test_thumbnail_of_a_jpeg_multiframe(transcoder: Transcoder) -> None:
    params = RenderParams(media_type="image/jpeg", viewport=(128, 128))
    image = Image.open(
        io.BytesIO(await transcoder.render(sample_file("examples_ybr_color.dcm"), 5, params))
    )
    assert image.size == (128, 96) and image.mode == "RGB"


async def test_unsupported_media_type(transcoder: Transcoder) -> None:
    with pytest.raises(NoCodec, match="image/webp"):
        await transcoder.render(sample_file("CT_small.dcm"), None, RenderParams("image/webp"))


async def test_bad_request_parameters(transcoder: Transcoder) -> None:
    source = sample_file("CT_small.dcm")
    with pytest.raises(BadRenderParams, match="window"):
        await transcoder.render(source, None, RenderParams(window=(40.0, 0.5, "LINEAR")))
    with pytest.raises(BadRenderParams, match="window"):
        await transcoder.render(source, None, RenderParams(window=(40.0, 400.0, "CUBIC")))
    with pytest.raises(BadRenderParams, match="viewport"):
        await transcoder.render(source, None, RenderParams(viewport=(0, 10)))


async def test_unusable_stored_window_falls_back_to_min_max(transcoder: Transcoder) -> None:
    stored = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    data = synthetic_image(stored, WindowCenter=100, WindowWidth=0)
    out = _png(await transcoder.render(data, None, PNG))
    np.testing.assert_array_equal(out, [[0, 64], [128, 255]])
