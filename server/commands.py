"""``arca import``, ``arca verify`` and ``arca db upgrade``: the archive without the server.

``import`` stores files through :meth:`storage.archive.Archive.ingest`, the same path STOW-RS
takes. Ingest consumes its file, so each source is first copied into the data folder's spool
(same filesystem as the hot tier: the copy is then moved, not copied again); the source is
never touched. SQLite runs in WAL mode with a busy timeout, so an import can run while
``arca serve`` uses the same index.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from config.settings import Settings
from server.spool import spool_dir
from storage.archive import Archive, open_archive, upgrade_index
from storage.errors import IngestRejected, StorageError
from storage.model import IngestStatus

log = logging.getLogger("arca.commands")

IMPORT_CONCURRENCY = 4
"""Files ingested at once: ingest alternates disk, hashing and index work."""
SKIPPED_NAMES = frozenset({"DICOMDIR"})
"""PS3.10 media directories index a file set; they are not instances to store."""


def data_dir_problem(settings: Settings) -> str | None:
    """Why the data folder cannot be used (created if missing), or None when it can."""
    data = settings.storage.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".arca-write-check-", dir=data)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot use the data folder {data}: {exc.strerror or exc}"
    return None


@dataclass
class ImportSummary:
    """What ``arca import`` did with every file it found."""

    stored: list[Path] = field(default_factory=list)
    already_present: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.stored) + len(self.already_present) + len(self.rejected)

    def write(self, out: TextIO) -> None:
        out.write(
            f"arca import: {self.total} files: {len(self.stored)} stored, "
            f"{len(self.already_present)} already present, {len(self.rejected)} rejected\n"
        )
        for path in self.skipped:
            out.write(f"  skipped {path}: a DICOMDIR (media directory), not an instance\n")
        if self.rejected:
            out.write("rejected:\n")
            for path, reason in self.rejected:
                out.write(f"  {path}: {reason}\n")


def find_files(paths: list[Path]) -> Iterator[Path]:
    """Regular files named on the command line or found under named folders, sorted."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


async def import_files(
    settings: Settings, paths: list[Path], *, progress: bool = True
) -> ImportSummary:
    """Ingest every file under ``paths`` into the archive; never raises for one bad file."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    files = list(find_files(paths))
    summary = ImportSummary()
    spool = spool_dir(settings)
    spool.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=spool))
    archive = await open_archive(
        settings.storage, bulkdata_threshold=settings.http.bulkdata_threshold
    )
    bar = tqdm(
        total=len(files), unit="file", desc="importing", disable=not progress, file=sys.stderr
    )
    limit = asyncio.Semaphore(IMPORT_CONCURRENCY)
    try:

        async def one(number: int, source: Path) -> None:
            async with limit:
                await _import_one(archive, source, work / f"{number:08d}.dcm", summary)
            bar.update(1)

        # Files are tried in order but finish in any order; the summary lists are re-sorted.
        await asyncio.gather(
            *(one(i, f) for i, f in enumerate(files) if not _is_skipped(f, summary))
        )
    finally:
        bar.close()
        await archive.close()
        shutil.rmtree(work, ignore_errors=True)
    summary.stored.sort()
    summary.already_present.sort()
    summary.rejected.sort()
    return summary


def _is_skipped(path: Path, summary: ImportSummary) -> bool:
    if path.name.upper() in SKIPPED_NAMES:
        summary.skipped.append(path)
        return True
    return False


async def _import_one(archive: Archive, source: Path, copy: Path, summary: ImportSummary) -> None:
    try:
        await asyncio.to_thread(shutil.copyfile, source, copy)
    except OSError as exc:
        summary.rejected.append((source, f"cannot read: {exc.strerror or exc}"))
        return
    try:
        outcome = await archive.ingest(copy)
    except IngestRejected as exc:
        reason = f"{exc.failure.name} (0x{int(exc.failure):04X}): {exc.message}"
        summary.rejected.append((source, reason))
    except StorageError as exc:
        summary.rejected.append((source, f"{type(exc).__name__}: {exc}"))
    else:
        if outcome.status is IngestStatus.ALREADY_PRESENT:
            summary.already_present.append(source)
        else:
            summary.stored.append(source)
    finally:
        copy.unlink(missing_ok=True)


def run_import(settings: Settings, paths: list[Path], *, progress: bool = True) -> int:
    """``arca import``: exit status 0 when nothing was rejected, 1 otherwise."""
    problem = data_dir_problem(settings)
    if problem:
        sys.stderr.write(f"arca import: {problem}\n")
        return 2
    try:
        summary = asyncio.run(import_files(settings, paths, progress=progress))
    except FileNotFoundError as exc:
        sys.stderr.write(f"arca import: {exc}\n")
        return 2
    except StorageError as exc:
        sys.stderr.write(f"arca import: {exc}\n")
        return 1
    summary.write(sys.stdout)
    return 1 if summary.rejected else 0


def run_verify(settings: Settings, study_uid: str | None) -> int:
    """``arca verify``: exit status 1 when blobs are missing or corrupt (orphans are not)."""

    async def verify() -> int:
        archive = await open_archive(settings.storage)
        bar = tqdm(unit="instance", desc="verifying", file=sys.stderr, disable=None)
        try:

            def progress(checked: int, total: int) -> None:
                bar.total = total
                bar.update(checked - bar.n)

            report = await archive.verify(study_uid, progress=progress)
        finally:
            bar.close()
            await archive.close()
        out = sys.stdout
        scope = f" of study {study_uid}" if study_uid else ""
        out.write(f"arca verify: {report.instances_checked} instances checked{scope}\n")
        for label, items in (
            ("missing blob", report.missing),
            ("corrupt blob (SHA-256 mismatch)", report.corrupt),
        ):
            for uid in items:
                out.write(f"  {label}: {uid}\n")
        for uid in report.bad_cache:
            out.write(f"  cached copy failed its SHA-256, removed (cold copy intact): {uid}\n")
        if report.orphans:
            out.write(
                f"  {len(report.orphans)} orphan blobs (no index row names them; left by an "
                "interrupted ingest, not counted as stored):\n"
            )
            for key in report.orphans:
                out.write(f"    {key}\n")
        out.write(
            f"{'OK' if report.ok else 'PROBLEMS'}: {len(report.missing)} missing, "
            f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphans\n"
        )
        return 0 if report.ok else 1

    problem = data_dir_problem(settings)
    if problem:
        sys.stderr.write(f"arca verify: {problem}\n")
        return 2
    try:
        return asyncio.run(verify())
    except StorageError as exc:
        sys.stderr.write(f"arca verify: {exc}\n")
        return 1


def run_db_upgrade(settings: Settings) -> int:
    """``arca db upgrade``: create or migrate the index schema."""
    try:
        asyncio.run(upgrade_index(settings.storage))
    except StorageError as exc:
        sys.stderr.write(f"arca db upgrade: {exc}\n")
        return 1
    sys.stdout.write("arca db upgrade: the index schema is up to date\n")
    return 0
