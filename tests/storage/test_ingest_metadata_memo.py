"""The memo of rendered elements (storage.metadata) never changes the metadata: every file of
pydicom's test corpus renders the same with an empty memo and with a memo warmed by all the
other files (other character sets, byte orders, implicit VR, private tags, sequences). The
index columns read from the rendered metadata equal those read through pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest

from storage import metadata
from storage.ingest import _columns
from storage.metadata import dataset_to_json
from tests.storage.factory import renderable_corpus


def _renders(path: Path) -> None:
    ds = pydicom.dcmread(path, defer_size=1024, force=True)
    dataset_to_json(ds, threshold=1024, uri_prefix="p")


def _corpus() -> list[Path]:
    return renderable_corpus(_renders)


def _render(path: Path) -> dict[str, Any]:
    """Read afresh each time: rendering converts the raw elements it reads in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=1024, force=True)
        return dataset_to_json(ds, threshold=1024, uri_prefix="arca-base:/x")


def test_warm_memo_renders_every_file_as_a_cold_one(monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _corpus()
    assert len(corpus) > 50
    cold = {}
    for path in corpus:
        monkeypatch.setattr(metadata, "_memo", {})
        cold[path] = _render(path)
    monkeypatch.setattr(metadata, "_memo", {})
    for _ in range(2):
        for path in corpus:
            assert _render(path) == cold[path], path.name
    assert len(metadata._memo) > 1000  # the memo was in use


def test_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "_memo", {})
    monkeypatch.setattr(metadata, "_MEMO_LIMIT", 50)
    for path in _corpus()[:20]:
        _render(path)
        assert len(metadata._memo) <= 50


def test_columns_from_rendered_metadata_equal_pydicoms() -> None:
    corpus = _corpus()
    compared = 0
    for path in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = _columns(pydicom.dcmread(path, defer_size=1024, force=True))
            ds = pydicom.dcmread(path, defer_size=1024, force=True)
            meta = dataset_to_json(ds, threshold=1024, uri_prefix="arca-base:/x")
            assert _columns(ds, meta) == reference, path.name
        compared += sum(v is not None for level in reference.values() for v in level.values())
    assert compared > 500  # the corpus does fill the columns
