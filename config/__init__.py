"""Frozen settings for every arca component; see :mod:`config.settings`."""

from config.settings import (
    DimseSettings,
    HttpSettings,
    OverwritePolicy,
    RemoteAE,
    Settings,
    StorageSettings,
    TranscodingSettings,
)

__all__ = [
    "DimseSettings",
    "HttpSettings",
    "OverwritePolicy",
    "RemoteAE",
    "Settings",
    "StorageSettings",
    "TranscodingSettings",
]
