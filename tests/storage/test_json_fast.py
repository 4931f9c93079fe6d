"""storage.json_fast renders exactly what pydicom's conversion renders: element by element over
every file of pydicom's test files and pydicom-data that pydicom can render, over hand-made
edge cases, and whole data sets against the pure-pydicom rendering metadata.py used before
the fast path (kept here as the reference)."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from conformance.validation import check_identity
from storage import metadata
from storage.errors import IngestRejected
from storage.ingest import (
    _PIXEL_KEYWORDS,
    PIXEL_DATA,
    _columns,
    _frames,
    _transfer_syntax,
    analyze,
)
from storage.json_fast import FAST_VRS, render_raw
from storage.metadata import (
    BINARY_VRS,
    PIXEL_DATA_TAGS,
    _vr_of_raw,
    bulkdata_uri,
    dataset_to_json,
    split_levels,
)
from tests.storage.factory import renderable_corpus

THRESHOLD = 1024


def _dumps(obj: Any) -> str:
    # Type-exact: 5 == 5.0 in Python, but not in the JSON arca serves.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, defer_size=THRESHOLD, force=True)


def _reference_json(ds: Dataset, uri_prefix: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """metadata.dataset_to_json as it was before json_fast and the memo: pydicom only."""
    out: dict[str, Any] = {}
    for base_tag in sorted(ds.keys()):
        tag = int(base_tag)
        if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
            continue
        key = f"{tag:08X}"
        item = ds.get_item(tag, keep_deferred=True)
        if isinstance(item, RawDataElement) and item.value is None and item.length:
            vr = _vr_of_raw(ds, item)
            if vr in BINARY_VRS:
                out[key] = {"vr": vr, "BulkDataURI": f"{uri_prefix}/{'/'.join((*path, key))}"}
                continue
        elem: DataElement = ds[tag]
        if elem.VR == "SQ":
            items = [
                _reference_json(child, uri_prefix, (*path, key, str(i)))
                for i, child in enumerate(elem.value or [])
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if elem.VR in BINARY_VRS and elem.value is not None:
            length = len(elem.value) if not elem.is_empty else 0
            if tag in PIXEL_DATA_TAGS or length > THRESHOLD:
                out[key] = {"vr": elem.VR, "BulkDataURI": f"{uri_prefix}/{'/'.join((*path, key))}"}
                continue
        out[key] = elem.to_json_dict(None, THRESHOLD + 1)
    return out


def _corpus() -> list[Path]:
    return renderable_corpus(lambda path: _reference_json(_read(path), "p"))


@pytest.fixture(scope="module")
def corpus() -> list[Path]:
    files = _corpus()
    assert len(files) > 100  # pydicom's own test files and pydicom-data's
    assert any("data_store" in str(p) for p in files)  # pydicom-data is there
    return files


def _plain_charset(ds: Dataset) -> bool:
    own = ds.get_item(0x0008_0005)
    if own is None:
        return True
    raw = bytes(own.value or b"") if isinstance(own, RawDataElement) else None
    return raw is not None and raw.rstrip(b" \x00") in (b"ISO_IR 100", b"ISO_IR 192")


def _compare_elements(ds: Dataset, plain: bool, counts: dict[str, int], name: str) -> None:
    """Every raw element of ``ds`` (and of its sequences' items): render_raw, when it
    answers, equals pydicom's conversion then to_json_dict."""
    if ds.get_item(0x0008_0005) is not None:
        plain = _plain_charset(ds)
    for base_tag in list(ds.keys()):
        item = ds.get_item(base_tag, keep_deferred=True)
        if isinstance(item, RawDataElement) and item.value is not None:
            vr = item.VR
            if vr is None and not base_tag.is_private:
                try:
                    vr = pydicom.datadict.dictionary_VR(base_tag)
                except KeyError:
                    vr = None
            if vr in FAST_VRS and int(base_tag) not in metadata._LUT_DESCRIPTOR_TAGS:
                fast = render_raw(vr, item.value, item.is_little_endian, plain)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        slow: Any = ds[base_tag].to_json_dict(None, THRESHOLD + 1)
                    except Exception as exc:
                        slow = f"raises {type(exc).__name__}"
                if fast is None:
                    counts["fallback"] += 1
                else:
                    counts["fast"] += 1
                    assert _dumps(fast) == _dumps(slow), (name, base_tag, vr, item.value)
                continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                elem = ds[base_tag]
            except Exception:
                continue
        if elem.VR == "SQ":
            for child in elem.value or []:
                _compare_elements(child, plain, counts, name)


def test_every_fast_rendered_element_of_the_corpus_equals_pydicoms(corpus: list[Path]) -> None:
    counts = {"fast": 0, "fallback": 0}
    for path in corpus:
        _compare_elements(_read(path), True, counts, path.name)
    assert counts["fast"] > 5000
    assert counts["fallback"] > 0  # the corpus does exercise the way back to pydicom


def test_every_corpus_file_renders_as_pure_pydicom_does(
    corpus: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata, "_memo", {})
    for _ in range(2):  # a cold memo, then one warmed by every other file
        for path in corpus:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = dataset_to_json(_read(path), threshold=THRESHOLD, uri_prefix="arca-base:/x")
                slow = _reference_json(_read(path), "arca-base:/x")
            assert _dumps(fast) == _dumps(slow), path.name


def _raw(tag: int, vr: str, value: bytes, little: bool = True) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, little)


EDGE_CASES: list[tuple[int, str, bytes]] = [
    (0x0020_0013, "IS", b" 12 "),
    (0x0020_0013, "IS", b"+5"),
    (0x0020_0013, "IS", b"-0007"),
    (0x0020_0013, "IS", b"  "),
    (0x0020_0013, "IS", b"1.0 "),
    (0x0020_0013, "IS", b"1e3 "),
    (0x0020_0013, "IS", b"12\x00"),
    (0x0020_0013, "IS", b"99999999999"),
    (0x0028_0034, "IS", b"1\\2 "),
    (0x0028_0034, "IS", b"1\\\\2"),
    (0x0028_0034, "IS", b"1\\"),
    (0x0018_0050, "DS", b" 5.000000 "),
    (0x0018_0050, "DS", b"1e3"),
    (0x0018_0050, "DS", b"-.5"),
    (0x0018_0050, "DS", b"5."),
    (0x0018_0050, "DS", b"+1.5E-02"),
    (0x0018_0050, "DS", b"nan "),
    (0x0018_0050, "DS", b"  "),
    (0x0018_0050, "DS", b"1,5 "),
    (0x0018_0050, "DS", b"12345678901234567890"),
    (0x0028_0030, "DS", b"0.5\\0.5"),
    (0x0028_0030, "DS", b"0.5 \\ 0.5 "),
    (0x0028_0030, "DS", b"0.5\\"),
    (0x0008_0018, "UI", b"1.2.3\x00"),
    (0x0008_0018, "UI", b"1.2.3 "),
    (0x0008_0018, "UI", b"\x00\x00"),
    (0x0008_1150, "UI", b"1.2\\3.4"),
    (0x0008_0060, "CS", b"CT "),
    (0x0008_0060, "CS", b" CT"),
    (0x0008_0008, "CS", b"ORIGINAL\\PRIMARY\\\\AXIAL "),
    (0x0008_0008, "CS", b"\\"),
    (0x0008_0060, "CS", b"  "),
    (0x0008_0054, "AE", b" ARCA  \\ B "),
    (0x0008_0054, "AE", b"   "),
    (0x0008_0020, "DA", b"20240115"),
    (0x0008_0020, "DA", b"2024.01.15 "),
    (0x0008_0030, "TM", b"101500.123 "),
    (0x0008_002A, "DT", b"20240115101500+0100"),
    (0x0010_1010, "AS", b"045Y"),
    (0x0010_0020, "LO", b" P1 \x00"),
    (0x0010_0020, "LO", b"P1 \\ P2 "),
    (0x0010_0020, "LO", b"  "),
    (0x0008_1030, "LO", b"Caf\xe9 "),
    (0x0020_0010, "SH", b"a\\b\\"),
    (0x0008_2111, "ST", b"with \\ backslash  \x00"),
    (0x0020_4000, "LT", b"  leading kept  "),
    (0x0040_A160, "UT", b"text\r\nlines \x00"),
    (0x0040_A160, "UT", b"esc \x1b$B"),
    (0x0008_0120, "UR", b"http://x/y \t "),
    (0x0008_0119, "UC", b"long code\\other "),
    (0x0028_0010, "US", struct.pack("<H", 512)),
    (0x0028_0010, "US", struct.pack("<3H", 1, 2, 65535)),
    (0x0028_0010, "US", b"\x01\x02\x03"),
    (0x0028_0120, "SS", struct.pack("<h", -2000)),
    (0x0018_9305, "FD", struct.pack("<d", 2.0)),
    (0x0018_9305, "FD", struct.pack("<2d", 0.1, -1e300)),
    (0x0018_1149, "UL", struct.pack("<L", 4_000_000_000)),
    (0x0018_9219, "SL", struct.pack("<2l", -1, 7)),
    (0x0040_9212, "FL", struct.pack("<f", 0.1)),
    (0x0072_0082, "SV", struct.pack("<q", -(2**40))),
    (0x0072_0083, "UV", struct.pack("<Q", 2**63)),
]


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("plain", [True, False])
def test_edge_cases_equal_pydicoms(little: bool, plain: bool) -> None:
    answered = 0
    for tag, vr, value in EDGE_CASES:
        if not little and vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"):
            code = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}.get(vr, vr)
            size = {"H": 2, "h": 2, "L": 4, "l": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}[code]
            fmt = {"FL": "f", "FD": "d", "SV": "q", "UV": "Q"}.get(code, code)
            if len(value) % size == 0:
                value = struct.pack(
                    f">{len(value) // size}{fmt}",
                    *struct.unpack(f"<{len(value) // size}{fmt}", value),
                )
        raw = _raw(tag, vr, value, little)
        fast = render_raw(vr, value, little, plain)
        if fast is None:
            continue
        answered += 1
        encoding = "iso8859" if plain else ["iso8859", "iso2022_jp"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                slow: Any = convert_raw_data_element(raw, encoding=encoding).to_json_dict(
                    None, THRESHOLD + 1
                )
            except Exception as exc:
                slow = f"raises {type(exc).__name__}"
        assert _dumps(fast) == _dumps(slow), (tag, vr, value)
    assert answered > 40


def test_what_render_raw_leaves_to_pydicom() -> None:
    assert render_raw("PN", b"Doe^John", True, True) is None
    assert render_raw("AT", b"\x10\x00\x10\x00", True, True) is None
    assert render_raw("OB", b"\x00\x01", True, True) is None
    assert render_raw("LO", b"Caf\xe9", True, True) is None  # not ASCII
    assert render_raw("LO", b"abc", True, False) is None  # a character set pydicom decodes
    assert render_raw("CS", b"abc", True, False) == {"vr": "CS", "Value": ["abc"]}  # ISO 8859
    assert render_raw("IS", b"1.0", True, True) is None
    assert render_raw("DS", b"inf", True, True) is None
    assert render_raw("US", b"\x01", True, True) is None
    assert render_raw("CS", b"", True, True) is None


def _reference_analysis(path: Path) -> dict[str, Any]:
    """storage.ingest.analyze's results as it made them before json_fast: identity checks and
    frames first, then the metadata and the index columns through pydicom alone."""
    try:
        size = path.stat().st_size
        ds = _read(path)
        if len(ds) == 0:
            return {"rejected": "empty"}
        problem = check_identity(ds)
        if problem is not None:
            return {"rejected": (int(problem.failure), problem.message)}
        study, series, sop = (
            str(ds[t].value).strip("\x00 ") for t in (0x0020_000D, 0x0020_000E, 0x0008_0018)
        )
        pixel_data = ds.get_item(PIXEL_DATA, keep_deferred=True)
        pixel: dict[str, int | str] = {}
        for keyword in _PIXEL_KEYWORDS:
            value = ds.get(keyword)
            if value is not None and value != "":
                pixel[keyword] = value if isinstance(value, str) else int(value)
        # No rendered metadata: _frames reads what it needs from the data set.
        _, frames = _frames(path, ds, _transfer_syntax(ds), size, pixel_data, None, pixel)
        prefix = bulkdata_uri("arca-base:", study, series, sop, "").rstrip("/")
        meta = _reference_json(ds, prefix)
        return {
            "metadata": _dumps(meta),
            "levels": {k: _dumps(v) for k, v in split_levels(meta).items()},
            "columns": _columns(ds),
            "pixel": _dumps(pixel),
            "frames": frames,
        }
    except Exception as exc:
        return {"rejected": type(exc).__name__}


def _analysis(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = analyze(
                path,
                bulkdata_threshold=THRESHOLD,
                bulkdata_base="arca-base:",
            )
    except IngestRejected as exc:
        return {"rejected": exc}
    return {
        "metadata": _dumps(json.loads(a.metadata_json)),
        "levels": {k: _dumps(json.loads(v)) for k, v in a.level_json.items()},
        "columns": a.columns,
        "pixel": _dumps(a.pixel_attributes),
        "frames": a.frames,
    }


def test_analyze_gives_what_the_pydicom_only_order_gave(
    corpus: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata, "_memo", {})
    analysed = 0
    for path in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = _reference_analysis(path)
        fast = _analysis(path)
        if "rejected" in reference or "rejected" in fast:
            assert "rejected" in reference and "rejected" in fast, (path.name, reference, fast)
            continue
        assert fast == reference, path.name
        analysed += 1
    assert analysed > 50
