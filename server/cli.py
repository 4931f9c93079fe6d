"""The ``arca`` command line: ``serve``, ``import``, ``verify`` and ``db upgrade``.

Every option can also come from an ``ARCA_*`` environment variable or a TOML file given with
``--config`` (see :mod:`config.loader` for the precedence and the table of options).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from config.loader import OPTIONS_BY_DEST, ConfigError, Option, load_settings
from config.settings import Settings

log = logging.getLogger("arca")

EPILOG = """\
Every option can also be set with its ARCA_* environment variable or in a TOML file given
with --config (ARCA_CONFIG). Precedence: defaults < TOML < environment < command line.
Examples:
  arca serve --data ./data --http-port 8042 --dimse-port 11112 --ae-title ARCA
  arca serve --cors-origin http://localhost:3000 --remote-ae VIEWER=10.0.0.5:104 --viewer
  arca import /media/cdrom --data ./data
  arca verify --data ./data
  arca db upgrade --index postgresql://arca@db.example.org/arca
"""

STORAGE_OPTIONS = ("data", "index", "cold_store", "s3_endpoint_url", "s3_region", "write_through")
SERVE_OPTIONS = (
    "http_host",
    "http_port",
    "dicomweb_root",
    "cors_origin",
    "viewer",
    "viewer_dir",
    "dimse_enabled",
    "dimse_host",
    "dimse_port",
    "ae_title",
    "remote_ae",
    "accept_unknown_aes",
    "overwrite_policy",
    "ingest_workers",
    "transcoding_workers",
    "transcoding_job_timeout",
    "prefetch_pretranscode",
    "prefetch_pretranscode_max_instances",
)


def _add_option(parser: argparse._ActionsContainer, option: Option) -> None:
    assert option.flag is not None
    env = f" [env {option.env}]" if option.env else ""
    if option.dest == "viewer":
        parser.add_argument(
            option.flag, dest=option.dest, action="store_const", const=True, help=option.help + env
        )
    elif option.dest == "dimse_enabled":
        parser.add_argument(
            option.flag,
            dest=option.dest,
            action="store_const",
            const=False,
            help=option.help + env,
        )
    elif option.repeatable:
        parser.add_argument(
            option.flag,
            dest=option.dest,
            action="append",
            metavar=option.metavar,
            help=option.help + env,
        )
    else:
        parser.add_argument(
            option.flag, dest=option.dest, metavar=option.metavar, help=option.help + env
        )


def _common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes: the configuration file, logging and storage."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration and storage")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file [env ARCA_CONFIG]",
    )
    _add_option(group, OPTIONS_BY_DEST["log_level"])
    for dest in STORAGE_OPTIONS:
        _add_option(group, OPTIONS_BY_DEST[dest])
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="arca",
        description="arca: a DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and DIMSE imaging archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"arca {importlib.metadata.version('arca')}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the archive: DICOMweb over HTTP and a DIMSE AE",
        description="Run arca: DICOMweb over HTTP and DIMSE services, on one index and store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = serve.add_argument_group("network and behaviour")
    for dest in SERVE_OPTIONS:
        _add_option(group, OPTIONS_BY_DEST[dest])

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="store DICOM files from folders/files (recursive), as STOW-RS would",
        description=(
            "Store DICOM Part-10 files found under PATH (folders are searched recursively) "
            "through the same ingest path as STOW-RS. The source files are left untouched. "
            "Safe while `arca serve` runs on the same data. Exit status 1 when any file "
            "was rejected."
        ),
    )
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder")
    imp.add_argument(
        "--quiet", action="store_true", help="no progress bar, only the closing summary"
    )

    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check every stored instance's blob against its recorded SHA-256",
        description=(
            "Check that every indexed instance has its blob and that the blob matches the "
            "SHA-256 recorded at ingest. Blobs no index row names (orphans, e.g. left by a "
            "crash) are reported but are not an error. Exit status 1 when blobs are missing "
            "or corrupt."
        ),
    )
    verify.add_argument("--study", metavar="UID", help="check only this StudyInstanceUID")

    tier = sub.add_parser("tier", help="hot/cold blob tiers: status and manual migration")
    tier_sub = tier.add_subparsers(dest="tier_command", metavar="COMMAND", required=True)
    tier_sub.add_parser(
        "status",
        parents=[common],
        help="instances and bytes on the hot and the cold tier",
        description="Print how many instances and bytes each blob tier holds.",
    )
    tier_migrate = tier_sub.add_parser(
        "migrate",
        parents=[common],
        help="move one study to the hot or the cold tier",
        description=(
            "Move a study's blobs to the cold (S3) tier or recall them to the hot tier: copy, "
            "verify the SHA-256, switch the index, then delete the old copy. Safe while "
            "`arca serve` runs. Exit status 1 when something was not moved."
        ),
    )
    tier_migrate.add_argument("--study", required=True, metavar="UID", help="StudyInstanceUID")
    tier_migrate.add_argument("--to", required=True, choices=["hot", "cold"], help="target tier")

    db = sub.add_parser("db", help="index database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    db_sub.add_parser(
        "upgrade",
        parents=[common],
        help="create or migrate the index schema to the current version",
        description="Create the index schema, or migrate it to this version of arca.",
    )
    return parser


def settings_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    config_path: Path | None = args.config
    if config_path is None and environ.get("ARCA_CONFIG"):
        config_path = Path(environ["ARCA_CONFIG"])
    cli = {k: v for k, v in vars(args).items() if k in OPTIONS_BY_DEST}
    return load_settings(cli, environ, config_path)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Library chatter stays at WARNING unless debugging.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in (
        "pynetdicom",
        "aiosqlite",
        "asyncio",
        "botocore",
        "boto3",
        "urllib3",
        "alembic.runtime.plugins",
    ):
        logging.getLogger(name).setLevel(quiet)


def _run_tier(settings: Settings, args: argparse.Namespace) -> int:
    """``arca tier status`` / ``arca tier migrate`` (storage.tiering through the Archive)."""
    import asyncio

    from storage.archive import open_archive
    from storage.errors import StorageError

    async def run() -> int:
        archive = await open_archive(settings.storage)
        try:
            if args.tier_command == "status":
                sys.stdout.write((await archive.tier_status()).describe())
                return 0
            result = await archive.migrate_study(args.study, args.to)
            sys.stdout.write(result.describe())
            return 0 if result.complete else 1
        finally:
            await archive.close()

    try:
        return asyncio.run(run())
    except StorageError as exc:
        sys.stderr.write(f"arca tier: {exc}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = settings_from_args(args, environ)
    except ConfigError as exc:
        parser.exit(2, f"arca: configuration error: {exc}\n")
    configure_logging(settings.log_level)
    if args.command in ("import", "verify", "tier") and settings.log_level != "debug":
        # Schema checks on open are routine here; the summary is what the user reads.
        logging.getLogger("alembic").setLevel(logging.WARNING)

    if args.command == "serve":
        from server.serve import serve

        return serve(settings)
    if args.command == "import":
        from server.commands import run_import

        return run_import(settings, list(args.paths), progress=not args.quiet)
    if args.command == "verify":
        from server.commands import run_verify

        return run_verify(settings, args.study)
    if args.command == "tier":
        return _run_tier(settings, args)
    if args.command == "db":
        from server.commands import run_db_upgrade

        return run_db_upgrade(settings)
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
