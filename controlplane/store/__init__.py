"""The one door to etcd: typed objects and their revisions, transactions with the leader
guard, watches, raw records and leases, Secrets sealed at rest (sealing.py), the store's
health, the local etcd process, and an in-memory etcd for unit tests of controller shells."""

from controlplane.store.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    NotLeader,
    StoreError,
    StoreUnavailable,
)
from controlplane.store.store import Store
from controlplane.store.txn import ABSENT, Op
from controlplane.store.watch import WatchEvent

__all__ = ["ABSENT", "AlreadyExists", "Conflict", "NotFound", "NotLeader", "Op", "Store",
           "StoreError", "StoreUnavailable", "WatchEvent"]
