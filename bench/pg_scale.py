"""The study-list query at scale: QIDO-RS study searches over a PostgreSQL index of 1M instances.

Issue #5 asks that a study-list query over 1,000,000 indexed instances answers in <= 50 ms
(p95) on PostgreSQL. This benchmark creates a fresh database, runs arca's own Alembic
migrations (the real schema), fills patients / studies / series / instances with synthetic but
realistic rows through COPY (asyncpg ``copy_records_to_table``: minutes, not hours, unlike STOW),
VACUUM ANALYZEs, then times each query

- as SQL alone: the matching SELECT, and the one statement a page runs,
- in process, through ``Archive.search(build_query(...))`` (the code QIDO runs), and
- over HTTP, against a real ``arca serve --index postgresql://...`` (what users see).

Run: ``.venv/bin/python -m bench.pg_scale [--instances N] [--instances-per-series K] [--runs R]
[--keep] [--no-http] [--database NAME] [--sqlite PATH]``. Studies have 4 series of K (25)
instances: a larger K means fewer, larger studies. ``--sqlite`` times the same queries on a
SQLite index file instead (filled with the same rows by executemany when the file does not
exist, kept afterwards). ``--database`` reuses a database an earlier ``--keep`` run filled (it
is upgraded to the current migrations first, which also exercises them on a 1M-instance
index; give the same K). Besides wall-clock p50/p95, each path records the CPU time per query
(SQL: the PostgreSQL backend's utime+stime; in process: ``time.process_time``; HTTP: the
server's utime+stime from /proc), since the machine is shared.
Prints a markdown table (p50/p95 in ms, MET/MISSED against 50 ms), writes
``bench/results/pg_scale.json`` and prints EXPLAIN ANALYZE of the page statement of any query
that missed. The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from config.settings import StorageSettings
from dicomweb.qido import build_query
from storage.archive import open_archive
from storage.index import engine as index_engine
from storage.index.compile import compile_query
from storage.ingest import normalize_pn
from storage.query import QueryLevel

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "pg_scale.json"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_MS = 50.0
SERIES_PER_STUDY = 4
INSTANCES_PER_SERIES = 25
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"  # synthetic, under a documented example root
OHIF_INCLUDE = "00081030,00080060"
PATHS = ("match_sql", "page_sql", "in_process", "http")
"""match_sql: the matching SELECT alone (ids of one page); page_sql: the one statement a page
runs (the matching SELECT as a subquery, each level's JSON, the computed attributes of the
page's rows); in_process: Archive.search (+ rendering DICOM JSON); http: GET
/dicom-web/studies on a real ``arca serve``. CPU ms/query: PostgreSQL's backend for the SQL
paths, this process in process, the server process over HTTP."""

SURNAMES = [
    "SMITH",
    "SMITHERS",
    "SMYTHE",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "JONES",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "MARTIN",
    "LEE",
    "PEREZ",
    "THOMPSON",
    "WHITE",
    "HARRIS",
    "SANCHEZ",
    "CLARK",
    "RAMIREZ",
    "LEWIS",
    "ROBINSON",
    "WALKER",
    "YOUNG",
    "ALLEN",
    "KING",
    "WRIGHT",
    "SCOTT",
    "TORRES",
    "NGUYEN",
    "HILL",
    "FLORES",
    "GREEN",
    "ADAMS",
    "NELSON",
    "BAKER",
    "HALL",
    "RIVERA",
    "CAMPBELL",
    "MITCHELL",
    "CARTER",
    "ROBERTS",
    "MÜLLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "BECKER",
    "SCHULZ",
    "HOFFMANN",
    "DUPONT",
    "DURAND",
    "LEROY",
    "MOREAU",
    "SIMON",
    "LAURENT",
    "LEFEBVRE",
    "MICHEL",
    "GARNIER",
    "FAURE",
    "ANDRÉ",
    "MERCIER",
]
GIVEN = [
    "JOHN",
    "JANE",
    "MICHAEL",
    "MARY",
    "DAVID",
    "LINDA",
    "JAMES",
    "SUSAN",
    "ROBERT",
    "KAREN",
    "WILLIAM",
    "LISA",
    "RICHARD",
    "NANCY",
    "JOSEPH",
    "BETTY",
    "THOMAS",
    "SANDRA",
    "CHARLES",
    "ASHLEY",
    "HANS",
    "ANNA",
    "PETER",
    "MARIE",
    "LUC",
    "CHLOÉ",
    "ÉMILE",
    "ZOË",
]
MODALITIES = ("CT", "MR", "CR", "US", "PT", "DX", "MG", "NM")
BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE", "BREAST", "HAND")
DESCRIPTIONS = ("CT HEAD W/O", "MR BRAIN", "CHEST 2 VIEWS", "CT ABD/PELVIS", "US ABDOMEN", "PET")


@dataclass(frozen=True)
class Case:
    name: str
    params: list[tuple[str, str]]


# -- synthetic rows --------------------------------------------------------------------------


def _el(vr: str, value: Any) -> dict[str, Any]:
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def _js(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Sizing:
    studies: int
    patients: int
    per_series: int = INSTANCES_PER_SERIES

    @classmethod
    def for_instances(cls, n: int, per_series: int = INSTANCES_PER_SERIES) -> Sizing:
        studies = max(1, math.ceil(n / (SERIES_PER_STUDY * per_series)))
        return cls(studies=studies, patients=max(1, studies // 2), per_series=per_series)


def _date(rng: random.Random) -> str:
    # Dates spread over 10 years (2015-2024).
    day = rng.randrange(3652)
    t = time.gmtime(1420070400 + day * 86400)
    return f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}"


def _patients(sizing: Sizing, rng: random.Random, stamp: str) -> list[tuple[Any, ...]]:
    rows = []
    for pk in range(1, sizing.patients + 1):
        name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
        if rng.random() < 0.3:
            name += f"^{rng.choice(GIVEN)[0]}"
        pid = f"PID{pk:08d}"
        birth = (
            f"{rng.randrange(1930, 2020):04d}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        )
        sex = rng.choice("MFO")
        attrs = {
            "00100010": _el("PN", name),
            "00100020": _el("LO", pid),
            "00100030": _el("DA", birth),
            "00100040": _el("CS", sex),
        }
        rows.append((pk, pid, "", name, normalize_pn(name), birth, sex, _js(attrs), stamp))
    return rows


def _studies(
    sizing: Sizing, patients: list[tuple[Any, ...]], rng: random.Random, stamp: str
) -> tuple[list[tuple[Any, ...]], list[str]]:
    rows = []
    modality_of = []
    for pk in range(1, sizing.studies + 1):
        patient = patients[rng.randrange(len(patients))]
        study_date = _date(rng)
        study_time = (
            f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}000000"
        )
        accession = f"ACC{pk:09d}"
        modality = rng.choice(MODALITIES)
        modality_of.append(modality)
        description = rng.choice(DESCRIPTIONS)
        referring = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
        uid = f"{UID_ROOT}.1.{pk}"
        attrs = {
            "00080020": _el("DA", study_date),
            "00080030": _el("TM", study_time[:6]),
            "00080050": _el("SH", accession),
            "00080090": _el("PN", referring),
            "00081030": _el("LO", description),
            "0020000D": _el("UI", uid),
            "00200010": _el("SH", str(pk % 100000)),
        }
        rows.append(
            (
                pk,
                uid,
                patient[0],
                study_date,
                study_time,
                accession,
                str(pk % 100000),
                referring,
                normalize_pn(referring),
                description,
                patient[1],
                patient[3],
                patient[4],
                patient[5],
                patient[6],
                _js(attrs),
                stamp,
                stamp,
            )
        )
    return rows, modality_of


STUDY_COLUMNS = [
    "id",
    "study_uid",
    "patient_pk",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "referring_physician_name",
    "referring_physician_name_norm",
    "study_description",
    "patient_id",
    "patient_name",
    "patient_name_norm",
    "patient_birth_date",
    "patient_sex",
    "attributes_json",
    "created_at",
    "last_access_at",
]
PATIENT_COLUMNS = [
    "id",
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_name_norm",
    "patient_birth_date",
    "patient_sex",
    "attributes_json",
    "created_at",
]
SERIES_COLUMNS = [
    "id",
    "series_uid",
    "study_pk",
    "modality",
    "series_number",
    "series_description",
    "series_date",
    "series_time",
    "body_part_examined",
    "attributes_json",
    "created_at",
]
INSTANCE_COLUMNS = [
    "id",
    "sop_uid",
    "series_pk",
    "sop_class_uid",
    "instance_number",
    "content_date",
    "content_time",
    "transfer_syntax_uid",
    "blob_key",
    "tier",
    "size",
    "sha256",
    "number_of_frames",
    "frames_json",
    "pixel_json",
    "metadata_json",
    "attributes_json",
    "stored_at",
    "last_access_at",
]


def _series(
    studies: list[tuple[Any, ...]], modality_of: list[str], rng: random.Random, stamp: str
) -> list[tuple[Any, ...]]:
    rows = []
    pk = 0
    for study, modality in zip(studies, modality_of, strict=True):
        for number in range(1, SERIES_PER_STUDY + 1):
            pk += 1
            # Most studies are one modality; some series are localizers / secondary (SR, OT).
            mod = modality if number < SERIES_PER_STUDY or rng.random() < 0.7 else "SR"
            uid = f"{UID_ROOT}.2.{pk}"
            body = rng.choice(BODY_PARTS)
            attrs = {
                "00080060": _el("CS", mod),
                "0020000E": _el("UI", uid),
                "00200011": _el("IS", number),
                "0008103E": _el("LO", f"{mod} series {number}"),
                "00180015": _el("CS", body),
            }
            rows.append(
                (
                    pk,
                    uid,
                    study[0],
                    mod,
                    number,
                    f"{mod} series {number}",
                    study[3],
                    study[4],
                    body,
                    _js(attrs),
                    stamp,
                )
            )
    return rows


_PIXEL = _js({"rows": 512, "columns": 512, "bits_allocated": 16, "samples_per_pixel": 1})


def _instances(
    series_rows: list[tuple[Any, ...]],
    studies: list[tuple[Any, ...]],
    total: int,
    stamp: str,
    per_series: int = INSTANCES_PER_SERIES,
) -> Iterator[tuple[Any, ...]]:
    pk = 0
    for row in series_rows:
        study_uid = studies[row[2] - 1][1]
        sop_class = MR_IMAGE_STORAGE if row[3] == "MR" else CT_IMAGE_STORAGE
        for number in range(1, per_series + 1):
            pk += 1
            if pk > total:
                return
            uid = f"{UID_ROOT}.3.{pk}"
            attrs = _js(
                {
                    "00080016": _el("UI", sop_class),
                    "00080018": _el("UI", uid),
                    "00200013": _el("IS", number),
                }
            )
            yield (
                pk,
                uid,
                row[0],
                sop_class,
                number,
                row[6],
                row[7],
                EXPLICIT_LE,
                f"{study_uid}/{row[1]}/{uid}",
                "hot",
                525_000 + pk % 997,
                f"{pk:064x}",
                1,
                None,
                _PIXEL,
                attrs,  # a small stub: the study list never reads instance metadata
                attrs,
                stamp,
                stamp,
            )


# -- database -------------------------------------------------------------------------------


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def db_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def engine_url(index_url: str) -> str:
    """The SQLAlchemy URL arca uses for an ``--index`` value (PostgreSQL or SQLite)."""
    return StorageSettings(data_dir=Path("."), index_url=index_url).resolved_index_url


async def migrate(index_url: str) -> None:
    """arca's own Alembic migrations: the schema is exactly what ``arca serve`` creates."""
    engine = index_engine.create_engine(engine_url(index_url))
    try:
        await index_engine.upgrade_engine(engine)
    finally:
        await engine.dispose()


STAMP = "2026-11-22T00:00:00.000000+00:00"
"""created/updated time of every generated row."""


def _upper_levels(
    instances: int, per_series: int, seed: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The generated patient, study and series rows (the same for both index kinds)."""
    rng = random.Random(seed)
    sizing = Sizing.for_instances(instances, per_series)
    patients = _patients(sizing, rng, STAMP)
    studies, modality_of = _studies(sizing, patients, rng, STAMP)
    return patients, studies, _series(studies, modality_of, rng, STAMP)


async def fill(
    name: str, instances: int, per_series: int = INSTANCES_PER_SERIES, seed: int = 5
) -> dict[str, Any]:
    """COPY synthetic rows into every level; returns counts and how long it took."""
    started = time.perf_counter()
    patients, studies, series_rows = _upper_levels(instances, per_series, seed)
    conn = await asyncpg.connect(db_url(name))
    try:
        await conn.copy_records_to_table("patients", records=patients, columns=PATIENT_COLUMNS)
        await conn.copy_records_to_table("studies", records=studies, columns=STUDY_COLUMNS)
        await conn.copy_records_to_table("series", records=series_rows, columns=SERIES_COLUMNS)
        batch: list[tuple[Any, ...]] = []
        for record in _instances(series_rows, studies, instances, STAMP, per_series):
            batch.append(record)
            if len(batch) >= 50_000:
                await conn.copy_records_to_table(
                    "instances", records=batch, columns=INSTANCE_COLUMNS
                )
                batch = []
        if batch:
            await conn.copy_records_to_table("instances", records=batch, columns=INSTANCE_COLUMNS)
        # COPY with explicit ids leaves the sequences at 1: later STOWs must not collide.
        for table in ("patients", "studies", "series", "instances"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table}))"
            )
        # VACUUM, not only ANALYZE: it sets the visibility map, as autovacuum's insert-triggered
        # run (PostgreSQL 13+) soon does on a real index. Without it, counting a page's
        # instances (an index-only scan) visits every heap row: ~80 ms instead of ~10 ms for
        # a page of 2,000-instance studies (--instances-per-series 500).
        await conn.execute("VACUUM ANALYZE")
        counts = {
            t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
            for t in ("patients", "studies", "series", "instances")
        }
    finally:
        await conn.close()
    counts["fill_seconds"] = round(time.perf_counter() - started, 1)  # type: ignore[assignment]
    return counts


def fill_sqlite(
    path: Path, instances: int, per_series: int = INSTANCES_PER_SERIES, seed: int = 5
) -> dict[str, Any]:
    """The same rows into a SQLite index (executemany in one transaction; no COPY there)."""
    started = time.perf_counter()
    patients, studies, series_rows = _upper_levels(instances, per_series, seed)
    tables = (
        ("patients", PATIENT_COLUMNS, patients),
        ("studies", STUDY_COLUMNS, studies),
        ("series", SERIES_COLUMNS, series_rows),
        (
            "instances",
            INSTANCE_COLUMNS,
            _instances(series_rows, studies, instances, STAMP, per_series),
        ),
    )
    conn = sqlite3.connect(path)
    try:
        with conn:
            for table_name, columns, records in tables:
                marks = ", ".join("?" * len(columns))
                conn.executemany(
                    f"INSERT INTO {table_name} ({', '.join(columns)}) VALUES ({marks})", records
                )
        conn.execute("ANALYZE")
        counts: dict[str, Any] = {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("patients", "studies", "series", "instances")
        }
    finally:
        conn.close()
    counts["fill_seconds"] = round(time.perf_counter() - started, 1)
    return counts


# -- the queries ----------------------------------------------------------------------------


def cases(sample_patient_id: str, sample_accession: str) -> list[Case]:
    base = [("limit", "101"), ("offset", "0"), ("includefield", OHIF_INCLUDE)]
    return [
        Case("study list (no filter, OHIF)", base),
        Case("PatientName=smi*", [("PatientName", "smi*"), *base]),
        Case(
            "PatientName=smith fuzzy", [("PatientName", "smith"), ("fuzzymatching", "true"), *base]
        ),
        Case("StudyDate one month", [("StudyDate", "20200101-20200131"), *base]),
        Case("ModalitiesInStudy=CT", [("ModalitiesInStudy", "CT"), *base]),
        Case("PatientID exact", [("PatientID", sample_patient_id), *base]),
        Case("AccessionNumber exact", [("AccessionNumber", sample_accession), *base]),
        Case(
            "StudyDate one year + ModalitiesInStudy=MR",
            [("StudyDate", "20230101-20231231"), ("ModalitiesInStudy", "MR"), *base],
        ),
        Case(
            "study list page 51 (offset 5050)",
            [("limit", "101"), ("offset", "5050"), ("includefield", OHIF_INCLUDE)],
        ),
    ]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def _summary(samples: list[float], matches: int) -> dict[str, Any]:
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(_percentile(samples, 95), 2),
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
        "runs": len(samples),
        "matches": matches,
        "met": _percentile(samples, 95) <= TARGET_MS,
    }


async def time_sql(index_url: str, all_cases: list[Case], runs: int, which: str) -> dict[str, Any]:
    """One statement alone (``which``: "matching" or "statement" of the compiled query),
    timed from this client, with the CPU its PostgreSQL backend process spent (SQLite runs
    in this process: its CPU)."""
    engine = index_engine.create_engine(engine_url(index_url))
    out: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                backend = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            else:
                backend = os.getpid()
            for case in all_cases:
                compiled = compile_query(build_query(QueryLevel.STUDY, case.params, {})[0])
                statement = getattr(compiled, which)
                for _ in range(5):
                    rows = (await conn.execute(statement)).all()
                samples = []
                cpu0 = _cpu_seconds(backend)
                for _ in range(runs):
                    t0 = time.perf_counter()
                    rows = (await conn.execute(statement)).all()
                    samples.append((time.perf_counter() - t0) * 1000)
                cpu_ms = (_cpu_seconds(backend) - cpu0) * 1000 / runs
                out[case.name] = _summary(samples, len(rows)) | {"cpu_ms": round(cpu_ms, 2)}
    finally:
        await engine.dispose()
    return out


async def time_in_process(index_url: str, all_cases: list[Case], runs: int) -> dict[str, Any]:
    settings = StorageSettings(
        data_dir=Path(tempfile.mkdtemp(prefix="pg-scale-")), index_url=index_url
    )
    archive = await open_archive(settings)
    out: dict[str, Any] = {}
    try:
        for case in all_cases:
            query, _ = build_query(QueryLevel.STUDY, case.params, {})
            for _ in range(5):
                result = await archive.search(query)
            samples = []
            cpu0 = time.process_time()
            for _ in range(runs):
                t0 = time.perf_counter()
                result = await archive.search(query)
                samples.append((time.perf_counter() - t0) * 1000)
            cpu_ms = (time.process_time() - cpu0) * 1000 / runs
            out[case.name] = _summary(samples, len(result.matches)) | {"cpu_ms": round(cpu_ms, 2)}
    finally:
        await archive.close()
    return out


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_http(index_url: str, all_cases: list[Case], runs: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="pg-scale-serve-"))
    port = _free_port()
    argv = [
        sys.executable, "-m", "server.cli", "serve", "--data", str(data), "--index", index_url,
        "--http-host", "127.0.0.1", "--http-port", str(port), "--dimse-port", str(_free_port()),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCA_")}
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    out: dict[str, Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=30.0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"arca serve exited; see {data / 'serve.log'}")
                try:
                    if client.get(base + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("arca serve did not come up")
                time.sleep(0.1)
            url = base + "/dicom-web/studies"
            headers = {"Accept": "application/dicom+json"}
            for case in all_cases:
                params: list[tuple[str, str | int | float | bool | None]] = list(case.params)
                for _ in range(5):
                    r = client.get(url, params=params, headers=headers)
                    r.raise_for_status()
                samples = []
                cpu0 = _cpu_seconds(proc.pid)
                for _ in range(runs):
                    t0 = time.perf_counter()
                    r = client.get(url, params=params, headers=headers)
                    samples.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                cpu_ms = (_cpu_seconds(proc.pid) - cpu0) * 1000 / runs
                matches = len(r.json()) if r.status_code == 200 else 0
                out[case.name] = _summary(samples, matches) | {"cpu_ms": round(cpu_ms, 2)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return out


async def explain(name: str, case: Case) -> str:
    """EXPLAIN ANALYZE of the one statement of a page (matching subquery and computed
    attributes)."""
    query, _ = build_query(QueryLevel.STUDY, case.params, {})
    compiled = compile_query(query).statement
    dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = str(compiled.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    conn = await asyncpg.connect(db_url(name))
    try:
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


def table(results: dict[str, Any]) -> str:
    lines = [
        "| query | path | min ms | p50 ms | p95 ms | CPU ms/query | matches | vs 50 ms p95 |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for path in PATHS:
        for case, s in results.get(path, {}).items():
            verdict = "MET" if s["met"] else "MISSED"
            times = f"{s['min_ms']:.2f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f}"
            cpu = f"{s['cpu_ms']:.2f}" if "cpu_ms" in s else "-"
            lines.append(f"| {case} | {path} | {times} | {cpu} | {s['matches']} | {verdict} |")
    return "\n".join(lines)


async def existing_counts(name: str) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url(name))
    try:
        await conn.execute("ANALYZE")
        return {
            t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
            for t in ("patients", "studies", "series", "instances")
        }
    finally:
        await conn.close()


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fill (or reuse) an index, migrate it to the current schema, time every case."""
    if args.sqlite is not None:
        return await run_sqlite(args)
    reuse = args.database is not None
    name = args.database or f"arca_scale_{uuid.uuid4().hex[:10]}"
    if not reuse:
        await create_database(name)
    try:
        started = time.perf_counter()
        await migrate(db_url(name))
        migrate_seconds = round(time.perf_counter() - started, 1)
        if reuse:
            counts = await existing_counts(name)
            args.instances = counts["instances"]
            print(f"reusing {name} (migrated in {migrate_seconds} s): {counts}", flush=True)
        else:
            counts = await fill(name, args.instances, args.instances_per_series)
            print(f"filled {name}: {counts}", flush=True)
        results = await time_cases(args, db_url(name), counts)
        results["database"] = name
        # On a reused database this is the upgrade of a filled index (e.g. 0003 -> 0004).
        results["migrate_seconds"] = migrate_seconds
        missed = {c for path in PATHS for c, s in results.get(path, {}).items() if not s["met"]}
        results["explain"] = {
            c.name: await explain(name, c) for c in results.pop("cases") if c.name in missed
        }
        return results
    finally:
        if args.keep or reuse:
            print(f"kept database {name}", flush=True)
        else:
            await drop_database(name)


async def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    """The same on a SQLite index file (filled when it does not exist yet, then kept)."""
    path: Path = args.sqlite.resolve()
    fresh = not path.exists()
    index_url = f"sqlite:///{path}"
    started = time.perf_counter()
    await migrate(index_url)
    migrate_seconds = round(time.perf_counter() - started, 1)
    if fresh:
        counts = await asyncio.to_thread(
            fill_sqlite, path, args.instances, args.instances_per_series
        )
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            counts = {
                t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("patients", "studies", "series", "instances")
            }
        args.instances = counts["instances"]
    print(f"{'filled' if fresh else 'reusing'} {path}: {counts}", flush=True)
    results = await time_cases(args, index_url, counts)
    results.pop("cases")
    results["database"] = str(path)
    results["migrate_seconds"] = migrate_seconds
    results["explain"] = {}
    return results


async def time_cases(
    args: argparse.Namespace, index_url: str, counts: dict[str, Any]
) -> dict[str, Any]:
    sizing = Sizing.for_instances(args.instances, args.instances_per_series)
    all_cases = cases(
        f"PID{max(1, sizing.patients // 3):08d}", f"ACC{max(1, sizing.studies // 2):09d}"
    )
    results: dict[str, Any] = {"instances": args.instances, "counts": counts, "cases": all_cases}
    # The machine is shared: the load average says how contended the timings were.
    results["loadavg_before"] = os.getloadavg()
    results["uptime"] = {"before": _uptime()}
    results["match_sql"] = await time_sql(index_url, all_cases, args.runs, "matching")
    results["page_sql"] = await time_sql(index_url, all_cases, args.runs, "statement")
    results["uptime"]["after SQL"] = _uptime()
    results["in_process"] = await time_in_process(index_url, all_cases, args.runs)
    results["uptime"]["after in_process"] = _uptime()
    if args.http:
        results["http"] = await asyncio.to_thread(time_http, index_url, all_cases, args.runs)
        results["uptime"]["after http"] = _uptime()
    results["loadavg_after"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=50, help="timed runs per query (after 5 warm-up)"
    )
    parser.add_argument(
        "--instances-per-series",
        type=int,
        default=INSTANCES_PER_SERIES,
        help="instances in each of a study's 4 series (larger studies, fewer of them); "
        "give the same value again with --database",
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--database",
        help="reuse this database (filled by an earlier --keep run; never dropped)",
    )
    parser.add_argument(
        "--sqlite",
        type=Path,
        help="time a SQLite index at this path instead (filled if absent, always kept)",
    )
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the HTTP timing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    for stage, line in results["uptime"].items():
        print(f"uptime {stage}: {line}")
    print(table(results))
    for case, plan in results["explain"].items():
        print(f"\nEXPLAIN ANALYZE ({case}):\n{plan}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
