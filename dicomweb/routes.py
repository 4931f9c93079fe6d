"""The DICOMweb routes (PS3.18 §10.4-10.6 resource paths) for ``server`` to mount."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from config.settings import Settings
from dicomweb.errors import Endpoint, translated
from dicomweb.frames import FrameService
from dicomweb.pretranscode import PreTranscoder
from dicomweb.qido import QidoService
from dicomweb.rendered import RenderedService
from dicomweb.stow import StowService
from dicomweb.urls import base_url_of
from dicomweb.wado import WadoService
from storage.archive import ArchiveService
from transcoding.service import TranscoderService


def build_routes(
    archive: ArchiveService,
    transcoder: TranscoderService | None,
    settings: Settings,
    spool_dir: Path,
    pretranscoder: PreTranscoder | None = None,
) -> list[BaseRoute]:
    """Every DICOMweb route under ``settings.http.dicomweb_root``.

    ``transcoder`` None: requests that need transcoding, frame extraction of unindexed objects
    or rendering answer 406 with the reason. ``pretranscoder``: transcoded series / instance
    retrieves queue the rest of their study into the rendition cache (None: off).
    """
    root = settings.http.dicomweb_root.rstrip("/")

    def base_url(request: Request) -> str:
        return base_url_of(request, root)

    workers = settings.transcoding.workers or os.cpu_count() or 1
    stow = StowService(archive, base_url, spool_dir, settings.http.max_stow_bytes)
    qido = QidoService(archive, base_url)
    wado = WadoService(
        archive, transcoder, base_url, lookahead=2 * workers, pretranscoder=pretranscoder
    )
    frames = FrameService(archive, transcoder)
    rendered = RenderedService(archive, transcoder)

    study = f"{root}/studies/{{study}}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    get, post, delete = ["GET"], ["POST"], ["DELETE"]

    def route(path: str, endpoint: Endpoint, methods: list[str], name: str) -> Route:
        return Route(path, translated(endpoint), methods=methods, name=name)

    return [
        # STOW-RS §10.5
        route(f"{root}/studies", stow.store, post, "stow_studies"),
        route(study, stow.store, post, "stow_study"),
        # QIDO-RS §10.6
        route(f"{root}/studies", qido.search_studies, get, "qido_studies"),
        route(f"{root}/series", qido.search_series, get, "qido_series"),
        route(f"{root}/instances", qido.search_instances, get, "qido_instances"),
        route(f"{study}/series", qido.search_series, get, "qido_study_series"),
        route(f"{study}/instances", qido.search_instances, get, "qido_study_instances"),
        route(f"{series}/instances", qido.search_instances, get, "qido_series_instances"),
        # WADO-RS §10.4
        route(study, wado.retrieve, get, "wado_study"),
        route(series, wado.retrieve, get, "wado_series"),
        route(instance, wado.retrieve, get, "wado_instance"),
        route(f"{study}/metadata", wado.metadata, get, "wado_study_metadata"),
        route(f"{series}/metadata", wado.metadata, get, "wado_series_metadata"),
        route(f"{instance}/metadata", wado.metadata, get, "wado_instance_metadata"),
        route(f"{instance}/frames/{{frames}}", frames.frames, get, "wado_frames"),
        route(f"{instance}/bulkdata/{{path:path}}", frames.bulkdata, get, "wado_bulkdata"),
        route(f"{study}/rendered", rendered.rendered, get, "wado_study_rendered"),
        route(f"{series}/rendered", rendered.rendered, get, "wado_series_rendered"),
        route(f"{instance}/rendered", rendered.rendered, get, "wado_instance_rendered"),
        route(
            f"{instance}/frames/{{frames}}/rendered", rendered.rendered, get, "wado_frame_rendered"
        ),
        route(f"{study}/thumbnail", rendered.thumbnail, get, "wado_study_thumbnail"),
        route(f"{series}/thumbnail", rendered.thumbnail, get, "wado_series_thumbnail"),
        route(f"{instance}/thumbnail", rendered.thumbnail, get, "wado_instance_thumbnail"),
        route(
            f"{instance}/frames/{{frames}}/thumbnail",
            rendered.thumbnail,
            get,
            "wado_frame_thumbnail",
        ),
        # Deletion (not in PS3.18; what dcm4chee and Orthanc's DICOMweb plugin offer)
        route(study, wado.delete, delete, "delete_study"),
        route(series, wado.delete, delete, "delete_series"),
        route(instance, wado.delete, delete, "delete_instance"),
    ]
