"""``arca tier status`` and ``arca tier migrate`` as a user runs them."""

from __future__ import annotations

from pathlib import Path

from config.settings import StorageSettings
from storage.archive import open_archive
from storage.model import Tier
from tests.conftest import run_arca
from tests.storage_tiers.conftest import MotoS3
from tests.storage_tiers.helpers import assert_intact, ingest_series, tiers_of


async def test_tier_status_and_migrate(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    settings = StorageSettings(
        data_dir=tmp_path / "data",
        cold_store=f"s3://{bucket}/cold",
        s3_endpoint_url=moto_s3.endpoint,
        s3_region="us-east-1",
    )
    archive = await open_archive(settings)
    try:
        study = await ingest_series(archive, 3, tmp_path / "in")
        total = sum(loc.size for loc in await archive.locate(study.study_uid))
    finally:
        await archive.close()
    storage = [
        "--data",
        str(settings.data_dir),
        "--cold-store",
        f"s3://{bucket}/cold",
        "--s3-endpoint-url",
        moto_s3.endpoint,
        "--s3-region",
        "us-east-1",
    ]

    moved = run_arca("tier", "migrate", "--study", study.study_uid, "--to", "cold", *storage)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"study {study.study_uid}: 3 instances" in moved.stdout

    status = run_arca("tier", "status", *storage)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.splitlines()[:2] == [
        "hot:  0 instances, 0 bytes",
        f"cold: 3 instances, {total} bytes (s3://{bucket}/cold)",
    ]

    unknown = run_arca("tier", "migrate", "--study", "1.2.3.4.999", "--to", "hot", *storage)
    assert unknown.returncode == 1
    assert "no study 1.2.3.4.999" in unknown.stderr

    archive = await open_archive(settings)
    try:
        assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}
        await assert_intact(archive, study)
    finally:
        await archive.close()
