"""Reading a cold series while the study is recalled: right bytes, one GET per blob, all hot.

What a viewer does (study metadata, then the series) and a bare series read, both through the
Archive the way WADO-RS reads a multipart body (batches of parts opened concurrently, in
order). The recall and the reads share their downloads (storage.tiering.fetch_cold): every
cold blob is fetched from the object store exactly once, with no HEAD requests, and the bytes
a client read become the hot copy. Speed is the benchmark's business (``bench.run --only
cold``), not this test's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from storage.archive import Archive
from storage.cold import S3BlobReader
from storage.model import InstanceLocation, Tier
from tests.storage_tiers.helpers import StoredStudy, assert_intact, ingest_series, tiers_of

BATCH = 7
"""Parts opened at once, as dicomweb.wado reads ~4 MB batches of 526 KB slices."""


def count_requests(archive: Archive) -> tuple[Counter[str], Counter[str]]:
    """Count GETs (whole-object reads) and HEADs (opens) per key on the cold store."""
    assert archive.cold is not None
    cold = archive.cold
    gets: Counter[str] = Counter()
    heads: Counter[str] = Counter()
    get, open_ = cold.get, cold.open

    async def counted_get(key: str) -> bytes:
        gets[key] += 1
        return await get(key)

    async def counted_open(key: str, expected_sha256: str | None = None) -> S3BlobReader:
        heads[key] += 1
        return await open_(key, expected_sha256)

    cold.get = counted_get  # type: ignore[method-assign]
    cold.open = counted_open  # type: ignore[method-assign]
    return gets, heads


async def read_like_wado(archive: Archive, locations: list[InstanceLocation]) -> list[bytes]:
    """Each batch's parts opened concurrently, read whole, closed; batches in order."""
    out: list[bytes] = []
    for start in range(0, len(locations), BATCH):
        readers = await asyncio.gather(
            *(archive.open_blob(loc) for loc in locations[start : start + BATCH])
        )
        for reader in readers:
            out.append(await reader.read_all())
            await reader.close()
    return out


async def check(archive: Archive, study: StoredStudy, *, via_metadata: bool) -> None:
    assert archive.prefetcher is not None
    await archive.migrate_study(study.study_uid, Tier.COLD)
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}
    gets, heads = count_requests(archive)

    if via_metadata:
        assert len(await archive.instance_metadata(study.study_uid)) == len(study.sha256)
    locations = await archive.locate(study.study_uid, study.series_uid)
    assert {loc.tier for loc in locations} == {Tier.COLD}, "the plan still says cold"
    data = await read_like_wado(archive, locations)
    for loc, blob in zip(locations, data, strict=True):
        assert hashlib.sha256(blob).hexdigest() == study.sha256[loc.sop_instance_uid]

    await archive.prefetcher.wait_idle(timeout=120)
    for _ in range(200):  # the last kept copies are flipped in the background
        if set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}:
            break
        await asyncio.sleep(0.05)
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    keys = {loc.blob_key for loc in locations}
    assert set(gets) == keys and set(gets.values()) == {1}, "one GET per blob, no more"
    assert not heads, "sizes come from the index: no HEAD requests"
    await assert_intact(archive, study)  # one copy each, hot, with its ingest SHA-256
    assert not list((archive.settings.data_dir / "spool").glob("*.part"))


@pytest.mark.parametrize("via_metadata", [True, False], ids=["metadata-first", "series-alone"])
async def test_cold_series_read_during_recall_is_right_and_downloads_once(
    tiered_archive: Archive, tmp_path: Path, via_metadata: bool
) -> None:
    study = await ingest_series(tiered_archive, 24, tmp_path / "in")
    await check(tiered_archive, study, via_metadata=via_metadata)


async def test_a_study_recalled_then_moved_cold_again_is_recalled_again(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    """Nothing remembered from the first recall (written copies, finished fetches) stops the
    second one: the hot copies of the first were deleted by the migration in between."""
    study = await ingest_series(tiered_archive, 8, tmp_path / "in")
    await check(tiered_archive, study, via_metadata=True)
    await check(tiered_archive, study, via_metadata=False)
