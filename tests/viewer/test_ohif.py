"""OHIF Viewer 3 against a real ``arca serve --viewer``, in a real browser (project issue #7).

One arca process for the module, loaded over STOW-RS with: a 10-slice CT series (native),
a 30-frame ultrasound cine (JPEG baseline, YBR), a CT slice stored as JPEG 2000, one stored
as JPEG-LS, and a study with one good series and one series whose only instance carries a
corrupt JPEG-LS scan. Debian's chromium, driven by Playwright, opens the study list
and each study; what the viewport paints is compared with the source image windowed the same
way (see browser.py). Every answer from arca's origin is logged: none may fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from server.viewer import app_config_js
from tests.conftest import ArcaProcess, free_port
from tests.data import multipart_related, stow_content_type
from tests.viewer import browser
from tests.viewer.samples import BROKEN_SERIES, GOOD_SERIES, Study, all_studies

pytestmark = pytest.mark.slow

DIST = Path(__file__).resolve().parents[2] / "viewer" / "node_modules" / "@ohif" / "app" / "dist"
RENDER_TIMEOUT = 90.0

# What "the same image" means: cornerstone scales with bilinear filtering on the GPU (here
# SwiftShader) and decodes with its own WebAssembly codecs. Measured on the right image:
# correlation >= 0.993 and mean |diff| <= 1.2 grey levels (CT), 0.9995 / 0.5 (US). The same
# canvas against a 400-wide window instead of the object's 100 scores 0.964 / 8.3, against
# the slice shifted by 10 pixels 0.77 / 16.6, against another slice 0.89 / 12.8.
MIN_CORRELATION = 0.98
MAX_MEAN_ABS_DIFF = 4.0
MAX_NONBLACK_DIFF = 0.05


def _require_browser() -> Any:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not browser.CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it: apt-get install chromium)")
    if not (DIST / "index.html").exists():
        pytest.skip("OHIF not installed: run `make viewer`")
    return playwright


@pytest.fixture(scope="module")
def sync_api() -> Any:
    return _require_browser()


@pytest.fixture(scope="module")
def studies() -> list[Study]:
    return all_studies()


@pytest.fixture(scope="module")
def arca(
    sync_api: Any, studies: list[Study], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ArcaProcess]:
    base = tmp_path_factory.mktemp("arca-viewer")
    proc = ArcaProcess(base / "data", base / "arca.log", ["--viewer"])
    proc.start()
    try:
        for study in studies:
            response = httpx.post(
                proc.dicomweb_url + "/studies",
                content=multipart_related(study.files),
                headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
                timeout=60.0,
            )
            assert response.status_code == 200, (study.key, response.status_code, response.text)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def chromium(sync_api: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(browser.CHROMIUM), args=browser.CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def browser_context(chromium: Any) -> Iterator[Any]:
    """One context for the module: its HTTP cache keeps OHIF's 30 MB of scripts between pages,
    as a user's browser would."""
    context = chromium.new_context(viewport=browser.VIEWPORT)
    context.add_init_script(browser.INIT_SCRIPT)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: Any, arca: ArcaProcess) -> Iterator[tuple[Any, browser.NetworkLog]]:
    """A new tab: the app is loaded from scratch (a link opened in a new browser tab)."""
    tab = browser_context.new_page()
    tab.set_default_timeout(RENDER_TIMEOUT * 1000)
    network = browser.NetworkLog(arca.base_url)
    network.attach(tab)
    try:
        yield tab, network
    finally:
        tab.close()


@pytest.fixture(scope="module")
def app_tab(browser_context: Any, arca: ArcaProcess) -> Iterator[Any]:
    """One tab with OHIF started once; tests move it between studies by the app's own routing.
    (Starting OHIF costs 10-30 s of CPU on this kind of machine; moving between studies, 5.)"""
    tab = browser_context.new_page()
    tab.set_default_timeout(RENDER_TIMEOUT * 1000)
    tab.goto(arca.base_url + "/viewer/")
    tab.get_by_text("Study List").first.wait_for()
    try:
        yield tab
    finally:
        tab.close()


@pytest.fixture
def in_app(app_tab: Any, arca: ArcaProcess) -> Iterator[tuple[Any, browser.NetworkLog]]:
    network = browser.NetworkLog(arca.base_url)
    network.attach(app_tab)
    try:
        yield app_tab, network
    finally:
        network.detach(app_tab)


def _study(studies: list[Study], key: str) -> Study:
    return next(s for s in studies if s.key == key)


def _assert_no_failures(network: browser.NetworkLog, arca: ArcaProcess) -> None:
    assert not network.failures, (
        "requests to arca failed:\n" + "\n".join(network.failures) + "\n" + arca.log_tail(40)
    )


def _assert_paints(study: Study, painted: browser.ViewportImage, name: str) -> browser.Match:
    key = (painted.sop_instance_uid, painted.frame)
    assert key in study.expected, f"the viewport shows {painted.image_id}, not one of {study.key}"
    match = browser.compare(painted.grey, study.expected[key])
    where = f"{name}: {match} (see {browser.SCREENSHOTS}/{name}*.png)"
    print(where)  # the margins, for `pytest -s` / `-rP`
    assert match.correlation >= MIN_CORRELATION, where
    assert match.mean_abs_diff <= MAX_MEAN_ABS_DIFF, where
    assert abs(match.painted_nonblack - match.expected_nonblack) <= MAX_NONBLACK_DIFF, where
    assert match.outside_mean < 1.0, where
    return match


def test_study_list_shows_every_study(
    page: tuple[Any, browser.NetworkLog], arca: ArcaProcess, studies: list[Study]
) -> None:
    tab, network = page
    tab.goto(arca.base_url + "/viewer/")
    for study in studies:
        tab.get_by_text(study.name_in_list, exact=True).wait_for()
        tab.get_by_text(study.description, exact=True).wait_for()
    browser.save("study-list", tab)
    # Typing in the patient filter makes OHIF search again (PatientName=*JLS*, PS3.18 §8.3.4
    # wildcard matching); only the matching study stays.
    jls = _study(studies, "jls")
    # Wait for the search itself: OHIF may hide the other rows before its answer is logged.
    with tab.expect_response(
        lambda r: "PatientName=*JLS*" in unquote(r.url), timeout=60_000
    ) as searched:
        tab.locator("input").first.fill("JLS")
    assert searched.value.status == 200
    for study in studies:
        if study is not jls:
            tab.get_by_text(study.name_in_list, exact=True).wait_for(state="detached")
    tab.get_by_text(jls.name_in_list, exact=True).wait_for()
    browser.save("study-list-filtered", tab)
    # The list is OHIF's QIDO-RS search, answered as DICOM JSON.
    searches = [r for r in network.responses if "/dicom-web/studies?" in r[1]]
    assert searches, network.responses
    assert all(r[0] == 200 and r[3].startswith("application/dicom+json") for r in searches)
    assert any("limit=101" in r[1] and "includefield=" in r[1] for r in searches), searches
    _assert_no_failures(network, arca)


@pytest.mark.parametrize("key", ["ct", "us", "j2k", "jls"])
def test_study_opens_and_paints_the_source_pixels(
    in_app: tuple[Any, browser.NetworkLog], arca: ArcaProcess, studies: list[Study], key: str
) -> None:
    tab, network = in_app
    study = _study(studies, key)
    browser.navigate_in_app(tab, f"/viewer/viewer?StudyInstanceUIDs={study.study_uid}")
    painted = browser.wait_for_painted(tab, RENDER_TIMEOUT, {uid for uid, _ in study.expected})
    browser.save(f"study-{key}", tab, painted)
    _assert_paints(study, painted, f"study-{key}")
    size = browser.stack_size(tab)
    assert size == len(study.expected), (size, len(study.expected))
    if size > 1:
        # Another slice / frame of the stack: the viewer shows the one it says it shows.
        wanted = browser.show_image_index(tab, size // 2)
        other = browser.wait_for_painted(tab, RENDER_TIMEOUT, image_id=wanted)
        browser.save(f"study-{key}-middle", tab, other)
        assert (other.sop_instance_uid, other.frame) != (painted.sop_instance_uid, painted.frame)
        _assert_paints(study, other, f"study-{key}-middle")
    if key == "ct":
        # arca's series metadata carries what OHIF needs to treat the slices as a volume
        # (positions, orientation, spacing, dimensions); OHIF lists any problem it finds.
        display_sets = tab.evaluate(_DISPLAY_SETS_JS)
        assert display_sets == [["CT native", True, []]], display_sets
    # The pixels came from arca's WADO-RS frames resource (PS3.18 §10.4), as OHIF asks for
    # them: any transfer syntax, one multipart part per frame.
    frames = network.frame_responses(painted.sop_instance_uid)
    assert frames, f"no frame request for {painted.image_id}: {network.responses}"
    status, _, accept, content_type = frames[0]
    assert status == 200
    assert "transfer-syntax=*" in accept
    assert content_type.startswith("multipart/related"), content_type
    _assert_no_failures(network, arca)


def test_broken_instance_fails_alone_and_the_study_stays_usable(
    page: tuple[Any, browser.NetworkLog], arca: ArcaProcess, studies: list[Study]
) -> None:
    """The corrupt JPEG-LS scan is stored and served as it came; the browser's decoder cannot
    read it. The study opens and its good series paints; showing the broken series ends in
    cornerstone's load failure with the decoder's reason (not a viewer waiting forever); going
    back to the good series paints it again."""
    tab, network = page
    study = _study(studies, "broken")
    good_uid = next(iter(study.expected))[0]
    bad_uid = study.broken_sop_uids[0]
    # A direct link to the study, opened in a new tab: the app starts on the viewer route.
    tab.goto(f"{arca.base_url}/viewer/viewer?StudyInstanceUIDs={study.study_uid}")
    painted = browser.wait_for_painted(tab, RENDER_TIMEOUT, {good_uid})
    _assert_paints(study, painted, "broken-study-good-series")

    tab.get_by_text(BROKEN_SERIES, exact=True).first.dblclick()
    _wait_for_image(tab, bad_uid)
    tab.wait_for_function(
        "uid => (window.__arcaLoadFailures || []).some(f => f.imageId.includes(uid))",
        arg=bad_uid,
        timeout=RENDER_TIMEOUT * 1000,
    )
    browser.save("broken-study-broken-series", tab)
    failures = [f for f in browser.load_failures(tab) if bad_uid in f["imageId"]]
    assert any("JPEG-LS" in f["error"] for f in failures), failures
    assert all(good_uid not in f["imageId"] for f in browser.load_failures(tab))
    # arca served the stored bytes (the failure is in the codestream, not in the archive).
    served = network.frame_responses(bad_uid)
    assert served and all(r[0] == 200 for r in served), served

    tab.get_by_text(GOOD_SERIES, exact=True).first.dblclick()
    painted = browser.wait_for_painted(tab, RENDER_TIMEOUT, {good_uid})
    browser.save("broken-study-back-to-good", tab, painted)
    _assert_paints(study, painted, "broken-study-back-to-good")
    _assert_no_failures(network, arca)


_DISPLAY_SETS_JS = """() => window.services.displaySetService.getActiveDisplaySets().map(
    d => [d.SeriesDescription, d.isReconstructable, d.messages ? d.messages.messages : []])"""


def _wait_for_image(tab: Any, sop_instance_uid: str) -> None:
    tab.wait_for_function(
        """uid => (window.cornerstone ? window.cornerstone.getEnabledElements() : []).some(
             e => (e.viewport.getCurrentImageId() || '').includes('/instances/' + uid + '/'))""",
        arg=sop_instance_uid,
        timeout=RENDER_TIMEOUT * 1000,
    )


def test_viewer_on_another_origin_reads_arca_through_cors(
    chromium: Any, studies: list[Study], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """OHIF loaded from http://localhost:PORT reads DICOMweb from http://127.0.0.1:PORT (another
    origin, PS3.18 §6.1.1 / the Fetch standard's CORS), allowed by ``--cors-origin``."""
    port = free_port()
    viewer_origin = f"http://localhost:{port}"
    base = tmp_path_factory.mktemp("arca-cors")
    arca = ArcaProcess(
        base / "data", base / "arca.log", ["--viewer", "--cors-origin", viewer_origin]
    )
    arca.http_port, arca.dimse_port = port, free_port()
    arca.start()
    context = chromium.new_context(viewport=browser.VIEWPORT)
    try:
        study = _study(studies, "j2k")
        stored = httpx.post(
            arca.dicomweb_url + "/studies",
            content=multipart_related(study.files),
            headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
            timeout=60.0,
        )
        assert stored.status_code == 200, stored.text
        config = app_config_js("/viewer/", arca.dicomweb_url)  # absolute: the other origin
        context.add_init_script(browser.INIT_SCRIPT)
        context.route(
            "**/viewer/app-config.js",
            lambda route: route.fulfill(body=config, content_type="text/javascript"),
        )
        tab = context.new_page()
        tab.set_default_timeout(RENDER_TIMEOUT * 1000)
        dicomweb = browser.NetworkLog(arca.base_url)  # http://127.0.0.1:PORT
        viewer = browser.NetworkLog(viewer_origin)
        dicomweb.attach(tab)
        viewer.attach(tab)
        tab.goto(f"{viewer_origin}/viewer/viewer?StudyInstanceUIDs={study.study_uid}")
        painted = browser.wait_for_painted(tab, RENDER_TIMEOUT, {uid for uid, _ in study.expected})
        browser.save("cross-origin-j2k", tab, painted)
        _assert_paints(study, painted, "cross-origin-j2k")
        assert any("/frames/" in r[1] and r[0] == 200 for r in dicomweb.responses)
        _assert_no_failures(dicomweb, arca)
        _assert_no_failures(viewer, arca)
    finally:
        context.close()
        arca.stop()
