"""Ingest: what is stored, what is refused (and that a refusal stores nothing), duplicates,
concurrency, out-of-space, byte-identical retrieval, verify."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

import storage.archive
from config.settings import OverwritePolicy
from conformance.statuses import StowFailure
from conformance.validation import RequestedIdentity
from storage.archive import BULKDATA_BASE, Archive
from storage.errors import (
    DuplicateInstance,
    IngestRejected,
    MissingBlob,
    NotFound,
    OutOfResources,
)
from storage.model import IngestStatus, Tier
from storage.query import Query, QueryLevel
from tests.storage.factory import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    make_dataset,
    write,
    write_bare,
)


async def _nothing_stored(archive: Archive, sop_uid: str | None = None) -> None:
    """No index row and no blob anywhere in the hot tier."""
    result = await archive.search(Query(QueryLevel.IMAGE))
    if sop_uid is not None:
        assert all(ds.SOPInstanceUID != sop_uid for ds in result.matches)
    else:
        assert result.matches == []
    keys = [key async for key in archive.hot.iter_keys()]
    assert keys == [] if sop_uid is None else all(sop_uid not in k for k in keys)


def _copy(src: str | Path, tmp_path: Path) -> Path:
    dst = tmp_path / "incoming" / Path(src).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


async def test_stored_bytes_are_returned_identically(archive: Archive, tmp_path: Path) -> None:
    src = get_testdata_file("CT_small.dcm")
    original = Path(src).read_bytes()
    outcome = await archive.ingest(_copy(src, tmp_path))
    assert outcome.status is IngestStatus.STORED
    assert outcome.sha256 == hashlib.sha256(original).hexdigest()
    assert outcome.size == len(original)
    [location] = await archive.locate(outcome.study_uid)
    assert location.tier is Tier.HOT
    reader = await archive.open_blob(location)
    try:
        assert reader.local_path is not None and reader.size == len(original)
        assert await reader.read_all() == original
        assert await reader.read_range(128, 4) == b"DICM"
        assert b"".join([c async for c in reader.iter_chunks(1000)]) == original
    finally:
        await reader.close()
    assert location.blob_key == (
        f"{outcome.study_uid}/{outcome.series_uid}/{outcome.sop_instance_uid}"
        f"-{outcome.sha256[:16]}.dcm"
    )


async def test_incoming_file_is_consumed(archive: Archive, tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "in")
    await archive.ingest(path)
    assert not path.exists()
    bad = tmp_path / "in" / "junk.bin"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(IngestRejected):
        await archive.ingest(bad)
    assert not bad.exists()


async def test_bare_dataset_is_accepted(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset()
    path = write_bare(ds, tmp_path)
    raw = path.read_bytes()
    outcome = await archive.ingest(path)
    assert outcome.transfer_syntax_uid == "1.2.840.10008.1.2"
    [location] = await archive.locate(ds.StudyInstanceUID)
    reader = await archive.open_blob(location)
    assert await reader.read_all() == raw
    await reader.close()
    assert location.frames is not None and len(location.frames) == 1


async def test_metadata_json_has_bulkdata_uris(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(rows=64, columns=64)
    ds.add_new(0x0009_0010, "LO", "ARCA TEST")
    ds.add_new(0x0009_1001, "OB", b"\x01" * 2000)  # over the 1024-byte threshold
    ds.add_new(0x0009_1002, "OB", b"\x02" * 10)  # under: inline
    outcome = await archive.ingest(write(ds, tmp_path))
    [meta_bytes] = await archive.instance_metadata(outcome.study_uid)
    meta = json.loads(meta_bytes)
    base = (
        f"{BULKDATA_BASE}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
        f"/instances/{outcome.sop_instance_uid}/bulkdata"
    )
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/7FE00010"}
    assert meta["00091001"] == {"vr": "OB", "BulkDataURI": f"{base}/00091001"}
    assert "InlineBinary" in meta["00091002"]
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert "00020010" not in meta  # File Meta is not part of the data set
    [location] = await archive.locate(outcome.study_uid)
    assert await archive.read_bulkdata(location, "00091001") == b"\x01" * 2000
    assert await archive.read_bulkdata(location, "7FE00010") == ds.PixelData
    with pytest.raises(NotFound):
        await archive.read_bulkdata(location, "00091234")
    with pytest.raises(NotFound):
        await archive.read_bulkdata(location, "nonsense")


async def test_nested_bulkdata_path(archive: Archive, tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    ds = make_dataset()
    item = Dataset()
    item.add_new(0x0028_3006, "OW", b"\x00\x01" * 1000)  # LUTData, 2000 bytes
    item.LUTDescriptor = [1000, 0, 16]
    ds.VOILUTSequence = [Dataset(), item]
    outcome = await archive.ingest(write(ds, tmp_path))
    meta = json.loads((await archive.instance_metadata(outcome.study_uid))[0])
    uri = meta["00283010"]["Value"][1]["00283006"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/00283010/1/00283006")
    [location] = await archive.locate(outcome.study_uid)
    assert await archive.read_bulkdata(location, "00283010/1/00283006") == b"\x00\x01" * 1000
    with pytest.raises(NotFound):
        await archive.read_bulkdata(location, "00283010/5/00283006")


async def test_same_bytes_twice_is_already_present(archive: Archive, tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "a")
    copy = tmp_path / "copy.dcm"
    shutil.copyfile(path, copy)
    first = await archive.ingest(path)
    second = await archive.ingest(copy)
    assert first.status is IngestStatus.STORED
    assert second.status is IngestStatus.ALREADY_PRESENT
    assert second.sha256 == first.sha256
    keys = [key async for key in archive.hot.iter_keys()]
    assert len(keys) == 1
    assert len(await archive.locate(first.study_uid)) == 1


async def test_other_bytes_same_uid_is_rejected(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(pixel_value=1)
    first = await archive.ingest(write(ds, tmp_path / "a"))
    ds.PixelData = b"\x07" * len(ds.PixelData)
    with pytest.raises(DuplicateInstance) as caught:
        await archive.ingest(write(ds, tmp_path / "b"))
    assert caught.value.failure is StowFailure.DUPLICATE_SOP_INSTANCE
    [location] = await archive.locate(first.study_uid)
    assert location.sha256 == first.sha256
    assert [key async for key in archive.hot.iter_keys()] == [location.blob_key]


@pytest.mark.parametrize("storage_settings", [OverwritePolicy.REPLACE], indirect=True)
async def test_replace_policy_swaps_the_blob(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset(pixel_value=1)
    first = await archive.ingest(write(ds, tmp_path / "a"))
    ds.PixelData = b"\x07" * len(ds.PixelData)
    ds.SeriesDescription = "replaced"
    path = write(ds, tmp_path / "b")
    new_bytes = path.read_bytes()
    second = await archive.ingest(path)
    assert second.status is IngestStatus.STORED and second.sha256 != first.sha256
    [location] = await archive.locate(first.study_uid)
    assert location.sha256 == second.sha256
    reader = await archive.open_blob(location)
    assert await reader.read_all() == new_bytes
    await reader.close()
    # The old blob is gone; only the new one remains.
    assert [key async for key in archive.hot.iter_keys()] == [location.blob_key]
    [series] = (
        await archive.search(Query(QueryLevel.SERIES, include=frozenset({0x0008103E})))
    ).matches
    assert series.NumberOfSeriesRelatedInstances == 1


@pytest.mark.parametrize(
    ("mutate", "failure", "words"),
    [
        (
            lambda ds: delattr(ds, "StudyInstanceUID"),
            StowFailure.CANNOT_UNDERSTAND,
            "StudyInstanceUID",
        ),
        (
            lambda ds: delattr(ds, "SeriesInstanceUID"),
            StowFailure.CANNOT_UNDERSTAND,
            "SeriesInstanceUID",
        ),
        (
            lambda ds: setattr(ds, "SOPInstanceUID", "not-a-uid"),
            StowFailure.CANNOT_UNDERSTAND,
            "SOPInstanceUID",
        ),
        (lambda ds: delattr(ds, "SOPClassUID"), StowFailure.CANNOT_UNDERSTAND, "SOPClassUID"),
        (
            lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.3.1.2.3.3"),  # MPPS: not storage
            StowFailure.SOP_CLASS_NOT_SUPPORTED,
            "not a storage SOP class",
        ),
        (
            lambda ds: setattr(ds.file_meta, "MediaStorageSOPClassUID", MR_IMAGE_STORAGE),
            StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "MediaStorageSOPClassUID",
        ),
        (
            lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3.4"),
            StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "MediaStorageSOPInstanceUID",
        ),
    ],
    ids=["no-study", "no-series", "bad-sop", "no-class", "not-storage", "meta-class", "meta-sop"],
)
async def test_rejections_store_nothing(
    archive: Archive, tmp_path: Path, mutate: object, failure: StowFailure, words: str
) -> None:
    ds = make_dataset()
    mutate(ds)  # type: ignore[operator]
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(write(ds, tmp_path, "x.dcm"))
    assert caught.value.failure is failure
    assert words in caught.value.message
    await _nothing_stored(archive)


async def test_uids_are_read_without_their_padding(archive: Archive, tmp_path: Path) -> None:
    # Odd-length UIDs are written padded with a NUL (PS3.5 §9.1); an empty one is missing.
    ds = make_dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID("1.2.826.0.1.3"), UID("1.2.826.0.1.35")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.357")
    path = write(ds, tmp_path, "odd.dcm")
    assert b"1.2.826.0.1.3\x00" in path.read_bytes()
    stored = await archive.ingest(path)
    assert (stored.study_uid, stored.series_uid, stored.sop_instance_uid) == (
        "1.2.826.0.1.3",
        "1.2.826.0.1.35",
        "1.2.826.0.1.357",
    )
    ds.SeriesInstanceUID = UID("")
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(write(ds, tmp_path, "empty.dcm"))
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    assert "SeriesInstanceUID is missing" in caught.value.message


async def test_expected_study_mismatch_names_both(archive: Archive, tmp_path: Path) -> None:
    ds = make_dataset()
    other = generate_uid()
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(write(ds, tmp_path), requested=RequestedIdentity(study_uid=other))
    assert caught.value.failure is StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert ds.StudyInstanceUID in caught.value.message and other in caught.value.message
    await _nothing_stored(archive)
    ok = await archive.ingest(
        write(ds, tmp_path), requested=RequestedIdentity(study_uid=ds.StudyInstanceUID)
    )
    assert ok.status is IngestStatus.STORED


async def test_expected_sop_class_mismatch_is_refused(archive: Archive, tmp_path: Path) -> None:
    """A C-STORE names the SOP class (Affected SOP Class UID); a data set of another class is
    refused with 0xA900 (PS3.4 B.2.3), even when its own File Meta agrees with it."""
    ds = make_dataset(sop_class=MR_IMAGE_STORAGE)
    assert ds.file_meta.MediaStorageSOPClassUID == MR_IMAGE_STORAGE  # only the request differs
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(
            write(ds, tmp_path), requested=RequestedIdentity(sop_class_uid=CT_IMAGE_STORAGE)
        )
    assert caught.value.failure is StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert MR_IMAGE_STORAGE in caught.value.message and CT_IMAGE_STORAGE in caught.value.message
    await _nothing_stored(archive)


async def test_expected_sop_class_leaves_a_damaged_class_to_the_other_checks(
    archive: Archive, tmp_path: Path
) -> None:
    ds = make_dataset()
    ds.SOPClassUID = "not-a-uid"
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(
            write(ds, tmp_path), requested=RequestedIdentity(sop_class_uid=CT_IMAGE_STORAGE)
        )
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    ok = make_dataset()
    stored = await archive.ingest(
        write(ok, tmp_path), requested=RequestedIdentity(sop_class_uid=CT_IMAGE_STORAGE)
    )
    assert stored.status is IngestStatus.STORED


async def test_non_dicom_bytes(archive: Archive, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"This is not DICOM at all.\n" * 50)
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(path)
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    await _nothing_stored(archive)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(empty)
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND


@pytest.mark.parametrize("cut", [0.5, 0.95])
async def test_truncated_native_pixel_data(archive: Archive, tmp_path: Path, cut: float) -> None:
    path = write(make_dataset(rows=32, columns=32), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(path)
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    await _nothing_stored(archive)


async def test_native_pixel_data_shorter_than_its_attributes(
    archive: Archive, tmp_path: Path
) -> None:
    ds = make_dataset(rows=32, columns=32)
    ds.PixelData = ds.PixelData[:-64]  # consistent file, but fewer bytes than Rows*Columns*2
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(write(ds, tmp_path))
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    assert "Pixel Data" in caught.value.message
    await _nothing_stored(archive)


async def test_truncated_encapsulated_pixel_data(archive: Archive, tmp_path: Path) -> None:
    src = Path(get_testdata_file("emri_small_jpeg_2k_lossless.dcm"))
    data = src.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:-8])  # drops the Sequence Delimitation Item
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(path)
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    assert "truncated" in caught.value.message
    path.write_bytes(data[:-3000])  # a fragment runs past the end
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(path)
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    await _nothing_stored(archive)


async def test_concurrent_ingest_of_one_new_study(archive: Archive, tmp_path: Path) -> None:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    paths = [
        write(
            make_dataset(study=study, series=series_a if i % 2 else series_b, instance_number=i),
            tmp_path / "in",
        )
        for i in range(24)
    ]
    outcomes = await asyncio.gather(*(archive.ingest(p) for p in paths))
    assert all(o.status is IngestStatus.STORED for o in outcomes)
    studies = (await archive.search(Query(QueryLevel.STUDY))).matches
    assert len(studies) == 1
    assert studies[0].NumberOfStudyRelatedSeries == 2
    assert studies[0].NumberOfStudyRelatedInstances == 24
    assert len((await archive.search(Query(QueryLevel.SERIES))).matches) == 2
    patients = (await archive.search(Query(QueryLevel.PATIENT))).matches
    assert len(patients) == 1


async def test_concurrent_same_instance_is_stored_once(archive: Archive, tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "src")
    copies = []
    for i in range(6):
        copy = tmp_path / f"c{i}.dcm"
        shutil.copyfile(path, copy)
        copies.append(copy)
    outcomes = await asyncio.gather(*(archive.ingest(c) for c in copies))
    statuses = sorted(o.status.value for o in outcomes)
    assert statuses.count("stored") == 1 and statuses.count("already_present") == 5
    assert len([k async for k in archive.hot.iter_keys()]) == 1
    report = await archive.verify()
    assert report.ok and report.orphans == [] and report.instances_checked == 1


class _NoSpaceStore:
    """The real hot store, but ``put_file`` and ``adopt_files`` fail as a full disk does.

    INJECTED failure: the OSError(ENOSPC) is raised by this wrapper, not by a real full
    filesystem (no small tmpfs is available to the tests). What is tested is the archive's
    handling: the right error, nothing indexed, nothing left behind.
    """

    def __init__(self, inner: object, code: int) -> None:
        self._inner = inner
        self._code = code

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def put_file(self, key: str, source: Path) -> None:
        from storage.hot import translate_os_error

        raise translate_os_error(OSError(self._code, "injected"), f"storing blob {key}")

    async def adopt_files(self, items: list[tuple[str, Path]]) -> list[object]:
        from storage.hot import translate_os_error

        return [
            translate_os_error(OSError(self._code, "injected"), f"storing blob {key}")
            for key, _ in items
        ]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_out_of_space_is_out_of_resources(
    archive: Archive, tmp_path: Path, code: int
) -> None:
    archive.hot = _NoSpaceStore(archive.hot, code)  # type: ignore[assignment]
    ds = make_dataset()
    with pytest.raises(OutOfResources):
        await archive.ingest(write(ds, tmp_path))
    await _nothing_stored(archive)


async def test_hot_store_maps_real_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os-level injection: os.replace itself raises ENOSPC inside the real put_file."""
    import os

    from storage.hot import HotFilesystemStore

    store = HotFilesystemStore(tmp_path / "hot")
    source = tmp_path / "blob"
    source.write_bytes(b"x" * 100)

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutOfResources):
        await store.put_file("a/b/c.dcm", source)
    assert not (tmp_path / "hot" / "a" / "b" / "c.dcm").exists()
    assert list((tmp_path / "hot" / ".tmp").iterdir()) == []
    assert source.exists()  # the caller's file is untouched on failure


async def test_verify_finds_missing_corrupt_and_orphans(archive: Archive, tmp_path: Path) -> None:
    study = generate_uid()
    outcomes = [
        await archive.ingest(write(make_dataset(study=study), tmp_path / "in")) for _ in range(3)
    ]
    report = await archive.verify()
    assert report.ok and report.instances_checked == 3
    locations = await archive.locate(study)
    hot_root = archive.settings.data_dir / "hot"
    (hot_root / locations[0].blob_key).unlink()
    corrupt_path = hot_root / locations[1].blob_key
    data = bytearray(corrupt_path.read_bytes())
    data[-1] ^= 0xFF
    corrupt_path.write_bytes(bytes(data))
    orphan = hot_root / study / "1.2.3" / "1.2.3.4-0123456789abcdef.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a crash")
    report = await archive.verify()
    assert not report.ok
    assert report.missing == [locations[0].sop_instance_uid]
    assert report.corrupt == [locations[1].sop_instance_uid]
    assert report.orphans == [f"{study}/1.2.3/1.2.3.4-0123456789abcdef.dcm"]
    scoped = await archive.verify(study)
    assert scoped.orphans == report.orphans and scoped.instances_checked == 3
    assert {o.sop_instance_uid for o in outcomes} == {loc.sop_instance_uid for loc in locations}


async def test_verify_walks_the_index_in_pages(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.archive, "VERIFY_PAGE", 2)  # 5 instances: three pages
    study = generate_uid()
    for _ in range(5):
        await archive.ingest(write(make_dataset(study=study), tmp_path / "in"))
    last = (await archive.locate(study))[-1]
    (archive.settings.data_dir / "hot" / last.blob_key).unlink()
    seen: list[tuple[int, int]] = []
    report = await archive.verify(progress=lambda checked, total: seen.append((checked, total)))
    assert report.instances_checked == 5
    assert report.missing == [last.sop_instance_uid]
    assert seen == [(2, 5), (4, 5), (5, 5)]


async def test_delete_levels_and_empty_parents(archive: Archive, tmp_path: Path) -> None:
    study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
    for _ in range(2):
        await archive.ingest(write(make_dataset(study=study, series=series_a), tmp_path / "in"))
        await archive.ingest(write(make_dataset(study=study, series=series_b), tmp_path / "in"))
    sop = (await archive.locate(study, series_a))[0].sop_instance_uid
    assert await archive.delete(study, series_a, sop) == 1
    assert len(await archive.locate(study)) == 3
    assert await archive.delete(study, series_a) == 1
    with pytest.raises(NotFound):
        await archive.locate(study, series_a)
    assert len((await archive.search(Query(QueryLevel.SERIES))).matches) == 1
    assert await archive.delete(study) == 2
    with pytest.raises(NotFound):
        await archive.delete(study)
    with pytest.raises(NotFound):
        await archive.instance_metadata(study)
    assert (await archive.search(Query(QueryLevel.PATIENT))).matches == []
    assert [k async for k in archive.hot.iter_keys()] == []
    assert (await archive.verify()).instances_checked == 0


async def test_locate_and_metadata_order(archive: Archive, tmp_path: Path) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    for number, series_uid, series_number in [(3, s1, 1), (1, s1, 1), (2, s2, 2), (1, s2, 2)]:
        await archive.ingest(
            write(
                make_dataset(
                    study=study,
                    series=series_uid,
                    series_number=series_number,
                    instance_number=number,
                ),
                tmp_path / "in",
            )
        )
    locations = await archive.locate(study)
    assert locations[0].series_uid == s1
    metas = [json.loads(m) for m in await archive.instance_metadata(study)]
    assert [(m["0020000E"]["Value"][0], m["00200013"]["Value"][0]) for m in metas] == [
        (s1, 1),
        (s1, 3),
        (s2, 1),
        (s2, 2),
    ]
    assert [m["00080018"]["Value"][0] for m in metas] == [loc.sop_instance_uid for loc in locations]
    with pytest.raises(NotFound):
        await archive.locate(study, generate_uid())
    with pytest.raises(NotFound):
        await archive.locate(generate_uid())


@pytest.mark.parametrize("storage_settings", [OverwritePolicy.REPLACE], indirect=True)
async def test_replacement_in_another_study_removes_the_empty_old_one(
    archive: Archive, tmp_path: Path
) -> None:
    ds = make_dataset(patient_id="OLD")
    old_study = ds.StudyInstanceUID
    await archive.ingest(write(ds, tmp_path / "a"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "NEW"
    outcome = await archive.ingest(write(ds, tmp_path / "b"))
    assert outcome.status is IngestStatus.STORED
    with pytest.raises(NotFound):
        await archive.locate(old_study)
    assert len(await archive.locate(ds.StudyInstanceUID)) == 1
    patients = (await archive.search(Query(QueryLevel.PATIENT))).matches
    assert [p.PatientID for p in patients] == ["NEW"]
    assert (await archive.verify()).orphans == []


async def test_unreadable_incoming_file_is_a_storage_error(
    archive: Archive, tmp_path: Path
) -> None:
    from storage.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        await archive.ingest(tmp_path / "does-not-exist.dcm")


def test_index_errors_map_to_storage_errors() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from storage.errors import StoreUnavailable
    from storage.index.engine import index_error

    full = OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert isinstance(index_error(full), OutOfResources)
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert isinstance(index_error(locked), StoreUnavailable)
    assert isinstance(index_error(OSError(errno.ENOSPC, "full")), OutOfResources)
    assert isinstance(index_error(ConnectionRefusedError(111, "refused")), StoreUnavailable)


async def test_index_failure_after_blob_write_leaves_nothing(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED: the index transaction fails after the blob is durable (as when the
    database goes away); the blob no row names is removed and nothing is visible."""
    from storage.errors import StoreUnavailable
    from storage.index import repository

    def broken(*_args: object, **_kwargs: object) -> dict[str, object]:
        raise StoreUnavailable("injected: database went away")

    monkeypatch.setattr(repository, "_instance_values", broken)
    ds = make_dataset()
    with pytest.raises(StoreUnavailable):
        await archive.ingest(write(ds, tmp_path))
    monkeypatch.undo()
    await _nothing_stored(archive)
    assert (await archive.verify()).orphans == []


async def test_series_deleted_under_a_concurrent_ingest_is_recreated(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED race: the first transaction joins a series row that a concurrent delete has
    just removed (its id no longer exists), the foreign key refuses the instance; the
    ingest retries once and creates the series anew."""
    from storage.index import repository

    real = repository._series_pk
    calls = 0

    def stale_then_real(conn, analysis, cache):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return 987_654 if calls == 1 else real(conn, analysis, cache)

    monkeypatch.setattr(repository, "_series_pk", stale_then_real)
    ds = make_dataset()
    outcome = await archive.ingest(write(ds, tmp_path))
    assert outcome.status is IngestStatus.STORED and calls == 2
    assert len(await archive.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID)) == 1


async def test_series_uid_of_another_study_is_refused(archive: Archive, tmp_path: Path) -> None:
    # PS3.3 C.7.3.1: a SeriesInstanceUID belongs to one study. A sender that reuses it in
    # another study gets a refusal naming both studies; nothing is filed under the first.
    series = generate_uid()
    first_study, second_study = generate_uid(), generate_uid()
    await archive.ingest(write(make_dataset(study=first_study, series=series), tmp_path / "a"))
    second = make_dataset(study=second_study, series=series)
    with pytest.raises(IngestRejected) as caught:
        await archive.ingest(write(second, tmp_path / "b"))
    assert caught.value.failure is StowFailure.CANNOT_UNDERSTAND
    assert first_study in caught.value.message and second_study in caught.value.message
    await _nothing_stored(archive, second.SOPInstanceUID)
    [study] = (await archive.search(Query(QueryLevel.STUDY))).matches
    assert study.StudyInstanceUID == first_study
    assert study.NumberOfStudyRelatedInstances == 1


async def test_concurrent_series_uid_reuse_across_studies(archive: Archive, tmp_path: Path) -> None:
    # Two studies racing to create the same series: one wins, the other is refused.
    series = generate_uid()
    paths = [
        write(make_dataset(study=generate_uid(), series=series), tmp_path / f"s{i}")
        for i in range(2)
    ]
    results = await asyncio.gather(*(archive.ingest(p) for p in paths), return_exceptions=True)
    stored = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, IngestRejected)]
    assert len(stored) == 1 and len(refused) == 1
    assert len((await archive.search(Query(QueryLevel.STUDY))).matches) == 1


async def test_lost_blob_is_an_integrity_fault_not_not_found(
    archive: Archive, tmp_path: Path
) -> None:
    outcome = await archive.ingest(write(make_dataset(), tmp_path / "in"))
    [location] = await archive.locate(outcome.study_uid)
    await archive.hot.delete(location.blob_key)  # lost behind the archive's back
    with pytest.raises(MissingBlob, match="arca verify"):
        await archive.open_blob(location)
    # Deleted through the archive after locate(): that one really is gone (404).
    await archive.delete(outcome.study_uid)
    with pytest.raises(NotFound):
        await archive.open_blob(location)
