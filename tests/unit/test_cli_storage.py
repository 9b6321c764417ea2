"""`moor get pvc|pv|sc` and `moor describe` for them: kubectl's columns (and Moorage's USED)."""

from __future__ import annotations

from datetime import UTC, datetime

from moorage.cli import describe, printers
from moorage.model import kinds, storage
from moorage.v1 import objects_pb2 as pb

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2024-05-01T11:55:00Z"


def bound_claim() -> tuple[pb.PersistentVolumeClaim, pb.PersistentVolume]:
    c = pb.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
    c.metadata.name, c.metadata.namespace, c.metadata.uid = "data", "db", "u1"
    c.metadata.creation_timestamp = CREATED
    c.spec.access_modes.append("ReadWriteOnce")
    c.spec.resources.requests["storage"] = "1Gi"
    c.spec.storage_class_name = "local"
    pv = storage.new_volume(c, storage.default_class(), "node-1", CREATED)
    bound = storage.bind_claim(c, pv, "local")
    bound.status.used_bytes = 3 * 2**20 + 2**19
    return bound, pv


def table(kind_name: str, obj, wide: bool = False) -> list[str]:
    kind = kinds.BY_NAME[kind_name]
    return printers.render_table([printers.table_header(kind, wide),
                                  printers.table_row(obj, kind, wide, now=NOW)])


def test_get_pvc_columns():
    claim, pv = bound_claim()
    header, row = table("PersistentVolumeClaim", claim)
    assert header.split() == ["NAME", "STATUS", "VOLUME", "CAPACITY", "USED", "ACCESS",
                              "MODES", "STORAGECLASS", "AGE"]
    assert row.split() == ["data", "Bound", "pvc-u1", "1Gi", "3.5Mi", "RWO", "local", "5m"]
    pending = pb.PersistentVolumeClaim()
    pending.CopyFrom(claim)
    pending.ClearField("status")
    pending.spec.volume_name = ""
    pending.status.phase = "Pending"
    _, row = table("PersistentVolumeClaim", pending)
    assert row.split() == ["data", "Pending", "local", "5m"]


def test_get_pv_and_sc_columns():
    claim, pv = bound_claim()
    pv.metadata.creation_timestamp = CREATED
    header, row = table("PersistentVolume", pv)
    assert header.split() == ["NAME", "CAPACITY", "ACCESS", "MODES", "RECLAIM", "POLICY",
                              "STATUS", "CLAIM", "STORAGECLASS", "REASON", "AGE"]
    assert row.split() == ["pvc-u1", "1Gi", "RWO", "Delete", "Bound", "db/data", "local", "5m"]
    sc = storage.default_class()
    sc.metadata.creation_timestamp = CREATED
    header, row = table("StorageClass", sc)
    assert header.split() == ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE",
                              "ALLOWVOLUMEEXPANSION", "AGE"]
    assert row.split() == ["local", "(default)", "moorage.io/local", "Delete",
                           "WaitForFirstConsumer", "true", "5m"]


def test_human_size():
    assert [printers.human_size(n) for n in (0, 512, 4096, 3 * 2**29, 2**40)] == \
        ["0", "512", "4Ki", "1.5Gi", "1Ti"]


def squeezed(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def test_describe_claim_and_volume():
    claim, pv = bound_claim()
    claim.metadata.finalizers.append(storage.PVC_PROTECTION)
    lines = squeezed(describe.describe(claim, [], now=NOW))
    for line in ("StorageClass: local", "Status: Bound", "Volume: pvc-u1",
                 "Finalizers: [kubernetes.io/pvc-protection]", "Capacity: 1Gi",
                 "Used: 3.5Mi", "Access Modes: RWO", "Node: node-1"):
        assert line in lines, lines
    lines = squeezed(describe.describe(pv, [], now=NOW))
    for line in ("Claim: db/data", "Term 0: kubernetes.io/hostname in [node-1]",
                 "Reclaim Policy: Delete", "Status: Bound"):
        assert line in lines, lines
    lines = squeezed(describe.describe(storage.default_class(), [], now=NOW))
    assert "IsDefaultClass: Yes" in lines and "VolumeBindingMode: WaitForFirstConsumer" in lines
