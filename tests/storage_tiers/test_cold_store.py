"""The S3 blob store against a real S3 HTTP endpoint (moto server on loopback)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storage.cold import S3BlobStore
from storage.errors import CorruptBlob, NotFound, StoreUnavailable
from tests.storage_tiers.conftest import MotoS3

KEY = "1.2.3/1.2.3.4/1.2.3.4.5-0123456789abcdef.dcm"


async def test_put_get_range_delete_list(cold: S3BlobStore, tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "blob.dcm"
    source.write_bytes(payload)
    await cold.put_file(KEY, source)
    assert source.exists(), "the cold tier copies; the caller decides about the source"
    assert await cold.exists(KEY)

    reader = await cold.open(KEY)
    assert reader.size == len(payload)
    assert reader.local_path is None
    assert await reader.read_all() == payload
    assert await reader.read_range(1_000_000, 5000) == payload[1_000_000:1_005_000]
    assert await reader.read_range(len(payload) - 10, 100) == payload[-10:]
    chunks = [c async for c in reader.iter_chunks(1 << 20)]
    assert b"".join(chunks) == payload and len(chunks) >= 3
    await reader.close()
    assert await cold.sha256(KEY) == hashlib.sha256(payload).hexdigest()

    await cold.put_bytes("1.2.3/1.2.3.9/other.dcm", b"x")
    await cold.put_bytes("1.2.30/1/y.dcm", b"y")
    assert [k async for k in cold.iter_keys("1.2.3/")] == [
        KEY,
        "1.2.3/1.2.3.9/other.dcm",
    ]
    await cold.delete(KEY)
    await cold.delete(KEY)  # idempotent
    assert not await cold.exists(KEY)
    with pytest.raises(NotFound):
        await cold.open(KEY)


async def test_verified_reader_refuses_corrupt_bytes(cold: S3BlobStore) -> None:
    good = os.urandom(2_500_000)
    sha = hashlib.sha256(good).hexdigest()
    await cold.put_bytes(KEY, good)
    reader = await cold.open(KEY, expected_sha256=sha)
    assert await reader.read_all() == good
    assert await reader.read_range(10, 10) == good[10:20]
    await reader.close()

    bad = bytearray(good)
    bad[1_234_567] ^= 0xFF
    await cold.put_bytes(KEY, bytes(bad))
    reader = await cold.open(KEY, expected_sha256=sha)
    with pytest.raises(CorruptBlob):
        await reader.read_all()
    with pytest.raises(CorruptBlob):
        await reader.read_range(0, 10)
    received = bytearray()
    with pytest.raises(CorruptBlob):
        async for chunk in reader.iter_chunks(1 << 20):
            received += chunk
    # The last chunk is held back until the hash is known: a client never gets it all.
    assert len(received) < len(bad)
    await reader.close()


async def test_store_down_raises_store_unavailable(cold: S3BlobStore, moto_s3: MotoS3) -> None:
    await cold.put_bytes(KEY, b"abc")
    moto_s3.stop()
    with pytest.raises(StoreUnavailable):
        await cold.open(KEY)
    with pytest.raises(StoreUnavailable):
        await cold.put_bytes("k2", b"abc")
    moto_s3.start()
    reader = await cold.open(KEY)
    assert await reader.read_all() == b"abc"


async def test_missing_bucket_is_a_clear_startup_error(moto_s3: MotoS3) -> None:
    store = S3BlobStore(
        "s3://arca-no-such-bucket/p", endpoint_url=moto_s3.endpoint, region="us-east-1"
    )
    try:
        with pytest.raises(StoreUnavailable, match=r"arca-no-such-bucket.*start-up check"):
            await store.check()
    finally:
        await store.close()


async def test_unreachable_endpoint_is_a_clear_startup_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3BlobStore(
        "s3://b/p",
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        retry_timeout=1.0,
        max_retries=1,
        connect_timeout=0.5,
    )
    try:
        with pytest.raises(StoreUnavailable, match="start-up check"):
            await store.check()
    finally:
        await store.close()


def test_bad_url() -> None:
    with pytest.raises(ValueError):
        S3BlobStore("/tmp/not-s3")
    with pytest.raises(ValueError):
        S3BlobStore("s3:///prefix-only")


async def test_large_blob_goes_up_in_parts_and_reads_back_identical(
    cold: S3BlobStore, tmp_path: Path
) -> None:
    # Over the 8 MB part size: a multipart upload (whole-slide images, long cine loops).
    payload = os.urandom(17 * 1024 * 1024 + 5)
    source = tmp_path / "big.dcm"
    source.write_bytes(payload)
    await cold.put_file(KEY, source)
    assert await cold.sha256(KEY) == hashlib.sha256(payload).hexdigest()
    reader = await cold.open(KEY, expected_sha256=hashlib.sha256(payload).hexdigest())
    assert await reader.read_range(9 * 1024 * 1024, 10) == payload[9 * 1024 * 1024 :][:10]
    await reader.close()
