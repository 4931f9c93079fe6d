"""Query model → SQL: every matching form of PS3.4 C.2.2.2 on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.errors import InvalidQuery
from storage.query import MatchKey, Query, QueryLevel
from tests.storage.factory import MR_IMAGE_STORAGE, make_dataset, write

STUDY_DESCRIPTION = 0x0008_1030
PATIENT_COMMENTS = 0x0010_4000


@dataclass
class Corpus:
    a: str
    b: str
    c: str
    a_ct: str
    a_mr: str
    b_mr: str
    d: str = ""
    """Another study of PatientID P1 under another name (and no StudyTime)."""


# One corpus per backend for the whole module: the tests only read it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def archive_and_corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Archive, Corpus]]:
    tmp_path = tmp_path_factory.mktemp(f"query-{request.param}")
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        settings = StorageSettings(data_dir=tmp_path / "data", index_url=url)
    else:
        settings = StorageSettings(data_dir=tmp_path / "data")
    archive = await open_archive(settings)
    try:
        yield archive, await _ingest_corpus(archive, tmp_path)
    finally:
        await archive.close()


@pytest.fixture
def archive(archive_and_corpus: tuple[Archive, Corpus]) -> Archive:
    return archive_and_corpus[0]


@pytest.fixture
def corpus(archive_and_corpus: tuple[Archive, Corpus]) -> Corpus:
    return archive_and_corpus[1]


async def _ingest_corpus(archive: Archive, tmp_path: Path) -> Corpus:
    a, b, c = generate_uid(), generate_uid(), generate_uid()
    a_ct, a_mr, b_mr, c_us = (generate_uid() for _ in range(4))
    common_a = dict(
        study=a,
        patient_id="P1",
        patient_name="Doe^John",
        study_date="20240115",
        study_time="101500",
        accession="ACC-A",
        StudyDescription="Head CT",
    )
    datasets = [
        make_dataset(
            series=a_ct,
            modality="CT",
            series_number=1,
            instance_number=i,
            AcquisitionDateTime=f"2024011510{i:02d}00",
            **common_a,
        )
        for i in (3, 1, 2)
    ]
    datasets += [
        make_dataset(
            series=a_mr,
            modality="MR",
            series_number=2,
            instance_number=i,
            sop_class=MR_IMAGE_STORAGE,
            **common_a,
        )
        for i in (1, 2)
    ]
    request = Dataset()
    request.ScheduledProcedureStepID = "SPS1"
    request.RequestedProcedureID = "RP1"
    other = Dataset()
    other.ScheduledProcedureStepID = "SPS9"
    other.RequestedProcedureID = "RP9"
    datasets.append(
        make_dataset(
            study=b,
            series=b_mr,
            patient_id="P2",
            patient_name="Müller^Jürgen",
            study_date="20240301",
            study_time="083000",
            accession="ACC-B",
            modality="MR",
            sop_class=MR_IMAGE_STORAGE,
            RequestAttributesSequence=[request, other],
            PerformedProcedureStepStartDate="20240301",
            PerformedProcedureStepStartTime="0835",
        )
    )
    datasets.append(
        make_dataset(
            study=c,
            series=c_us,
            patient_id="P3",
            patient_name="doe^jane",
            study_date="20231231",
            study_time="235959",
            accession="A%B_1",
            modality="US",
        )
    )
    d = generate_uid()
    datasets.append(
        make_dataset(
            study=d,
            patient_id="P1",
            patient_name="Roe^Richard",
            study_date="19990101",
            study_time="",
            accession="OTHER",
            modality="OT",
            ReferringPhysicianName="",
        )
    )
    for ds in datasets:
        await archive.ingest(write(ds, tmp_path / "corpus"))
    return Corpus(a, b, c, a_ct, a_mr, b_mr, d)


def key(tag: int, value: str) -> MatchKey:
    return MatchKey.parse(tag, value)


async def studies(archive: Archive, *keys: MatchKey, **kwargs: object) -> list[str]:
    result = await archive.search(Query(QueryLevel.STUDY, keys=keys, **kwargs))  # type: ignore[arg-type]
    return [ds.StudyInstanceUID for ds in result.matches]


async def test_universal_returns_everything_in_stable_order(
    archive: Archive, corpus: Corpus
) -> None:
    # Newest first, by StudyDate then StudyTime.
    everything = [corpus.b, corpus.a, corpus.c, corpus.d]
    assert await studies(archive) == everything
    assert await studies(archive, key(0x0010_0010, "")) == everything
    assert await studies(archive, key(0x0010_0010, "*")) == everything


async def test_patient_attributes_are_matched_per_study(archive: Archive, corpus: Corpus) -> None:
    # Study D shares PatientID P1 with study A but names another person: the patients row
    # is shared, yet a study search by name must find only the study that carries it.
    assert await studies(archive, key(0x0010_0010, "Roe^Richard")) == [corpus.d]
    assert await studies(archive, key(0x0010_0010, "Doe^John")) == [corpus.a]
    assert await studies(archive, key(0x0010_0020, "P1")) == [corpus.a, corpus.d]
    names = {
        ds.StudyInstanceUID: str(ds.PatientName)
        for ds in (await archive.search(Query(QueryLevel.STUDY))).matches
    }
    assert names[corpus.a] == "Doe^John" and names[corpus.d] == "Roe^Richard"
    series = await archive.search(Query(QueryLevel.SERIES, keys=(key(0x0010_0010, "roe*"),)))
    assert [ds.StudyInstanceUID for ds in series.matches] == [corpus.d]


async def test_limit_and_offset(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, limit=2) == [corpus.b, corpus.a]
    assert await studies(archive, limit=2, offset=1) == [corpus.a, corpus.c]
    assert await studies(archive, limit=2, offset=3) == [corpus.d]
    assert await studies(archive, offset=4) == []


async def test_single_value(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0008_0050, "ACC-A")) == [corpus.a]
    assert await studies(archive, key(0x0010_0020, "P2")) == [corpus.b]
    assert await studies(archive, key(0x0008_0020, "20240115")) == [corpus.a]
    assert await studies(archive, key(0x0020_0010, "nope")) == []
    # Values other than PN are case-sensitive (PS3.4 C.2.2.2.1).
    assert await studies(archive, key(0x0008_0050, "acc-a")) == []


async def test_several_values_match_any(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0008_0050, "ACC-A\\A%B_1")) == [corpus.a, corpus.c]
    assert await studies(archive, key(0x0008_0050, "ACC-B\\A%*")) == [corpus.b, corpus.c]
    series = await archive.search(Query(QueryLevel.SERIES, keys=(key(0x0008_0060, "CT\\US"),)))
    assert len(series.matches) == 2


async def test_pn_is_case_insensitive(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0010_0010, "DOE^JOHN")) == [corpus.a]
    assert await studies(archive, key(0x0010_0010, "doe^john")) == [corpus.a]
    assert await studies(archive, key(0x0010_0010, "Doe^John^^")) == [corpus.a]
    assert await studies(archive, key(0x0010_0010, "Doe")) == []  # not fuzzy: whole name
    assert await studies(archive, key(0x0008_0090, "welby^marcus")) == [
        corpus.b,
        corpus.a,
        corpus.c,
    ]


async def test_wildcards(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0010_0010, "doe*")) == [corpus.a, corpus.c]
    assert await studies(archive, key(0x0010_0010, "*J?RGEN")) == [corpus.b]
    assert await studies(archive, key(0x0008_0050, "ACC-?")) == [corpus.b, corpus.a]
    assert await studies(archive, key(0x0008_0050, "acc*")) == []  # SH: case-sensitive
    # SQL's own wildcards in values are literal characters, not patterns.
    assert await studies(archive, key(0x0008_0050, "A%B*")) == [corpus.c]
    assert await studies(archive, key(0x0008_0050, "A_B*")) == []
    assert await studies(archive, key(0x0008_0050, "A?B?1")) == [corpus.c]
    assert await studies(archive, key(0x0008_1030, "*CT")) == [corpus.a]


async def test_fuzzy_pn(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0010_0010, "joh"), fuzzy=True) == [corpus.a]
    assert await studies(archive, key(0x0010_0010, "doe"), fuzzy=True) == [corpus.a, corpus.c]
    assert await studies(archive, key(0x0010_0010, "jur"), fuzzy=True) == [corpus.b]
    assert await studies(archive, key(0x0010_0010, "jür"), fuzzy=True) == [corpus.b]
    assert await studies(archive, key(0x0010_0010, "doe^ja"), fuzzy=True) == [corpus.c]
    assert await studies(archive, key(0x0010_0010, "ohn"), fuzzy=True) == []  # prefix only
    assert await studies(archive, key(0x0010_0010, "joh")) == []


async def test_date_ranges(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0008_0020, "20240101-20240201")) == [corpus.a]
    assert await studies(archive, key(0x0008_0020, "20240101-")) == [corpus.b, corpus.a]
    assert await studies(archive, key(0x0008_0020, "-20231231")) == [corpus.c, corpus.d]
    assert await studies(archive, key(0x0008_0020, "20000101-20231231")) == [corpus.c]
    assert await studies(archive, key(0x0008_0020, "20240115-20240115")) == [corpus.a]


async def test_time_ranges(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0008_0030, "0800-1000")) == [corpus.b]
    assert await studies(archive, key(0x0008_0030, "-0900")) == [corpus.b]
    assert await studies(archive, key(0x0008_0030, "10-")) == [corpus.a, corpus.c]
    # An hour-only upper bound includes the whole hour.
    assert await studies(archive, key(0x0008_0030, "09-10")) == [corpus.a]
    assert await studies(archive, key(0x0008_0030, "23:59-")) == [corpus.c]
    assert await studies(archive, key(0x0008_0030, "101500")) == [corpus.a]


async def test_datetime_range(archive: Archive, corpus: Corpus) -> None:
    found = await archive.search(
        Query(QueryLevel.IMAGE, keys=(key(0x0008_002A, "202401151001-202401151002"),))
    )
    assert sorted(ds.InstanceNumber for ds in found.matches) == [1, 2]
    found = await archive.search(Query(QueryLevel.IMAGE, keys=(key(0x0008_002A, "2024-"),)))
    assert len(found.matches) == 3


async def test_uid_lists(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0020_000D, f"{corpus.a}\\{corpus.c}")) == [
        corpus.a,
        corpus.c,
    ]
    assert await studies(archive, key(0x0020_000D, f"{corpus.c},{corpus.b}")) == [
        corpus.b,
        corpus.c,
    ]


async def test_nested_scoping(archive: Archive, corpus: Corpus) -> None:
    in_a = await archive.search(Query(QueryLevel.SERIES, keys=(key(0x0020_000D, corpus.a),)))
    assert [ds.SeriesInstanceUID for ds in in_a.matches] == [corpus.a_ct, corpus.a_mr]
    assert all(ds.StudyInstanceUID == corpus.a for ds in in_a.matches)
    images = await archive.search(
        Query(QueryLevel.IMAGE, keys=(key(0x0020_000D, corpus.a), key(0x0020_000E, corpus.a_ct)))
    )
    assert [ds.InstanceNumber for ds in images.matches] == [1, 2, 3]
    assert all(ds.SeriesInstanceUID == corpus.a_ct for ds in images.matches)
    wrong = await archive.search(
        Query(QueryLevel.IMAGE, keys=(key(0x0020_000D, corpus.b), key(0x0020_000E, corpus.a_ct)))
    )
    assert wrong.matches == []
    # Study attributes match at lower levels too (QIDO all-series / all-instances searches).
    mr = await archive.search(
        Query(QueryLevel.SERIES, keys=(key(0x0008_0060, "MR"), key(0x0010_0020, "P1")))
    )
    assert [ds.SeriesInstanceUID for ds in mr.matches] == [corpus.a_mr]


async def test_computed_attributes(archive: Archive, corpus: Corpus) -> None:
    result = await archive.search(
        Query(
            QueryLevel.STUDY, keys=(key(0x0020_000D, corpus.a),), include=frozenset({0x0008_0062})
        )
    )
    [study] = result.matches
    assert study.NumberOfStudyRelatedSeries == 2
    assert study.NumberOfStudyRelatedInstances == 5
    assert list(study.ModalitiesInStudy) == ["CT", "MR"]
    assert sorted(study.SOPClassesInStudy) == sorted(
        ["1.2.840.10008.5.1.4.1.1.2", MR_IMAGE_STORAGE]
    )
    series = await archive.search(Query(QueryLevel.SERIES, keys=(key(0x0020_000D, corpus.a),)))
    assert [ds.NumberOfSeriesRelatedInstances for ds in series.matches] == [3, 2]
    patients = await archive.search(
        Query(
            QueryLevel.PATIENT,
            keys=(key(0x0010_0020, "P1"),),
            include=frozenset({0x0020_1200, 0x0020_1202, 0x0020_1204}),
            patient_root=True,
        )
    )
    [patient] = patients.matches
    assert patient.PatientName == "Doe^John"  # the first study named the patient row
    assert patient.NumberOfPatientRelatedStudies == 2
    assert patient.NumberOfPatientRelatedSeries == 3
    assert patient.NumberOfPatientRelatedInstances == 6


async def test_modalities_in_study_matching(archive: Archive, corpus: Corpus) -> None:
    assert await studies(archive, key(0x0008_0061, "MR")) == [corpus.b, corpus.a]
    assert await studies(archive, key(0x0008_0061, "US")) == [corpus.c]
    assert await studies(archive, key(0x0008_0061, "CT,US")) == [corpus.a, corpus.c]
    assert await studies(archive, key(0x0008_0061, "CT\\US")) == [corpus.a, corpus.c]
    assert await studies(archive, key(0x0008_0061, "M?")) == [corpus.b, corpus.a]


async def test_sequence_matching(archive: Archive, corpus: Corpus) -> None:
    def request_key(*items: MatchKey) -> MatchKey:
        return MatchKey.sequence(0x0040_0275, items)

    async def series_of(*keys: MatchKey) -> list[str]:
        result = await archive.search(Query(QueryLevel.SERIES, keys=keys))
        return [ds.SeriesInstanceUID for ds in result.matches]

    assert await series_of(request_key(key(0x0040_0009, "SPS1"))) == [corpus.b_mr]
    assert await series_of(request_key(key(0x0040_1001, "RP9"))) == [corpus.b_mr]
    # One item must match every sub-key: SPS1 and RP9 are in different items.
    assert await series_of(request_key(key(0x0040_0009, "SPS1"), key(0x0040_1001, "RP9"))) == []
    assert await series_of(request_key(key(0x0040_0009, "SPS*"), key(0x0040_1001, "RP9"))) == [
        corpus.b_mr
    ]
    result = await archive.search(
        Query(QueryLevel.SERIES, keys=(key(0x0040_0244, "20240301"), key(0x0040_0245, "08-09")))
    )
    [series] = result.matches
    assert series.SeriesInstanceUID == corpus.b_mr
    assert [item.ScheduledProcedureStepID for item in series.RequestAttributesSequence] == [
        "SPS1",
        "SPS9",
    ]


async def test_includefield_and_all(archive: Archive, corpus: Corpus) -> None:
    plain = await archive.search(Query(QueryLevel.STUDY, keys=(key(0x0020_000D, corpus.a),)))
    assert STUDY_DESCRIPTION not in plain.matches[0]
    included = await archive.search(
        Query(
            QueryLevel.STUDY,
            keys=(key(0x0020_000D, corpus.a),),
            include=frozenset({STUDY_DESCRIPTION, 0x0008_1048}),
        )
    )
    [study] = included.matches
    assert study.StudyDescription == "Head CT"
    assert 0x0008_1048 in study and study[0x0008_1048].is_empty  # asked for, no value: empty
    everything = await archive.search(
        Query(QueryLevel.STUDY, keys=(key(0x0020_000D, corpus.a),), include_all=True)
    )
    [study] = everything.matches
    assert study.StudyDescription == "Head CT" and study.PatientName == "Doe^John"
    assert study.NumberOfStudyRelatedInstances == 5
    assert "Modality" not in study  # a series attribute
    images = await archive.search(
        Query(QueryLevel.IMAGE, keys=(key(0x0020_000E, corpus.a_ct),), include_all=True)
    )
    first = images.matches[0]
    assert first.Modality == "CT" and first.StudyDescription == "Head CT"
    assert first.PhotometricInterpretation == "MONOCHROME2"
    assert "PixelData" not in first
    assert first.StudyInstanceUID == corpus.a and first.SeriesInstanceUID == corpus.a_ct


async def test_default_instance_attributes(archive: Archive, corpus: Corpus) -> None:
    result = await archive.search(Query(QueryLevel.IMAGE, keys=(key(0x0020_000E, corpus.b_mr),)))
    [instance] = result.matches
    assert instance.SOPClassUID == MR_IMAGE_STORAGE
    assert (instance.Rows, instance.Columns, instance.BitsAllocated) == (4, 4, 16)
    assert instance.StudyInstanceUID == corpus.b
    assert "RetrieveURL" not in instance  # the HTTP layer adds it


async def test_unsupported_keys_are_reported_and_ignored(archive: Archive, corpus: Corpus) -> None:
    result = await archive.search(
        Query(QueryLevel.STUDY, keys=(key(PATIENT_COMMENTS, "anything"), key(0x0010_1000, "")))
    )
    assert result.unsupported_keys == (PATIENT_COMMENTS,)
    assert len(result.matches) == 4
    # A universal key of an unindexed attribute is a return key: present, empty here.
    assert all(0x0010_1000 in ds for ds in result.matches)
    # Series attributes are not matching keys of the study level.
    result = await archive.search(Query(QueryLevel.STUDY, keys=(key(0x0008_0060, "CT"),)))
    assert result.unsupported_keys == (0x0008_0060,)


async def test_cfind_keys_come_back(archive: Archive, corpus: Corpus) -> None:
    result = await archive.search(
        Query(
            QueryLevel.SERIES,
            keys=(key(0x0020_000D, corpus.a), key(0x0008_0020, ""), key(0x0008_0021, "")),
        )
    )
    for ds in result.matches:
        assert ds.StudyDate == "20240115"  # the study's attribute, at series level
        assert 0x0008_0021 in ds  # SeriesDate: asked for, empty


async def test_integer_keys(archive: Archive, corpus: Corpus) -> None:
    result = await archive.search(
        Query(QueryLevel.IMAGE, keys=(key(0x0020_000E, corpus.a_ct), key(0x0020_0013, "2")))
    )
    assert [ds.InstanceNumber for ds in result.matches] == [2]
    series = await archive.search(Query(QueryLevel.SERIES, keys=(key(0x0020_0011, "2"),)))
    assert [ds.SeriesInstanceUID for ds in series.matches] == [corpus.a_mr]
    with pytest.raises(InvalidQuery):
        await archive.search(Query(QueryLevel.IMAGE, keys=(key(0x0020_0013, "two"),)))


async def test_instance_availability_follows_the_tier(archive: Archive, corpus: Corpus) -> None:
    from sqlalchemy import update

    from storage.index.schema import instances

    for level in (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE):
        result = await archive.search(
            Query(level, keys=(key(0x0020_000D, corpus.c),), include=frozenset({0x0008_0056}))
        )
        assert [ds.InstanceAvailability for ds in result.matches] == ["ONLINE"]
    # The cold tier's migration flips the tier column; pretend it moved study C.
    engine = archive._write  # the index itself; no cold store is needed to read availability
    rows = await archive.locate(corpus.c)
    async with engine.begin() as conn:
        await conn.execute(
            update(instances)
            .where(instances.c.sop_uid == rows[0].sop_instance_uid)
            .values(tier="cold")
        )
    try:
        for level in (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE):
            result = await archive.search(
                Query(level, keys=(key(0x0020_000D, corpus.c),), include=frozenset({0x0008_0056}))
            )
            assert [ds.InstanceAvailability for ds in result.matches] == ["NEARLINE"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                update(instances)
                .where(instances.c.sop_uid == rows[0].sop_instance_uid)
                .values(tier="hot")
            )
