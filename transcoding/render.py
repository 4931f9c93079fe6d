"""Rendered images (PS3.18 §8.3.5, §10.4.1.1.3): one frame through the grayscale/colour
pipeline to image/jpeg, image/png or image/gif.

Greyscale pipeline (PS3.3 C.11, PS3.4 N.2): stored values → Modality LUT (Rescale Slope/
Intercept or Modality LUT Sequence) → VOI (the request's ``window``, else the object's first
Window Center/Width with its VOI LUT Function, else its VOI LUT Sequence, else the frame's
min..max) → 8-bit → MONOCHROME1 inverted. Colour: RGB as is, YBR_* converted to RGB,
PALETTE COLOR through its palette LUTs. Then scaled to fit the viewport, aspect kept.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)

from transcoding.errors import BadRenderParams, CorruptPixelData, NoCodec
from transcoding.frame_info import FrameInfo
from transcoding.pixels import check_frame_numbers, iter_frames, number_of_frames
from transcoding.service import RenderParams

MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
DEFAULT_JPEG_QUALITY = 90
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}

U8 = np.ndarray[Any, np.dtype[np.uint8]]
F64 = np.ndarray[Any, np.dtype[np.float64]]


def window(values: F64, center: float, width: float, function: str = "LINEAR") -> F64:
    """VOI window to 0..255 (PS3.3 C.11.2.1.2.1 LINEAR, .2.2 LINEAR_EXACT, .2.3 SIGMOID)."""
    y_min, y_max = 0.0, 255.0
    x = values.astype(np.float64, copy=False)
    function = function.upper().strip()
    if function == "SIGMOID":
        if width <= 0:
            raise CorruptPixelData(f"SIGMOID window width must be > 0, got {width}")
        return (y_max - y_min) / (1.0 + np.exp(-4.0 * (x - center) / width)) + y_min
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise CorruptPixelData(f"LINEAR_EXACT window width must be > 0, got {width}")
        y = ((x - center) / width + 0.5) * (y_max - y_min) + y_min
        y[x <= center - width / 2] = y_min
        y[x > center + width / 2] = y_max
        return y
    if function != "LINEAR":
        raise CorruptPixelData(f"unknown VOI LUT Function {function!r}")
    if width < 1:
        raise CorruptPixelData(f"LINEAR window width must be >= 1, got {width}")
    y = ((x - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * (y_max - y_min) + y_min
    y[x <= center - 0.5 - (width - 1) / 2] = y_min
    y[x > center - 0.5 + (width - 1) / 2] = y_max
    return y


def _first(value: Any) -> float:
    """Value 1 of a possibly multi-valued DS (PS3.3 C.11.2.1.2: the first window is default)."""
    if isinstance(value, str | int | float):
        return float(value)
    return float(value[0])


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The functional-group item (PS3.3 C.7.6.16) for one frame: per-frame, else shared."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq and len(seq) > i and sequence in seq[i] and seq[i][sequence].value:
            item: Dataset = seq[i][sequence].value[0]
            return item
    return None


def _modality(arr: np.ndarray[Any, Any], ds: Dataset, index: int) -> F64:
    item = _frame_item(ds, index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item:
        slope = float(item.RescaleSlope)
        intercept = float(item.get("RescaleIntercept", 0.0))
        return arr.astype(np.float64) * slope + intercept
    out: F64 = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    return out


def _voi(values: F64, ds: Dataset, index: int, params: RenderParams) -> F64:
    if params.window is not None:
        try:
            return window(values, *params.window)
        except CorruptPixelData as exc:
            raise BadRenderParams(f"window={params.window}: {exc}") from None
    item = _frame_item(ds, index, "FrameVOILUTSequence")
    source = item if item is not None and "WindowCenter" in item else ds
    if "WindowCenter" in source and "WindowWidth" in source:
        function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            return window(values, _first(source.WindowCenter), _first(source.WindowWidth), function)
        except (CorruptPixelData, ValueError, TypeError, IndexError):
            pass  # an unusable stored window: fall through to the next VOI source
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        lut_item = ds.VOILUTSequence[0]
        bits = int(lut_item.LUTDescriptor[2])
        out = np.asarray(apply_voi(values, ds, index=0), dtype=np.float64)
        return out * (255.0 / float(2**bits - 1))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values)
    return (values - lo) * (255.0 / (hi - lo))


def display_frame(
    arr: np.ndarray[Any, Any], info: FrameInfo, ds: Dataset, index: int, params: RenderParams
) -> U8:
    """One decoded frame as 8-bit greyscale (rows, columns) or RGB (rows, columns, 3)."""
    pi = info.photometric_interpretation
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        y = _voi(_modality(arr, ds, index), ds, index, params)
        if pi == "MONOCHROME1":
            y = 255.0 - y  # PS3.3 C.7.6.3.1.2: minimum sample value is displayed white
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _to_u8(rgb, bits)
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        # Decoded 4:2:2 frames are already up-sampled, so both convert as YBR_FULL.
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
        return _to_u8(arr, info.bits_stored)
    if pi == "RGB":
        return _to_u8(arr, info.bits_stored)
    raise CorruptPixelData(f"cannot render Photometric Interpretation {pi}")


def _to_u8(arr: np.ndarray[Any, Any], bits: int) -> U8:
    if bits <= 8:
        return np.asarray(arr, dtype=np.uint8)
    shifted = np.right_shift(np.asarray(arr, dtype=np.uint64), bits - 8)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def fit_viewport(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """(columns, rows) scaled to fit inside ``viewport`` with the aspect ratio kept."""
    columns, rows = size
    vw, vh = viewport
    scale = min(vw / columns, vh / rows)
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def render_instance(ds: Dataset, frame: int | None, params: RenderParams) -> bytes:
    from PIL import Image

    if params.media_type not in MEDIA_TYPES:
        raise NoCodec(f"cannot render to {params.media_type}; offered: {', '.join(MEDIA_TYPES)}")
    if params.viewport is not None and min(params.viewport) < 1:
        raise BadRenderParams(f"viewport {params.viewport} is empty")
    count = number_of_frames(ds)
    if frame is None and params.media_type == "image/gif" and count > 1:
        indices = list(range(count))  # a multi-frame instance renders as an animated GIF
    else:
        check_frame_numbers(ds, [frame or 1])
        indices = [(frame or 1) - 1]
    images = []
    for i, (arr, info) in zip(indices, iter_frames(ds, indices), strict=True):
        pixels = display_frame(arr, info, ds, i, params)
        image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
        if params.viewport is not None:
            image = image.resize(
                fit_viewport(image.size, params.viewport), Image.Resampling.LANCZOS
            )
        images.append(image)
    buf = io.BytesIO()
    fmt = _FORMATS[params.media_type]
    if fmt == "JPEG":
        quality = params.quality if params.quality is not None else DEFAULT_JPEG_QUALITY
        images[0].save(buf, format=fmt, quality=max(1, min(100, quality)))
    elif fmt == "GIF" and len(images) > 1:
        frame_ms = float(ds.get("FrameTime", 100) or 100)
        images[0].save(
            buf,
            format=fmt,
            save_all=True,
            append_images=images[1:],
            duration=max(20, round(frame_ms)),
            loop=0,
        )
    else:
        images[0].save(buf, format=fmt)
    return buf.getvalue()
