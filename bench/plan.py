"""Which generated data each scenario uses, so repetitions never hit a warm cache by accident.

The retrieve study holds ``1 + 4R`` series of N slices: series 0 for native / frames / C-MOVE
(warm page cache on purpose), then R fresh series each for JPEG 2000 cold, JPEG-LS cold, and
the remote-site JPEG 2000 and JPEG-LS retrieves, so every "cold" request meets a series the
server has never transcoded. With N=300 and R=3 the study is 3,900 slices ≈ 2 GB, which is the
study the streaming-memory figure retrieves whole. Ingest figures get their own sets (fresh
UIDs per repetition), and metadata a separate 1,000-instance single-series study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.dataset import SeriesSet, generate


@dataclass(frozen=True)
class Plan:
    instances: int
    repeat: int
    retrieve: SeriesSet
    metadata: SeriesSet
    stow_sets: list[SeriesSet]
    cstore_sets: list[SeriesSet]

    @classmethod
    def make(cls, root: Path, n: int, r: int, m: int, only: tuple[str, ...]) -> Plan:
        series = 1 + 4 * r
        retrieve = generate(root, f"retrieve-n{n}-r{r}", n * series, series=series, seed=1)
        metadata = generate(root, f"metadata-m{m}", m, seed=2, patient_id="BENCH0002")
        stow = [
            generate(root, f"stow-n{n}-{k}", n, seed=10 + k, patient_id=f"BENCHS{k:03d}")
            for k in range(r if "stow" in only else 0)
        ]
        cstore = [
            generate(root, f"cstore-n{n}-{k}", n, seed=100 + k, patient_id=f"BENCHC{k:03d}")
            for k in range(r if "cstore" in only else 0)
        ]
        return cls(n, r, retrieve, metadata, stow, cstore)

    def series(self, index: int) -> tuple[str, list[str]]:
        """(SeriesInstanceUID, its SOPInstanceUIDs) of retrieve series ``index``."""
        n = self.instances
        return self.retrieve.series_uids[index], self.retrieve.sop_instance_uids[
            index * n : (index + 1) * n
        ]

    def j2k_cold(self, k: int) -> int:
        return 1 + k

    def jls_cold(self, k: int) -> int:
        return 1 + self.repeat + k

    def remote_j2k(self, k: int) -> int:
        return 1 + 2 * self.repeat + k

    def remote_jls(self, k: int) -> int:
        return 1 + 3 * self.repeat + k

    def describe(self) -> str:
        gb = self.retrieve.total_bytes / 1e9
        return (
            f"retrieve study {len(self.retrieve)} slices in {len(self.retrieve.series_uids)} "
            f"series ({gb:.2f} GB), metadata study {len(self.metadata)} instances, "
            f"{len(self.stow_sets)}+{len(self.cstore_sets)} ingest sets of {self.instances}"
        )
