"""``python -m bench.run``: arca and Orthanc side by side on the same data, one command.

Starts both archives as our own processes on free loopback ports, loads the same generated CT
data into each, measures every figure on both in the same run (alternating which goes first
per repetition), and writes ``bench/results/<timestamp>/`` (markdown table, JSON, PNG plot)
plus ``bench/results/latest``. Targets from project issue #6 are printed with MET / MISSED.

usage: python -m bench.run [--only SCENARIO,...] [--instances N] [--repeat R] [--quick]
                           [--servers arca,orthanc] [--profile] [--keep]
scenarios: stow cstore wado frames metadata qido cmove stream remote cold
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report, servers
from bench.plan import Plan
from bench.scenarios import Bench

ROOT = Path(__file__).resolve().parent
SCENARIOS = (
    "stow",
    "cstore",
    "wado",
    "frames",
    "metadata",
    "qido",
    "cmove",
    "stream",
    "remote",
    "cold",
)


@dataclass(frozen=True)
class Options:
    only: tuple[str, ...]
    instances: int
    repeat: int
    metadata_instances: int
    servers: tuple[str, ...]
    profile: bool
    keep: bool
    out: Path
    work: Path


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated scenarios: " + " ".join(SCENARIOS))
    p.add_argument("--instances", type=int, default=None, help="instances per series (300)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per figure (3)")
    p.add_argument("--metadata-instances", type=int, default=None, help="metadata study (1000)")
    p.add_argument("--quick", action="store_true", help="small and fast: 20 instances, 1 run")
    p.add_argument("--servers", default="arca,orthanc", help="which archives (arca,orthanc)")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of arca's hot paths")
    p.add_argument("--keep", action="store_true", help="keep the servers' data folders")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--work", type=Path, default=ROOT / "work")
    a = p.parse_args(argv)
    only = tuple(s for s in a.only.split(",") if s) or SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    n = a.instances or (20 if a.quick else 300)
    r = a.repeat or (1 if a.quick else 3)
    m = a.metadata_instances or (100 if a.quick else 1000)
    return Options(
        only=only,
        instances=n,
        repeat=r,
        metadata_instances=m,
        servers=tuple(s for s in a.servers.split(",") if s),
        profile=a.profile,
        keep=a.keep,
        out=a.out,
        work=a.work,
    )


def pick_servers(opts: Options, workdir: Path, dest_port: int, log: Bench) -> list[servers.Server]:
    chosen: list[servers.Server] = []
    if "arca" in opts.servers:
        why = servers.arca_unavailable()
        if why is None:
            chosen.append(servers.ArcaServer(workdir / "arca", dest_port))
        else:
            log.note(
                f"arca: `arca serve` cannot run from this checkout ({why}); measured Orthanc only"
            )
    if "orthanc" in opts.servers:
        try:
            servers.ensure_orthanc()
            chosen.append(servers.OrthancServer(workdir / "orthanc", dest_port))
        except Exception as exc:
            log.note(f"orthanc: could not be installed or found ({exc}); measured arca only")
    return chosen


def _loadavg() -> str:
    """The 1/5/15-minute load averages: how busy the shared machine was (2 cores)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    workdir = opts.work / f"run-{stamp}"
    outdir = opts.out / stamp
    plan = Plan.make(
        opts.work / "data", opts.instances, opts.repeat, opts.metadata_instances, opts.only
    )
    figs = report.figures()
    for key in ("series_metadata", "study_metadata"):
        figs[key].label = figs[key].label.replace("1,000", f"{opts.metadata_instances:,}")
    bench = Bench(plan, figs, outdir, profile=opts.profile)
    bench.say(f"data ready: {plan.describe()}")
    dest_port = servers.free_port()
    # The cold scenario runs its own arca (with a cold tier) and object store (bench/cold.py).
    shared = set(opts.only) - {"cold"}
    chosen = pick_servers(opts, workdir, dest_port, bench) if shared else []
    if not chosen and shared:
        bench.say("no archive to measure")
        return 2
    meta: dict[str, Any] = {
        "started": stamp,
        "instances": opts.instances,
        "repeat": opts.repeat,
        "metadata_instances": opts.metadata_instances,
        "scenarios": list(opts.only),
        "machine": (
            f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"
        ),
        "notes": bench.notes,
        "loadavg_start": _loadavg(),
    }
    try:
        bench.start(chosen, dest_port)
        for s in chosen:
            meta[f"{s.name}_version"] = s.version()
        if "cold" in opts.only and "arca_version" not in meta:
            meta["arca_version"] = servers.ArcaServer(workdir / "arca", dest_port).version()
        bench.run_all(opts.only)
    finally:
        bench.stop()
        for s in chosen:
            if s.crashes:
                bench.note(
                    f"{s.name} crashed {len(s.crashes)}× and was restarted: "
                    + "; ".join(s.crashes[:6])
                )
        meta["loadavg_end"] = _loadavg()
        meta["finished"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        written = report.write(bench.figs, meta, outdir)
        latest = opts.out / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(outdir.name)
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(written["markdown"].read_text())
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
