"""Compose files to Deployments and Services: every supported key, and every error."""

from __future__ import annotations

import textwrap

import pytest

from moorage import manifest
from moorage.manifest import compose
from moorage.manifest.compose import ComposeError, translate

STACK = "moortest-shop"


def objects(text: str, env=None) -> dict[tuple[str, str], dict]:
    t = translate(textwrap.dedent(text), STACK, env=env or {})
    return {(o["kind"], o["metadata"]["name"]): o for o in t.objects}


def container(text: str, name: str = "web", env=None) -> dict:
    d = objects(text, env)[("Deployment", name)]
    return d["spec"]["template"]["spec"]["containers"][0]


def problems(text: str) -> list[str]:
    with pytest.raises(ComposeError) as err:
        translate(textwrap.dedent(text), STACK)
    return err.value.problems


def test_minimal_service_becomes_namespace_deployment_and_headless_service():
    got = objects("services: {web: {image: busybox}}")
    assert set(got) == {("Namespace", STACK), ("Deployment", "web"), ("Service", "web")}
    for obj in got.values():
        assert obj["metadata"]["labels"] == {compose.STACK_LABEL: STACK}
    d = got[("Deployment", "web")]
    assert d["metadata"]["namespace"] == STACK and d["spec"]["replicas"] == 1
    pod_labels = {compose.STACK_LABEL: STACK, compose.SERVICE_LABEL: "web"}
    assert d["spec"]["selector"]["matchLabels"] == pod_labels
    assert d["spec"]["template"]["metadata"]["labels"] == pod_labels
    assert d["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": "busybox"}]
    svc = got[("Service", "web")]["spec"]
    assert svc == {"selector": pod_labels, "clusterIP": "None", "type": "ClusterIP"}


def test_objects_pass_moorage_validation():
    text = textwrap.dedent("""\
        services:
          web:
            image: busybox
            command: httpd -f -p 80
            ports: ["30080:80"]
            deploy: {replicas: 2, resources: {limits: {cpus: "0.5", memory: 64M}}}
            healthcheck: {test: "wget -q -O- localhost", interval: 5s}
        """)
    import json
    docs = manifest.parse([(f"c#{i}", json.dumps(o))
                           for i, o in enumerate(translate(text, STACK).objects)])
    assert [type(d.obj).__name__ for d in docs] == ["Namespace", "Deployment", "Service"]


@pytest.mark.parametrize("yaml_, want", [
    pytest.param("command: httpd -f -p '8 0'", {"args": ["httpd", "-f", "-p", "8 0"]},
                 id="command-string"),
    pytest.param("command: [sh, -c, 'echo hi']", {"args": ["sh", "-c", "echo hi"]},
                 id="command-list"),
    pytest.param("entrypoint: [/bin/sh]", {"command": ["/bin/sh"]}, id="entrypoint"),
    pytest.param("working_dir: /srv", {"workingDir": "/srv"}, id="working-dir"),
    pytest.param("environment: [A=1, B=x=y, FROM_SHELL, UNSET]",
                 {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x=y"},
                          {"name": "FROM_SHELL", "value": "s"}]}, id="environment-list"),
    pytest.param("environment: {A: 1, B: true, FROM_SHELL: null}",
                 {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "true"},
                          {"name": "FROM_SHELL", "value": "s"}]}, id="environment-map"),
])
def test_container_fields(yaml_, want):
    c = container(f"services:\n  web:\n    image: busybox\n    {yaml_}\n",
                  env={"FROM_SHELL": "s"})
    assert {k: c[k] for k in want} == want


@pytest.mark.parametrize("ports, service_type, want", [
    pytest.param('["80"]', "ClusterIP", [("tcp-80", 80, None)], id="container-port"),
    pytest.param('["30080:80"]', "NodePort", [("tcp-80", 80, 30080)], id="published"),
    pytest.param('["53/udp"]', "ClusterIP", [("udp-53", 53, None)], id="udp"),
    pytest.param("[{target: 80, published: 30081, protocol: tcp, mode: ingress}]", "NodePort",
                 [("tcp-80", 80, 30081)], id="long-syntax"),
    pytest.param('[8080, "30090:9090"]', "NodePort",
                 [("tcp-8080", 8080, None), ("tcp-9090", 9090, 30090)], id="mixed"),
])
def test_ports_make_a_clusterip_or_nodeport_service(ports, service_type, want):
    got = objects(f"services:\n  web:\n    image: busybox\n    ports: {ports}\n")
    spec = got[("Service", "web")]["spec"]
    assert spec["type"] == service_type and "clusterIP" not in spec
    assert [(p["name"], p["port"], p.get("nodePort")) for p in spec["ports"]] == want
    assert all(p["targetPort"] == p["port"] for p in spec["ports"])
    c = got[("Deployment", "web")]["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in c["ports"]] == [w[1] for w in want]


def test_expose_adds_cluster_ports():
    spec = objects("services: {web: {image: b, expose: ['8080']}}")[("Service", "web")]["spec"]
    assert spec["type"] == "ClusterIP" and [p["port"] for p in spec["ports"]] == [8080]


def test_dnsrr_is_headless_with_ports():
    spec = objects("services: {web: {image: b, expose: [80], deploy: {endpoint_mode: dnsrr}}}"
                   )[("Service", "web")]["spec"]
    assert spec["clusterIP"] == "None" and spec["ports"][0]["port"] == 80


def test_deploy_replicas_resources_and_placement():
    d = objects("""\
        services:
          web:
            image: busybox
            deploy:
              mode: replicated
              replicas: 3
              resources:
                limits: {cpus: "1.5", memory: 512M}
                reservations: {cpus: 0.25, memory: 1g}
              placement:
                constraints: [node.labels.zone == a, "node.hostname==h2", node.labels.ssd != no]
        """)[("Deployment", "web")]
    assert d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "limits": {"cpu": "1500m", "memory": "512Mi"},
        "requests": {"cpu": "250m", "memory": "1Gi"}}
    assert pod["nodeSelector"] == {"zone": "a", compose.HOSTNAME_LABEL: "h2"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "ssd", "operator": "NotIn", "values": ["no"]}]}]}


@pytest.mark.parametrize("value, want", [
    ("512m", "512Mi"), ("2G", "2Gi"), ("64k", "64Ki"), ("1.5g", str(3 * 2**29)), (1024, "1024"),
    ("100b", "100"), ("1gb", "1Gi")])
def test_memory_quantity(value, want):
    assert compose.memory_quantity(value) == want


@pytest.mark.parametrize("value, want", [("1m30s", 90), ("500ms", 0.5), (5, 5), ("2h", 7200)])
def test_duration_seconds(value, want):
    assert compose.duration_seconds(value) == want


@pytest.mark.parametrize("test, argv", [
    pytest.param('["CMD", "wget", "-q", "localhost"]', ["wget", "-q", "localhost"], id="cmd"),
    pytest.param('["CMD-SHELL", "wget -q localhost || exit 1"]',
                 ["/bin/sh", "-c", "wget -q localhost || exit 1"], id="cmd-shell"),
    pytest.param('"true"', ["/bin/sh", "-c", "true"], id="string"),
])
def test_healthcheck_becomes_liveness_and_readiness(test, argv):
    c = container(f"""\
        services:
          web:
            image: busybox
            healthcheck: {{test: {test}, interval: 10s, timeout: 1500ms, retries: 4,
                           start_period: 1m}}
        """)
    assert c["livenessProbe"] == {"exec": {"command": argv}, "periodSeconds": 10,
                                  "timeoutSeconds": 2, "initialDelaySeconds": 60,
                                  "failureThreshold": 4}
    assert c["readinessProbe"] == {"exec": {"command": argv}, "periodSeconds": 10,
                                   "timeoutSeconds": 2, "failureThreshold": 1}


def test_healthcheck_defaults_are_dockers():
    probe = container("services: {web: {image: b, healthcheck: {test: 'true'}}}")["livenessProbe"]
    assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"],
            probe["initialDelaySeconds"]) == (30, 30, 3, 0)


@pytest.mark.parametrize("hc", ["{test: [NONE]}", "{disable: true}"])
def test_disabled_healthcheck_has_no_probes(hc):
    c = container(f"services: {{web: {{image: b, healthcheck: {hc}}}}}")
    assert "livenessProbe" not in c and "readinessProbe" not in c


def test_depends_on_is_accepted_with_a_note():
    for deps in ("[db]", "{db: {condition: service_started}}"):
        t = translate(f"services: {{web: {{image: b, depends_on: {deps}}}, db: {{image: b}}}}",
                      STACK)
        assert len(t.notes) == 1 and "services.web.depends_on" in t.notes[0]


def test_top_level_version_name_and_extensions_are_accepted():
    objects("version: '3.8'\nname: x\nx-common: {a: 1}\nservices: {web: {image: b, x-y: 1}}")


def test_default_stack_name_is_the_directory():
    assert compose.default_stack_name("/srv/My_App/compose.yaml") == "my-app"


@pytest.mark.parametrize("text, want", [
    pytest.param("services: {web: {image: b, cap_add: [NET_ADMIN]}}",
                 ["compose.yaml: services.web.cap_add: not supported by Moorage"],
                 id="cap-add"),
    pytest.param("services: {web: {build: .}}",
                 ["compose.yaml: services.web.image: required with build: the registry name "
                  "to push the build to and to run from (e.g. registry.cluster.local:5000/"
                  "web:1); every node pulls it from there"], id="build-without-image"),
    pytest.param("networks: {front: {}}\nservices: {web: {image: b}}",
                 ["compose.yaml: networks: not supported by Moorage"], id="top-level"),
    pytest.param("services: {web: {image: b, ports: ['8080:80']}}",
                 ["compose.yaml: services.web.ports[0]: published port 8080 is outside the "
                  "NodePort range 30000-32767"], id="published-out-of-range"),
    pytest.param("services: {web: {image: b, ports: ['127.0.0.1:30080:80']}}",
                 ["compose.yaml: services.web.ports[0]: '127.0.0.1:30080:80': a host IP is "
                  "not supported"], id="host-ip"),
    pytest.param("services: {web: {image: b, ports: ['30000-30002:80']}}",
                 ["compose.yaml: services.web.ports[0]: '30000-30002:80': port ranges"],
                 id="range"),
    pytest.param("services: {web: {image: b, ports: ['80/sctp']}}",
                 ["compose.yaml: services.web.ports[0]: protocol 'sctp'"], id="protocol"),
    pytest.param("services: {web: {image: b, ports: [{target: 80, mode: host}]}}",
                 ["compose.yaml: services.web.ports[0]: mode 'host'"], id="host-mode"),
    pytest.param("services: {web: {image: b, expose: [http]}}",
                 ["compose.yaml: services.web.expose[0]: 'http' is not a port"], id="expose"),
    pytest.param("services: {web: {image: b, deploy: {mode: global}}}",
                 ["compose.yaml: services.web.deploy.mode: 'global'"], id="global"),
    pytest.param("services: {web: {image: b, deploy: {replicas: -1}}}",
                 ["compose.yaml: services.web.deploy.replicas: -1"], id="replicas"),
    pytest.param("services: {web: {image: b, deploy: {update_config: {}}}}",
                 ["compose.yaml: services.web.deploy.update_config: not supported"],
                 id="deploy-key"),
    pytest.param("services: {web: {image: b, deploy: {resources: {limits: {pids: 5}}}}}",
                 ["compose.yaml: services.web.deploy.resources.limits.pids: not supported"],
                 id="pids"),
    pytest.param("services: {web: {image: b, deploy: {resources: {limits: {memory: lots}}}}}",
                 ["compose.yaml: services.web.deploy.resources.limits.memory: 'lots' is not a "
                  "byte value"], id="memory"),
    pytest.param("services: {web: {image: b, deploy: {resources: {limits: {cpus: x}}}}}",
                 ["compose.yaml: services.web.deploy.resources.limits.cpus: 'x' is not a "
                  "number"], id="cpus"),
    pytest.param("services: {web: {image: b, deploy: {placement: {constraints: "
                 "[node.role == manager]}}}}",
                 ["compose.yaml: services.web.deploy.placement.constraints[0]: "
                  "'node.role == manager': only node.labels"], id="constraint"),
    pytest.param("services: {web: {image: b, deploy: {placement: {preferences: []}}}}",
                 ["compose.yaml: services.web.deploy.placement.preferences: not supported"],
                 id="preferences"),
    pytest.param("services: {web: {image: b, healthcheck: {test: [CMD]}}}",
                 ["compose.yaml: services.web.healthcheck.test: want"], id="health-test"),
    pytest.param("services: {web: {image: b, healthcheck: {test: 'true', interval: soon}}}",
                 ["compose.yaml: services.web.healthcheck.interval: 'soon' is not a duration"],
                 id="health-interval"),
    pytest.param("services: {web: {image: b, healthcheck: {test: 'true', retries: 0}}}",
                 ["compose.yaml: services.web.healthcheck.retries: 0"], id="health-retries"),
    pytest.param("services: {web: {image: b, healthcheck: {test: 'true', start_interval: 1s}}}",
                 ["compose.yaml: services.web.healthcheck.start_interval: not supported"],
                 id="health-key"),
    pytest.param("services: {web: {image: b, depends_on: [db]}}",
                 ["compose.yaml: services.web.depends_on: no service named 'db'"],
                 id="depends-on-unknown"),
    pytest.param("services: {Web_1: {image: b}}",
                 ["compose.yaml: services.Web_1: service name 'Web_1' must be lowercase"],
                 id="service-name"),
    pytest.param("services: {web: {image: b, command: {a: 1}}}",
                 ["compose.yaml: services.web.command: want a string or a list"],
                 id="command-type"),
    pytest.param("services: {web: {image: b, environment: 5}}",
                 ["compose.yaml: services.web.environment: want a list"], id="env-type"),
    pytest.param("services: {web: {image: b, deploy: {endpoint_mode: x}}}",
                 ["compose.yaml: services.web.deploy.endpoint_mode: 'x'"], id="endpoint-mode"),
    pytest.param("services: {web: {image: b, ports: ['30080:80'], deploy: "
                 "{endpoint_mode: dnsrr}}}",
                 ["compose.yaml: services.web.ports: published ports need endpoint_mode vip"],
                 id="dnsrr-published"),
    pytest.param("services: {}", ["compose.yaml: services: a Compose file needs at least one"],
                 id="no-services"),
    pytest.param("services: [", ["compose.yaml: not valid YAML"], id="bad-yaml"),
])
def test_errors_name_the_key(text, want):
    got = problems(text)
    assert len(got) == len(want), got
    for line, prefix in zip(got, want):
        assert line.startswith(prefix), line
        assert "\n" not in line


def test_every_problem_is_reported_at_once():
    got = problems("services: {a: {image: b, cap_add: []}, b: {image: c, networks: []}}")
    assert got == ["compose.yaml: services.a.cap_add: not supported by Moorage",
                   "compose.yaml: services.b.networks: not supported by Moorage"]


def test_bad_stack_name():
    with pytest.raises(ComposeError, match="stack name 'Bad_Name'"):
        translate("services: {web: {image: b}}", "Bad_Name")
