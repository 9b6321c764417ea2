"""Bad manifests through the real API: each is rejected with a message naming the file, the
document and the field path, and etcd is left exactly as it was (same keys, values, revisions)."""

from __future__ import annotations

import textwrap

import grpc
import pytest

from moorage.v1 import api_pb2

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
        resources:
          requests: {cpu: 250m, memory: 64Mi}
          limits: {cpu: 500m, memory: 128Mi}
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
"""

C = "spec.template.spec.containers[0]"


def edit(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


CASES = [
    # (id, document(s), expected message)
    ("memory-not-quantity", edit(DEPLOY, "memory: 128Mi", "memory: 12XB"),
     f'web.yaml[0] {C}.resources.limits.memory: "12XB" is not a quantity'),
    ("cpu-not-quantity", edit(DEPLOY, "cpu: 500m", "cpu: half"),
     f'web.yaml[0] {C}.resources.limits.cpu: "half" is not a quantity'),
    ("cpu-too-fine", edit(DEPLOY, "cpu: 250m", "cpu: 0.0001"),
     f"web.yaml[0] {C}.resources.requests.cpu: \"0.0001\" is finer than 1m (one millicore)"),
    ("memory-negative", edit(DEPLOY, "memory: 64Mi", "memory: -64Mi"),
     f'web.yaml[0] {C}.resources.requests.memory: "-64Mi" must not be negative'),
    ("memory-fractional-bytes", edit(DEPLOY, "memory: 64Mi", "memory: 500m"),
     f'web.yaml[0] {C}.resources.requests.memory: "500m" is not a whole number of bytes'),
    ("request-over-limit", edit(DEPLOY, "cpu: 250m", "cpu: '2'"),
     f'web.yaml[0] {C}.resources.requests.cpu: "2" is more than the limit "500m"'),
    ("unknown-resource", edit(DEPLOY, "cpu: 500m,", "nvidia.com/gpu: 1, cpu: 500m,"),
     f'web.yaml[0] {C}.resources.limits["nvidia.com/gpu"]: unsupported resource'),
    ("unknown-field-typo", edit(DEPLOY, "replicas: 2", "replcas: 2"),
     'web.yaml[0] spec.replcas: unknown field (did you mean "replicas"?)'),
    ("unknown-top-level", DEPLOY + "extra: 1\n", "web.yaml[0] extra: unknown field"),
    ("duplicate-field", edit(DEPLOY, "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n"),
     "web.yaml[0] spec.replicas: duplicate field (line 8)"),
    ("duplicate-nested-field", edit(DEPLOY, "image: nginx:1.14.2", "image: nginx:1.14.2\n        image: nginx"),
     f"web.yaml[0] {C}.image: duplicate field"),
    ("unsupported-volume-type", edit(DEPLOY, "      containers:", "      volumes: [{name: data, nfs: {server: files, path: /}}]\n      containers:"),
     "web.yaml[0] spec.template.spec.volumes[0].nfs: not supported by Moorage (a valid Kubernetes field)"),
    ("volume-mount-of-no-volume", edit(DEPLOY, "        ports:", "        volumeMounts: [{name: data, mountPath: /data}]\n        ports:"),
     f'web.yaml[0] {C}.volumeMounts[0].name: "data": no volume of this pod has this name'),
    ("unsupported-host-network", edit(DEPLOY, "      containers:", "      hostNetwork: true\n      containers:"),
     "web.yaml[0] spec.template.spec.hostNetwork: not supported by Moorage"),
    ("unsupported-service-type", edit(SERVICE, "spec:", "spec:\n  type: LoadBalancer"),
     'web.yaml[0] spec.type: "LoadBalancer" is not supported by Moorage (use ClusterIP or NodePort)'),
    ("bad-name-uppercase", edit(DEPLOY, "name: web", "name: Web"),
     'web.yaml[0] metadata.name: "Web" is not a valid DNS subdomain'),
    ("bad-name-underscore", edit(SERVICE, "name: web", "name: my_svc"),
     'web.yaml[0] metadata.name: "my_svc" is not a valid name'),
    ("missing-name", edit(SERVICE, "metadata: {name: web}", "metadata: {}"),
     "web.yaml[0] metadata.name: is required"),
    ("bad-namespace", edit(SERVICE, "metadata: {name: web}", "metadata: {name: web, namespace: Prod}"),
     'web.yaml[0] metadata.namespace: "Prod" is not a valid name'),
    ("missing-namespace", edit(SERVICE, "metadata: {name: web}", "metadata: {name: web, namespace: nowhere}"),
     'web.yaml[0] metadata.namespace: namespace "nowhere" not found'),
    ("bad-label-key", edit(DEPLOY, "labels: {app: web}\nspec", "labels: {-app: web}\nspec"),
     'web.yaml[0] metadata.labels["-app"]: label key "-app" is invalid'),
    ("bad-label-value", edit(DEPLOY, "labels: {app: web}\nspec", "labels: {app: 'a b'}\nspec"),
     'web.yaml[0] metadata.labels.app: label value "a b"'),
    ("label-value-not-string", edit(DEPLOY, "labels: {app: web}\nspec", "labels: {app: web, v: 1}\nspec"),
     'web.yaml[0] metadata.labels.v: expected a string, got 1 (quote it: "1")'),
    ("replicas-negative", edit(DEPLOY, "replicas: 2", "replicas: -1"),
     "web.yaml[0] spec.replicas: -1 is not in 0-10000"),
    ("replicas-string", edit(DEPLOY, "replicas: 2", "replicas: two"),
     'web.yaml[0] spec.replicas: expected an integer, got "two"'),
    ("replicas-huge", edit(DEPLOY, "replicas: 2", "replicas: 99999999999"),
     "web.yaml[0] spec.replicas: 99999999999 is out of range"),
    ("selector-mismatch", edit(DEPLOY, "matchLabels: {app: web}", "matchLabels: {app: api}"),
     'web.yaml[0] spec.template.metadata.labels: "app=web" do not match spec.selector "app=api"'),
    ("selector-missing", edit(DEPLOY, "  selector:\n    matchLabels: {app: web}\n", ""),
     "web.yaml[0] spec.selector: is required"),
    ("container-port-zero", edit(DEPLOY, "containerPort: 80", "containerPort: 0"),
     f"web.yaml[0] {C}.ports[0].containerPort: is required"),
    ("container-port-too-big", edit(DEPLOY, "containerPort: 80", "containerPort: 70000"),
     f"web.yaml[0] {C}.ports[0].containerPort: 70000 is not a valid port (1-65535)"),
    ("container-port-string", edit(DEPLOY, "containerPort: 80", "containerPort: '80'"),
     f'web.yaml[0] {C}.ports[0].containerPort: expected an integer, got "80"'),
    ("bad-protocol", edit(DEPLOY, "containerPort: 80", "containerPort: 80\n          protocol: SCTP"),
     f'web.yaml[0] {C}.ports[0].protocol: "SCTP" is not one of TCP, UDP'),
    ("service-port-missing", edit(SERVICE, "  - port: 80\n", "  - name: http\n"),
     "web.yaml[0] spec.ports[0].port: is required"),
    ("node-port-out-of-range", edit(SERVICE, "spec:", "spec:\n  type: NodePort").replace("targetPort: 80", "targetPort: 80\n    nodePort: 8080"),
     "web.yaml[0] spec.ports[0].nodePort: 8080 is not in the node port range 30000-32767"),
    ("node-port-on-clusterip", edit(SERVICE, "targetPort: 80", "targetPort: 80\n    nodePort: 30080"),
     'web.yaml[0] spec.ports[0].nodePort: may only be set when type is "NodePort"'),
    ("target-port-bad-name", edit(SERVICE, "targetPort: 80", "targetPort: Not_A_Name"),
     'web.yaml[0] spec.ports[0].targetPort: "Not_A_Name"'),
    ("image-uppercase", edit(DEPLOY, "image: nginx:1.14.2", "image: Nginx:latest"),
     f'web.yaml[0] {C}.image: "Nginx:latest" is not a valid image reference'),
    ("image-empty-tag", edit(DEPLOY, "image: nginx:1.14.2", "image: 'nginx:'"),
     f'web.yaml[0] {C}.image: "nginx:" is not a valid image reference'),
    ("image-missing", edit(DEPLOY, "        image: nginx:1.14.2\n", ""),
     f"web.yaml[0] {C}.image: is required"),
    ("no-containers", edit(DEPLOY, "      containers:", "      containers: []\n      x-containers:"),
     "web.yaml[0] spec.template.spec.x-containers: unknown field"),
    ("empty-containers", DEPLOY.split("      containers:")[0] + "      containers: []\n",
     "web.yaml[0] spec.template.spec.containers: at least one container is required"),
    ("restart-policy-never-in-deployment", edit(DEPLOY, "      containers:", "      restartPolicy: Never\n      containers:"),
     'web.yaml[0] spec.template.spec.restartPolicy: "Never": a Deployment\'s pods must use "Always"'),
    ("unknown-kind", edit(SERVICE, "kind: Service", "kind: Ingress"),
     'web.yaml[0] kind: "Ingress" is not a kind Moorage serves'),
    ("wrong-api-version", edit(DEPLOY, "apiVersion: apps/v1", "apiVersion: extensions/v1beta1"),
     'web.yaml[0] apiVersion: "extensions/v1beta1" is not served for Deployment; use "apps/v1"'),
    ("missing-kind", edit(SERVICE, "kind: Service\n", ""), "web.yaml[0] kind: is required"),
    ("not-a-mapping", "- just\n- a list\n",
     "web.yaml[0]: expected an object with apiVersion and kind, got a list"),
    ("invalid-yaml", "apiVersion: v1\nkind: [unclosed\n", "web.yaml[0]: not valid YAML at line"),
    ("max-surge-bad", edit(DEPLOY, "  replicas: 2\n", "  replicas: 2\n  strategy:\n    rollingUpdate: {maxSurge: lots}\n"),
     'web.yaml[0] spec.strategy.rollingUpdate.maxSurge: "lots" is not an integer or a percentage'),
    ("surge-and-unavailable-zero", edit(DEPLOY, "  replicas: 2\n", "  replicas: 2\n  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 0}\n"),
     "web.yaml[0] spec.strategy.rollingUpdate: maxSurge and maxUnavailable must not both be 0"),
    ("bad-toleration-effect", edit(DEPLOY, "      containers:", "      tolerations: [{key: a, operator: Exists, effect: Sometimes}]\n      containers:"),
     'web.yaml[0] spec.template.spec.tolerations[0].effect: "Sometimes" is not one of NoSchedule'),
    ("duplicate-container-name", edit(DEPLOY, "      - name: nginx\n", "      - name: nginx\n        image: busybox\n      - name: nginx\n"),
     'web.yaml[0] spec.template.spec.containers[1].name: duplicate container name "nginx"'),
    ("env-value-number", edit(DEPLOY, "        ports:", "        env: [{name: PORT, value: 8080}]\n        ports:"),
     f'web.yaml[0] {C}.env[0].value: expected a string, got 8080 (quote it: "8080")'),
    ("probe-without-handler", edit(DEPLOY, "        ports:", "        livenessProbe: {periodSeconds: 5}\n        ports:"),
     f"web.yaml[0] {C}.livenessProbe: needs exactly one of httpGet, tcpSocket or exec"),
    ("namespace-on-node", "apiVersion: v1\nkind: Node\nmetadata: {name: n1, namespace: default}\n",
     "web.yaml[0] metadata.namespace: Node is not namespaced; remove the namespace"),
    ("second-document-bad", DEPLOY + "---\n" + edit(SERVICE, "port: 80", "port: -80"),
     "web.yaml[1] spec.ports[0].port: -80 is not a valid port (1-65535)"),
    ("same-object-twice", DEPLOY + "---\n" + DEPLOY,
     'web.yaml[1] metadata.name: deployment "web" is also defined in web.yaml[0]'),
    ("list-item-bad", "apiVersion: v1\nkind: List\nitems:\n- " + textwrap.indent(
        edit(SERVICE, "port: 80", "port: 0"), "  ").lstrip(),
     "web.yaml[0] items[0].spec.ports[0].port: is required"),
    ("stale-resource-version", edit(SERVICE, "metadata: {name: web}", "metadata: {name: web, resourceVersion: '1'}"),
     'does not exist, but the manifest expects resourceVersion 1'),
]


def apply(stub, text: str, source: str = "web.yaml", dry_run: bool = False):
    return stub.Apply(api_pb2.ApplyRequest(
        manifests=[api_pb2.Manifest(source=source, content=text)], dry_run=dry_run))


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("text, message", [pytest.param(t, m, id=i) for i, t, m in CASES])
def test_bad_manifest_is_rejected_and_changes_nothing(controlplane, text, message):
    stub = controlplane.stub()
    # Something valid rides along, so "nothing written" is a real claim about all-or-nothing.
    good = "apiVersion: v1\nkind: Namespace\nmetadata: {name: untouched}\n"
    before = controlplane.snapshot()
    with pytest.raises(grpc.RpcError) as err:
        stub.Apply(api_pb2.ApplyRequest(manifests=[
            api_pb2.Manifest(source="ok.yaml", content=good),
            api_pb2.Manifest(source="web.yaml", content=text)]))
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED)
    details = err.value.details()
    assert message in details, details
    for line in details.splitlines():
        assert line.startswith("web.yaml[") or err.value.code() == grpc.StatusCode.ABORTED, line
    assert controlplane.snapshot() == before


def test_oversized_apply_gets_a_clear_error_and_changes_nothing(controlplane):
    stub = controlplane.stub()
    before = controlplane.snapshot()
    big = DEPLOY + "# " + "x" * (4 * 1024 * 1024) + "\n"
    with pytest.raises(grpc.RpcError) as err:
        apply(stub, big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the 3 MiB limit of one apply" in err.value.details()
    assert controlplane.snapshot() == before
