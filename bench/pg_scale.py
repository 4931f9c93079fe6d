"""The study-list query at scale: QIDO-RS study searches over a PostgreSQL index of 1M instances.

Issue #5 asks that a study-list query over 1,000,000 indexed instances answers in <= 50 ms
(p95) on PostgreSQL. This benchmark creates a fresh database, runs arca's own Alembic
migrations (the real schema), fills patients / studies / series / instances with synthetic but
realistic rows through COPY (asyncpg ``copy_records_to_table``: minutes, not hours, unlike STOW),
ANALYZEs, then times each query

- in process, through ``Archive.search(build_query(...))`` (the code QIDO runs), and
- over HTTP, against a real ``arca serve --index postgresql://...`` (what users see).

Run: ``.venv/bin/python -m bench.pg_scale [--instances N] [--runs R] [--keep] [--no-http]
[--proposed-indexes]``.
Prints a markdown table (p50/p95 in ms, MET/MISSED against 50 ms), writes
``bench/results/pg_scale.json`` and prints EXPLAIN ANALYZE of the main SQL of any query that
missed. The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
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
PATHS = ("match_sql", "in_process", "http")
"""match_sql: the matching SELECT alone; in_process: Archive.search (+ computed attributes and
rendering); http: GET /dicom-web/studies on a real ``arca serve``."""

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

    @classmethod
    def for_instances(cls, n: int) -> Sizing:
        studies = max(1, math.ceil(n / (SERIES_PER_STUDY * INSTANCES_PER_SERIES)))
        return cls(studies=studies, patients=max(1, studies // 2))


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
    series_rows: list[tuple[Any, ...]], studies: list[tuple[Any, ...]], total: int, stamp: str
) -> Iterator[tuple[Any, ...]]:
    pk = 0
    for row in series_rows:
        study_uid = studies[row[2] - 1][1]
        sop_class = MR_IMAGE_STORAGE if row[3] == "MR" else CT_IMAGE_STORAGE
        for number in range(1, INSTANCES_PER_SERIES + 1):
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


async def migrate(name: str) -> None:
    """arca's own Alembic migrations: the schema is exactly what ``arca serve`` creates."""
    engine = index_engine.create_engine("postgresql+asyncpg://" + db_url(name).split("://", 1)[1])
    try:
        await index_engine.upgrade_engine(engine)
    finally:
        await engine.dispose()


async def fill(name: str, instances: int, seed: int = 5) -> dict[str, Any]:
    """COPY synthetic rows into every level; returns counts and how long it took."""
    rng = random.Random(seed)
    stamp = "2026-11-22T00:00:00.000000+00:00"
    sizing = Sizing.for_instances(instances)
    started = time.perf_counter()
    patients = _patients(sizing, rng, stamp)
    studies, modality_of = _studies(sizing, patients, rng, stamp)
    series_rows = _series(studies, modality_of, rng, stamp)
    conn = await asyncpg.connect(db_url(name))
    try:
        await conn.copy_records_to_table("patients", records=patients, columns=PATIENT_COLUMNS)
        await conn.copy_records_to_table("studies", records=studies, columns=STUDY_COLUMNS)
        await conn.copy_records_to_table("series", records=series_rows, columns=SERIES_COLUMNS)
        batch: list[tuple[Any, ...]] = []
        for record in _instances(series_rows, studies, instances, stamp):
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
        await conn.execute("ANALYZE")
        counts = {
            t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
            for t in ("patients", "studies", "series", "instances")
        }
    finally:
        await conn.close()
    counts["fill_seconds"] = round(time.perf_counter() - started, 1)  # type: ignore[assignment]
    return counts


PROPOSED_INDEXES = (
    # The default study order of storage.index.compile._order: LIMIT stops after one page
    # instead of sorting every study (no-filter study list: ~30-50 ms -> ~1-2 ms, 10k studies).
    "CREATE INDEX ix_studies_list_order ON studies "
    "((coalesce(study_date, '')) DESC, (coalesce(study_time, '')) DESC, study_uid)",
    # InstanceAvailability (storage.index.results._nearline) looks for cold instances of a page.
    "CREATE INDEX ix_instances_cold ON instances (series_pk) WHERE tier = 'cold'",
)


async def apply_proposed_indexes(name: str) -> None:
    """What the report proposes as migration 0004 (not part of arca's schema yet)."""
    conn = await asyncpg.connect(db_url(name))
    try:
        for statement in PROPOSED_INDEXES:
            await conn.execute(statement)
        # Everything is cached on this machine: random I/O costs about what sequential does.
        await conn.execute(f'ALTER DATABASE "{name}" SET random_page_cost = 1.1')
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


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


async def time_match_sql(name: str, all_cases: list[Case], runs: int) -> dict[str, Any]:
    """Only the matching SELECT (no computed attributes, no rendering): where time goes."""
    engine = index_engine.create_engine("postgresql+asyncpg://" + db_url(name).split("://", 1)[1])
    out: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:
            for case in all_cases:
                statement = compile_query(build_query(QueryLevel.STUDY, case.params, {})[0])
                for _ in range(5):
                    rows = (await conn.execute(statement.statement)).all()
                samples = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    rows = (await conn.execute(statement.statement)).all()
                    samples.append((time.perf_counter() - t0) * 1000)
                out[case.name] = _summary(samples, len(rows))
    finally:
        await engine.dispose()
    return out


async def time_in_process(name: str, all_cases: list[Case], runs: int) -> dict[str, Any]:
    settings = StorageSettings(
        data_dir=Path(tempfile.mkdtemp(prefix="pg-scale-")), index_url=db_url(name)
    )
    archive = await open_archive(settings)
    out: dict[str, Any] = {}
    try:
        for case in all_cases:
            query, _ = build_query(QueryLevel.STUDY, case.params, {})
            for _ in range(5):
                result = await archive.search(query)
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                result = await archive.search(query)
                samples.append((time.perf_counter() - t0) * 1000)
            out[case.name] = _summary(samples, len(result.matches))
    finally:
        await archive.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_http(name: str, all_cases: list[Case], runs: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="pg-scale-serve-"))
    port = _free_port()
    argv = [
        sys.executable, "-m", "server.cli", "serve", "--data", str(data), "--index", db_url(name),
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
                for _ in range(runs):
                    t0 = time.perf_counter()
                    r = client.get(url, params=params, headers=headers)
                    samples.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                out[case.name] = _summary(samples, len(r.json()) if r.status_code == 200 else 0)
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
    """EXPLAIN ANALYZE of the matching statement (the one that scales with the index)."""
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
        "| query | path | min ms | p50 ms | p95 ms | matches | vs 50 ms p95 |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for path in PATHS:
        for case, s in results.get(path, {}).items():
            verdict = "MET" if s["met"] else "MISSED"
            times = f"{s['min_ms']:.2f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f}"
            lines.append(f"| {case} | {path} | {times} | {s['matches']} | {verdict} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"arca_scale_{uuid.uuid4().hex[:10]}"
    await create_database(name)
    try:
        await migrate(name)
        counts = await fill(name, args.instances)
        print(f"filled {name}: {counts}", flush=True)
        if args.proposed_indexes:
            await apply_proposed_indexes(name)
        sizing = Sizing.for_instances(args.instances)
        all_cases = cases(
            f"PID{max(1, sizing.patients // 3):08d}", f"ACC{max(1, sizing.studies // 2):09d}"
        )
        results: dict[str, Any] = {"database": name, "instances": args.instances, "counts": counts}
        results["proposed_indexes"] = args.proposed_indexes
        # The machine is shared: the load average says how contended the timings were.
        results["loadavg_before"] = os.getloadavg()
        results["match_sql"] = await time_match_sql(name, all_cases, args.runs)
        results["in_process"] = await time_in_process(name, all_cases, args.runs)
        if args.http:
            results["http"] = await asyncio.to_thread(time_http, name, all_cases, args.runs)
        results["loadavg_after"] = os.getloadavg()
        missed = {c for path in PATHS for c, s in results.get(path, {}).items() if not s["met"]}
        results["explain"] = {c.name: await explain(name, c) for c in all_cases if c.name in missed}
        return results
    finally:
        if args.keep:
            print(f"kept database {name}", flush=True)
        else:
            await drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pg_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument(
        "--runs", type=int, default=50, help="timed runs per query (after 5 warm-up)"
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the HTTP timing")
    parser.add_argument(
        "--proposed-indexes",
        action="store_true",
        help="also create the indexes proposed for migration 0004 (and random_page_cost=1.1)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(table(results))
    for case, plan in results["explain"].items():
        print(f"\nEXPLAIN ANALYZE ({case}):\n{plan}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
