"""StatefulSet manifests: defaults, one-line errors with field paths, and which updates
Kubernetes (and Moorage, for growing claims) allows."""

from __future__ import annotations

import pytest

from moorage.manifest import ManifestError, parse
from moorage.manifest.statefulsetchecks import FORBIDDEN_UPDATE, update_problem

BASE = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: busybox:1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"""


def one(text: str):
    return parse([("f.yaml", text)])[0].obj


def errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        parse([("f.yaml", text)])
    return exc.value.problems


def test_a_valid_set_gets_kubernetes_defaults():
    s = one(BASE)
    assert s.spec.pod_management_policy == "OrderedReady"
    assert s.spec.update_strategy.type == "RollingUpdate"
    assert s.spec.update_strategy.rolling_update.partition == 0
    assert s.spec.revision_history_limit == 10
    policy = s.spec.persistent_volume_claim_retention_policy
    assert (policy.when_deleted, policy.when_scaled) == ("Retain", "Retain")
    assert s.spec.volume_claim_templates[0].spec.volume_mode == "Filesystem"
    assert s.spec.template.spec.restart_policy == "Always"


@pytest.mark.parametrize("old, new, want", [
    pytest.param("  serviceName: db\n", "", "spec.serviceName: is required", id="no-service"),
    pytest.param("  selector: {matchLabels: {app: db}}", "  selector: {matchLabels: {app: x}}",
                 'spec.template.metadata.labels: "app=db" do not match spec.selector "app=x"',
                 id="selector"),
    pytest.param("  - metadata: {name: data}", "  - metadata: {name: Data}",
                 "spec.volumeClaimTemplates[0].metadata.name:", id="claim-name"),
    pytest.param("        volumeMounts: [{name: data, mountPath: /data}]",
                 "        volumeMounts: [{name: logs, mountPath: /data}]",
                 'spec.template.spec.containers[0].volumeMounts[0].name: "logs": no volume',
                 id="mount-of-no-volume"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  podManagementPolicy: Sometimes\n",
                 'spec.podManagementPolicy: "Sometimes" is not one of OrderedReady, Parallel',
                 id="policy"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  updateStrategy: {type: OnDelete, "
                 "rollingUpdate: {partition: 1}}\n",
                 "spec.updateStrategy.rollingUpdate: only allowed for updateStrategy "
                 "'RollingUpdate'", id="ondelete-with-rolling"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  updateStrategy: {rollingUpdate: "
                 "{partition: -1}}\n", "spec.updateStrategy.rollingUpdate.partition: must be "
                 "greater than or equal to 0", id="partition"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  updateStrategy: {rollingUpdate: "
                 "{maxUnavailable: 0}}\n", "spec.updateStrategy.rollingUpdate.maxUnavailable: "
                 "must be greater than 0", id="max-unavailable"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  persistentVolumeClaimRetentionPolicy: "
                 "{whenScaled: Keep}\n", 'spec.persistentVolumeClaimRetentionPolicy.whenScaled:'
                 ' "Keep" is not one of Retain, Delete', id="retention"),
    pytest.param("  replicas: 3\n", "  replicas: 3\n  ordinals: {start: -1}\n",
                 "spec.ordinals.start: must be greater than or equal to 0", id="ordinals"),
    pytest.param("      resources: {requests: {storage: 1Gi}}", "      resources: {}",
                 "spec.volumeClaimTemplates[0].spec.resources.requests.storage: is required",
                 id="no-storage"),
    pytest.param("      accessModes: [ReadWriteOnce]", "      accessModes: [ReadWriteMany]",
                 'spec.volumeClaimTemplates[0].spec.accessModes[0]: "ReadWriteMany" is not '
                 "one of", id="access-mode"),
])
def test_bad_sets_are_one_line_errors_with_field_paths(old, new, want):
    assert old in BASE
    problems = errors(BASE.replace(old, new))
    assert any(want in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_a_claim_template_may_not_share_a_pod_volume_name():
    text = BASE.replace("        volumeMounts: [{name: data, mountPath: /data}]\n",
                        "        volumeMounts: [{name: data, mountPath: /data}]\n"
                        "      volumes: [{name: data, configMap: {name: c}}]\n")
    assert any("spec.volumeClaimTemplates[0].metadata.name: \"data\": clashes with "
               "spec.template.spec.volumes[0]" in p for p in errors(text))


def test_restart_policy_names_the_statefulset():
    text = BASE.replace("      containers:", "      restartPolicy: Never\n      containers:")
    assert any("a StatefulSet's pods must use \"Always\"" in p for p in errors(text))


@pytest.mark.parametrize("old, new", [
    pytest.param("  replicas: 3", "  replicas: 5", id="replicas"),
    pytest.param("        image: busybox:1", "        image: busybox:2", id="template"),
    pytest.param("  replicas: 3", "  replicas: 3\n  updateStrategy: {type: OnDelete}",
                 id="strategy"),
    pytest.param("  replicas: 3", "  replicas: 3\n  minReadySeconds: 5", id="min-ready"),
    pytest.param("  replicas: 3", "  replicas: 3\n  ordinals: {start: 2}", id="ordinals"),
    pytest.param("  replicas: 3", "  replicas: 3\n  persistentVolumeClaimRetentionPolicy: "
                 "{whenScaled: Delete}", id="retention"),
    pytest.param("storage: 1Gi", "storage: 2Gi", id="storage-grows"),
])
def test_allowed_updates(old, new):
    assert update_problem(one(BASE.replace(old, new)), one(BASE)) is None


@pytest.mark.parametrize("old, new, want", [
    pytest.param("  serviceName: db", "  serviceName: other", ("spec", FORBIDDEN_UPDATE),
                 id="service-name"),
    pytest.param("  replicas: 3", "  replicas: 3\n  podManagementPolicy: Parallel",
                 ("spec", FORBIDDEN_UPDATE), id="policy"),
    pytest.param("{app: db}", "{app: db, x: y}", ("spec", FORBIDDEN_UPDATE), id="selector"),
    pytest.param("accessModes: [ReadWriteOnce]", "accessModes: [ReadWriteOncePod]",
                 ("spec", FORBIDDEN_UPDATE), id="claim-access"),
    pytest.param("storage: 1Gi", "storage: 512Mi",
                 ("spec.volumeClaimTemplates[0].spec.resources.requests.storage",
                  'Forbidden: may only grow ("512Mi" is less than "1Gi")'), id="storage-shrinks"),
])
def test_forbidden_updates(old, new, want):
    assert update_problem(one(BASE.replace(old, new)), one(BASE)) == want


def test_forbidden_message_is_kubernetes():
    assert FORBIDDEN_UPDATE == (
        "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
        "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
        "'minReadySeconds' are forbidden")
