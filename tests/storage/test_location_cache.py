"""Instance plans come from their series' plans, loaded once (storage.location_cache), and
this process's deletes and stores are seen at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from storage.archive import Archive
from storage.errors import NotFound
from storage.index import repository
from storage.location_cache import LocationCache
from tests.storage.factory import make_dataset, write


async def test_one_index_query_per_series(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = generate_uid(), generate_uid()
    stored = [
        await archive.ingest(write(make_dataset(study=study, series=series), tmp_path / "in"))
        for _ in range(4)
    ]
    queries: list[tuple[str | None, str | None]] = []
    locate = repository.locate

    async def counting(conn: object, study_uid: str, series_uid: str | None, sop: str | None):  # type: ignore[no-untyped-def]
        queries.append((series_uid, sop))
        return await locate(conn, study_uid, series_uid, sop)  # type: ignore[arg-type]

    monkeypatch.setattr(repository, "locate", counting)
    for outcome in stored:
        [loc] = await archive.locate(study, series, outcome.sop_instance_uid)
        assert loc.sop_instance_uid == outcome.sop_instance_uid
        assert loc.sha256 == outcome.sha256
    assert queries == [(series, None)]

    # A new instance of the series is found (the commit dropped the series' plans).
    added = await archive.ingest(write(make_dataset(study=study, series=series), tmp_path / "in"))
    [loc] = await archive.locate(study, series, added.sop_instance_uid)
    assert loc.sha256 == added.sha256

    # A deleted one is gone at once.
    assert await archive.delete(study, series, stored[0].sop_instance_uid) == 1
    with pytest.raises(NotFound):
        await archive.locate(study, series, stored[0].sop_instance_uid)
    [loc] = await archive.locate(study, series, stored[1].sop_instance_uid)
    assert loc.sop_instance_uid == stored[1].sop_instance_uid


async def test_unknown_instances_and_series_are_not_found(archive: Archive, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    await archive.ingest(write(make_dataset(study=study, series=series), tmp_path / "in"))
    with pytest.raises(NotFound):
        await archive.locate(study, series, generate_uid())
    with pytest.raises(NotFound):
        await archive.locate(study, generate_uid(), generate_uid())


def test_entries_expire_and_the_oldest_series_go_first() -> None:
    cache = LocationCache(ttl_seconds=0.0)
    cache.put_series("1", "2", [])
    assert cache.get("1", "2", "3") is None and cache._series == {}
    cache = LocationCache(ttl_seconds=60.0, max_series=2)
    for n in ("a", "b", "c"):
        cache.put_series("1", n, [])
    assert list(cache._series) == [("1", "b"), ("1", "c")]
