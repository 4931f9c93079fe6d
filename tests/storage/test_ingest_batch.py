"""Committing several prepared instances at once (a STOW-RS slice): one index transaction, yet
each instance succeeds or fails on its own (PS3.18 §10.5), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from conformance.statuses import StowFailure
from storage.archive import Archive
from storage.errors import DuplicateInstance, IngestRejected
from storage.model import IngestOutcome, IngestStatus
from storage.query import Query, QueryLevel
from tests.storage.factory import make_dataset, write


async def _indexed(archive: Archive) -> set[str]:
    result = await archive.search(Query(QueryLevel.IMAGE))
    return {str(ds.SOPInstanceUID) for ds in result.matches}


async def test_one_commit_stores_each_instance_or_says_why_not(
    archive: Archive, tmp_path: Path
) -> None:
    study, series, other_study = generate_uid(), generate_uid(), generate_uid()
    kept = make_dataset(study=study, series=series)
    kept_path = write(kept, tmp_path / "before")
    kept_bytes = kept_path.read_bytes()
    await archive.ingest(kept_path)
    changed = make_dataset(study=study, series=series, sop=str(kept.SOPInstanceUID))
    changed.PatientName = "Other^Content"
    new = [make_dataset(study=study, series=series) for _ in range(3)]
    misfiled = make_dataset(study=other_study, series=series)  # series of another study
    new_series = make_dataset(study=study)
    batch = [new[0], kept, changed, misfiled, new[1], new_series, new[2], new[0]]
    paths = [write(ds, tmp_path / f"in{i}") for i, ds in enumerate(batch)]
    prepared = [await archive.prepare(p) for p in paths]
    results = await archive.commit(prepared)

    assert [type(r) for r in results] == [
        IngestOutcome,
        IngestOutcome,
        DuplicateInstance,
        IngestRejected,
        IngestOutcome,
        IngestOutcome,
        IngestOutcome,
        IngestOutcome,
    ]
    statuses = [r.status for r in results if isinstance(r, IngestOutcome)]
    assert statuses == [
        IngestStatus.STORED,
        IngestStatus.ALREADY_PRESENT,  # byte-identical to what was stored before
        IngestStatus.STORED,
        IngestStatus.STORED,
        IngestStatus.STORED,
        IngestStatus.ALREADY_PRESENT,  # the same object twice in one request
    ]
    refused = results[3]
    assert isinstance(refused, IngestRejected)
    assert refused.failure is StowFailure.CANNOT_UNDERSTAND
    assert study in refused.message and other_study in refused.message
    expected = {str(ds.SOPInstanceUID) for ds in [kept, *new, new_series]}
    assert await _indexed(archive) == expected
    assert all(not p.exists() for p in paths)  # every file consumed
    # Nothing of the refused ones: no study row for the misfiled one, no stray blob.
    studies = (await archive.search(Query(QueryLevel.STUDY))).matches
    assert [str(ds.StudyInstanceUID) for ds in studies] == [study]
    report = await archive.verify()
    assert report.ok and report.orphans == [] and report.instances_checked == len(expected)
    # The stored bytes are the ones sent.
    locations = await archive.locate(study, series, str(kept.SOPInstanceUID))
    reader = await archive.open_blob(locations[0])
    try:
        stored = await reader.read_all()
    finally:
        await reader.close()
    assert stored == kept_bytes


async def test_discarded_preparations_leave_nothing(archive: Archive, tmp_path: Path) -> None:
    paths = [write(make_dataset(), tmp_path / f"in{i}") for i in range(3)]
    prepared = [await archive.prepare(p) for p in paths]
    await archive.discard(prepared)
    assert all(not p.exists() for p in paths)
    assert await _indexed(archive) == set()
    assert [key async for key in archive.hot.iter_keys()] == []


async def test_a_cancelled_commit_never_leaves_a_row_without_its_blob(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index transaction runs in a worker thread that cancelling the caller cannot stop
    (a C-STORE whose bridge timed out, a STOW cancelled at shutdown): if it commits after
    the cancellation, the instance's blob must still be there."""
    from storage.index import repository

    slow_index = repository.index_instances

    def index_slowly(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # still inside the transaction when the caller is cancelled
        return slow_index(*args, **kwargs)

    monkeypatch.setattr(repository, "index_instances", index_slowly)
    ds = make_dataset()
    prepared = [await archive.prepare(write(ds, tmp_path / "in"))]
    commit = asyncio.ensure_future(archive.commit(prepared))
    await asyncio.sleep(0.2)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    await asyncio.sleep(1.0)  # the transaction finishes in its thread meanwhile
    assert str(ds.SOPInstanceUID) in await _indexed(archive)  # it did commit after all
    report = await archive.verify()
    assert report.instances_checked == 1
    assert report.ok, f"indexed but its blob is gone: {report.missing}"


async def test_an_instance_another_writer_indexed_first_leaves_no_empty_study(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers store one SOP Instance UID under two studies at once: the one that loses
    must not leave its new study and series behind with no instance (QIDO would list them)."""
    from storage.index import repository

    first = make_dataset()
    await archive.ingest(write(first, tmp_path / "first"))
    racing = make_dataset(sop=str(first.SOPInstanceUID))  # a new study and series
    racing.PatientName = "Other^Content"
    # As if the first writer's row committed just after this transaction looked it up:
    find = repository.find_instances
    lookups: list[int] = []

    def find_late(conn: Any, uids: Any) -> Any:
        lookups.append(1)
        return {} if len(lookups) <= 2 else find(conn, uids)  # the committer's, then ours

    monkeypatch.setattr(repository, "find_instances", find_late)
    prepared = [await archive.prepare(write(racing, tmp_path / "racing"))]
    [result] = await archive.commit(prepared)
    monkeypatch.setattr(repository, "find_instances", find)
    assert isinstance(result, DuplicateInstance)
    studies = await archive.search(Query(QueryLevel.STUDY))
    assert {str(ds.StudyInstanceUID) for ds in studies.matches} == {str(first.StudyInstanceUID)}
