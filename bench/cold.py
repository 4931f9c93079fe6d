"""The cold-tier scenario: a viewer opening a CT series that lives in the object store.

Issue #5's target: retrieving a 512×512 CT series from the cold tier reaches ≥150 images/s
(with prefetch after the metadata request) on this machine, against the loopback object store.

What runs, all as our own processes on free loopback ports:

- a moto S3 server (``python -m moto.server``) in its own process: the object store;
- ``arca serve`` with ``--cold-store s3://BUCKET/arca --s3-endpoint-url …`` (credentials from
  ``AWS_*`` in its environment) on its own data folder and SQLite index;
- per repetition, two fresh studies of N slices (bench.dataset, cached in bench/work/data),
  loaded by STOW-RS and moved cold with ``arca tier migrate --study UID --to cold`` right
  before they are read. Migration deletes the hot copies, so nothing is left in arca's folder
  or page cache: every byte has to come from the object store.

Two figures, each the median of ``--repeat`` runs on a study freshly migrated cold:

- ``cold_viewer``: what a viewer does — GET the study's metadata, then the series
  (multipart, stored syntax). The time runs from the metadata request to the last byte of the
  series, so the metadata latency is paid inside the figure.
- ``cold_series``: the series alone, no metadata request first (a pure cold read; arca may
  still recall the study in the background once the first cold instance is opened).

After each run the harness waits until arca has recalled the study hot (so the next run does
not compete with a background recall) and notes how long that took. Before the runs it
measures moto alone — N objects of the same size fetched by obstore with 1, 4, 8 and 16 GETs
in flight — which is the ceiling any cold figure here can reach. Orthanc has no cold tier:
these figures are arca's only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench import client, servers
from bench.dataset import SeriesSet, generate
from bench.measure import cpu_seconds

if TYPE_CHECKING:
    from bench.scenarios import Bench

MB = 1e6
CEILING_CONCURRENCY = (1, 4, 8, 16)
"""GETs in flight when measuring what moto alone serves."""
RECALL_TIMEOUT = 300.0
"""Seconds to wait for arca to finish recalling a study after a run."""
S3_ENV = {
    # moto accepts any credentials; obstore needs some to sign its requests.
    "AWS_ACCESS_KEY_ID": "arca-bench",
    "AWS_SECRET_ACCESS_KEY": "arca-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def _s3_credentials() -> Iterator[None]:
    """S3_ENV in this process's environment for the block (obstore and children read it)."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Moto:
    """A moto S3 server in its own process (own session) on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = servers.free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, **S3_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"moto did not start; see {self.log_path}") from None
                time.sleep(0.1)

    def create_bucket(self) -> str:
        import boto3

        name = f"arca-bench-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=name)
        return name

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid]) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            servers.stop_group(self.proc, grace=10)
        self.proc = None


class ColdArcaServer(servers.ArcaServer):
    """``arca serve`` with the cold tier on the moto bucket (and no DIMSE peer of its own)."""

    def __init__(self, workdir: Path, cold_store: str, endpoint: str) -> None:
        super().__init__(workdir, servers.free_port())
        self.cold_store = cold_store
        self.endpoint = endpoint

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def storage_args(self) -> list[str]:
        return [
            "--data",
            str(self.data),
            "--cold-store",
            self.cold_store,
            "--s3-endpoint-url",
            self.endpoint,
            "--s3-region",
            S3_ENV["AWS_DEFAULT_REGION"],
        ]

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--data")
        del cmd[at : at + 2]
        serve = cmd.index("serve") + 1
        return [*cmd[:serve], *self.storage_args(), *cmd[serve:]]

    def start(self) -> None:
        with _s3_credentials():
            super().start()

    def tier(self, *args: str) -> str:
        """Run ``arca tier ARGS`` on this server's data and cold store; its stdout."""
        done = subprocess.run(
            [*servers.ARCA, "tier", *args, *self.storage_args()],
            cwd=servers.CHECKOUT,
            env={**os.environ, **S3_ENV},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"arca tier {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def cold_instances(self) -> int:
        m = re.search(r"^cold:\s+(\d+) instances", self.tier("status"), re.MULTILINE)
        if m is None:
            raise RuntimeError("arca tier status: no cold line")
        return int(m.group(1))

    def hot_files(self, study_uid: str) -> int:
        folder = self.data / "hot" / study_uid
        return sum(1 for _ in folder.rglob("*.dcm")) if folder.is_dir() else 0


def datasets(root: Path, n: int, r: int) -> dict[str, list[SeriesSet]]:
    """R studies of one N-slice series for each figure (fresh UIDs, cached)."""
    return {
        "cold_viewer": [
            generate(root, f"cold-viewer-n{n}-{k}", n, seed=300 + k, patient_id=f"BENCHV{k:03d}")
            for k in range(r)
        ],
        "cold_series": [
            generate(root, f"cold-series-n{n}-{k}", n, seed=400 + k, patient_id=f"BENCHP{k:03d}")
            for k in range(r)
        ],
    }


async def _ceiling(endpoint: str, bucket: str, paths: list[Path]) -> dict[int, float]:
    """Seconds moto takes to serve ``paths``' bytes to obstore with C GETs in flight."""
    from storage.cold import S3BlobStore

    store = S3BlobStore(
        f"s3://{bucket}/ceiling", endpoint_url=endpoint, region=S3_ENV["AWS_DEFAULT_REGION"]
    )
    try:
        keys = [f"obj-{i:05d}" for i in range(len(paths))]
        sem = asyncio.Semaphore(8)

        async def put(key: str, path: Path) -> None:
            async with sem:
                await store.put_bytes(key, path.read_bytes())

        await asyncio.gather(*(put(k, p) for k, p in zip(keys, paths, strict=True)))
        out: dict[int, float] = {}
        for c in CEILING_CONCURRENCY:
            todo = iter(keys)

            async def worker() -> None:
                for key in todo:  # noqa: B023 - shared iterator, drained by the workers
                    await store.get(key)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(c)))
            out[c] = time.perf_counter() - t0
        for key in keys:
            await store.delete(key)
        return out
    finally:
        await store.close()


def moto_ceiling(bench: Bench, moto: Moto, bucket: str, paths: list[Path]) -> None:
    """Note what moto alone serves (obstore client in this process, C GETs in flight)."""
    nbytes = sum(p.stat().st_size for p in paths)
    c0 = moto.cpu()
    t0 = time.perf_counter()
    try:
        with _s3_credentials():
            secs = asyncio.run(_ceiling(moto.endpoint, bucket, paths))
    except Exception as exc:  # a note, not a figure: record and go on
        bench.note(f"moto ceiling not measured: {exc}")
        return
    load = (moto.cpu() - c0) / (time.perf_counter() - t0)
    rates = ", ".join(
        f"{c} in flight {len(paths) / s:,.0f} images/s ({nbytes / MB / s:,.0f} MB/s)"
        for c, s in secs.items()
    )
    bench.note(
        f"moto alone (obstore GETs of {len(paths)} objects of ~{nbytes / len(paths) / 1e3:,.0f} "
        f"KB from this process): {rates}; moto busy {load:.2f} cores — the ceiling of the "
        "cold figures"
    )


def run(bench: Bench) -> None:
    """The ``cold`` scenario (see the module docstring)."""
    plan = bench.plan
    n, r = plan.instances, plan.repeat
    data_root = plan.retrieve.paths[0].parent.parent
    sets = datasets(data_root, n, r)
    workdir = data_root.parent / f"cold-{uuid.uuid4().hex[:8]}"
    with _services(bench, workdir) as (moto, arca):
        for studies in sets.values():
            for st in studies:
                bench.stow(arca, st.paths)
        bench.note(f"cold: loaded {2 * r} studies of {n} slices into arca (cold tier on moto)")
        moto_ceiling(bench, moto, moto.create_bucket(), sets["cold_viewer"][0].paths)
        for k in range(r):
            order = ["cold_viewer", "cold_series"]
            if k % 2:
                order.reverse()
            for key in order:
                _one(bench, arca, moto, key, sets[key][k], k)


@contextlib.contextmanager
def _services(bench: Bench, workdir: Path) -> Iterator[tuple[Moto, ColdArcaServer]]:
    moto = Moto(workdir / "moto.log")
    arca: ColdArcaServer | None = None
    try:
        moto.start()
        bucket = moto.create_bucket()
        arca = ColdArcaServer(workdir / "arca", f"s3://{bucket}/arca", moto.endpoint)
        bench.say(f"cold: moto on {moto.endpoint}, arca on {arca.http_port}")
        arca.start()
        yield moto, arca
    finally:
        if arca is not None:
            arca.stop()
        moto.stop()
        if arca is not None and arca.log_path.exists():
            bench.outdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(arca.log_path, bench.outdir / "cold-arca.log")
        shutil.rmtree(workdir, ignore_errors=True)


def _one(bench: Bench, arca: ColdArcaServer, moto: Moto, key: str, st: SeriesSet, k: int) -> None:
    n = len(st)
    moved = arca.tier("migrate", "--study", st.study_uid, "--to", "cold")
    left = arca.hot_files(st.study_uid)
    if f"{n} instances" not in moved or left:
        bench.note(f"{key} rep {k + 1}: migration incomplete ({moved.strip()}; {left} hot)")
        return
    study = f"{arca.base_url}/studies/{st.study_uid}"
    series = f"{study}/series/{st.series_uids[0]}"

    def measure() -> tuple[float, dict[str, float]]:
        m0 = moto.cpu()
        t0 = time.perf_counter()
        extra: dict[str, float] = {}
        if key == "cold_viewer":
            md = client.get(study + "/metadata", client.DICOM_JSON)
            extra["metadata_ms"] = md.seconds * 1000
        t = client.get(series, client.STORED)
        wall = time.perf_counter() - t0
        if t.parts != n:
            raise ValueError(f"got {t.parts} parts, expected {n}")
        if t.nbytes < st.total_bytes:
            raise ValueError(f"got {t.nbytes} bytes, less than the {st.total_bytes} stored")
        extra |= {
            "mb_per_s": st.total_bytes / MB / wall,
            "first_byte_ms": t.first_byte * 1000,
            "moto_load": (moto.cpu() - m0) / wall,
        }
        return n / wall, extra

    with _profiled(bench, arca, f"profile-{key}-{k + 1}.txt"):
        bench.measure(key, arca, k, measure)
    t0 = time.perf_counter()
    while arca.hot_files(st.study_uid) < n or arca.cold_instances():
        if time.perf_counter() - t0 > RECALL_TIMEOUT:
            bench.note(f"{key} rep {k + 1}: study not recalled hot within {RECALL_TIMEOUT:.0f} s")
            break
        time.sleep(0.5)
    else:
        bench.say(f"{key} rep {k + 1}: study hot again {time.perf_counter() - t0:.1f} s later")


@contextlib.contextmanager
def _profiled(bench: Bench, arca: ColdArcaServer, name: str) -> Iterator[None]:
    """With ``--profile``: py-spy (raw collapsed stacks, idle frames left out) on the cold
    arca for the block."""
    spy = Path(sys.executable).with_name("py-spy")
    if not bench.profile or not spy.exists() or arca.proc is None:
        yield
        return
    bench.outdir.mkdir(parents=True, exist_ok=True)
    out = bench.outdir / name
    args = ["record", "--pid", str(arca.proc.pid), "--rate", "250", "--format", "raw"]
    proc = subprocess.Popen(
        [str(spy), *args, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        bench.note(f"py-spy profile of the cold arca: {out}")
