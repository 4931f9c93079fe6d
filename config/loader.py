"""Build arca's frozen :class:`~config.settings.Settings` once, from four layers.

Precedence, lowest to highest: built-in defaults < TOML file (``--config``) < ``ARCA_*``
environment variables < command-line options. One table, :data:`OPTIONS`, names every option
that has an environment variable and/or a command-line flag, so the CLI, the environment and
the README cannot drift apart. Every TOML key maps to a settings field (``[http] port = 8042``);
an unknown key is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import (
    DimseSettings,
    HttpSettings,
    RemoteAE,
    Settings,
    StorageSettings,
    TranscodingSettings,
)


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which, where it came from and why."""


SECTIONS: dict[str, type[Any]] = {
    "http": HttpSettings,
    "dimse": DimseSettings,
    "storage": StorageSettings,
    "transcoding": TranscodingSettings,
}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ACCEPT_UNKNOWN_AES = ("always", "never", "loopback")


@dataclass(frozen=True)
class Option:
    """One setting reachable from the environment and/or the command line."""

    dest: str
    """Key in the ``cli`` mapping (argparse ``dest``)."""
    path: str
    """``section.field`` in Settings (or ``log_level``)."""
    env: str | None
    flag: str | None
    help: str
    repeatable: bool = False
    """The flag may be given many times; the env variable is comma-separated."""
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("data", "storage.data_dir", "ARCA_DATA", "--data",
           "folder of the hot tier and of the default SQLite index", metavar="DIR"),
    Option("index", "storage.index_url", "ARCA_INDEX", "--index",
           "index database: postgresql://user@host/db, sqlite:///path or a file path "
           "(default: DATA/index.sqlite)", metavar="URL"),
    Option("cold_store", "storage.cold_store", "ARCA_COLD_STORE", "--cold-store",
           "cold tier, s3://BUCKET/PREFIX (default: none)", metavar="S3URL"),
    Option("s3_endpoint_url", "storage.s3_endpoint_url", "ARCA_S3_ENDPOINT_URL",
           "--s3-endpoint-url", "endpoint of a non-AWS S3 store (MinIO, Ceph RGW)",
           metavar="URL"),
    Option("s3_region", "storage.s3_region", "ARCA_S3_REGION", "--s3-region",
           "S3 region of the cold tier", metavar="REGION"),
    Option("write_through", "storage.write_through", "ARCA_WRITE_THROUGH", "--write-through",
           "store each new instance in the cold tier before acknowledging it and keep the hot "
           "tier as this node's cache: for nodes that do not share --data; true or false "
           "(default)", metavar="BOOL"),
    Option("overwrite_policy", "storage.overwrite_policy", "ARCA_OVERWRITE_POLICY",
           "--overwrite-policy",
           "same SOPInstanceUID with other bytes: reject (default) or replace",
           metavar="POLICY"),
    Option("http_host", "http.host", "ARCA_HTTP_HOST", "--http-host",
           "address the HTTP listener binds (default 127.0.0.1)", metavar="HOST"),
    Option("http_port", "http.port", "ARCA_HTTP_PORT", "--http-port",
           "HTTP port (default 8042)", metavar="PORT"),
    Option("dicomweb_root", "http.dicomweb_root", "ARCA_DICOMWEB_ROOT", "--dicomweb-root",
           "path prefix of the DICOMweb services (default /dicom-web)", metavar="PATH"),
    Option("cors_origin", "http.cors_origins", "ARCA_CORS_ORIGIN", "--cors-origin",
           "allow this browser origin (CORS); repeatable, * for any; default: CORS off",
           repeatable=True, metavar="ORIGIN"),
    Option("viewer", "http.viewer", "ARCA_VIEWER", "--viewer",
           "serve the OHIF viewer at /viewer"),
    Option("viewer_dir", "http.viewer_dir", "ARCA_VIEWER_DIR", "--viewer-dir",
           "folder of an OHIF build (dist/) to serve instead of the bundled one", metavar="DIR"),
    Option("dimse_enabled", "dimse.enabled", "ARCA_DIMSE_ENABLED", "--no-dimse",
           "do not start the DIMSE listener"),
    Option("dimse_host", "dimse.host", "ARCA_DIMSE_HOST", "--dimse-host",
           "address the DIMSE listener binds (default 127.0.0.1)", metavar="HOST"),
    Option("dimse_port", "dimse.port", "ARCA_DIMSE_PORT", "--dimse-port",
           "DIMSE port (default 11112)", metavar="PORT"),
    Option("ae_title", "dimse.ae_title", "ARCA_AE_TITLE", "--ae-title",
           "arca's own AE title (default ARCA)", metavar="TITLE"),
    Option("remote_ae", "dimse.remote_aes", "ARCA_REMOTE_AE", "--remote-ae",
           "a known peer, TITLE=HOST:PORT (C-MOVE destination, may store/query/retrieve); "
           "repeatable", repeatable=True, metavar="TITLE=HOST:PORT"),
    Option("accept_unknown_aes", "dimse.accept_unknown_calling_aes", "ARCA_ACCEPT_UNKNOWN_AES",
           "--accept-unknown-aes",
           "associations from AEs not in --remote-ae: always, never or loopback (default)",
           metavar="WHEN"),
    Option("ingest_workers", "storage.ingest_workers", "ARCA_INGEST_WORKERS",
           "--ingest-workers",
           "processes that parse and check incoming objects (default 2, 0 = in the server "
           "process)", metavar="N"),
    Option("transcoding_workers", "transcoding.workers", "ARCA_TRANSCODING_WORKERS",
           "--transcoding-workers", "codec worker processes (default 0 = one per core)",
           metavar="N"),
    Option("transcoding_job_timeout", "transcoding.job_timeout", "ARCA_TRANSCODING_JOB_TIMEOUT",
           "--transcoding-job-timeout",
           "seconds a codec job may run before its worker is killed (default 30, 0 = no limit)",
           metavar="SECONDS"),
    Option("prefetch_pretranscode", "storage.prefetch_pretranscode",
           "ARCA_PREFETCH_PRETRANSCODE", "--prefetch-pretranscode",
           "after a transcoded WADO-RS retrieve, transcode the rest of the study into that "
           "syntax in the background: true (default) or false", metavar="BOOL"),
    Option("prefetch_pretranscode_max_instances", "storage.prefetch_pretranscode_max_instances",
           "ARCA_PREFETCH_PRETRANSCODE_MAX_INSTANCES", "--prefetch-pretranscode-max-instances",
           "at most N instances pre-transcoded per study and syntax (default 1000)",
           metavar="N"),
    Option("log_level", "log_level", "ARCA_LOG_LEVEL", "--log-level",
           "critical, error, warning, info (default) or debug", metavar="LEVEL"),
)  # fmt: skip

OPTIONS_BY_DEST = {o.dest: o for o in OPTIONS}


def load_settings(
    cli: Mapping[str, object], environ: Mapping[str, str], config_path: Path | None
) -> Settings:
    """Settings from defaults < TOML at ``config_path`` < ``ARCA_*`` in ``environ`` < ``cli``.

    ``cli`` maps :attr:`Option.dest` to a value (None or absent = not given; lists for the
    repeatable options). Raises ConfigError with a message fit to show to the user.
    """
    values: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
    top: dict[str, object] = {}

    if config_path is not None:
        _apply_toml(config_path, values, top)

    for option in OPTIONS:
        if option.env is not None and environ.get(option.env, "").strip():
            raw = environ[option.env]
            where = f"environment variable {option.env}"
            value: object = _split_list(raw) if option.repeatable else raw
            _set(option.path, _coerce_path(option.path, value, where), values, top)

    for dest, given in cli.items():
        if given is None or dest not in OPTIONS_BY_DEST:
            continue
        option = OPTIONS_BY_DEST[dest]
        if option.repeatable and isinstance(given, list | tuple) and not given:
            continue
        where = f"option {option.flag}"
        _set(option.path, _coerce_path(option.path, given, where), values, top)

    try:
        settings = Settings(
            http=HttpSettings(**values["http"]),  # type: ignore[arg-type]
            dimse=DimseSettings(**values["dimse"]),  # type: ignore[arg-type]
            storage=StorageSettings(**values["storage"]),  # type: ignore[arg-type]
            transcoding=TranscodingSettings(**values["transcoding"]),  # type: ignore[arg-type]
            **top,  # type: ignore[arg-type]
        )
    except TypeError as exc:  # a TOML key the dataclass does not take (checked before, but)
        raise ConfigError(str(exc)) from exc
    validate(settings)
    return settings


# -- validation ------------------------------------------------------------------------------


def validate(settings: Settings) -> None:
    """Checks no single field's type can express; raises ConfigError naming the setting."""
    for name, port in (("http.port", settings.http.port), ("dimse.port", settings.dimse.port)):
        check_port(port, name)
    check_ae_title(settings.dimse.ae_title, "dimse.ae_title")
    check_dicomweb_root(settings.http.dicomweb_root)
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log_level: {settings.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        )
    if settings.dimse.accept_unknown_calling_aes not in ACCEPT_UNKNOWN_AES:
        raise ConfigError(
            f"dimse.accept_unknown_calling_aes: {settings.dimse.accept_unknown_calling_aes!r} "
            f"is not one of {', '.join(ACCEPT_UNKNOWN_AES)}"
        )
    cold = settings.storage.cold_store
    if cold is not None and not (cold.startswith("s3://") and len(cold) > len("s3://")):
        raise ConfigError(f"storage.cold_store: {cold!r} is not of the form s3://BUCKET/PREFIX")
    if settings.storage.write_through and cold is None:
        raise ConfigError(
            "storage.write_through needs a cold tier (storage.cold_store, --cold-store): "
            "write-through stores every instance there"
        )
    for name, number in (
        ("transcoding.workers", settings.transcoding.workers),
        ("storage.ingest_workers", settings.storage.ingest_workers),
        ("transcoding.cache_bytes", settings.transcoding.cache_bytes),
        ("transcoding.job_timeout", settings.transcoding.job_timeout),
        ("http.bulkdata_threshold", settings.http.bulkdata_threshold),
        (
            "storage.prefetch_pretranscode_max_instances",
            settings.storage.prefetch_pretranscode_max_instances,
        ),
        (
            "storage.prefetch_pretranscode_max_bytes",
            settings.storage.prefetch_pretranscode_max_bytes,
        ),
    ):
        if number < 0:
            raise ConfigError(f"{name}: {number} must not be negative")
    if not math.isfinite(settings.transcoding.job_timeout):
        raise ConfigError(
            f"transcoding.job_timeout: {settings.transcoding.job_timeout} is not a number of "
            "seconds (0 = no limit)"
        )
    titles = [ae.ae_title for ae in settings.dimse.remote_aes]
    for title in titles:
        if titles.count(title) > 1:
            raise ConfigError(f"dimse.remote_aes: AE title {title!r} is listed more than once")


def check_port(port: int, name: str) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} is outside 1..65535")


def check_ae_title(title: str, name: str) -> None:
    """PS3.5 §6.2 VR AE: at most 16 characters of the Default Character Repertoire without
    backslash and control characters; leading/trailing spaces are not significant and a
    value of only spaces is not allowed."""
    stripped = title.strip(" ")
    if not stripped:
        raise ConfigError(f"{name}: an AE title must not be empty or only spaces")
    if len(stripped) > 16:
        raise ConfigError(f"{name}: AE title {title!r} is longer than 16 characters (PS3.5 §6.2)")
    bad = sorted({c for c in stripped if not (" " <= c <= "~") or c == "\\"})
    if bad:
        raise ConfigError(
            f"{name}: AE title {title!r} contains {', '.join(repr(c) for c in bad)}; "
            "only printable ASCII without backslash is allowed (PS3.5 §6.2)"
        )


def check_dicomweb_root(root: str) -> None:
    if not root.startswith("/"):
        raise ConfigError(f"http.dicomweb_root: {root!r} must start with '/' (e.g. /dicom-web)")
    if root.endswith("/"):
        raise ConfigError(
            f"http.dicomweb_root: {root!r} must not end with '/' (e.g. /dicom-web, not "
            "/dicom-web/; the server root cannot host DICOMweb because / serves the status)"
        )
    if any(c in root for c in " ?#\\") or "//" in root:
        raise ConfigError(f"http.dicomweb_root: {root!r} is not a plain URL path")


def parse_remote_ae(text: str, where: str = "--remote-ae") -> RemoteAE:
    """``TITLE=HOST:PORT`` (IPv6 hosts in brackets: ``PACS=[::1]:104``)."""
    title, eq, address = text.partition("=")
    host, colon, port_text = address.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not eq or not colon or not host or not title.strip():
        raise ConfigError(f"{where}: {text!r} is not of the form TITLE=HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r}: port {port_text!r} is not a number") from None
    check_ae_title(title, where)
    check_port(port, where)
    return RemoteAE(ae_title=title.strip(), host=host, port=port)


# -- TOML ------------------------------------------------------------------------------------


def _apply_toml(path: Path, values: dict[str, dict[str, object]], top: dict[str, object]) -> None:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    top_fields = {f.name for f in dataclasses.fields(Settings)} - set(SECTIONS)
    for key, value in doc.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            known = {f.name for f in dataclasses.fields(SECTIONS[key])}
            for field_name, field_value in value.items():
                if field_name not in known:
                    raise ConfigError(
                        f"{path}: unknown setting {key}.{field_name} "
                        f"(known in [{key}]: {', '.join(sorted(known))})"
                    )
                dotted = f"{key}.{field_name}"
                where = f"{path}: {dotted}"
                coerced = _coerce_path(dotted, field_value, where)
                if isinstance(coerced, Path) and not coerced.is_absolute():
                    # Paths in a configuration file are relative to that file.
                    coerced = (path.parent / coerced).resolve()
                _set(dotted, coerced, values, top)
        elif key in top_fields:
            _set(key, _coerce_path(key, value, f"{path}: {key}"), values, top)
        else:
            known_top = sorted(top_fields | set(SECTIONS))
            raise ConfigError(f"{path}: unknown setting {key} (known: {', '.join(known_top)})")


# -- coercion --------------------------------------------------------------------------------


def _set(
    dotted: str, value: object, values: dict[str, dict[str, object]], top: dict[str, object]
) -> None:
    section, _, name = dotted.partition(".")
    if name:
        values[section][name] = value
    else:
        top[section] = value


def _field_type(dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    if not name:
        return typing.get_type_hints(Settings)[section]
    return typing.get_type_hints(SECTIONS[section])[name]


def _coerce_path(dotted: str, value: object, where: str) -> object:
    if dotted == "dimse.remote_aes":
        return _coerce_remote_aes(value, where)
    return _coerce(value, _field_type(dotted), where)


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(value: object, hint: Any, where: str) -> object:
    """``value`` (a TOML value, or a string from the environment / command line) as ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return _coerce(value, inner[0], where)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, item_type, where) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int or hint is float:
        return _coerce_number(value, hint, where)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value.strip()
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(str(value).strip()).expanduser()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        choices = [str(m.value) for m in hint]
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
        return hint(text)
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover


def _coerce_number(value: object, hint: Callable[[str], object], where: str) -> object:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int) or (hint is float and isinstance(value, float)):
        return hint(str(value))
    if isinstance(value, str):
        try:
            return hint(value.strip().replace("_", ""))
        except ValueError:
            pass
    kind = "an integer" if hint is int else "a number"
    raise ConfigError(f"{where}: expected {kind}, got {value!r}")


def _coerce_remote_aes(value: object, where: str) -> tuple[RemoteAE, ...]:
    items = _split_list(value) if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: expected a list of TITLE=HOST:PORT, got {value!r}")
    out: list[RemoteAE] = []
    known = {f.name for f in dataclasses.fields(RemoteAE)}
    for item in items:
        if isinstance(item, RemoteAE):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse_remote_ae(item, where))
        elif isinstance(item, dict):
            unknown = sorted(set(item) - known)
            if unknown:
                raise ConfigError(
                    f"{where}: unknown setting {', '.join(unknown)} in a remote AE "
                    f"(known: {', '.join(sorted(known))})"
                )
            missing = [k for k in ("ae_title", "host", "port") if k not in item]
            if missing:
                raise ConfigError(f"{where}: a remote AE needs {', '.join(missing)}")
            hints = typing.get_type_hints(RemoteAE)
            kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in item.items()}
            ae = RemoteAE(**kwargs)  # type: ignore[arg-type]
            check_ae_title(ae.ae_title, f"{where}.ae_title")
            check_port(ae.port, f"{where}.port")
            out.append(ae)
        else:
            raise ConfigError(f"{where}: expected TITLE=HOST:PORT, got {item!r}")
    return tuple(out)
