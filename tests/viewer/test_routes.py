"""``arca serve --viewer`` serving an OHIF build at /viewer: re-basing, client routes, config.

A small stand-in build (the same strings OHIF's dist/ carries) in a temporary folder, served by
a real ``arca serve --viewer --viewer-dir``; the generated app-config.js is run in node to
read back the configuration OHIF will see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ArcaProcess, StartArca, free_port, run_arca

BUNDLE = "app.bundle.0f6159c501addfe9.js"
INDEX = (
    '<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json">'
    '<link rel="icon" type="image/png" href="/assets/favicon-16x16.png">'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    f'<script defer src="/{BUNDLE}"></script><link href="/app.bundle.css" rel="stylesheet">'
    '<a href="//cdn.example.org/x">x</a></head><body><div id="root"></div></body></html>'
)
RUNTIME = '(() => {\n__webpack_require__.p = "/";\n})();\nconsole.log("app");\n'
CSS = "@font-face{src:url(/a34f9d1faa5f3315.woff2)}body{background:url('/bg.png')}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("ohif")
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "manifest.json").write_text("{}")
    (folder / BUNDLE).write_text(RUNTIME)
    (folder / "worker.js").write_text("self.onmessage = () => {};\n")
    (folder / "app.bundle.css").write_text(CSS)
    (folder / "app-config.js").write_text("window.config = {name: 'OHIF default'};")
    (tmp_path / "secret.txt").write_text("outside the build")
    return folder


@pytest.fixture(scope="module")
def arca(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcaProcess]:
    """One server for the tests that only read: the stand-in build, DICOMweb under a prefix."""
    base = tmp_path_factory.mktemp("arca-viewer-routes")
    proc = ArcaProcess(
        base / "data",
        base / "arca.log",
        ["--viewer", "--viewer-dir", str(dist)],
        dicomweb_root="/pacs/dicom-web",
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_index_and_client_routes_are_rebased_under_viewer(arca: ArcaProcess) -> None:
    with httpx.Client(base_url=arca.base_url) as http:
        redirect = http.get("/viewer")
        assert redirect.status_code == 308
        assert redirect.headers["location"].endswith("/viewer/")

        index = http.get("/viewer/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        html = index.text
        assert 'window.PUBLIC_URL="/viewer/"' in html
        assert f'src="/viewer/{BUNDLE}"' in html
        assert 'src="/viewer/app-config.js"' in html
        assert 'href="/viewer/manifest.json"' in html
        assert 'href="/viewer/app.bundle.css"' in html
        assert 'href="//cdn.example.org/x"' in html  # protocol-relative: not a local path
        assert "favicon-16x16" not in html  # the build does not ship it: no 404 to log
        assert 'src="/' + BUNDLE not in html

        # OHIF's own routes have no file behind them: the app's router answers them.
        for route in (
            "/viewer/viewer?StudyInstanceUIDs=1.2.3",
            "/viewer/segmentation",
            "/viewer/x/y",
        ):
            client_route = http.get(route)
            assert client_route.status_code == 200, route
            assert client_route.text == html, route
        assert http.head("/viewer/viewer?StudyInstanceUIDs=1.2.3").status_code == 200


def test_assets_are_rebased_or_served_as_they_are(arca: ArcaProcess, dist: Path) -> None:
    with httpx.Client(base_url=arca.base_url) as http:
        bundle = http.get(f"/viewer/{BUNDLE}")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert "immutable" in bundle.headers["cache-control"]  # content-hashed name
        assert bundle.text == RUNTIME.replace('p = "/"', 'p = "/viewer/"')

        worker = http.get("/viewer/worker.js")
        assert worker.status_code == 200
        assert worker.content == (dist / "worker.js").read_bytes()
        assert worker.headers["cache-control"] == "no-cache"

        css = http.get("/viewer/app.bundle.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        assert css.text == (
            "@font-face{src:url(/viewer/a34f9d1faa5f3315.woff2)}"
            "body{background:url('/viewer/bg.png')}"
        )

        assert http.get("/viewer/manifest.json").json() == {}
        # A missing file is a 404, not the app: a broken script must not parse as HTML.
        missing = http.get("/viewer/1234.bundle.0123456789abcdef.js")
        assert missing.status_code == 404
        assert http.get("/viewer/..%2Fsecret.txt").status_code == 404
        assert http.post("/viewer/", content=b"x").status_code == 405


def _node_config(app_config_js: str, origin: str) -> dict[str, object]:
    """window.config as OHIF sees it: app-config.js run in node with a stand-in window."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed (make viewer needs it too)")
    script = (
        f"const window = {{location: {{origin: {json.dumps(origin)}}}}};\n"
        f"{app_config_js}\n"
        "process.stdout.write(JSON.stringify(window.config));\n"
    )
    done = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, object] = json.loads(done.stdout)
    return config


def test_app_config_points_ohif_at_this_servers_dicomweb_root(arca: ArcaProcess) -> None:
    response = httpx.get(arca.base_url + "/viewer/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-cache"
    assert "OHIF default" not in response.text  # generated, not the build's own file

    config = _node_config(response.text, arca.base_url)
    assert config["routerBasename"] == "/viewer"
    assert config["showStudyList"] is True
    assert config["defaultDataSourceName"] == "arca"
    sources = config["dataSources"]
    assert isinstance(sources, list) and len(sources) == 1
    source = sources[0]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert source["sourceName"] == "arca"
    settings = source["configuration"]
    root = arca.base_url + "/pacs/dicom-web"
    assert settings["qidoRoot"] == settings["wadoRoot"] == settings["wadoUriRoot"] == root
    assert settings["imageRendering"] == "wadors"
    assert settings["thumbnailRendering"] == "wadors"
    assert settings["omitQuotationForMultipartRequest"] is True
    assert settings["enableStudyLazyLoad"] is True
    assert settings["qidoSupportsIncludeField"] is True
    assert settings["supportsFuzzyMatching"] is True
    assert settings["staticWado"] is False


def test_without_viewer_flag_nothing_is_served_at_viewer(start_arca: StartArca, dist: Path) -> None:
    arca = start_arca("--viewer-dir", str(dist))
    assert httpx.get(arca.base_url + "/viewer/").status_code == 404
    assert httpx.get(arca.base_url + "/viewer/app-config.js").status_code == 404


def test_viewer_flag_without_an_install_exits_with_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "no-build"
    empty.mkdir()
    done = run_arca(
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--http-port",
        str(free_port()),
        "--no-dimse",
        "--viewer",
        "--viewer-dir",
        str(empty),
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "make viewer" in output
    assert str(empty / "index.html") in output
