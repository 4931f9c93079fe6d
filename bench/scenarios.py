"""The measured scenarios: each runs on every archive, alternating which goes first.

Each measurement records its value plus the wall time and the CPU the server's process tree
and the client spent (see :mod:`bench.measure`), so the report can say what limited it.
Failures are recorded, never hidden: a server that dies during a request (Orthanc on JPEG-LS
transcoding) is noted as crashed, restarted on the same data, and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench import ceiling, client, cold, dimse, netns, servers
from bench.dataset import SeriesSet
from bench.measure import RssSampler, usage
from bench.plan import Plan
from bench.report import Figure, Sample

STOW_BATCH = 50
"""Instances per STOW-RS request (sequential requests over one keep-alive connection)."""
MB = 1e6

Measure = Callable[[], tuple[float, dict[str, float]]]
"""A measurement: returns the figure's value and extra numbers (MB/s, link utilisation…)."""


class Bench:
    def __init__(self, plan: Plan, figs: dict[str, Figure], outdir: Path, profile: bool) -> None:
        self.plan = plan
        self.figs = figs
        self.outdir = outdir
        self.profile = profile
        self.notes: list[str] = []
        self.servers: list[servers.Server] = []
        self.scp: dimse.StoreSCP | None = None
        self.t0 = time.monotonic()

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        t = time.monotonic() - self.t0
        print(f"[{int(t // 60):02d}:{int(t % 60):02d}] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"NOTE {text}")

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, chosen: list[servers.Server], dest_port: int) -> None:
        self.scp = dimse.StoreSCP(dest_port, servers.DEST_AE)
        self.scp.start()
        for s in chosen:
            self.say(f"starting {s.name} (http {s.http_port}, dimse {s.dimse_port})")
            try:
                s.start()
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.note(f"{s.name} did not start ({exc}); see {s.log_path}")
                s.stop()
                continue
            if not s.dimse_ok:
                self.note(f"{s.name}: no DIMSE listener on port {s.dimse_port}")
            self.servers.append(s)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        if self.scp is not None:
            self.scp.stop()

    def order(self, rep: int) -> list[servers.Server]:
        return self.servers if rep % 2 == 0 else list(reversed(self.servers))

    # -- recording ----------------------------------------------------------------------------
    def _died(self, s: servers.Server) -> bool:
        """Wait briefly for a process that broke a connection to finish dying."""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if not s.alive():
                return True
            time.sleep(0.1)
        return False

    def measure(
        self,
        key: str,
        s: servers.Server,
        rep: int,
        fn: Measure,
    ) -> None:
        """Run ``fn`` (returns value, extras) on ``s`` under CPU accounting and record it."""
        fig = self.figs[key]
        cell = fig.cell(s.name)
        scp = self.scp.proc if self.scp is not None else None
        extra_pids: Callable[[], list[int]] | None = None
        if key == "cmove" and scp is not None:
            extra_pids = lambda: [scp.pid]  # noqa: E731
        try:
            with usage(lambda: s.proc.pid if s.proc else None, extra_pids) as u:
                value, extra = fn()
        except (client.BenchHTTPError, dimse.DimseError, OSError, ValueError) as exc:
            if not isinstance(exc, dimse.NoDimseListener) and self._died(s):
                why = f"{s.name} CRASHED (exit {s.proc.returncode if s.proc else '?'}) during {key}"
                cell.errors.append(why)
                self.say(f"{key:16s} {s.name:8s} rep {rep + 1}: {why}; restarting it")
                s.note_crash(key)
            else:
                cell.errors.append(str(exc)[:300])
                self.say(f"{key:16s} {s.name:8s} rep {rep + 1}: FAILED {str(exc)[:200]}")
            return
        cell.samples.append(
            Sample(value, u.wall, u.server_load, u.client_load, extra, u.other_load)
        )
        self.say(
            f"{key:16s} {s.name:8s} rep {rep + 1}: {value:,.1f} {fig.unit}"
            f"  (cores: srv {u.server_load:.2f} cli {u.client_load:.2f} other {u.other_load:.2f})"
        )

    # -- data loading -------------------------------------------------------------------------
    def stow(self, s: servers.Server, paths: list[Path]) -> float:
        """STOW-RS ``paths`` in batches; returns seconds. Bodies are read before timing."""
        bodies = []
        for i in range(0, len(paths), STOW_BATCH):
            b = uuid.uuid4().hex
            bodies.append((b, client.stow_body(paths[i : i + STOW_BATCH], b)))
        conn = client.connect(s.base_url)
        start = time.perf_counter()
        try:
            for b, pieces in bodies:
                status = client.post_stow(s.base_url, pieces, b, conn)
                if status != 200:
                    raise client.BenchHTTPError(f"STOW answered HTTP {status}")
        finally:
            conn.close()
        return time.perf_counter() - start

    def _stow_rate(self, s: servers.Server, paths: list[Path]) -> tuple[float, dict[str, float]]:
        return len(paths) / self.stow(s, paths), {}

    def _cstore_rate(self, s: servers.Server, paths: list[Path]) -> tuple[float, dict[str, float]]:
        if not s.dimse_ok:
            raise dimse.NoDimseListener("no DIMSE listener")
        return len(paths) / dimse.c_store(s.dimse_port, s.ae_title, paths), {}

    def dcmtk_ceiling(self) -> None:
        """storescu → storescp (--ignore) with no archive between: the DCMTK pair's own rate.

        storescp is the receiving end of every C-MOVE sub-operation, so the C-MOVE figure cannot
        exceed it, whatever the archive does. (It says nothing of C-STORE into an archive.)"""
        if self.scp is None or not self.plan.cstore_sets:
            return
        paths = self.plan.cstore_sets[0].paths
        try:
            secs = dimse.c_store(self.scp.port, servers.DEST_AE, paths)
        except dimse.DimseError as exc:
            self.note(f"DCMTK storescu → storescp ceiling not measured: {exc}")
            return
        self.note(
            f"DCMTK storescu → storescp (--ignore), no archive: {len(paths) / secs:,.1f} "
            "instances/s — the ceiling of the C-MOVE figure, whose destination is storescp"
        )

    def load(self) -> None:
        """Put the retrieve and metadata studies into every server (not a measured figure)."""
        for s in self.servers:
            for st in (self.plan.retrieve, self.plan.metadata, *self.plan.extra_sets()):
                t = time.perf_counter()
                try:
                    for i in range(0, len(st.paths), 500):
                        self.stow(s, st.paths[i : i + 500])
                    how = "STOW-RS"
                except client.BenchHTTPError as exc:
                    self.say(f"{s.name}: STOW load failed ({exc}); loading with C-STORE")
                    if not s.alive():
                        s.note_crash("load")
                    if not s.dimse_ok:
                        self.note(f"{s.name}: could not load {st.name} (no STOW, no DIMSE)")
                        continue
                    dimse.c_store(s.dimse_port, s.ae_title, st.paths)
                    how = "C-STORE"
                dt = time.perf_counter() - t
                self.note(
                    f"loaded {st.name} ({len(st)} instances) into {s.name} by {how} in "
                    f"{dt:.0f} s ({len(st) / dt:,.0f} instances/s)"
                )

    # -- scenarios ----------------------------------------------------------------------------
    def run_all(self, only: tuple[str, ...]) -> None:
        r = self.plan.repeat
        if "stow" in only:
            for k in range(r):
                for s in self.order(k):
                    st = self.plan.stow_sets[k]
                    self.measure("stow", s, k, functools.partial(self._stow_rate, s, st.paths))
        if "cstore" in only or "cmove" in only:
            self.dcmtk_ceiling()
        if "cstore" in only:
            for k in range(r):
                for s in self.order(k):
                    st = self.plan.cstore_sets[k]
                    self.measure("cstore", s, k, functools.partial(self._cstore_rate, s, st.paths))
        if "cold" in only:
            cold.run(self)  # its own arca (with a cold tier) and moto: see bench/cold.py
        loopback = {"wado", "frames", "metadata", "qido", "cmove", "stream", "remote"}
        if not loopback & set(only):
            return
        self.load()
        self.warm_up()
        if "wado" in only:
            self.loopback_ceiling()
        for k in range(r):
            for s in self.order(k):
                if "wado" in only:
                    self.wado(s, k)
                if "frames" in only:
                    self.frames(s, k)
                if "metadata" in only:
                    self.metadata(s, k)
                if "qido" in only:
                    self.qido(s, k)
                if "cmove" in only:
                    self.cmove(s, k)
        if "stream" in only:
            for k in range(r):
                for s in self.order(k):
                    self.stream(s, k)
        if "remote" in only:
            self.remote(r)
        if self.profile:
            self.run_profiles()

    def loopback_ceiling(self) -> None:
        """The native series retrieve against a server with nothing to do (bench.ceiling)."""
        paths = self.plan.retrieve.paths[: self.plan.instances]
        server = ceiling.InMemorySeriesServer.of_files(paths)
        try:
            conn = client.connect(server.url)
            rates = []
            for _ in range(max(3, self.plan.repeat)):
                t = client.get(server.url, client.STORED, conn)
                rates.append(t.parts / t.seconds)
            conn.close()
        finally:
            server.close()
        rates.sort()
        self.note(
            f"loopback ceiling: the same client reading the series from a server with nothing "
            f"to do (sendfile from the page cache, no archive): "
            f"{rates[len(rates) // 2]:,.0f} images/s (median of {len(rates)}) — no archive's "
            f"native series retrieve can exceed it"
        )

    def series_url(self, s: servers.Server, index: int) -> str:
        study, series = self.plan.series_ref(index)
        return f"{s.base_url}/studies/{study}/series/{series}"

    def warm_up(self) -> None:
        """One untimed native retrieve of series 0 per server: page cache and connections warm."""
        for s in self.servers:
            try:
                client.get(self.series_url(s, 0), client.STORED)
            except client.BenchHTTPError as exc:
                self.say(f"warm-up on {s.name} failed: {exc}")

    def _retrieve(self, url: str, accept: str, expect: int) -> tuple[float, dict[str, float]]:
        t = client.get(url, accept)
        if t.parts != expect:
            raise ValueError(f"got {t.parts} parts, expected {expect}")
        return t.parts / t.seconds, {
            "mb_per_s": t.nbytes / MB / t.seconds,
            "first_byte_ms": t.first_byte * 1000,
        }

    def wado(self, s: servers.Server, k: int) -> None:
        n = self.plan.instances
        self.measure(
            "wado_native", s, k, lambda: self._retrieve(self.series_url(s, 0), client.STORED, n)
        )
        j2k = self.series_url(s, self.plan.j2k_cold(k))
        self.measure("wado_j2k_cold", s, k, lambda: self._retrieve(j2k, client.J2K_LOSSLESS, n))
        self.measure("wado_j2k_warm", s, k, lambda: self._retrieve(j2k, client.J2K_LOSSLESS, n))
        jls = self.series_url(s, self.plan.jls_cold(k))
        self.measure("wado_jls_cold", s, k, lambda: self._retrieve(jls, client.JLS_LOSSLESS, n))
        self.measure("wado_jls_warm", s, k, lambda: self._retrieve(jls, client.JLS_LOSSLESS, n))
        self._measure_pretranscoded(
            "wado_j2k_pretranscoded",
            s,
            k,
            self.plan.pairs[k],
            lambda u: self._retrieve(u, client.J2K_LOSSLESS, n),
            s.base_url,
        )

    def _measure_pretranscoded(
        self,
        key: str,
        s: servers.Server,
        k: int,
        pair: SeriesSet,
        fetch: Callable[[str], tuple[float, dict[str, float]]],
        base_url: str,
    ) -> None:
        """Series 1 of a fresh study → JPEG 2000 lossless, after its series 0 was retrieved as
        JPEG 2000 and the server's background work, if it reports any, is done (both untimed,
        outside the CPU accounting). ``fetch`` retrieves a series as JPEG 2000 from
        ``base_url`` (the server's on loopback, or the remote site's over the link).

        Both servers get the same two requests; only arca has background work to wait for
        (its /health ``pretranscode`` queue). The wait and the codec jobs the timed retrieve
        still ran (arca's /health counters) are recorded with the sample."""
        first, second = (
            f"{base_url}/studies/{pair.study_uid}/series/{uid}" for uid in pair.series_uids
        )
        try:
            fetch(first)
            waited = time.perf_counter()
            jobs_before = self._background_idle(s)
            waited = time.perf_counter() - waited
        except (client.BenchHTTPError, OSError, ValueError) as exc:
            if self._died(s):
                s.note_crash(key)
            self.figs[key].cell(s.name).errors.append(str(exc)[:300])
            self.say(f"{key} {s.name}: first series FAILED {str(exc)[:200]}")
            return

        def run() -> tuple[float, dict[str, float]]:
            value, extra = fetch(second)
            extra["background_wait_s"] = waited
            jobs_after = self._background_idle(s)
            if jobs_before is not None and jobs_after is not None:
                extra["codec_jobs_during"] = jobs_after - jobs_before
            return value, extra

        self.measure(key, s, k, run)

    def _background_idle(self, s: servers.Server, timeout: float = 600.0) -> int | None:
        """Wait until arca's pre-transcode queue is empty; its transcode job count then.
        None for a server without such a report (Orthanc has no background transcoding)."""
        if not isinstance(s, servers.ArcaServer):
            return None
        deadline = time.monotonic() + timeout
        while True:
            body = bytearray()
            client.get(f"http://127.0.0.1:{s.http_port}/health", "application/json", keep=body)
            health = json.loads(body)
            queued = (health.get("pretranscode") or {}).get("queued", 0)
            if not queued or time.monotonic() > deadline:
                return int((health.get("transcoding") or {}).get("transcode_jobs", 0))
            time.sleep(0.05)

    def frames(self, s: servers.Server, k: int) -> None:
        base = self.series_url(s, 0)
        urls = [f"{base}/instances/{sop}/frames/1" for sop in self.plan.series(0)[1]]

        def run() -> tuple[float, dict[str, float]]:
            parts, nbytes, secs = client.concurrent_gets(urls, client.OHIF_FRAMES, 6)
            if parts != len(urls):
                raise ValueError(f"got {parts} frames, expected {len(urls)}")
            return parts / secs, {"mb_per_s": nbytes / MB / secs}

        self.measure("frames6", s, k, run)

    def _metadata(self, url: str, expect: int) -> tuple[float, dict[str, float]]:
        body = bytearray()
        t = client.get(url, client.DICOM_JSON, keep=body)
        items = json.loads(body)
        if len(items) != expect:
            raise ValueError(f"metadata has {len(items)} instances, expected {expect}")
        return t.seconds * 1000, {"mb_per_s": t.nbytes / MB / t.seconds, "bytes": t.nbytes}

    def metadata(self, s: servers.Server, k: int) -> None:
        md = self.plan.metadata
        study = f"{s.base_url}/studies/{md.study_uid}"
        series = f"{study}/series/{md.series_uids[0]}"
        if k == 0:
            for url in (study, series):  # untimed first touch, as a viewer's second open
                with contextlib.suppress(client.BenchHTTPError):
                    client.get(url + "/metadata", client.DICOM_JSON)
        for _ in range(3):
            self.measure(
                "series_metadata", s, k, lambda: self._metadata(series + "/metadata", len(md))
            )
            self.measure(
                "study_metadata", s, k, lambda: self._metadata(study + "/metadata", len(md))
            )

    def qido(self, s: servers.Server, k: int) -> None:
        # What OHIF's study list sends, plus a search by PatientID.
        queries = [
            "/studies?limit=101&offset=0&fuzzymatching=false"
            "&includefield=00081030,00080060&StudyDate=20240101-20241231",
            "/studies?PatientID=BENCH0001&includefield=00081030,00080060",
        ]

        def run(q: str) -> tuple[float, dict[str, float]]:
            body = bytearray()
            t = client.get(s.base_url + q, client.DICOM_JSON, keep=body)
            if not json.loads(body):
                raise ValueError("QIDO found no study")
            return t.seconds * 1000, {}

        for _ in range(5):
            for q in queries:
                self.measure("qido", s, k, functools.partial(run, q))

    def cmove(self, s: servers.Server, k: int) -> None:
        n = self.plan.instances

        def run() -> tuple[float, dict[str, float]]:
            if not s.dimse_ok:
                raise dimse.NoDimseListener("no DIMSE listener")
            done, secs = dimse.c_move_series(
                s.dimse_port,
                s.ae_title,
                servers.DEST_AE,
                self.plan.retrieve.study_uid,
                self.plan.series(0)[0],
                scu_ae=servers.SCU_AE,
            )
            if done != n:
                raise dimse.DimseError(f"{done} sub-operations completed, expected {n}")
            return done / secs, {}

        self.measure("cmove", s, k, run)

    def stream(self, s: servers.Server, k: int) -> None:
        st = self.plan.retrieve
        url = f"{s.base_url}/studies/{st.study_uid}"

        def run() -> tuple[float, dict[str, float]]:
            with RssSampler(s.pids) as rss:
                t = client.get(url, client.STORED)
            if t.parts != len(st):
                raise ValueError(f"got {t.parts} parts, expected {len(st)}")
            return (rss.peak - rss.baseline) / MB, {
                "images_per_s": t.parts / t.seconds,
                "mb_per_s": t.nbytes / MB / t.seconds,
                "baseline_mb": rss.baseline / MB,
                "peak_mb": rss.peak / MB,
                "study_gb": t.nbytes / 1e9,
            }

        self.measure("stream_rss", s, k, run)

    def remote(self, r: int) -> None:
        why = netns.available()
        if why:
            self.note(f"remote-site scenario skipped: {why}")
            return
        try:
            self._remote(r)
        except netns.NetnsError as exc:
            self.note(f"remote-site scenario failed to set up: {exc}")

    def _remote(self, r: int) -> None:
        n = self.plan.instances
        with netns.remote_site() as site:
            ports = {s.name: site.relay(s.http_port) for s in self.servers}
            self.note(
                f"remote site: measured RTT {site.rtt_ms(next(iter(ports.values()))):.1f} ms "
                f"(TCP connect), 200 Mbit/s tbf each way"
            )

            def over_link(s: servers.Server, u: str) -> str:
                here, there = f"127.0.0.1:{s.http_port}", f"{netns.HOST_ADDR}:{ports[s.name]}"
                return u.replace(here, there, 1)

            def url(s: servers.Server, index: int) -> str:
                return over_link(s, self.series_url(s, index))

            def run(u: str, accept: str) -> tuple[float, dict[str, float]]:
                res = site.fetch(u, accept)
                if not res.get("ok"):
                    raise client.BenchHTTPError(str(res.get("error")))
                parts, nbytes = int(str(res["parts"])), int(str(res["bytes"]))
                secs = float(str(res["seconds"]))
                if parts != n:
                    raise ValueError(f"got {parts} parts, expected {n}")
                return parts / secs, {
                    "mb_per_s": nbytes / MB / secs,
                    "link_utilisation": nbytes * 8 / secs / netns.LINK_BITS_PER_SECOND,
                    "first_byte_ms": float(str(res["first_byte"])) * 1000,
                }

            for k in range(r):
                for s in self.order(k):
                    native = functools.partial(run, url(s, 0), client.STORED)
                    self.measure("remote_native", s, k, native)
                    j2k = functools.partial(
                        run, url(s, self.plan.remote_j2k(k)), client.J2K_LOSSLESS
                    )
                    self.measure("remote_j2k", s, k, j2k)
                    jls = functools.partial(
                        run, url(s, self.plan.remote_jls(k)), client.JLS_LOSSLESS
                    )
                    self.measure("remote_jls", s, k, jls)
                    self._measure_pretranscoded(
                        "remote_j2k_pretranscoded",
                        s,
                        k,
                        self.plan.remote_pairs[k],
                        functools.partial(run, accept=client.J2K_LOSSLESS),
                        over_link(s, s.base_url),
                    )
            self._remote_ceiling(site, run)

    def _remote_ceiling(
        self, site: netns.RemoteSite, run: Callable[[str, str], tuple[float, dict[str, float]]]
    ) -> None:
        """The link's own ceiling for the pre-transcoded figure: a body of as many parts and
        bytes as arca's JPEG 2000 series, from memory (bench.ceiling), fetched over the same
        link the same way (a fresh connection each time)."""
        arca = next((s for s in self.servers if isinstance(s, servers.ArcaServer)), None)
        if arca is None or not self.plan.remote_pairs:
            return
        pair = self.plan.remote_pairs[0]
        try:
            url = f"{arca.base_url}/studies/{pair.study_uid}/series/{pair.series_uids[1]}"
            t = client.get(url, client.J2K_LOSSLESS)
        except (client.BenchHTTPError, OSError) as exc:
            self.note(f"remote link ceiling not measured: {exc}")
            return
        # Incompressible bytes that cannot hold the boundary; the link does not compress.
        server = ceiling.InMemorySeriesServer([os.urandom(t.nbytes // t.parts)] * t.parts)
        try:
            u = f"http://{netns.HOST_ADDR}:{site.relay(server.port)}/series"
            samples = [run(u, client.STORED) for _ in range(max(3, self.plan.repeat))]
        except (client.BenchHTTPError, ValueError, netns.NetnsError) as exc:
            self.note(f"remote link ceiling not measured: {exc}")
            return
        finally:
            server.close()
        samples.sort(key=lambda sample: sample[0])
        rate, extra = samples[len(samples) // 2]
        self.note(
            f"remote link ceiling: {t.parts} parts of {t.nbytes / t.parts / 1000:,.1f} kB (the "
            f"size of arca's JPEG 2000 series) from an in-memory server over the same link: "
            f"{rate:,.0f} images/s, link {extra['link_utilisation']:.0%}, first byte after "
            f"{extra['first_byte_ms']:,.0f} ms (median of {len(samples)}) — what a fresh "
            f"connection on this link carries at best for such a transfer"
        )

    # -- profiling ----------------------------------------------------------------------------
    def run_profiles(self) -> None:
        """py-spy (sampling, with native frames off) on arca during native retrieve and metadata."""
        spy = Path(sys.executable).with_name("py-spy")
        arca = next((s for s in self.servers if s.name == "arca"), None)
        if arca is None or not spy.exists() or arca.proc is None:
            self.note("profiling skipped: needs arca and py-spy in the virtualenv")
            return
        self.outdir.mkdir(parents=True, exist_ok=True)
        md = self.plan.metadata
        jobs: dict[str, Callable[[], object]] = {
            "native_retrieve": lambda: [
                client.get(self.series_url(arca, 0), client.STORED) for _ in range(5)
            ],
            "study_metadata": lambda: [
                client.get(f"{arca.base_url}/studies/{md.study_uid}/metadata", client.DICOM_JSON)
                for _ in range(10)
            ],
            "j2k_retrieve": lambda: client.get(
                self.series_url(arca, self.plan.remote_jls(0)), client.J2K_LOSSLESS
            ),
        }
        for name, job in jobs.items():
            out = self.outdir / f"profile-{name}.txt"
            proc = subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(arca.proc.pid),
                    "--subprocesses",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            try:
                job()
            except client.BenchHTTPError as exc:
                self.say(f"profile {name}: {exc}")
            proc.send_signal(2)
            proc.wait(30)
            self.note(f"py-spy profile of arca {name}: {out}")
