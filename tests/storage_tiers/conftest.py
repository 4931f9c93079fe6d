"""Fixtures for the tier tests: a real S3 HTTP endpoint on loopback (moto's server mode)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.server import ThreadedMotoServer

from storage.cold import S3BlobStore

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
