"""The pure storage decisions: what a pod's claims ask of the scheduler, the volume filter's
per-node reasons through the batch engine, and the volume controller's writes."""

from __future__ import annotations

from controlplane.controllers.volumes import WAITING, decide
from controlplane.scheduler import place, schedule_batch
from controlplane.scheduler.filters import volumes_fit
from controlplane.scheduler.model import NodeInfo, PodInfo, Resources, VolumeNeeds
from controlplane.scheduler.volumes import needs
from moorage.model import storage
from moorage.v1 import objects_pb2 as pb

GI = 2**30
CLASSES = {"local": storage.default_class()}


def claim(name: str = "data", size: str = "1Gi", mode: str = "ReadWriteOnce",
          uid: str = "") -> pb.PersistentVolumeClaim:
    c = pb.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
    c.metadata.name, c.metadata.namespace, c.metadata.uid = name, "ns", uid or f"uid-{name}"
    c.metadata.resource_version = "5"
    c.metadata.finalizers.append(storage.PVC_PROTECTION)
    c.spec.access_modes.append(mode)
    c.spec.resources.requests["storage"] = size
    c.spec.storage_class_name = "local"
    c.status.phase = "Pending"
    return c


def pod(name: str, *claims: str, host_path: str = "") -> pb.Pod:
    p = pb.Pod()
    p.metadata.name, p.metadata.namespace = name, "ns"
    p.spec.containers.add(name="c", image="busybox")
    for i, c in enumerate(claims):
        p.spec.volumes.add(name=f"v{i}").persistent_volume_claim.claim_name = c
    if host_path:
        p.spec.volumes.add(name="h").host_path.path = host_path
    return p


def bound(c: pb.PersistentVolumeClaim, node: str):
    pv = storage.new_volume(c, CLASSES["local"], node, "2024-01-01T00:00:00Z")
    pv.metadata.resource_version = "6"
    return storage.bind_claim(c, pv, "local"), pv


def node(name: str, free: int = 10 * GI, allowed=()) -> NodeInfo:
    return NodeInfo(name, allocatable=Resources(4000, 8 * GI, 110), local_storage_free=free,
                    allowed_host_paths=tuple(allowed))


def test_needs_from_claims():
    data = claim()
    assert needs(pod("p"), {}, {}, CLASSES) is None
    n = needs(pod("p", "data"), {"ns/data": data}, {}, CLASSES)
    assert (n.new_bytes, n.unbound, n.pinned) == (GI, ("ns/data",), ())
    b, pv = bound(data, "node-1")
    n = needs(pod("p", "data"), {"ns/data": b}, {pv.metadata.name: pv}, CLASSES)
    assert (n.new_bytes, n.pinned) == (0, (("data", "node-1"),))
    assert needs(pod("p", "nope"), {}, {}, CLASSES).blocked[1] == \
        'persistentvolumeclaim "nope" not found'
    fast = claim()
    fast.spec.storage_class_name = "fast"
    assert needs(pod("p", "data"), {"ns/data": fast}, {}, CLASSES).blocked[1] == \
        'storageclass.storage.k8s.io "fast" not found'
    solo = claim("solo", mode="ReadWriteOncePod")
    n = needs(pod("b", "solo"), {"ns/solo": solo}, {}, CLASSES, lambda key: ["ns/a"])
    assert n.blocked[1] == "claim solo is ReadWriteOncePod and used by pod a"
    gone = claim()
    gone.metadata.deletion_timestamp = "2024-01-01T00:00:00Z"
    assert "is being deleted" in needs(pod("p", "data"), {"ns/data": gone}, {},
                                       CLASSES).blocked[1]


def test_filter_reasons_per_node():
    pinned = PodInfo("ns", "p", volumes=VolumeNeeds(pinned=(("data-db-0", "node-1"),)))
    assert volumes_fit(pinned, node("node-1")) is None
    assert volumes_fit(pinned, node("node-2")).detail == "volume data-db-0 is on node-1"
    hungry = PodInfo("ns", "p", volumes=VolumeNeeds(new_bytes=20 * GI, unbound=("ns/x",)))
    assert volumes_fit(hungry, node("node-1", 5 * GI)).detail == \
        "needs 20Gi local storage, 5Gi free"
    hosty = PodInfo("ns", "p", volumes=VolumeNeeds(host_paths=("/x",)))
    assert volumes_fit(hosty, node("node-1", allowed=["/srv"])).detail == \
        "hostPath /x is not allowed here (allowed: /srv)"
    assert volumes_fit(PodInfo("ns", "p", volumes=VolumeNeeds(host_paths=("/srv/a",))),
                       node("node-1", allowed=["/srv"])) is None


def test_engine_places_pinned_pods_on_their_node_and_explains():
    nodes = [node("node-1", 5 * GI), node("node-2", 50 * GI), node("node-3", 50 * GI)]
    pinned = PodInfo("ns", "p", volumes=VolumeNeeds(pinned=(("data", "node-1"),)))
    assert place(pinned, nodes).node == "node-1"
    big = PodInfo("ns", "q", volumes=VolumeNeeds(new_bytes=20 * GI, unbound=("ns/x",)))
    result = schedule_batch([big], nodes)
    assert result.decisions[0].node in ("node-2", "node-3")
    huge = PodInfo("ns", "r", volumes=VolumeNeeds(new_bytes=100 * GI, unbound=("ns/y",)))
    verdict = place(huge, nodes)
    assert dict(verdict.details) == {"node-1": "needs 100Gi local storage, 5Gi free",
                                     "node-2": "needs 100Gi local storage, 50Gi free",
                                     "node-3": "needs 100Gi local storage, 50Gi free"}
    assert verdict.message == "0/3 nodes available: 3 node(s) did not have enough free storage."
    # Pods without volumes are untouched by it.
    assert place(PodInfo("ns", "s"), [node("node-1", 0)]).node == "node-1"


def test_controller_protects_releases_and_announces():
    data = claim()
    data.metadata.ClearField("finalizers")
    [w] = decide({"ns/data": data}, {}, CLASSES, {})
    assert list(w.puts[0][0].metadata.finalizers) == [storage.PVC_PROTECTION]
    [w] = decide({"ns/data": claim()}, {}, CLASSES, {})
    assert w.events[0][2:] == ("WaitForFirstConsumer", WAITING)
    assert decide({"ns/data": claim()}, {}, CLASSES, {}, {"uid-data"}) == []

    b, pv = bound(claim(), "node-1")
    b.metadata.deletion_timestamp = "2024-01-01T00:00:00Z"
    volumes = {pv.metadata.name: pv}
    assert decide({"ns/data": b}, volumes, CLASSES, {"ns/data": {"ns/p"}}) == []
    [w] = decide({"ns/data": b}, volumes, CLASSES, {})
    (gone, _, delete), (released, _, _) = w.puts
    assert delete and not gone.metadata.finalizers
    assert released.status.phase == "Released"
    assert w.events[0][2] == "VolumeReleased"

    retained = pb.PersistentVolume()
    retained.CopyFrom(pv)
    retained.spec.persistent_volume_reclaim_policy = "Retain"
    [w] = decide({"ns/data": b}, {pv.metadata.name: retained}, CLASSES, {})
    assert w.puts[1][0].status.phase == "Released" and w.events[0][2] == "VolumeRetained"

    # Bound volume whose claim vanished (a namespace deleted): Released, if still absent.
    [w] = decide({}, volumes, CLASSES, {})
    assert w.puts[0][0].status.phase == "Released" and w.absent[0][2] == "data"


def test_controller_grows_and_loses():
    b, pv = bound(claim(), "node-1")
    grown = pb.PersistentVolumeClaim()
    grown.CopyFrom(b)
    grown.spec.resources.requests["storage"] = "3Gi"
    [w] = decide({"ns/data": grown}, {pv.metadata.name: pv}, CLASSES, {})
    (new_pv, _, _), (new_claim, _, _) = w.puts
    assert new_pv.spec.capacity["storage"] == "3Gi"
    assert new_claim.status.capacity["storage"] == "3Gi"
    assert w.events[0][2] == "VolumeResizeSuccessful"
    [w] = decide({"ns/data": b}, {}, CLASSES, {})
    assert w.puts[0][0].status.phase == "Lost" and w.events[0][2] == "ClaimLost"
    assert w.absent == [(w.absent[0][0], "", pv.metadata.name)]
