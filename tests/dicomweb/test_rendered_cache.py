"""Rendered images in the rendition cache and HTTP caching of pixel resources, against a real
``arca serve``: a repeated request costs no worker job (the pool's counters at /health say so),
every parameter that changes the output is its own entry, strong ETags answer If-None-Match
with 304, and the cache survives a restart."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ArcaProcess, StartArca
from tests.dicomweb.conftest import Instance, make_instance, unique_patient
from tests.system.http import stow

OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JLS_FRAMES = 'multipart/related; type="image/jls"'


def pool(http: httpx.Client) -> dict[str, int]:
    stats: dict[str, int] = http.get("/health").json()["transcoding"]
    return stats


@pytest.fixture
def served(start_arca: StartArca) -> tuple[ArcaProcess, Instance, Instance]:
    pid = unique_patient()
    ct = make_instance("693_J2KR.dcm", patient_id=pid)  # J2K stored: rendering decodes it
    mr = make_instance("emri_small.dcm", patient_id=pid, study=ct.study)  # 10 frames, native
    arca = start_arca("--transcoding-workers", "1")
    with httpx.Client(timeout=60) as http:
        assert stow(http, arca.dicomweb_url, [ct.data, mr.data]).status_code == 200
    return arca, ct, mr


def url(arca: ArcaProcess, i: Instance) -> str:
    return f"{arca.dicomweb_url}/studies/{i.study}/series/{i.series}/instances/{i.sop}"


def test_second_identical_rendering_costs_no_worker_job(
    served: tuple[ArcaProcess, Instance, Instance],
) -> None:
    arca, ct, mr = served
    params = {"window": "40,400", "viewport": "256,256", "quality": "80"}
    with httpx.Client(base_url=arca.base_url, timeout=60) as http:
        first = http.get(f"{url(arca, ct)}/rendered", params=params)
        assert first.status_code == 200 and first.content.startswith(b"\xff\xd8")
        before = pool(http)
        assert before["render_jobs"] == 1
        second = http.get(f"{url(arca, ct)}/rendered", params=params)
        assert second.content == first.content
        assert second.headers["etag"] == first.headers["etag"]
        after = pool(http)
        assert after["render_jobs"] == 1
        assert after["cache_hits"] == before["cache_hits"] + 1

        # Each parameter that changes the output is another rendition (and another ETag).
        variants = [
            ({**params, "window": "40,80"}, "image/jpeg"),
            ({**params, "viewport": "128,128"}, "image/jpeg"),
            ({**params, "quality": "30"}, "image/jpeg"),
            ({**params, "quality": "30", "window": "40,400,SIGMOID"}, "image/jpeg"),
            (params, "image/png"),
        ]
        etags = {first.headers["etag"]}
        for i, (query, accept) in enumerate(variants, start=2):
            r = http.get(f"{url(arca, ct)}/rendered", params=query, headers={"Accept": accept})
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == accept
            assert pool(http)["render_jobs"] == i
            etags.add(r.headers["etag"])
        assert len(etags) == len(variants) + 1

        # Frames of a multi-frame object: each frame, and the thumbnail, is its own entry.
        f3 = http.get(f"{url(arca, mr)}/frames/3/rendered", headers={"Accept": "image/png"})
        f4 = http.get(f"{url(arca, mr)}/frames/4/rendered", headers={"Accept": "image/png"})
        assert f3.status_code == f4.status_code == 200 and f3.content != f4.content
        thumb = http.get(f"{url(arca, mr)}/thumbnail")
        assert thumb.status_code == 200
        jobs = pool(http)["render_jobs"]
        assert jobs == len(variants) + 4
        again = http.get(f"{url(arca, mr)}/frames/3/rendered", headers={"Accept": "image/png"})
        assert again.content == f3.content
        assert http.get(f"{url(arca, mr)}/thumbnail").content == thumb.content
        assert pool(http)["render_jobs"] == jobs

    # The cache is on disk: a restarted server answers without rendering.
    arca.restart()
    with httpx.Client(base_url=arca.base_url, timeout=60) as http:
        r = http.get(f"{url(arca, ct)}/rendered", params=params)
        assert r.content == first.content
        assert pool(http)["render_jobs"] == 0


def test_etag_and_if_none_match_on_rendered_and_frames(
    served: tuple[ArcaProcess, Instance, Instance],
) -> None:
    arca, ct, mr = served
    with httpx.Client(base_url=arca.base_url, timeout=60) as http:
        rendered = http.get(f"{url(arca, ct)}/rendered")
        etag = rendered.headers["etag"]
        assert etag.startswith('"') and not etag.startswith("W/")
        assert "immutable" in rendered.headers["cache-control"]
        assert "private" in rendered.headers["cache-control"]
        assert rendered.headers["vary"] == "Accept"
        stats = pool(http)
        not_modified = http.get(f"{url(arca, ct)}/rendered", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        # 304 is answered before the cache is even looked at.
        assert pool(http) == stats
        stale = http.get(f"{url(arca, ct)}/rendered", headers={"If-None-Match": '"other"'})
        assert stale.status_code == 200 and stale.content == rendered.content

        # Frames as stored (what OHIF asks for): strong ETag, same bytes each time.
        a = http.get(f"{url(arca, mr)}/frames/2", headers={"Accept": OHIF_FRAMES})
        b = http.get(f"{url(arca, mr)}/frames/2", headers={"Accept": OHIF_FRAMES})
        assert a.status_code == 200 and a.content == b.content
        assert a.headers["etag"] == b.headers["etag"]
        other = http.get(f"{url(arca, mr)}/frames/3", headers={"Accept": OHIF_FRAMES})
        assert other.headers["etag"] != a.headers["etag"]
        cond = {"Accept": OHIF_FRAMES, "If-None-Match": f'"x", {a.headers["etag"]}'}
        assert http.get(f"{url(arca, mr)}/frames/2", headers=cond).status_code == 304

        # Transcoded frames: 304 without a worker job.
        jls = http.get(f"{url(arca, mr)}/frames/1", headers={"Accept": JLS_FRAMES})
        assert jls.status_code == 200, jls.text
        assert jls.headers["etag"] not in (a.headers["etag"], etag)
        jobs = pool(http)["frames_jobs"]
        cond = {"Accept": JLS_FRAMES, "If-None-Match": jls.headers["etag"]}
        assert http.get(f"{url(arca, mr)}/frames/1", headers=cond).status_code == 304
        assert pool(http)["frames_jobs"] == jobs

        # Study-level renderings have no ETag: a new instance may change what represents them.
        study = http.get(f"{arca.dicomweb_url}/studies/{ct.study}/rendered")
        assert study.status_code == 200 and "etag" not in study.headers
