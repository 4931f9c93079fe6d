"""Measure S3 client candidates (PUT/GET throughput, client CPU) against a moto server.

Not a test. Run: ``.venv/bin/python -m tests.storage_tiers.bench_s3_clients`` (aiobotocore is
measured only when importable, e.g. ``PYTHONPATH=<dir with aiobotocore>``). Each candidate
runs in its own process against one moto server in another, 60 objects of 526 KB (one CT
slice), 8 requests at a time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

N = 60
SIZE = 526_000
CONCURRENCY = 8


def _report(name: str, put_s: float, get_s: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    mb = N * SIZE / 1e6
    print(
        f"{name:13s} PUT {mb / put_s:6.1f} MB/s  GET {mb / get_s:6.1f} MB/s  "
        f"client CPU {usage.ru_utime + usage.ru_stime:.2f} s (incl. imports)"
    )


async def _timed(op: Callable[[int], Awaitable[None]]) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await op(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(N)))
    return time.perf_counter() - t0


async def bench_obstore(endpoint: str, bucket: str, payload: bytes) -> None:
    import obstore
    from obstore.store import S3Store

    store: S3Store | None = S3Store(
        bucket, endpoint=endpoint, region="us-east-1", client_options={"allow_http": True}
    )
    assert store is not None

    async def put(i: int) -> None:
        await obstore.put_async(store, f"obstore/{i}", payload)

    async def get(i: int) -> None:
        got = await (await obstore.get_async(store, f"obstore/{i}")).bytes_async()
        assert len(got) == SIZE

    put_s, get_s = await _timed(put), await _timed(get)
    store = None  # drop the client inside the loop (see storage/cold.py)
    _report("obstore", put_s, get_s)


async def bench_aiobotocore(endpoint: str, bucket: str, payload: bytes) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as client:

        async def put(i: int) -> None:
            await client.put_object(Bucket=bucket, Key=f"aiobotocore/{i}", Body=payload)

        async def get(i: int) -> None:
            response = await client.get_object(Bucket=bucket, Key=f"aiobotocore/{i}")
            async with response["Body"] as body:
                assert len(await body.read()) == SIZE

        put_s, get_s = await _timed(put), await _timed(get)
    _report("aiobotocore", put_s, get_s)


async def bench_boto3(endpoint: str, bucket: str, payload: bytes) -> None:
    import boto3
    import botocore.config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(max_pool_connections=CONCURRENCY),
    )

    async def put(i: int) -> None:
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key=f"boto3/{i}", Body=payload)

    def _get(i: int) -> None:
        assert len(client.get_object(Bucket=bucket, Key=f"boto3/{i}")["Body"].read()) == SIZE

    async def get(i: int) -> None:
        await asyncio.to_thread(_get, i)

    put_s, get_s = await _timed(put), await _timed(get)
    _report("boto3+thread", put_s, get_s)


CANDIDATES = {"obstore": bench_obstore, "aiobotocore": bench_aiobotocore, "boto3": bench_boto3}


def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    if len(sys.argv) == 4:
        asyncio.run(CANDIDATES[sys.argv[1]](sys.argv[2], sys.argv[3], os.urandom(SIZE)))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="bench"
        )
        for name in CANDIDATES:
            module = "aiobotocore" if name == "aiobotocore" else name
            if importlib.util.find_spec(module) is None:
                print(f"{name:13s} not installed")
                continue
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.storage_tiers.bench_s3_clients",
                    name,
                    endpoint,
                    "bench",
                ],
                check=False,
            )
    finally:
        moto.terminate()
        moto.wait(timeout=10)


if __name__ == "__main__":
    main()
