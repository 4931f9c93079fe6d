"""The benchmark's figures, the issue's targets, and the three outputs: markdown, JSON, PNG.

Targets are the ones written in project issues #6 (and #5: the cold tier) and are printed
next to each figure with MET / MISSED as measured; nothing here is tuned to an implementation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import median

ARCA, ORTHANC = "arca", "orthanc"


@dataclass
class Sample:
    """One measurement of one figure on one server."""

    value: float
    wall: float
    server_load: float
    client_load: float
    extra: dict[str, float] = field(default_factory=dict)
    other_load: float = 0.0
    """Cores busy with neither server nor client: other work on the shared machine."""


@dataclass
class Cell:
    """All samples of one figure on one server, and what went wrong."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return median([s.value for s in self.samples])

    def extra_median(self, key: str) -> float | None:
        return median([s.extra[key] for s in self.samples if key in s.extra])

    @property
    def server_load(self) -> float | None:
        return median([s.server_load for s in self.samples])

    @property
    def client_load(self) -> float | None:
        return median([s.client_load for s in self.samples])

    @property
    def other_load(self) -> float | None:
        return median([s.other_load for s in self.samples])


Check = Callable[[float | None, float | None, "Figure"], tuple[bool | None, str]]


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    target: str = ""
    check: Check | None = None
    ratio_floor: float = 0.0
    """Values below this are measurement noise: no ratio is computed from them."""
    cells: dict[str, Cell] = field(default_factory=dict)
    note: str = ""

    def cell(self, server: str) -> Cell:
        return self.cells.setdefault(server, Cell())

    def ratio(self) -> float | None:
        a, o = self.cell(ARCA).median, self.cell(ORTHANC).median
        if a is None or o is None or o == 0 or min(a, o) < self.ratio_floor:
            return None
        return a / o

    def status(self) -> str:
        if self.check is None:
            return ""
        met, why = self.check(self.cell(ARCA).median, self.cell(ORTHANC).median, self)
        if met is None:
            return f"n/a ({why})" if why else "n/a"
        return "MET" if met else f"MISSED{f' ({why})' if why else ''}"


def _verdict(failures: list[str], unknown: list[str]) -> tuple[bool | None, str]:
    if failures:
        return False, "; ".join(failures + unknown)
    if unknown:
        return None, "; ".join(unknown)
    return True, ""


def _throughput(minimum: float | None, factor: float | None) -> Check:
    """Higher is better: arca ≥ minimum and arca ≥ factor × Orthanc."""

    def check(a: float | None, o: float | None, f: Figure) -> tuple[bool | None, str]:
        if a is None:
            return False, "arca produced no result"
        failures: list[str] = []
        unknown: list[str] = []
        if minimum is not None and a < minimum:
            failures.append(f"{_apart(a, minimum)} < {minimum:,.0f}")
        if factor is not None:
            if o is None or o == 0:
                unknown.append("no Orthanc result for the ratio")
            elif a / o < factor:
                failures.append(f"{_apart(a / o, factor, 2)}× < {factor}×")
        return _verdict(failures, unknown)

    return check


def _apart(value: float, limit: float, decimals: int = 0) -> str:
    """``value`` with as many decimals as it takes not to print as ``limit``: a verdict that
    reads "100 < 100" (99.7 rounded) tells the reader nothing."""
    while True:
        text = f"{value:,.{decimals}f}"
        if decimals >= 6 or float(text.replace(",", "")) != limit:
            return text
        decimals += 1


def _latency(maximum: float | None, factor: float | None) -> Check:
    """Lower is better: arca ≤ maximum and Orthanc / arca ≥ factor."""

    def check(a: float | None, o: float | None, f: Figure) -> tuple[bool | None, str]:
        if a is None:
            return False, "arca produced no result"
        failures: list[str] = []
        unknown: list[str] = []
        if maximum is not None and a > maximum:
            failures.append(f"{_apart(a, maximum, 1)} > {maximum:,.0f}")
        if factor is not None:
            if o is None or a == 0:
                unknown.append("no Orthanc result for the ratio")
            elif o / a < factor:
                failures.append(f"{_apart(o / a, factor, 2)}× faster < {factor}×")
        return _verdict(failures, unknown)

    return check


def _remote_j2k(a: float | None, o: float | None, f: Figure) -> tuple[bool | None, str]:
    if a is None:
        return False, "arca produced no result"
    link = f.cell(ARCA).extra_median("link_utilisation")
    why = []
    if a < 100:
        why.append(f"{_apart(a, 100)} < 100 images/s")
    if link is None or link < 0.9:
        why.append(f"link {_apart(100 * (link or 0), 90)}% < 90%")
    return not why, "; ".join(why)


def _rss(a: float | None, o: float | None, f: Figure) -> tuple[bool | None, str]:
    if a is None:
        return False, "arca produced no result"
    return a < 200, "" if a < 200 else f"{a:,.0f} MB ≥ 200 MB"


def figures() -> dict[str, Figure]:
    """Every figure, in report order."""
    fs = [
        Figure(
            "stow",
            "STOW-RS ingest",
            "instances/s",
            target="≥3× Orthanc",
            check=_throughput(None, 3),
        ),
        Figure(
            "cstore",
            "C-STORE ingest (DCMTK storescu)",
            "instances/s",
            target="≥3× Orthanc",
            check=_throughput(None, 3),
        ),
        Figure(
            "wado_native",
            "WADO-RS series, stored syntax",
            "images/s",
            target="≥3,000 and ≥2× Orthanc",
            check=_throughput(3000, 2),
        ),
        Figure(
            "wado_j2k_cold",
            "WADO-RS series → JPEG 2000 lossless, cold",
            "images/s",
            target="≥150 and ≥1.3× Orthanc",
            check=_throughput(150, 1.3),
        ),
        Figure(
            "wado_j2k_warm",
            "WADO-RS series → JPEG 2000 lossless, warm",
            "images/s",
            target="≥1,500",
            check=_throughput(1500, None),
        ),
        Figure(
            "wado_j2k_pretranscoded",
            "WADO-RS series → JPEG 2000 lossless after another series of the study was "
            "retrieved as JPEG 2000 (pre-transcoded)",
            "images/s",
        ),
        Figure("wado_jls_cold", "WADO-RS series → JPEG-LS lossless, cold", "images/s"),
        Figure("wado_jls_warm", "WADO-RS series → JPEG-LS lossless, warm", "images/s"),
        Figure(
            "frames6",
            "Frames, 6 connections (OHIF Accept)",
            "frames/s",
            target="≥2× Orthanc",
            check=_throughput(None, 2),
        ),
        Figure("series_metadata", "Series metadata, 1,000 instances", "ms", higher_is_better=False),
        Figure(
            "study_metadata",
            "Study metadata, 1,000 instances",
            "ms",
            higher_is_better=False,
            target="≤50 ms and ≥3× faster than Orthanc",
            check=_latency(50, 3),
        ),
        Figure("qido", "QIDO-RS study search", "ms", higher_is_better=False),
        Figure("cmove", "C-MOVE series → DCMTK storescp", "images/s"),
        Figure(
            "stream_rss",
            "Peak RSS growth streaming the big study",
            "MB",
            higher_is_better=False,
            target="<200 MB",
            check=_rss,
            ratio_floor=10.0,  # a few MB of growth is allocator noise, not a comparison
        ),
        Figure(
            "remote_native",
            "Remote 200 Mbit/s 30 ms: series, stored syntax",
            "images/s",
            target="≥30",
            check=_throughput(30, None),
        ),
        Figure(
            "remote_j2k",
            "Remote 200 Mbit/s 30 ms: series → JPEG 2000",
            "images/s",
            target="≥100 (≥90% link)",
            check=_remote_j2k,
        ),
        Figure(
            "remote_j2k_pretranscoded",
            "Remote 200 Mbit/s 30 ms: series → JPEG 2000 after another series of the study "
            "was retrieved as JPEG 2000 (pre-transcoded)",
            "images/s",
            target="≥100 (≥90% link)",
            check=_remote_j2k,
        ),
        Figure("remote_jls", "Remote 200 Mbit/s 30 ms: series → JPEG-LS", "images/s"),
        Figure(
            "cold_viewer",
            "Cold tier: study metadata, then series (stored syntax)",
            "images/s",
            target="≥150 (issue #5)",
            check=_throughput(150, None),
            note="Orthanc has no cold tier: arca only. Object store: moto on loopback, in "
            "its own process. Timed from the metadata request to the series' last byte.",
        ),
        Figure(
            "cold_series",
            "Cold tier: series alone, no metadata first",
            "images/s",
            note="Orthanc has no cold tier: arca only.",
        ),
    ]
    return {f.key: f for f in fs}


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "ms":
        return f"{v:,.1f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def _details(f: Figure, server: str) -> str:
    c = f.cell(server)
    bits = []
    mbs = c.extra_median("mb_per_s")
    if mbs is not None:
        bits.append(f"{mbs:,.0f} MB/s")
    link = c.extra_median("link_utilisation")
    if link is not None:
        bits.append(f"link {link:.0%}")
        first = c.extra_median("first_byte_ms")
        if first is not None:  # connect + request + the server's first byte, on the link
            bits.append(f"first byte after {first:,.0f} ms")
    md_ms = c.extra_median("metadata_ms")
    if md_ms is not None:
        bits.append(f"metadata {md_ms:,.0f} ms")
    moto = c.extra_median("moto_load")
    if moto is not None:
        bits.append(f"object store (moto) {moto:.2f} cores")
    if c.samples:
        bits.append(
            f"cores busy: server {c.server_load or 0:.2f}, client {c.client_load or 0:.2f}, "
            f"other work {c.other_load or 0:.2f}"
        )
    if c.errors:
        bits.append(f"{len(c.errors)} failed: {c.errors[0][:120]}")
    return "; ".join(bits)


def markdown(figs: dict[str, Figure], meta: dict[str, Any]) -> str:
    lines = [
        f"# arca vs Orthanc — {meta.get('started', '')}",
        "",
        f"arca: {meta.get('arca_version', '?')}; Orthanc: {meta.get('orthanc_version', '?')}; "
        f"{meta.get('instances')} instances per series, {meta.get('repeat')} repetitions "
        f"(medians), machine: {meta.get('machine', '')}; load average at start "
        f"{meta.get('loadavg_start', '?')}, at end {meta.get('loadavg_end', '?')}.",
        "",
        "| figure | unit | arca | Orthanc | arca/Orthanc | target | status |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for f in figs.values():
        if not any(f.cell(s).samples or f.cell(s).errors for s in (ARCA, ORTHANC)):
            continue
        ratio = f.ratio()
        rtxt = "—" if ratio is None else f"{ratio:.2f}"
        if ratio is not None and not f.higher_is_better and ratio > 0:
            rtxt += f" ({1 / ratio:.1f}× {'faster' if ratio < 1 else 'slower'})"
        a = f.cell(ARCA).median
        o = f.cell(ORTHANC).median
        atxt = _fmt(a, f.unit) if a is not None else ("failed" if f.cell(ARCA).errors else "—")
        otxt = _fmt(o, f.unit) if o is not None else ("failed" if f.cell(ORTHANC).errors else "—")
        lines.append(
            f"| {f.label} | {f.unit} | {atxt} | {otxt} | {rtxt} | {f.target} | {f.status()} |"
        )
    lines += [
        "",
        "## What each figure ran into",
        "",
        "(MB/s, link utilisation, and CPU cores busy (medians) on the server side, the "
        "client side, and with other work on this shared 2-core machine: a server near "
        "1.0 is CPU-bound on one core (one Python process); server + client + other "
        "near 2.0 means the machine itself was the limit.)",
        "",
    ]
    for f in figs.values():
        for s in (ARCA, ORTHANC):
            d = _details(f, s)
            if d:
                lines.append(f"- {f.label} — {s}: {d}")
        if f.note:
            lines.append(f"  - note: {f.note}")
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def to_json(figs: dict[str, Figure], meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta, "figures": {}}
    for f in figs.values():
        out["figures"][f.key] = {
            "label": f.label,
            "unit": f.unit,
            "higher_is_better": f.higher_is_better,
            "target": f.target,
            "status": f.status(),
            "ratio_arca_over_orthanc": f.ratio(),
            "note": f.note,
            "servers": {
                s: {
                    "median": c.median,
                    "samples": [vars(x) for x in c.samples],
                    "errors": c.errors,
                }
                for s, c in f.cells.items()
            },
        }
    return out


def plot(figs: dict[str, Figure], path: Path) -> bool:
    """Bar chart of the throughput figures (log scale); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [f for f in figs.values() if f.higher_is_better and f.unit.endswith("/s")]
    rows = [f for f in rows if f.cell(ARCA).median or f.cell(ORTHANC).median]
    if not rows:
        return False
    positive = [v for f in rows for c in f.cells.values() if (v := c.median)]
    lo = min([*positive, 1.0]) / 2
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.5))
    ys = range(len(rows))
    for offset, server, color in ((-0.2, ARCA, "#1f77b4"), (0.2, ORTHANC, "#ff7f0e")):
        vals = [f.cell(server).median or 0 for f in rows]
        bars = ax.barh([y + offset for y in ys], vals, height=0.38, label=server, color=color)
        for bar, v, f in zip(bars, vals, rows, strict=True):
            errors = f.cell(server).errors
            if not v and errors:
                what = "crashed" if any("CRASHED" in e for e in errors) else "failed"
                ax.text(
                    lo * 1.1,
                    bar.get_y() + bar.get_height() / 2,
                    f" {server}: {what}",
                    va="center",
                    fontsize=7,
                    color=color,
                )
            if v:
                ax.text(
                    v, bar.get_y() + bar.get_height() / 2, f" {_fmt(v)}", va="center", fontsize=7
                )
    ax.set_yticks(list(ys), [f"{f.label} ({f.unit})" for f in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=lo)
    ax.set_xlabel("per second (log scale), median")
    ax.legend()
    ax.set_title("arca vs Orthanc: throughput per scenario")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(figs: dict[str, Figure], meta: dict[str, Any], outdir: Path) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    md, js, png = outdir / "results.md", outdir / "results.json", outdir / "images_per_s.png"
    md.write_text(markdown(figs, meta))
    js.write_text(json.dumps(to_json(figs, meta), indent=2))
    written = {"markdown": md, "json": js}
    if plot(figs, png):
        written["plot"] = png
    return written
