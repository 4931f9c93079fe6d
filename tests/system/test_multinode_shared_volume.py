"""Two stateless ``arca serve`` nodes the way a scale-out deployment runs them: one PostgreSQL
index, one object store (moto S3) as the cold tier, and one hot volume that every node mounts
at its ``--data`` (NFS, CephFS, a cloud file share). Each node is interchangeable: whatever one
stores, migrates or recalls, the other serves byte for byte.

(With node-local hot disks instead, a node cannot read another's hot blobs:
tests/system/test_multinode.py pins that limitation.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import pytest
from pydicom.uid import generate_uid

from config.settings import StorageSettings
from storage.archive import open_archive
from storage.model import Tier
from tests.conftest import ArcaProcess, _track
from tests.data import multipart_related, small_ct, stow_content_type
from tests.storage_tiers.conftest import cold_store_args
from tests.system.test_multinode import (  # the same real PostgreSQL and moto fixtures
    S3_ENV,
    pg_index,
    s3_endpoint,
)

__all__ = ["pg_index", "s3_endpoint"]

ACCEPT_DICOM = 'multipart/related; type="application/dicom"'


def _stow(node: ArcaProcess, parts: list[bytes]) -> httpx.Response:
    return httpx.post(
        f"{node.dicomweb_url}/studies",
        content=multipart_related(parts),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        timeout=120,
    )


def _retrieve(node: ArcaProcess, study: str) -> bytes:
    r = httpx.get(
        f"{node.dicomweb_url}/studies/{study}", headers={"Accept": ACCEPT_DICOM}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, pg_index: str, s3_endpoint: tuple[str, str]
) -> Iterator[tuple[ArcaProcess, ArcaProcess, StorageSettings]]:
    endpoint, bucket = s3_endpoint
    volume = tmp_path_factory.mktemp("shared-hot-volume") / "data"
    shared = ("--index", pg_index, *cold_store_args(endpoint, bucket))
    logs = tmp_path_factory.mktemp("logs")
    a = ArcaProcess(volume, logs / "a.log", shared, env=S3_ENV, ae_title="ARCA_A")
    b = ArcaProcess(volume, logs / "b.log", shared, env=S3_ENV, ae_title="ARCA_B")
    settings = StorageSettings(
        data_dir=volume,
        index_url=pg_index,
        cold_store=f"s3://{bucket}/cold",
        s3_endpoint_url=endpoint,
        s3_region="us-east-1",
    )
    saved = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        a.start()
        b.start()
        yield a, b, settings
    finally:
        a.stop()
        b.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _migrate(settings: StorageSettings, study: str, to: Tier) -> None:
    archive = await open_archive(settings)
    try:
        result = await archive.migrate_study(study, to)
        assert result.failed == (), result.describe()
    finally:
        await archive.close()


def _parts_of(body: bytes) -> int:
    return body.count(b"Content-Type: application/dicom")


def test_either_node_serves_what_the_other_stored_migrated_or_recalled(
    nodes: tuple[ArcaProcess, ArcaProcess, StorageSettings], request: pytest.FixtureRequest
) -> None:
    a, b, settings = nodes
    _track(request, a)
    _track(request, b)
    study, series = generate_uid(), generate_uid()
    parts = [small_ct(study_uid=study, series_uid=series, instance_number=i) for i in range(6)]
    assert _stow(a, parts).status_code == 200

    hot_via_a, hot_via_b = _retrieve(a, study), _retrieve(b, study)
    assert _parts_of(hot_via_b) == 6
    assert all(p in hot_via_b for p in parts)  # byte for byte, stored through the other node
    assert all(p in hot_via_a for p in parts)

    asyncio.run(_migrate(settings, study, Tier.COLD))
    cold_via_b = _retrieve(b, study)  # streamed from the object store; recalled in background
    assert all(p in cold_via_b for p in parts)
    after_recall_via_a = _retrieve(a, study)
    assert all(p in after_recall_via_a for p in parts)


def test_concurrent_stows_of_one_study_through_both_nodes(
    nodes: tuple[ArcaProcess, ArcaProcess, StorageSettings], request: pytest.FixtureRequest
) -> None:
    a, b, settings = nodes
    _track(request, a)
    _track(request, b)
    study, series = generate_uid(), generate_uid()
    unique = [small_ct(study_uid=study, series_uid=series, instance_number=i) for i in range(16)]
    # Each node gets half of the unique instances plus all of a few shared ones.
    shared = unique[:4]
    batches = [(a, shared + unique[4:10]), (b, shared + unique[10:])]
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda job: _stow(*job).status_code, batches * 2))
    assert all(s == 200 for s in statuses), statuses

    async def rows() -> tuple[int, int, int]:
        dsn = str(settings.index_url)
        conn = await asyncpg.connect(dsn)
        try:
            studies = await conn.fetchval(
                "SELECT count(*) FROM studies WHERE study_uid = $1", study
            )
            series_rows = await conn.fetchval(
                "SELECT count(*) FROM series WHERE series_uid = $1", series
            )
            instances = await conn.fetchval(
                "SELECT count(*) FROM instances i JOIN series s ON i.series_pk = s.id "
                "WHERE s.series_uid = $1",
                series,
            )
            return int(studies), int(series_rows), int(instances)
        finally:
            await conn.close()

    assert asyncio.run(rows()) == (1, 1, 16)
    for node in (a, b):
        body = _retrieve(node, study)
        assert _parts_of(body) == 16
        assert all(p in body for p in unique)
