"""The Cluster gRPC service: Apply, Get, List, Delete, Watch and Version over the store, and
join tokens. Every call is authorized first (controlplane/identity/auth.py)."""

from __future__ import annotations

import functools
import inspect
import logging
import time

import grpc

import moorage
from controlplane.api.apply import MAX_APPLY_BYTES, Applier
from controlplane.identity import (
    TokenError,
    create_token,
    guard,
    list_tokens,
    owns,
    revoke_token,
    token_id,
)
from controlplane.metrics import WATCHES, observed
from controlplane.store import (
    AlreadyExists,
    Conflict,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    sealing,
)
from controlplane.store.errors import check_version
from moorage import manifest
from moorage.manifest import convert
from moorage.model import configs, kinds, pods, selectors
from moorage.model.kinds import SYSTEM_NAMESPACES
from moorage.model.timestamps import rfc3339
from moorage.v1 import api_pb2, api_pb2_grpc
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)

SCALABLE = ("Deployment", "StatefulSet")
POD = kinds.BY_NAME["Pod"]
SECRET = kinds.BY_NAME["Secret"]
CLAIM = kinds.BY_NAME["PersistentVolumeClaim"]
DELETE_ATTEMPTS = 5
SCALE_ATTEMPTS = 50

_CODES = [
    (manifest.ManifestError, grpc.StatusCode.INVALID_ARGUMENT),
    (kinds.UnknownKind, grpc.StatusCode.INVALID_ARGUMENT),
    (selectors.SelectorError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreError, grpc.StatusCode.INTERNAL),
]


def _status_for(err: Exception):
    if isinstance(err, StoreUnavailable):
        return None   # controlplane/api/errors.py answers it, marked, for every service
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
                raise selectors.SelectorError(
                    f'invalid field selector "{text}": missing field name')
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
    def __init__(self, store: Store, scheduler_config=None, ca=None,
                 service_cidr: str | None = None):
        from controlplane.scheduler import SchedulerConfig

        self.store = store
        # The cluster CA (controlplane.identity.ClusterCA): callers' certificates must be its.
        self.ca = ca
        self.ca_cert = ca.cert if ca is not None else None
        # Explain decides as the running scheduler would, with its strategy.
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.applier = Applier(store, service_cidr) if service_cidr else Applier(store)

    @observed("Apply")
    @mapped
    async def Apply(self, request, context):
        await guard(context, "Apply", request, self.ca_cert)
        docs = await _documents(request, context, "apply")
        plans, revision = await self.applier.apply(docs, dry_run=request.dry_run,
                                                   create_only=request.create_only)
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
        identity, decision = await guard(context, "Get", request, self.ca_cert)
        kind = _kind(request.kind)
        namespace = _namespace(kind, request.namespace)
        if decision.used_by_node and not await self._node_uses(
                identity.name, kind.name, namespace, request.name):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f'{kind.plural} "{request.name}" is forbidden: {identity} runs '
                                f"no pod in namespace {namespace} that uses it")
        obj = await self.store.get(kind, namespace, request.name)
        if decision.filter_owned and not owns(identity, obj):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{identity} may not read {kind.name.lower()} "
                                f"{request.name!r}: it is not bound to it")
        return kinds.wrap(obj)

    async def _node_uses(self, node: str, kind: str, namespace: str, name: str) -> bool:
        """Whether a pod bound to `node` names the ConfigMap or Secret (Kubernetes' node
        authorizer: a node reads only what its own pods use, and only while they do)."""
        pods_here, _ = await self.store.list(POD, namespace)
        want = configs.Ref(kind, name)
        return any(p.spec.node_name == node and want in configs.references(p.spec)
                   for p in pods_here)

    @observed("List")
    @mapped
    async def List(self, request, context):
        identity, decision = await guard(context, "List", request, self.ca_cert)
        kind = _kind(request.kind)
        selector = selectors.parse_selector(request.label_selector)
        fields = FieldSelector(request.field_selector)
        ns = None if request.all_namespaces else _namespace(kind, request.namespace)
        items, revision = await self.store.list(kind, ns)
        resp = api_pb2.ListResponse(resource_version=str(revision))
        for obj in items:
            if selectors.matches(selector, obj.metadata.labels) and fields.matches(obj) and (
                    not decision.filter_owned or owns(identity, obj)):
                resp.items.append(kinds.wrap(obj))
        return resp

    @observed("Delete")
    @mapped
    async def Delete(self, request, context):
        await guard(context, "Delete", request, self.ca_cert)
        kind = _kind(request.kind)
        ns = _namespace(kind, request.namespace)
        expect = int(request.resource_version) if request.resource_version else None
        grace = request.grace_period_seconds if request.HasField("grace_period_seconds") \
            else None
        if grace is not None and grace < 0:
            grace = None   # kubectl's "ignored if negative"
        if kind.name == "Namespace":
            obj = await self._delete_namespace(request.name, expect)
        elif kind.name == "Service":
            # Its virtual IP and node ports go back to the pool in the same Txn.
            obj = await self.applier.services.delete_service(ns, request.name, expect)
        elif kind.name == "Pod":
            obj = await self._delete_pod(ns, request.name, expect, grace)
        elif kind.name == "Node":
            # Its pod subnet goes back to the pool in the same Txn (a node that rejoins gets
            # a fresh one).
            from controlplane.allocators.subnets import delete_node

            obj = await delete_node(self.store, request.name, expect)
        else:
            obj = await self._delete_finalized(kind, ns, request.name, expect)
        self.applier.cache.pop(self.store.key_of(obj), None)
        return api_pb2.DeleteResponse(object=kinds.wrap(obj))

    @observed("Scale")
    @mapped
    async def Scale(self, request, context):
        await guard(context, "Scale", request, self.ca_cert)
        kind = _kind(request.kind)
        if kind.name not in SCALABLE:
            raise kinds.UnknownKind(f"{kind.plural} cannot be scaled; only deployments and "
                                    "statefulsets can")
        if request.replicas < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"spec.replicas: must be 0 or more, not {request.replicas}")
        ns = _namespace(kind, request.namespace)
        expect = int(request.resource_version) if request.resource_version else None
        for _ in range(SCALE_ATTEMPTS):
            d = await self.store.get(kind, ns, request.name)
            rev = int(d.metadata.resource_version)
            check_version(f"{kind.plural}.apps", request.name, expect, rev)
            if d.spec.HasField("replicas") and d.spec.replicas == request.replicas:
                return kinds.wrap(d)
            d.spec.replicas = request.replicas
            d.metadata.generation += 1
            try:
                updated = await self.store.update(d, rev)
            except Conflict:
                continue   # a controller's status write came first: read again
            self.applier.cache.pop(self.store.key_of(d), None)
            return kinds.wrap(updated)
        raise Conflict(f'{kind.name.lower()} "{request.name}" kept changing while scaling it; '
                       "try again")

    async def _delete_pod(self, namespace: str, name: str, expect: int | None,
                          grace: int | None):
        """Graceful deletion (moorage/model/pods.py): a running pod is marked Terminating and
        its agent removes it once its containers stopped; others go at once."""
        for _ in range(DELETE_ATTEMPTS):
            pod = await self.store.get(POD, namespace, name)
            rev = int(pod.metadata.resource_version)
            check_version("pods", name, expect, rev)
            marked = pods.graceful_delete(pod, grace, time.time())
            try:
                if marked is None:
                    return await self.store.delete(POD, namespace, name, rev)
                if marked is pod:
                    return pod
                return await self.store.update(marked, rev)
            except Conflict:
                continue   # the agent reported a status meanwhile: read it again
        raise Conflict(f'pod "{name}" kept changing while deleting it; try again')

    async def _delete_finalized(self, kind: kinds.Kind, namespace: str, name: str,
                                expect: int | None):
        """An object with metadata.finalizers is only marked (deletionTimestamp) and stays
        until whoever put them there removes the last one; one without goes at once."""
        for _ in range(DELETE_ATTEMPTS):
            obj = await self.store.get(kind, namespace, name)
            rev = int(obj.metadata.resource_version)
            check_version(kind.plural, name, expect, rev)
            try:
                if not obj.metadata.finalizers:
                    return await self.store.delete(kind, namespace, name, rev)
                if obj.metadata.deletion_timestamp:
                    return obj
                obj.metadata.deletion_timestamp = rfc3339(time.time())
                return await self.store.update(obj, rev)
            except (Conflict, NotFound):
                continue   # changed or gone meanwhile: read it again
        raise Conflict(f'{kind.name.lower()} "{name}" kept changing while deleting it; '
                       "try again")

    async def _delete_namespace(self, name: str, expect: int | None):
        """Deletes everything in a namespace but its pods in one Txn; the namespace itself goes
        too when it holds no pods, and is otherwise marked Terminating: the namespace
        controller then deletes its pods gracefully and removes it when the last is gone."""
        if name in SYSTEM_NAMESPACES:
            raise PermissionError(f'namespace "{name}" is a system namespace and cannot be deleted')
        ns_kind = kinds.BY_NAME["Namespace"]
        current = await self.store.get(ns_kind, "", name)
        if pods.is_terminating(current):
            return current
        rev = expect if expect is not None else int(current.metadata.resource_version)
        marked = pb.Namespace()
        marked.CopyFrom(current)
        marked.metadata.deletion_timestamp = rfc3339(time.time())
        marked.status.phase = pods.TERMINATING
        # Pods go gracefully, and claims through their finalizers while a pod may use them:
        # with no pod left, the claims go with the namespace; else the namespace controller
        # deletes both.
        prefixes = [self.store.range_prefix(kind, name) for kind in kinds.KINDS
                    if kind.namespaced and kind not in (POD, CLAIM)]
        for start in prefixes:
            for cached in [k for k in self.applier.cache if k.startswith(start)]:
                del self.applier.cache[cached]
        if not await self.store.delete_namespace(
                self.store.key(ns_kind, "", name), rev, marked, prefixes,
                self.store.range_prefix(POD, name), (self.store.range_prefix(CLAIM, name),)):
            raise Conflict(f'namespace "{name}" changed while deleting it; try again')
        return marked

    @mapped
    async def Watch(self, request, context):
        await guard(context, "Watch", request, self.ca_cert)
        kind = _kind(request.kind)
        selector = selectors.parse_selector(request.label_selector)
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
                        if selectors.matches(selector, obj.metadata.labels):
                            yield api_pb2.WatchEvent(type="ADDED", object=kinds.wrap(obj),
                                                     resource_version=obj.metadata.resource_version)
                    yield api_pb2.WatchEvent(type="BOOKMARK", resource_version=str(ev.revision))
                    continue
                if ev.obj is None or not selectors.matches(selector, ev.obj.metadata.labels):
                    continue
                yield api_pb2.WatchEvent(type=ev.type, object=kinds.wrap(ev.obj),
                                         resource_version=str(ev.revision))
        finally:
            WATCHES.labels(kind.plural).dec()

    @observed("Explain")
    @mapped
    async def Explain(self, request, context):
        from controlplane.api.explain import TooLarge, explain_manifests

        await guard(context, "Explain", request, self.ca_cert)
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
        await guard(context, "Version", request, self.ca_cert)
        etcd_version = await self.store.etcd_version()
        return api_pb2.VersionResponse(version=moorage.__version__, etcd_version=etcd_version)


    # ---- join tokens ----

    @observed("CreateToken")
    @mapped
    async def CreateToken(self, request, context):
        await guard(context, "CreateToken", request, self.ca_cert)
        ttl = request.ttl_seconds or DEFAULT_TOKEN_TTL
        if ttl < 0 or ttl > MAX_TOKEN_TTL:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"token TTL must be between 1s and {MAX_TOKEN_TTL // 86400} days")
        token = await create_token(self.store, ttl, self.ca.ca_digest())
        info = next(t for t in await list_tokens(self.store) if t.id == token_id(token))
        return api_pb2.CreateTokenResponse(token=token, info=_token_info(info))

    @observed("ListTokens")
    @mapped
    async def ListTokens(self, request, context):
        await guard(context, "ListTokens", request, self.ca_cert)
        return api_pb2.ListTokensResponse(
            tokens=[_token_info(t) for t in await list_tokens(self.store)])

    @observed("RevokeToken")
    @mapped
    async def RevokeToken(self, request, context):
        await guard(context, "RevokeToken", request, self.ca_cert)
        try:
            tid = token_id(request.token) if request.token.upper().startswith("MOOR") \
                else request.token.strip().lower()
            revoked = await revoke_token(self.store, request.token)
        except TokenError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if not revoked:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'join token "{tid}" not found')
        return api_pb2.RevokeTokenResponse(revoked=True, id=tid)

    @observed("RotateSecretsKey")
    @mapped
    async def RotateSecretsKey(self, request, context):
        await guard(context, "RotateSecretsKey", request, self.ca_cert)
        sealer = self.store.sealer
        if sealer is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this control plane has no secrets key file")
        previous = sealer.key_ids()
        new_id = sealer.rotate()
        count = await sealing.reseal(self.store, self.store.range_prefix(SECRET))
        log.info("secrets key rotated to %s: %d Secrets sealed again", new_id, count)
        return api_pb2.RotateSecretsKeyResponse(
            key_id=new_id, resealed=count, key_file=sealer.path, previous_key_ids=previous)


DEFAULT_TOKEN_TTL = 24 * 3600
MAX_TOKEN_TTL = 365 * 86400


def _token_info(t) -> api_pb2.TokenInfo:
    return api_pb2.TokenInfo(id=t.id, created=t.created, expires=t.expires)
