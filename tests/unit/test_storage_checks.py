"""PersistentVolumeClaims, PersistentVolumes and StorageClasses: the manifest checks, the
defaults and the update rules, all pure."""

from __future__ import annotations

import pytest

from moorage.manifest import ManifestError, parse
from moorage.manifest.storagechecks import claim_update, class_update
from moorage.model import storage


def errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as err:
        parse([("f.yaml", text)])
    return err.value.problems


def objects(text: str) -> list:
    return [d.obj for d in parse([("f.yaml", text)])]


def claim(extra: str = "", modes: str = "[ReadWriteOnce]", size: str = "1Gi") -> str:
    return f"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: {modes}
  resources: {{requests: {{storage: {size}}}}}
{extra}"""


def test_claim_defaults_finalizer_and_mode():
    [c] = objects(claim())
    assert list(c.metadata.finalizers) == [storage.PVC_PROTECTION]
    assert c.spec.volume_mode == "Filesystem"
    assert not c.spec.HasField("storage_class_name")   # the control plane writes the default


def test_claim_accepts_numbers_as_quantities():
    [c] = objects(claim(size="1073741824"))
    assert storage.requested_bytes(c) == 2**30


@pytest.mark.parametrize("mode", ["ReadWriteMany", "ReadOnlyMany"])
def test_shared_access_modes_are_refused(mode):
    [line] = errors(claim(modes=f"[{mode}]"))
    assert line.startswith(f'f.yaml[0] spec.accessModes[0]: "{mode}": local volumes')
    assert "cannot be shared across nodes" in line


def test_claim_problems_name_their_fields():
    out = errors("""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [Sometimes]
  resources: {requests: {storage: 12XB}}
  storageClassName: Not_A_Name
""")
    assert any(p.startswith('f.yaml[0] spec.accessModes[0]: "Sometimes" is not one of') for p in out)
    assert any('spec.resources.requests.storage: "12XB" is not a quantity' in p for p in out)
    assert any(p.startswith("f.yaml[0] spec.storageClassName:") for p in out)


def test_claim_needs_modes_and_storage():
    out = errors("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: d}\nspec: {}\n")
    assert "f.yaml[0] spec.accessModes: at least 1 access mode is required" in out
    assert 'f.yaml[0] spec.resources.requests.storage: is required' in out


def test_rwop_alone_and_zero_size():
    out = errors(claim(modes="[ReadWriteOnce, ReadWriteOncePod]", size="0"))
    assert "f.yaml[0] spec.accessModes: may not use ReadWriteOncePod with other access modes" \
        in out
    assert 'f.yaml[0] spec.resources.requests.storage: must be greater than zero' in out


def test_claim_selector_is_named_unsupported():
    [line] = errors(claim("  selector: {matchLabels: {a: b}}"))
    assert "spec.selector" in line


def test_storage_class_defaults_and_checks():
    [sc] = objects("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast}\n"
                   "provisioner: moorage.io/local\n")
    assert sc.reclaim_policy == "Delete"
    assert sc.volume_binding_mode == "WaitForFirstConsumer"
    out = errors("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: f}\n"
                 "provisioner: ebs.csi.aws.com\nreclaimPolicy: Recycle\n"
                 "volumeBindingMode: Immediate\n")
    assert any(p.startswith('f.yaml[0] provisioner: "ebs.csi.aws.com" is not supported')
               for p in out)
    assert any(p.startswith('f.yaml[0] reclaimPolicy: "Recycle" is not one of') for p in out)
    assert any(p.startswith('f.yaml[0] volumeBindingMode: "Immediate" is not supported')
               for p in out)


def test_storage_class_is_cluster_scoped():
    [line] = errors("apiVersion: storage.k8s.io/v1\nkind: StorageClass\n"
                    "metadata: {name: f, namespace: x}\nprovisioner: moorage.io/local\n")
    assert "metadata.namespace: StorageClass is not namespaced" in line


def test_persistent_volume_checks():
    out = errors("apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: v}\n"
                 "spec: {accessModes: [ReadWriteMany], capacity: {storage: 1Gi}}\n")
    assert any("spec.accessModes[0]" in p and "cannot be shared" in p for p in out)
    assert any(p.startswith("f.yaml[0] spec.local.path: is required") for p in out)
    assert any("spec.nodeAffinity.required.nodeSelectorTerms" in p for p in out)


def test_pod_claim_volume():
    pod = """apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: busybox, volumeMounts: [{name: d, mountPath: /data}]}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: %s}}]
"""
    [p] = objects(pod % "data")
    assert storage.claim_names(p.spec) == ["data"]
    [line] = errors(pod % "Bad_Name")
    assert line.startswith("f.yaml[0] spec.volumes[0].persistentVolumeClaim.claimName:")


def _bound(size: str):
    [c] = objects(claim(size=size))
    c.spec.storage_class_name = "local"
    c.status.phase = "Bound"
    return c


def test_claim_update_rules():
    sc = storage.default_class()
    current = _bound("1Gi")
    grown = _bound("2Gi")
    assert claim_update(grown, current, sc) is None
    shrunk = _bound("512Mi")
    err = claim_update(shrunk, current, sc)
    assert (err.path, err.message) == ('spec.resources.requests.storage',
                                       "field can not be less than previous value")
    fixed = storage.default_class()
    fixed.allow_volume_expansion = False
    err = claim_update(grown, current, fixed)
    assert "must support resize" in err.message
    other = _bound("1Gi")
    other.spec.access_modes[0] = "ReadWriteOncePod"
    err = claim_update(other, current, sc)
    assert (err.path, err.message) == (
        "spec", "spec is immutable after creation except resources.requests for bound claims")
    pending = _bound("1Gi")
    pending.status.phase = "Pending"
    assert claim_update(grown, pending, sc).path == "spec"


def test_class_update_rules():
    sc = storage.default_class()
    changed = storage.default_class()
    changed.reclaim_policy = "Retain"
    assert class_update(changed, sc).path == "reclaimPolicy"
    changed = storage.default_class()
    changed.allow_volume_expansion = False
    assert class_update(changed, sc) is None


def test_path_allowed():
    assert storage.path_allowed("/srv/data", ["/srv"])
    assert storage.path_allowed("/srv", ["/srv/"])
    assert not storage.path_allowed("/srvx", ["/srv"])
    assert not storage.path_allowed("/srv/../etc", ["/srv"])
    assert not storage.path_allowed("/etc", [])
    assert not storage.path_allowed("/etc", ["/"])


def test_node_status_may_carry_its_local_storage():
    # What `moor get node -o yaml` shows must apply again (drain and cordon do just that).
    text = """apiVersion: v1
kind: Node
metadata: {name: node-1}
status:
  capacity: {cpu: "2", memory: 4Gi, moorage.io/local-storage: 50Gi}
  allocatable: {moorage.io/local-storage: 40Gi}
"""
    (node,) = objects(text)
    assert node.status.capacity[storage.LOCAL_STORAGE] == "50Gi"
    (problem,) = errors(text.replace("40Gi", "lots"))
    assert 'status.allocatable["moorage.io/local-storage"]' in problem, problem
