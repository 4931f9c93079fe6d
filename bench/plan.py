"""Which generated data each scenario uses, so repetitions never hit a warm cache by accident.

The retrieve study holds ``1 + 4R`` series of N slices: series 0 for native / frames / C-MOVE
(warm page cache on purpose), then R fresh series each for JPEG 2000 cold, JPEG-LS cold, and
the remote-site JPEG 2000 and JPEG-LS retrieves, so every "cold" request meets a series the
server has never transcoded. With N=300 and R=3 the study is 3,900 slices ≈ 2 GB, which is the
study the streaming-memory figure retrieves whole. Ingest figures get their own sets (fresh
UIDs per repetition), and metadata a separate 1,000-instance single-series study.

Transcoded ("cold") figures read series in studies of their own (``solo`` sets, one
single-series study per cold series index, for the scenarios that use them): arca
pre-transcodes the rest of a study after a transcoded series retrieve (issue #5), so a cold
series that shared the retrieve study with the one read before it would no longer be cold.
Their index in the retrieve study is kept, so ``j2k_cold(k)`` etc. still name them. The
"pre-transcoded" figures get R fresh two-series studies each (``pairs`` on loopback,
``remote_pairs`` for the remote site): series 0 is read as JPEG 2000 first (untimed), series 1
is the measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    solo: dict[int, SeriesSet] = field(default_factory=dict)
    """Retrieve-series index → its own single-series study (transcoded figures)."""
    pairs: list[SeriesSet] = field(default_factory=list)
    """Per repetition, a two-series study for the pre-transcoded JPEG 2000 figure."""
    remote_pairs: list[SeriesSet] = field(default_factory=list)
    """The same for the remote site's pre-transcoded JPEG 2000 figure."""

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
        plan = cls(n, r, retrieve, metadata, stow, cstore)
        indexes: list[int] = []
        if "wado" in only:
            indexes += [plan.j2k_cold(k) for k in range(r)] + [plan.jls_cold(k) for k in range(r)]
        if "remote" in only:
            indexes += [plan.remote_j2k(k) for k in range(r)] + [
                plan.remote_jls(k) for k in range(r)
            ]
        for i in indexes:
            plan.solo[i] = generate(
                root, f"solo-n{n}-{i}", n, seed=300 + i, patient_id=f"BENCHT{i:03d}"
            )
        if "wado" in only:
            plan.pairs.extend(_pair(root, n, k, "pair", 400, "BENCHP") for k in range(r))
        if "remote" in only:
            plan.remote_pairs.extend(_pair(root, n, k, "rpair", 500, "BENCHR") for k in range(r))
        return plan

    def series_ref(self, index: int) -> tuple[str, str]:
        """(StudyInstanceUID, SeriesInstanceUID) of retrieve series ``index``: in its own
        study when the plan made one for it (see the module docstring)."""
        solo = self.solo.get(index)
        if solo is not None:
            return solo.study_uid, solo.series_uids[0]
        return self.retrieve.study_uid, self.retrieve.series_uids[index]

    def extra_sets(self) -> list[SeriesSet]:
        """The studies loaded besides the retrieve and metadata studies."""
        return [*self.solo.values(), *self.pairs, *self.remote_pairs]

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
            f"{len(self.stow_sets)}+{len(self.cstore_sets)} ingest sets of {self.instances}, "
            f"{len(self.solo)} single-series studies for transcoded figures, "
            f"{len(self.pairs) + len(self.remote_pairs)} two-series studies for the "
            "pre-transcoded figures"
        )


def _pair(root: Path, n: int, k: int, name: str, seed: int, patient: str) -> SeriesSet:
    """Repetition ``k``'s two-series study of ``n`` slices each (pre-transcoded figures)."""
    return generate(
        root, f"{name}-n{n}-{k}", 2 * n, series=2, seed=seed + k, patient_id=f"{patient}{k:03d}"
    )
