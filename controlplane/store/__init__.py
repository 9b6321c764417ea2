"""Typed objects over etcd: keys, revisions as resourceVersions, transactions and watches."""

from controlplane.store.store import (
    AlreadyExists,
    Conflict,
    NotFound,
    Op,
    Store,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)

__all__ = ["AlreadyExists", "Conflict", "NotFound", "Op", "Store", "StoreError",
           "StoreUnavailable", "WatchEvent"]
