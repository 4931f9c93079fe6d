"""Two ``arca serve --write-through true`` nodes on one PostgreSQL index and one object store
(moto S3).

Each node has its own ``--data`` folder, so its hot tier is its own local disk; the index and the
cold tier are shared. With write-through every instance is in the cold tier before its STOW is
answered and the rows name that copy, so what one node stores the other finds (QIDO) and reads
at once; each node's hot tier is its own cache, and reading never changes the shared rows.
Concurrent STOW-RS of one study through both nodes must leave one patient/study/series row each
and every instance exactly once (the index's ``INSERT .. ON CONFLICT DO NOTHING`` on the unique
UIDs, storage.index.repository). The shared-volume deployment is test_multinode_shared_volume.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydicom.uid import generate_uid

from tests.conftest import ArcaProcess, _track
from tests.data import multipart_related, small_ct, stow_content_type, uids_of
from tests.pg import fresh_database
from tests.storage_tiers.conftest import cold_store_args

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "arca-multinode",
    "AWS_SECRET_ACCESS_KEY": "arca-multinode-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
DICOM_JSON = {"Accept": "application/dicom+json"}
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


@pytest.fixture(scope="module")
def pg_index() -> Iterator[str]:
    """A fresh PostgreSQL database for the shared index (dropped afterwards)."""
    with fresh_database("arca_multinode", skip_if_absent=False) as url:
        yield url


def _s3(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[tuple[str, str]]:
    """(endpoint URL, bucket) of a moto S3 server on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        bucket = f"arca-multinode-{uuid.uuid4().hex[:8]}"
        _s3(endpoint).create_bucket(Bucket=bucket)
        yield endpoint, bucket
    finally:
        server.stop()


@dataclass
class Cluster:
    a: ArcaProcess
    b: ArcaProcess
    index_url: str
    cold_store: str
    s3_endpoint: str

    async def tiers_of(self, series_uid: str) -> list[str]:
        rows = await _pg(
            self.index_url,
            "SELECT DISTINCT i.tier FROM instances i JOIN series s ON i.series_pk = s.id "
            "WHERE s.series_uid = $1",
            series_uid,
        )
        return sorted(r["tier"] for r in rows)

    def cold_keys(self, study_uid: str) -> list[str]:
        bucket, prefix = self.cold_store[len("s3://") :].split("/", 1)
        listed = _s3(self.s3_endpoint).list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/{study_uid}/"
        )
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture(scope="module")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_index: str, s3_endpoint: tuple[str, str]
) -> Iterator[Cluster]:
    """Both nodes, started once for the module (a start costs seconds on a loaded machine)."""
    endpoint, bucket = s3_endpoint
    shared = ("--index", pg_index, *cold_store_args(endpoint, bucket), "--write-through", "true")
    nodes = []
    for name in ("a", "b"):
        base = tmp_path_factory.mktemp(f"node-{name}")
        nodes.append(
            ArcaProcess(
                base / "data",
                base / "arca.log",
                shared,
                env=S3_ENV,
                ae_title=f"ARCA_{name.upper()}",
            )
        )
    saved = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)  # the test's own Archive (migrate_cold) reaches the same bucket
    try:
        for node in nodes:
            node.start()
        assert nodes[0].data_dir != nodes[1].data_dir
        yield Cluster(nodes[0], nodes[1], pg_index, f"s3://{bucket}/cold", endpoint)
    finally:
        for node in nodes:
            node.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def cluster(shared_cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The module's cluster; a failing test's report carries both nodes' logs."""
    for node in (shared_cluster.a, shared_cluster.b):
        _track(request, node)
    return shared_cluster


# -- helpers ---------------------------------------------------------------------------------


def _stow(node: ArcaProcess, parts: list[bytes]) -> httpx.Response:
    return httpx.post(
        f"{node.dicomweb_url}/studies",
        content=multipart_related(parts),
        headers={"Content-Type": stow_content_type(), **DICOM_JSON},
        timeout=60,
    )


def _qido(node: ArcaProcess, path: str, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{node.dicomweb_url}{path}", params=params, headers=DICOM_JSON, timeout=30)
    assert r.status_code in (200, 204), r.text
    return [] if r.status_code == 204 else list(r.json())


def _value(obj: dict[str, Any], tag: str) -> Any:
    return obj[tag]["Value"][0]


def _parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related WADO-RS response (PS3.18 §8.7.2)."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    assert message.is_multipart()
    bodies = [part.get_payload(decode=True) for part in message.iter_parts()]
    assert all(isinstance(b, bytes) for b in bodies)
    return [b for b in bodies if isinstance(b, bytes)]


def _instances_by_uid(parts: list[bytes]) -> dict[str, bytes]:
    return {uids_of(p)[2]: p for p in parts}


async def _pg(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _study(n: int, patient_id: str) -> tuple[str, str, list[bytes]]:
    study_uid, series_uid = generate_uid(), generate_uid()
    parts = [
        small_ct(
            study_uid=study_uid, series_uid=series_uid, patient_id=patient_id, instance_number=i
        )
        for i in range(1, n + 1)
    ]
    return study_uid, series_uid, parts


# -- tests -----------------------------------------------------------------------------------


def _cached_files(node: ArcaProcess, study_uid: str) -> list[Path]:
    return [f for f in (node.data_dir / "hot" / study_uid).rglob("*") if f.is_file()]


def _retrieve(node: ArcaProcess, study_uid: str) -> dict[str, bytes]:
    r = httpx.get(
        f"{node.dicomweb_url}/studies/{study_uid}", headers={"Accept": ACCEPT_DICOM}, timeout=60
    )
    assert r.status_code == 200, r.text
    return _instances_by_uid(_parts(r))


async def test_stored_on_a_found_and_retrieved_on_b_at_once(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    study_uid, series_uid, parts = _study(3, f"MN{uuid.uuid4().hex[:8]}")
    stored = _stow(a, parts)
    assert stored.status_code == 200, stored.text

    # QIDO through B sees what A stored: one index.
    found = _qido(b, "/studies", StudyInstanceUID=study_uid)
    assert len(found) == 1
    assert _value(found[0], NUMBER_OF_STUDY_RELATED_INSTANCES) == 3
    assert len(_qido(b, f"/studies/{study_uid}/instances")) == 3

    # Written through before the STOW was answered: the rows name the shared copies, and A
    # keeps its own as a cache; B has none yet.
    assert await cluster.tiers_of(series_uid) == ["cold"]
    assert len(cluster.cold_keys(study_uid)) == 3
    assert len(_cached_files(a, study_uid)) == 3
    assert _cached_files(b, study_uid) == []

    expected = {uids_of(p)[2]: p for p in parts}
    assert _retrieve(b, study_uid) == expected
    assert _retrieve(a, study_uid) == expected


async def test_a_still_retrieves_after_b_read_the_study_from_cold(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    study_uid, series_uid, parts = _study(2, f"MN{uuid.uuid4().hex[:8]}")
    assert _stow(a, parts).status_code == 200
    for cached in _cached_files(a, study_uid):
        cached.unlink()  # as A's cache eviction would: A must now read the cold tier too
    expected = {uids_of(p)[2]: p for p in parts}
    assert _retrieve(b, study_uid) == expected
    # B caches what it read (in the background) and leaves the shared rows as they are.
    for _ in range(300):
        if len(_cached_files(b, study_uid)) == len(parts):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("B did not cache the study it read within 30 s")
    assert await cluster.tiers_of(series_uid) == ["cold"]
    assert _retrieve(a, study_uid) == expected
    assert await cluster.tiers_of(series_uid) == ["cold"]
    assert len(cluster.cold_keys(study_uid)) == len(parts)


async def test_delete_through_a_is_gone_on_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    study_uid, _, parts = _study(2, f"MN{uuid.uuid4().hex[:8]}")
    assert _stow(a, parts).status_code == 200
    assert len(_retrieve(b, study_uid)) == 2  # B holds a cached copy now (or soon)
    assert httpx.delete(f"{a.dicomweb_url}/studies/{study_uid}", timeout=30).status_code == 204
    assert cluster.cold_keys(study_uid) == []
    assert _cached_files(a, study_uid) == []
    r = httpx.get(f"{b.dicomweb_url}/studies/{study_uid}", headers={"Accept": ACCEPT_DICOM})
    assert r.status_code == 404


async def test_concurrent_stow_of_one_study_through_both_nodes(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    patient_id = f"MN{uuid.uuid4().hex[:8]}"
    study_uid = generate_uid()
    series_uids = [generate_uid(), generate_uid()]
    instances = [
        small_ct(study_uid=study_uid, series_uid=s, patient_id=patient_id, instance_number=i)
        for s in series_uids
        for i in range(1, 11)
    ]
    # Each series: instances 0-6 through A, 3-9 through B; 3-6 go through both nodes at once.
    through_a = [p for k in (0, 10) for p in instances[k : k + 7]]
    through_b = [p for k in (0, 10) for p in instances[k + 3 : k + 10]]
    jobs = [(a, p) for p in through_a] + [(b, p) for p in through_b]
    random.Random(7).shuffle(jobs)
    start = threading.Barrier(len(jobs))

    def send(job: tuple[ArcaProcess, bytes]) -> int:
        start.wait(timeout=30)  # every request leaves at once: the study is new to both nodes
        return _stow(job[0], [job[1]]).status_code

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [200] * len(jobs)

    url = cluster.index_url
    assert len(await _pg(url, "SELECT id FROM patients WHERE patient_id = $1", patient_id)) == 1
    studies = await _pg(url, "SELECT id FROM studies WHERE study_uid = $1", study_uid)
    assert len(studies) == 1
    series = await _pg(url, "SELECT series_uid FROM series WHERE study_pk = $1", studies[0]["id"])
    assert sorted(r["series_uid"] for r in series) == sorted(series_uids)
    stored = await _pg(
        url,
        "SELECT i.sop_uid FROM instances i JOIN series s ON i.series_pk = s.id "
        "WHERE s.study_pk = $1",
        studies[0]["id"],
    )
    assert sorted(r["sop_uid"] for r in stored) == sorted(uids_of(p)[2] for p in instances)

    for node in (a, b):
        found = _qido(node, "/studies", StudyInstanceUID=study_uid)
        assert len(found) == 1
        assert _value(found[0], NUMBER_OF_STUDY_RELATED_SERIES) == 2
        assert _value(found[0], NUMBER_OF_STUDY_RELATED_INSTANCES) == 20
        listed = _qido(node, f"/studies/{study_uid}/instances")
        assert sorted(_value(o, "00080018") for o in listed) == sorted(
            uids_of(p)[2] for p in instances
        )
        assert len(_qido(node, "/studies", PatientID=patient_id)) == 1
