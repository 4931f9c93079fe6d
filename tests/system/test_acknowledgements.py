"""A STOW-RS acknowledgement is a promise: every RetrieveURL it returns must answer 200."""

from __future__ import annotations

import httpx
from pydicom.uid import generate_uid

from tests.conftest import ArcaProcess
from tests.data import small_ct
from tests.system.http import DICOM_MULTIPART, stow

REFERENCED_SOP_SEQUENCE = "00081199"
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"


def _retrieve_urls(response: httpx.Response) -> list[str]:
    items = response.json().get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    return [item[RETRIEVE_URL]["Value"][0] for item in items]


def test_series_uid_reused_across_studies_is_refused_not_misfiled(
    arca_session: ArcaProcess,
) -> None:
    # Real-world data sometimes reuses a SeriesInstanceUID in another study (broken modality
    # UID generation). arca refuses the second object (FailureReason 0xC000, a Warning that
    # names both studies) rather than filing it under the first study.
    series = generate_uid()
    first_study, second_study = generate_uid(), generate_uid()
    first = small_ct(study_uid=first_study, series_uid=series)
    second = small_ct(study_uid=second_study, series_uid=series)
    with httpx.Client(timeout=60) as client:
        r = stow(client, arca_session.dicomweb_url, [first])
        assert r.status_code == 200
        for url in _retrieve_urls(r):
            got = client.get(url, headers={"Accept": DICOM_MULTIPART})
            assert got.status_code == 200, f"acknowledged {url} answers {got.status_code}"
        r = stow(client, arca_session.dicomweb_url, [second])
        assert r.status_code == 409, r.text
        [failed] = r.json()[FAILED_SOP_SEQUENCE]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [0xC000]
        assert first_study in r.headers.get("Warning", "")
        gone = client.get(
            f"{arca_session.dicomweb_url}/studies/{second_study}",
            headers={"Accept": DICOM_MULTIPART},
        )
        assert gone.status_code == 404


def test_instance_whose_blob_was_lost_answers_500_not_404(arca_session: ArcaProcess) -> None:
    # A blob removed behind arca's back is an integrity fault of the archive: a viewer must
    # not be told the instance does not exist (404); the message points at `arca verify`.
    study, series = generate_uid(), generate_uid()
    with httpx.Client(timeout=60) as client:
        r = stow(client, arca_session.dicomweb_url, [small_ct(study_uid=study, series_uid=series)])
        assert r.status_code == 200
        [blob] = list((arca_session.data_dir / "hot" / study).rglob("*.dcm"))
        blob.unlink()
        [url] = [u for u in _retrieve_urls(r) if "/instances/" in u]
        got = client.get(url, headers={"Accept": DICOM_MULTIPART})
        assert got.status_code == 500
        assert "arca verify" in got.json()["error"]
        # The rest of the archive keeps answering.
        assert client.get(f"{arca_session.dicomweb_url}/studies").status_code == 200
