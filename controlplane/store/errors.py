"""The store's errors, which the API maps to gRPC status codes, and how etcd's become them."""

from __future__ import annotations

import grpc

from moorage.model.kinds import Kind


class StoreError(Exception):
    """Base of the errors the API maps to gRPC status codes."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare failed: someone else wrote first. Carries the current version (0 = absent)."""

    def __init__(self, message: str, current: int = 0):
        super().__init__(message)
        self.current = current


class StoreUnavailable(StoreError):
    pass


class NotLeader(StoreError):
    """A guarded write found the leadership key changed: this replica no longer leads."""


def translate(err: grpc.aio.AioRpcError) -> StoreError:
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return StoreUnavailable(f"etcd is unavailable: {err.details()}")
    return StoreError(f"etcd: {err.code().name}: {err.details()}")


def brief(err: Exception) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)


def not_found(kind: Kind, namespace: str, name: str) -> str:
    where = f' in namespace "{namespace}"' if kind.namespaced else ""
    return f'{kind.plural} "{name}" not found{where}'


def check_version(resource: str, name: str, expect: int | None, current: int) -> None:
    """Conflict, worded as Kubernetes words it, when a request's resourceVersion is stale."""
    if expect is not None and expect != current:
        raise Conflict(f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                       f"been modified (resourceVersion {expect} is stale, current is "
                       f"{current}); read it again and retry", current)


def conflict(kind: Kind, namespace: str, name: str, expect, kv) -> Conflict:
    if kv is None:
        return Conflict(f'{kind.plural} "{name}" was deleted meanwhile '
                        f"(expected resourceVersion {expect})", 0)
    return Conflict(
        f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
        f"modified (resourceVersion {expect} is stale, current is {kv.mod_revision}); "
        "read it again and retry", kv.mod_revision)
