"""8 clients storing and 8 querying/retrieving at once for ~30 s: no failure, nothing lost."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import StartArca
from tests.data import small_ct, uids_of
from tests.system.http import (
    SOP_INSTANCE_UID,
    instance_uids,
    retrieve_instance_bytes,
    stow,
)

pytestmark = pytest.mark.slow

STORERS = 8
READERS = 8
DURATION = 30.0
MAX_LOOPS = 300
"""Bound on each client's loop, whatever the clock says."""
BATCH = 2


@dataclass
class Ledger:
    """What the storers had acknowledged; shared with the readers under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stored: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)
    studies: dict[str, set[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    reads: int = 0

    def add(self, data: bytes) -> None:
        study, series, sop = uids_of(data)
        with self.lock:
            self.stored[sop] = (study, series, data)
            self.studies.setdefault(study, set()).add(sop)

    def sample(self, rng: random.Random) -> tuple[str, tuple[str, str, bytes]] | None:
        with self.lock:
            if not self.stored:
                return None
            sop = rng.choice(list(self.stored))
            return sop, self.stored[sop]


def test_concurrent_store_query_retrieve(start_arca: StartArca) -> None:
    arca = start_arca()
    ledger = Ledger()
    deadline = time.monotonic() + DURATION

    def storer(k: int) -> None:
        study = f"2.25.{random.getrandbits(96)}"
        with httpx.Client(timeout=120) as client:
            for loop in range(MAX_LOOPS):
                if time.monotonic() > deadline:
                    return
                batch = [
                    small_ct(study_uid=study, patient_id=f"CONC{k}", instance_number=loop)
                    for _ in range(BATCH)
                ]
                try:
                    r = stow(client, arca.dicomweb_url, batch)
                except httpx.HTTPError as exc:
                    ledger.errors.append(f"storer {k}: {exc!r}")
                    return
                if r.status_code != 200:
                    ledger.errors.append(f"storer {k}: STOW {r.status_code} {r.text[:200]}")
                    return
                for data in batch:
                    ledger.add(data)

    def reader(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(timeout=120) as client:
            for _ in range(MAX_LOOPS):
                if time.monotonic() > deadline:
                    return
                picked = ledger.sample(rng)
                if picked is None:
                    time.sleep(0.05)
                    continue
                sop, (study, series, data) = picked
                try:
                    r = client.get(
                        f"{arca.dicomweb_url}/studies",
                        params={"StudyInstanceUID": study},
                        headers={"Accept": "application/dicom+json"},
                    )
                    if r.status_code != 200 or len(r.json()) != 1:
                        ledger.errors.append(f"reader {k}: QIDO {r.status_code} {r.text[:200]}")
                        return
                    got = retrieve_instance_bytes(client, arca.dicomweb_url, study, series, sop)
                    if got != data:
                        ledger.errors.append(f"reader {k}: {sop} retrieved with other bytes")
                        return
                    r = client.get(
                        f"{arca.dicomweb_url}/studies/{study}/series/{series}"
                        f"/instances/{sop}/metadata",
                        headers={"Accept": "application/dicom+json"},
                    )
                    if r.status_code != 200 or r.json()[0][SOP_INSTANCE_UID]["Value"] != [sop]:
                        ledger.errors.append(f"reader {k}: metadata {r.status_code}")
                        return
                except (httpx.HTTPError, AssertionError) as exc:
                    ledger.errors.append(f"reader {k}: {exc!r}")
                    return
                with ledger.lock:
                    ledger.reads += 1

    threads = [threading.Thread(target=storer, args=(k,)) for k in range(STORERS)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DURATION + 300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not ledger.errors, "\n".join(ledger.errors)
    assert len(ledger.stored) >= STORERS * BATCH, "the storers stored (almost) nothing"
    assert ledger.reads > 0

    with httpx.Client(timeout=60) as client:
        for study, sops in ledger.studies.items():
            assert instance_uids(client, arca.dicomweb_url, study) == sops
    result = arca.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ledger.stored)} instances checked" in result.stdout
    print(f"stored {len(ledger.stored)} instances, {ledger.reads} query+retrieve+metadata rounds")
