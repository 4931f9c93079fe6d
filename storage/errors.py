"""The storage layer's one exception tree.

::

    StorageError
    ├── NotFound                  no such study / series / instance / blob / worklist item
    ├── InvalidQuery              a matching key or value the query model cannot use
    ├── IngestRejected            an object that will not be stored; carries a StowFailure
    │   └── DuplicateInstance     same SOPInstanceUID, other bytes, policy REJECT
    ├── OutOfResources            disk full, quota, body too large for the spool
    ├── StoreUnavailable          a tier (cold object store, database) cannot be reached now
    ├── CorruptBlob               a blob's bytes do not match the SHA-256 recorded at ingest
    └── MissingBlob               the index names an instance whose blob is gone from its tier

``dicomweb`` translates these to HTTP statuses / STOW failure reasons in one table;
``dimse`` to DIMSE statuses in one guard. Driver exceptions (sqlite3, asyncpg, OSError,
botocore) are mapped to these inside ``storage`` and never leak out.
"""

from __future__ import annotations

from conformance.statuses import StowFailure


class StorageError(Exception):
    """Base of every error the storage layer raises."""


class NotFound(StorageError):
    """The addressed resource does not exist (or is not visible yet)."""


class InvalidQuery(StorageError):
    """A query the model cannot express: an unknown level, a malformed range, ..."""


class IngestRejected(StorageError):
    """The object was not stored. ``failure`` says why in the standard's terms."""

    def __init__(self, failure: StowFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message

    def __reduce__(self) -> tuple[type[IngestRejected], tuple[StowFailure, str]]:
        # Raised in ingest worker processes (storage.ingest_workers) and pickled back.
        return (type(self), (self.failure, self.message))


class DuplicateInstance(IngestRejected):
    """A different object with this SOPInstanceUID is stored and the policy is REJECT."""


class OutOfResources(StorageError):
    """No space (or quota) left to store; PS3.18 0xA700 / HTTP 507-class."""


class StoreUnavailable(StorageError):
    """A backing store cannot be reached now; retry later (HTTP 503)."""


class CorruptBlob(StorageError):
    """Stored bytes fail their recorded SHA-256; never served as valid."""


class MissingBlob(StorageError):
    """An indexed instance's blob is missing: an integrity fault of the archive (HTTP 500 with
    a pointer to ``arca verify``), not an unknown resource (404)."""
