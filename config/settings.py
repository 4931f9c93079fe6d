"""arca's settings: frozen dataclasses, built once at start-up and passed in.

Precedence, lowest to highest: built-in defaults < TOML file (``--config``) < ``ARCA_*``
environment variables < command-line options. Nothing here reads the environment at import
time; :func:`config.loader.load_settings` does, once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class OverwritePolicy(enum.Enum):
    """What to do when an instance arrives whose SOPInstanceUID is stored with other bytes."""

    REJECT = "reject"
    """Refuse the new object (STOW FailureReason / C-STORE status 0x0111 duplicate)."""
    REPLACE = "replace"
    """Replace the stored object with the new one."""


@dataclass(frozen=True)
class RemoteAE:
    """A DICOM Application Entity that arca knows (PS3.7 / PS3.8 association peers)."""

    ae_title: str
    host: str
    port: int
    may_store: bool = True
    """It may send C-STORE requests to arca."""
    may_query: bool = True
    """It may send C-FIND requests (Q/R and worklist)."""
    may_retrieve: bool = True
    """It may send C-MOVE / C-GET requests."""
    move_destination: bool = True
    """It may be named as a C-MOVE destination."""


@dataclass(frozen=True)
class HttpSettings:
    """The DICOMweb HTTP listener."""

    host: str = "127.0.0.1"
    port: int = 8042
    dicomweb_root: str = "/dicom-web"
    """Path prefix of every DICOMweb resource; no trailing slash."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; empty means CORS is off. ``*`` allows any."""
    max_stow_bytes: int = 64 * 1024**3
    """Largest STOW-RS request body accepted; larger ones get 413."""
    bulkdata_threshold: int = 1024
    """Binary values longer than this become BulkDataURIs in metadata responses."""
    viewer: bool = False
    """Serve the OHIF viewer's static build at ``/viewer``."""
    viewer_dir: Path | None = None
    """Where the OHIF build lives (``dist/`` of npm ``@ohif/app``); None = the bundled install."""


@dataclass(frozen=True)
class DimseSettings:
    """The DICOM upper-layer listener (DIMSE services)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "ARCA"
    remote_aes: tuple[RemoteAE, ...] = ()
    accept_unknown_calling_aes: str = "loopback"
    """``always``, ``never`` or ``loopback`` (only peers connecting from 127.0.0.0/8 or ::1)."""
    max_associations: int = 32
    network_timeout: float = 30.0
    """Seconds before an idle or stalled peer's association is aborted."""


@dataclass(frozen=True)
class StorageSettings:
    """Index and blob tiers."""

    data_dir: Path = Path("data")
    """The hot tier and, for the embedded default, the SQLite index live here."""
    index_url: str | None = None
    """``postgresql://user:pass@host/db`` or a SQLite path/URL.

    None = ``<data_dir>/index.sqlite``."""
    overwrite_policy: OverwritePolicy = OverwritePolicy.REJECT
    cold_store: str | None = None
    """``s3://BUCKET/PREFIX`` for the cold tier; None = no cold tier."""
    s3_endpoint_url: str | None = None
    """For non-AWS S3-compatible stores (MinIO, Ceph RGW, moto)."""
    s3_region: str | None = None
    write_through: bool = False
    """Store every new instance in the cold tier, verified, before it is acknowledged, and
    keep the hot tier as this node's cache of cold blobs (the index never names a node's
    disk). For several nodes that do not share one ``data_dir``; needs ``cold_store``."""
    ingest_workers: int = 2
    """Worker processes that prepare incoming objects (STOW-RS, C-STORE, ``arca import``):
    hash, parse, check and render their metadata on other cores than the server's event
    loop; 0 = in the server process's threads."""
    migrate_after_days: int = 30
    """Studies not accessed for this many days move to the cold tier."""
    hot_high_watermark_bytes: int | None = None
    """When the hot tier holds more than this, the least recently used studies move cold
    (with ``write_through``: their cached copies are dropped)."""
    prefetch_max_concurrency: int = 4
    prefetch_max_bytes: int = 2 * 1024**3
    prefetch_pretranscode: bool = True
    """When a WADO-RS retrieve is transcoded (the client asked for a syntax other than the
    stored one), transcode the rest of the study into that syntax in the background, into the
    rendition cache (one codec job at a time; only the syntax the client asked for)."""
    prefetch_pretranscode_max_instances: int = 1000
    """At most this many instances pre-transcoded per (study, syntax) request."""
    prefetch_pretranscode_max_bytes: int = 1024**3
    """At most this many stored bytes pre-transcoded per (study, syntax) request."""

    @property
    def resolved_index_url(self) -> str:
        """The SQLAlchemy URL of the index (async driver)."""
        url = self.index_url
        if url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'index.sqlite').resolve()}"
        if url.startswith(("postgresql://", "postgres://")):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
        if "://" not in url:
            return f"sqlite+aiosqlite:///{Path(url).resolve()}"
        return url


@dataclass(frozen=True)
class TranscodingSettings:
    """The codec worker pool and the cache of transcoded renditions."""

    workers: int = 0
    """Worker processes; 0 = one per CPU core."""
    cache_bytes: int = 1024**3
    """Upper bound of the rendition cache (LRU, on disk under data_dir/cache): transcoded
    instances and rendered images."""
    job_timeout: float = 30.0
    """Seconds one codec job (a whole-instance transcode, a frame request, a rendering) may
    run in a worker before the worker is killed and the pool restarted; 0 = no limit."""


@dataclass(frozen=True)
class Settings:
    """Everything ``arca serve`` and the other commands need, loaded once."""

    http: HttpSettings = field(default_factory=HttpSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    transcoding: TranscodingSettings = field(default_factory=TranscodingSettings)
    log_level: str = "info"
