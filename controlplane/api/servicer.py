"""The Cluster gRPC service: Apply, Get, List, Delete, Watch and Version over the store."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

import moorage
from controlplane.api.apply import MAX_APPLY_BYTES, Applier
from controlplane.metrics import WATCHES, observed
from controlplane.store import AlreadyExists, Conflict, NotFound, Store, StoreError
from controlplane.store.store import StoreUnavailable
from moorage import convert, kinds, manifest
from moorage import validation as v
from moorage.kinds import SYSTEM_NAMESPACES
from moorage.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

_CODES = [
    (manifest.ManifestError, grpc.StatusCode.INVALID_ARGUMENT),
    (kinds.UnknownKind, grpc.StatusCode.INVALID_ARGUMENT),
    (v.SelectorError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreError, grpc.StatusCode.INTERNAL),
]


def _status_for(err: Exception):
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return None


def mapped(fn):
    """Turns the store's and the validator's errors into gRPC status codes with one-line text."""

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as err:
                code = _status_for(err)
                if code is None:
                    raise
                await context.abort(code, str(err))
        return stream

    @functools.wraps(fn)
    async def handler(self, request, context):
        try:
            return await fn(self, request, context)
        except Exception as err:
            code = _status_for(err)
            if code is None:
                raise
            await context.abort(code, str(err))
    return handler


def _kind(name: str) -> kinds.Kind:
    if not name:
        raise kinds.UnknownKind("kind is required")
    return kinds.lookup(name)


def _namespace(kind: kinds.Kind, namespace: str) -> str:
    if not kind.namespaced:
        return ""
    return namespace or kinds.DEFAULT_NAMESPACE


class FieldSelector:
    """`a.b=x,c!=y` over an object's Kubernetes-shaped fields."""

    def __init__(self, text: str):
        self.terms = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            op = "!=" if "!=" in part else "==" if "==" in part else "="
            field, _, value = part.partition(op)
            if not field.strip():
                raise v.SelectorError(f'invalid field selector "{text}": missing field name')
            self.terms.append((field.strip().split("."), op == "!=", value.strip()))

    def matches(self, obj) -> bool:
        if not self.terms:
            return True
        data = convert.to_dict(obj)
        for path, negate, want in self.terms:
            cur = data
            for part in path:
                cur = cur.get(part, "") if isinstance(cur, dict) else ""
            if (str(cur) == want) == negate:
                return False
        return True


async def _documents(request, context, what: str) -> list[manifest.Document]:
    """The request's manifests, validated; an oversized request is refused before parsing."""
    size = sum(len(m.content) for m in request.manifests)
    if size > MAX_APPLY_BYTES:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the manifests are {size / 2**20:.1f} MiB in total, over the "
            f"{MAX_APPLY_BYTES // 2**20} MiB limit of one {what}; split them")
    return manifest.parse([(m.source or "<request>", m.content, m.index)
                           for m in request.manifests])


class ClusterServicer(api_pb2_grpc.ClusterServicer):
    def __init__(self, store: Store, scheduler_config=None):
        from controlplane.scheduler import SchedulerConfig

        self.store = store
        # Explain decides as the running scheduler would, with its strategy.
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.applier = Applier(store)

    @observed("Apply")
    @mapped
    async def Apply(self, request, context):
        docs = await _documents(request, context, "apply")
        plans, revision = await self.applier.apply(docs, dry_run=request.dry_run)
        resp = api_pb2.ApplyResponse(revision=revision)
        for p in plans:
            kind = kinds.kind_of(p.obj)
            r = resp.results.add(kind=kind.name, namespace=p.obj.metadata.namespace,
                                 name=p.obj.metadata.name, action=p.action)
            getattr(r.object, kind.field).CopyFrom(p.obj)
            if request.dry_run and p.previous is not None:
                getattr(r.previous, kind.field).CopyFrom(p.previous)
        return resp

    @observed("Get")
    @mapped
    async def Get(self, request, context):
        kind = _kind(request.kind)
        obj = await self.store.get(kind, _namespace(kind, request.namespace), request.name)
        return kinds.wrap(obj)

    @observed("List")
    @mapped
    async def List(self, request, context):
        kind = _kind(request.kind)
        selector = v.parse_selector(request.label_selector)
        fields = FieldSelector(request.field_selector)
        ns = None if request.all_namespaces else _namespace(kind, request.namespace)
        items, revision = await self.store.list(kind, ns)
        resp = api_pb2.ListResponse(resource_version=str(revision))
        for obj in items:
            if v.matches(selector, obj.metadata.labels) and fields.matches(obj):
                resp.items.append(kinds.wrap(obj))
        return resp

    @observed("Delete")
    @mapped
    async def Delete(self, request, context):
        kind = _kind(request.kind)
        ns = _namespace(kind, request.namespace)
        expect = int(request.resource_version) if request.resource_version else None
        if kind.name == "Namespace":
            obj = await self._delete_namespace(request.name, expect)
        else:
            obj = await self.store.delete(kind, ns, request.name, expect)
        self.applier.cache.pop(self.store.key_of(obj), None)
        return api_pb2.DeleteResponse(object=kinds.wrap(obj))

    async def _delete_namespace(self, name: str, expect: int | None):
        """Deletes a namespace and everything in it, in one Txn."""
        if name in SYSTEM_NAMESPACES:
            raise PermissionError(f'namespace "{name}" is a system namespace and cannot be deleted')
        from aetcd import rpc

        ns_kind = kinds.BY_NAME["Namespace"]
        current = await self.store.get(ns_kind, "", name)
        key = self.store.key(ns_kind, "", name)
        rev = expect if expect is not None else int(current.metadata.resource_version)
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]
        for kind in kinds.KINDS:
            if kind.namespaced:
                start = self.store.range_prefix(kind, name)
                ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                    key=start, range_end=_prefix_end(start))))
                for cached in [k for k in self.applier.cache if k.startswith(start)]:
                    del self.applier.cache[cached]
        compare = [rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                               mod_revision=rev)]
        resp = await self.store.txn(compare, ops)
        if not resp.succeeded:
            raise Conflict(f'namespace "{name}" changed while deleting it; try again')
        return current

    @mapped
    async def Watch(self, request, context):
        kind = _kind(request.kind)
        selector = v.parse_selector(request.label_selector)
        ns = None if request.all_namespaces else _namespace(kind, request.namespace)
        after = int(request.resource_version) if request.resource_version else 0
        resumed = after > 0
        WATCHES.labels(kind.plural).inc()
        try:
            async for ev in self.store.watch(kind, ns, after):
                if ev.type == "RESYNC":
                    if resumed:  # the client's revision was compacted: it must start over
                        yield api_pb2.WatchEvent(type="RESYNC", resource_version=str(ev.revision))
                    resumed = True
                    for obj in ev.items:
                        if v.matches(selector, obj.metadata.labels):
                            yield api_pb2.WatchEvent(type="ADDED", object=kinds.wrap(obj),
                                                     resource_version=obj.metadata.resource_version)
                    yield api_pb2.WatchEvent(type="BOOKMARK", resource_version=str(ev.revision))
                    continue
                if ev.obj is None or not v.matches(selector, ev.obj.metadata.labels):
                    continue
                yield api_pb2.WatchEvent(type=ev.type, object=kinds.wrap(ev.obj),
                                         resource_version=str(ev.revision))
        finally:
            WATCHES.labels(kind.plural).dec()

    @observed("Explain")
    @mapped
    async def Explain(self, request, context):
        from controlplane.api.explain import TooLarge, explain_manifests

        docs = await _documents(request, context, "explain")
        # The strategy the running scheduler uses, when the server configured one.
        config = self.scheduler_config
        try:
            return await explain_manifests(self.store, docs, config)
        except TooLarge as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))

    @observed("Version")
    @mapped
    async def Version(self, request, context):
        etcd_version = ""
        try:
            status = await self.store.client.status()
            etcd_version = status.version
        except Exception as err:  # noqa: BLE001 - the version is informative only
            log.warning("etcd status failed: %s", err)
        return api_pb2.VersionResponse(version=moorage.__version__, etcd_version=etcd_version)


def _prefix_end(prefix: bytes) -> bytes:
    import aetcd

    return aetcd.utils.prefix_range_end(prefix)
