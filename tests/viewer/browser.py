"""Driving OHIF in Debian's chromium with Playwright, and reading back what it painted.

The pixels are read from the viewport's own ``<canvas>`` (``toDataURL``), not from a page
screenshot, so OHIF's text overlays do not mix into the comparison; page screenshots are
saved as well for a person to look at. Cornerstone3D paints a stack image fitted into the
canvas and centred, so the expected image is scaled the same way before comparing.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOTS = Path("/tmp/arca-viewer")

# OHIF's first-visit tour and its "investigational use" banner cover parts of the viewport;
# mark them as seen, as a returning user's browser would have. Then, as soon as OHIF has set
# up cornerstone (OHIF 3 exposes it as window.cornerstone), record every image that failed
# to load, with the loader's error: that is where a decoder's complaint ends up.
INIT_SCRIPT = """
localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
sessionStorage.setItem('investigationalUseDialog', 'hidden');
window.__arcaLoadFailures = [];
const __arcaWatch = setInterval(() => {
  const cs = window.cornerstone;
  if (!cs || !cs.eventTarget || !cs.EVENTS) return;
  clearInterval(__arcaWatch);
  cs.eventTarget.addEventListener(cs.EVENTS.IMAGE_LOAD_FAILED, event => {
    const detail = event.detail || {};
    const error = detail.error;
    window.__arcaLoadFailures.push({
      imageId: String(detail.imageId || ''),
      error: String(error && (error.message || error.error || JSON.stringify(error))),
    });
  });
}, 10);
"""

# Every enabled cornerstone viewport: the image it shows and its canvas as PNG.
_VIEWPORTS_JS = """() => (window.cornerstone ? window.cornerstone.getEnabledElements() : [])
  .map(e => {
    const v = e.viewport;
    let imageId = null;
    try { imageId = v.getCurrentImageId() || null; } catch (err) { imageId = null; }
    return {imageId: imageId, png: v.canvas.toDataURL('image/png')};
  })"""

_IMAGE_ID = re.compile(r"/instances/(?P<sop>[0-9.]+)/frames/(?P<frame>\d+)")


@dataclass
class NetworkLog:
    """Every answer the browser got from arca's origin, and every request that failed."""

    origin: str
    failures: list[str] = field(default_factory=list)
    responses: list[tuple[int, str, str, str]] = field(default_factory=list)
    """(status, method + URL, Accept sent, Content-Type received)."""

    def attach(self, page: Any) -> None:
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)

    def detach(self, page: Any) -> None:
        page.remove_listener("response", self._on_response)
        page.remove_listener("requestfailed", self._on_failed)

    def _on_response(self, response: Any) -> None:
        if not response.url.startswith(self.origin):
            return
        request = response.request
        self.responses.append(
            (
                response.status,
                f"{request.method} {response.url}",
                request.headers.get("accept", ""),
                response.headers.get("content-type", ""),
            )
        )
        if response.status >= 400:
            self.failures.append(f"{response.status} {request.method} {response.url}")

    def _on_failed(self, request: Any) -> None:
        if request.url.startswith(self.origin):
            self.failures.append(f"failed ({request.failure}) {request.method} {request.url}")

    def frame_responses(self, sop_instance_uid: str) -> list[tuple[int, str, str, str]]:
        return [r for r in self.responses if f"/instances/{sop_instance_uid}/frames/" in r[1]]


@dataclass
class ViewportImage:
    """What one viewport shows: which frame (from its imageId) and the canvas pixels."""

    image_id: str
    sop_instance_uid: str
    frame: int
    grey: np.ndarray


def load_failures(page: Any) -> list[dict[str, str]]:
    """Images cornerstone reported as failed to load (IMAGE_LOAD_FAILED), oldest first."""
    failures: list[dict[str, str]] = page.evaluate("window.__arcaLoadFailures || []")
    return failures


def viewport_images(page: Any) -> list[ViewportImage]:
    out = []
    for item in page.evaluate(_VIEWPORTS_JS):
        match = _IMAGE_ID.search(item["imageId"] or "")
        if match is None:
            continue
        png = base64.b64decode(item["png"].split(",", 1)[1])
        grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        out.append(ViewportImage(item["imageId"], match["sop"], int(match["frame"]), grey))
    return out


def navigate_in_app(page: Any, path: str) -> None:
    """Go to ``path`` inside the running app, as OHIF's own links do (history.pushState and
    the router's popstate), without loading and starting the 30 MB app again."""
    page.evaluate(
        """path => {
          window.history.pushState({}, '', path);
          window.dispatchEvent(new PopStateEvent('popstate', {state: {}}));
        }""",
        path,
    )


def show_image_index(page: Any, index: int) -> str:
    """Scroll the first viewport's stack to image ``index`` (0-based); that image's imageId."""
    image_id: str = page.evaluate(
        """index => {
          const viewport = window.cornerstone.getEnabledElements()[0].viewport;
          viewport.setImageIdIndex(index);
          return viewport.getImageIds()[index];
        }""",
        index,
    )
    return image_id


def stack_size(page: Any) -> int:
    size: int = page.evaluate(
        "() => window.cornerstone.getEnabledElements()[0].viewport.getImageIds().length"
    )
    return size


def wait_for_painted(
    page: Any,
    timeout: float = 90.0,
    sop_instance_uids: Collection[str] | None = None,
    image_id: str | None = None,
) -> ViewportImage:
    """The first viewport once it shows an image (one of ``sop_instance_uids``, or exactly
    ``image_id``, if given) with non-black pixels that stay the same over two looks, 0.5 s
    apart."""
    deadline = time.monotonic() + timeout
    last: ViewportImage | None = None
    seen = "no viewport"
    while time.monotonic() < deadline:
        images = viewport_images(page)
        now = images[0] if images else None
        if now is not None:
            seen = f"{now.image_id} with mean grey {now.grey.mean():.1f}"
        wanted = (
            now is not None
            and (sop_instance_uids is None or now.sop_instance_uid in sop_instance_uids)
            and (image_id is None or now.image_id == image_id)
        )
        if (
            wanted
            and now is not None
            and now.grey.max() > 0
            and last is not None
            and last.image_id == now.image_id
            and np.array_equal(last.grey, now.grey)
        ):
            return now
        last = now if wanted else None
        page.wait_for_timeout(500)
    raise AssertionError(f"no painted viewport within {timeout:.0f} s; last seen: {seen}")


@dataclass(frozen=True)
class Match:
    """How the painted canvas compares with the expected image placed where OHIF puts it."""

    correlation: float
    mean_abs_diff: float
    painted_nonblack: float
    expected_nonblack: float
    outside_mean: float
    """Mean grey of the canvas outside the image (should be black)."""

    def __str__(self) -> str:
        return (
            f"correlation {self.correlation:.4f}, "
            f"mean |diff| {self.mean_abs_diff:.1f} grey levels, "
            f"non-black {self.painted_nonblack:.3f} painted vs {self.expected_nonblack:.3f} "
            f"expected, outside-image mean {self.outside_mean:.1f}"
        )


def compare(canvas: np.ndarray, expected: np.ndarray, search: int = 3) -> Match:
    """Scale ``expected`` to fit ``canvas`` (centred, aspect kept, as cornerstone's stack
    viewport does) and compare, allowing ``search`` pixels of rounding in the placement."""
    height, width = canvas.shape
    rows, cols = expected.shape
    scale = min(width / cols, height / rows)
    w, h = round(cols * scale), round(rows * scale)
    scaled = np.asarray(Image.fromarray(expected).resize((w, h), Image.BILINEAR)).astype(float)
    painted = canvas.astype(float)
    x0, y0 = (width - w) // 2, (height - h) // 2
    best: tuple[float, int, int] | None = None
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            y, x = y0 + dy, x0 + dx
            if y < 0 or x < 0 or y + h > height or x + w > width:
                continue
            crop = painted[y : y + h, x : x + w]
            corr = float(np.corrcoef(crop.ravel(), scaled.ravel())[0, 1])
            if best is None or corr > best[0]:
                best = (corr, x, y)
    assert best is not None, "expected image larger than the canvas"
    corr, x, y = best
    crop = painted[y : y + h, x : x + w]
    outside = np.ones(painted.shape, dtype=bool)
    outside[y : y + h, x : x + w] = False
    return Match(
        correlation=corr,
        mean_abs_diff=float(np.abs(crop - scaled).mean()),
        painted_nonblack=float((crop > 10).mean()),
        expected_nonblack=float((scaled > 10).mean()),
        outside_mean=float(painted[outside].mean()) if outside.any() else 0.0,
    )


def save(name: str, page: Any, painted: ViewportImage | None = None) -> Path:
    """A screenshot of the page (and the viewport canvas) under /tmp/arca-viewer/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    if painted is not None:
        Image.fromarray(painted.grey).save(SCREENSHOTS / f"{name}-canvas.png")
    return path
