"""The OHIF Viewer at ``/viewer``: its prebuilt static app, re-based, talking to arca's DICOMweb.

npm ``@ohif/app`` ships a production build (``dist/``) made for the root of a site: its
``index.html`` loads ``/app.bundle.….js`` and sets ``window.PUBLIC_URL="/"``, and the webpack
runtime of the app and of its worker bundles loads chunks from ``__webpack_require__.p = "/"``.
Rebuilding OHIF for another path needs its whole JavaScript tool chain, so instead these few
strings are rewritten as the files are served (once per file, then cached), and everything else
is sent as it is. ``app-config.js`` is generated: one DICOMweb data source on this same origin,
so the browser needs no CORS.

Client-side routes of the single-page app (``/viewer/viewer?StudyInstanceUIDs=…``,
``/viewer/segmentation``, …) have no file behind them: any path whose last segment has no file
extension gets ``index.html`` and the app's router takes over.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path, PurePosixPath

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from config.settings import Settings

VIEWER_PATH = "/viewer"
"""Where the viewer is mounted."""

BUNDLED_DIST = (
    Path(__file__).resolve().parent.parent / "viewer" / "node_modules" / "@ohif" / "app" / "dist"
)
"""Where ``make viewer`` (``npm ci`` in ``viewer/``) puts OHIF's build."""

_PUBLIC_PATH = b'__webpack_require__.p = "/";'
"""The webpack runtime's chunk base in OHIF's unminified bundles (app and worker bundles)."""

_NO_STORE = {"Cache-Control": "no-cache"}
# Bundles carry a content hash in their file names; index.html and app-config.js do not.
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
_HASHED_NAME = re.compile(r"\.[0-9a-f]{16,}\.(?:js|wasm|css)$")


class ViewerNotInstalledError(RuntimeError):
    """The OHIF build is missing: ``make viewer`` installs it."""


def viewer_dist(settings: Settings) -> Path:
    """The OHIF ``dist/`` folder to serve; raises :class:`ViewerNotInstalledError` if absent."""
    dist = settings.http.viewer_dir or BUNDLED_DIST
    if not (dist / "index.html").is_file():
        raise ViewerNotInstalledError(
            f"the OHIF viewer is not installed (no {dist / 'index.html'}); "
            "run `make viewer` (npm ci in viewer/), or point --viewer-dir / ARCA_VIEWER_DIR "
            "at the dist/ folder of an OHIF build"
        )
    return dist


def viewer_routes(settings: Settings) -> list[BaseRoute]:
    """The routes serving OHIF at ``/viewer`` (for ``settings.http.viewer``)."""
    files = ViewerFiles(viewer_dist(settings), settings.http.dicomweb_root)

    async def add_slash(request: Request) -> Response:
        url = request.url
        return RedirectResponse(url.replace(path=url.path + "/"), status_code=308)

    return [
        Route(VIEWER_PATH, add_slash, methods=["GET", "HEAD"]),
        Mount(VIEWER_PATH, app=files, name="viewer"),
    ]


def app_config_js(public_url: str, dicomweb_root: str) -> str:
    """OHIF's ``window.config`` for one DICOMweb data source: arca on the page's own origin.

    The shape follows ``dist/app-config.js`` of the pinned ``@ohif/app`` (config/default.js of
    OHIF 3.13). A ``dicomweb_root`` path is joined to ``window.location.origin`` in the browser,
    so the same file works behind any host name or proxy that keeps the path; an absolute URL
    (``http://…``) is used as it is (a viewer on another origin, which then needs CORS).
    """
    router_basename = public_url.rstrip("/") or "/"
    if dicomweb_root.startswith(("http://", "https://")):
        root_js = json.dumps(dicomweb_root)
    else:
        root_js = "window.location.origin + " + json.dumps(dicomweb_root)
    return f"""/** arca: generated OHIF configuration (server/viewer.py). */
(function () {{
  var dicomWeb = {root_js};
  window.config = {{
    name: 'arca',
    routerBasename: {json.dumps(router_basename)},
    extensions: [],
    modes: [],
    customizationService: {{}},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 25 }},
    showErrorDetails: 'always',
    defaultDataSourceName: 'arca',
    dataSources: [
      {{
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'arca',
        configuration: {{
          friendlyName: 'arca',
          name: 'arca',
          qidoRoot: dicomWeb,
          wadoRoot: dicomWeb,
          wadoUriRoot: dicomWeb,
          qidoSupportsIncludeField: true,
          supportsReject: false,
          supportsFuzzyMatching: true,
          supportsWildcard: true,
          supportsStow: true,
          dicomUploadEnabled: false,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          staticWado: false,
          bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
          omitQuotationForMultipartRequest: true,
        }},
      }},
    ],
    httpErrorHandler: function (error) {{
      console.warn('arca: a DICOMweb request or an image decode failed', error && error.status);
    }},
  }};
}})();
"""


class ViewerFiles(StaticFiles):
    """OHIF's ``dist/`` re-based onto the mount path, with a generated ``app-config.js``."""

    def __init__(self, dist: Path, dicomweb_root: str) -> None:
        super().__init__(directory=dist, check_dir=True)
        self.dist = dist
        self.dicomweb_root = dicomweb_root

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        # Inside a Mount, root_path ends with the mount path; what precedes it is the app's own
        # root (non-empty behind a proxy that strips a prefix).
        public_url = scope.get("root_path", "").rstrip("/") + "/"
        app_root = public_url.rstrip("/").removesuffix(VIEWER_PATH)
        if path in (".", "index.html"):
            return await self._index(public_url)
        if path == "app-config.js":
            body = app_config_js(public_url, app_root + self.dicomweb_root)
            return Response(body, media_type="text/javascript", headers=_NO_STORE)
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code == 404 and "." not in PurePosixPath(path).name:
                return await self._index(public_url)  # a client-side route of the app
            raise
        media_type = _REBASED_TYPES.get(PurePosixPath(path).suffix)
        if media_type is not None and response.status_code == 200:
            full = self.dist / path
            rebased = await anyio.to_thread.run_sync(
                _rebased_asset, str(full), full.stat().st_mtime_ns, public_url
            )
            if rebased is not None:
                return Response(rebased, media_type=media_type, headers=_cache_headers(path))
        response.headers.update(_cache_headers(path))
        return response

    async def _index(self, public_url: str) -> Response:
        index = self.dist / "index.html"
        body = await anyio.to_thread.run_sync(
            _rebased_index, str(index), index.stat().st_mtime_ns, public_url
        )
        return Response(body, media_type="text/html", headers=_NO_STORE)


def _cache_headers(path: str) -> dict[str, str]:
    return _IMMUTABLE if _HASHED_NAME.search(path) else _NO_STORE


_REBASED_TYPES = {".js": "text/javascript", ".css": "text/css"}
_CSS_ROOTED_URL = re.compile(rb"url\((['\"]?)/(?!/)")


@functools.lru_cache(maxsize=64)
def _rebased_asset(path: str, mtime_ns: int, public_url: str) -> bytes | None:
    """A script with webpack's chunk base, or a style sheet with its ``url(/…)`` references,
    moved under ``public_url``; None if the file has nothing to move.

    ``mtime_ns`` is part of the cache key so a reinstalled build is picked up.
    """
    with open(path, "rb") as f:
        content = f.read()
    base = public_url.encode()
    if path.endswith(".css"):
        rebased = _CSS_ROOTED_URL.sub(lambda m: b"url(" + m.group(1) + base, content)
        return rebased if rebased != content else None
    if _PUBLIC_PATH not in content:
        return None
    return content.replace(
        _PUBLIC_PATH, b"__webpack_require__.p = " + json.dumps(public_url).encode() + b";"
    )


_ROOTED_URL = re.compile(r'(\s(?:href|src)=")/(?!/)')
_LINK_TAG = re.compile(r'<link\b[^>]*\bhref="/(?!/)([^"?#]*)"[^>]*>')


@functools.lru_cache(maxsize=8)
def _rebased_index(path: str, mtime_ns: int, public_url: str) -> bytes:
    """OHIF's ``index.html`` with its root-relative URLs moved under ``public_url``.

    ``<link>`` tags naming files the build does not ship (OHIF's index lists icons for every
    platform, most of them absent from the npm package) are dropped, so that a browser does not
    log a 404 for each.
    """
    dist = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        html = f.read()

    def keep_existing(match: re.Match[str]) -> str:
        return match.group(0) if os.path.isfile(os.path.join(dist, match.group(1))) else ""

    html = _LINK_TAG.sub(keep_existing, html)
    html = _ROOTED_URL.sub(lambda m: m.group(1) + public_url, html)
    html = html.replace('window.PUBLIC_URL="/"', f"window.PUBLIC_URL={json.dumps(public_url)}")
    return html.encode("utf-8")
