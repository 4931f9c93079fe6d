"""Fixtures for the tier tests: a real S3 HTTP endpoint on loopback (moto's server mode)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.cold import S3BlobStore
from tests.pg import fresh_database, truncate_tables

# moto accepts any credentials unless told otherwise; obstore needs some to sign requests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "arca-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "arca-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class MotoS3:
    """A moto S3 server on 127.0.0.1 that a test may stop and start again on the same port."""

    server: ThreadedMotoServer
    port: int
    running: bool = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def start(self) -> None:
        if not self.running:
            # moto keeps its buckets in process memory: a restarted server still has them.
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.running = True

    def create_bucket(self) -> str:
        name = f"arca-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(
            Bucket=name
        )
        return name


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    moto = MotoS3(server, server.get_host_and_port()[1])
    yield moto
    moto.stop()


@pytest.fixture
def bucket(moto_s3: MotoS3) -> Iterator[str]:
    moto_s3.start()
    yield moto_s3.create_bucket()
    moto_s3.start()  # leave the server up for the next test even if this one stopped it


@pytest.fixture
async def cold(moto_s3: MotoS3, bucket: str) -> AsyncIterator[S3BlobStore]:
    store = S3BlobStore(
        f"s3://{bucket}/arca-cold",
        endpoint_url=moto_s3.endpoint,
        region="us-east-1",
        retry_timeout=2.0,
        max_retries=1,
        connect_timeout=1.0,
    )
    await store.check()
    yield store
    await store.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module (dropped afterwards)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tier_settings(
    backend: str, tmp_path: Path, moto_s3: MotoS3, bucket: str, request: pytest.FixtureRequest
) -> StorageSettings:
    """Settings of an archive with a cold tier in a fresh bucket, on SQLite or PostgreSQL."""
    index_url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    if index_url is not None:
        asyncio.run(truncate_tables(index_url))
    return StorageSettings(
        data_dir=tmp_path / "data",
        index_url=index_url,
        cold_store=f"s3://{bucket}/cold",
        s3_endpoint_url=moto_s3.endpoint,
        s3_region="us-east-1",
        prefetch_max_concurrency=2,
        prefetch_max_bytes=64 * 1024**2,
    )


@pytest.fixture
async def tiered_archive(tier_settings: StorageSettings) -> AsyncIterator[Archive]:
    archive = await open_archive(tier_settings)
    try:
        yield archive
    finally:
        await archive.close()


def cold_store_args(endpoint: str, bucket: str) -> tuple[str, ...]:
    """The ``arca`` options of a cold tier in ``bucket`` on the S3 server at ``endpoint``."""
    return (
        "--cold-store",
        f"s3://{bucket}/cold",
        "--s3-endpoint-url",
        endpoint,
        "--s3-region",
        "us-east-1",
    )


@contextlib.contextmanager
def moto_process(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto S3 server in its own process on a free loopback port; yields its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
