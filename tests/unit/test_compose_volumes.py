"""Compose volumes to PersistentVolumeClaims, StatefulSets and pod volumes: every supported
syntax, the defaults, and every refusal."""

from __future__ import annotations

import json
import textwrap

import pytest

from moorage import manifest
from moorage.manifest import composevolumes
from moorage.manifest.compose import STACK_LABEL, ComposeError, translate

STACK = "moortest-shop"
SOURCE = "/srv/shop/compose.yaml"


def translated(text: str, source: str = SOURCE, env=None):
    return translate(textwrap.dedent(text), STACK, source=source, env=env or {})


def objects(text: str, **kw) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in translated(text, **kw).objects}


def workload(text: str, service: str = "web", **kw) -> dict:
    got = objects(text, **kw)
    return got.get(("StatefulSet", service)) or got[("Deployment", service)]


def pod(text: str, service: str = "web", **kw) -> dict:
    return workload(text, service, **kw)["spec"]["template"]["spec"]


def problems(text: str, source: str = SOURCE) -> list[str]:
    with pytest.raises(ComposeError) as err:
        translated(text, source)
    return err.value.problems


def service(volumes: str, extra: str = "") -> str:
    return f"{extra}services:\n  web:\n    image: busybox\n    volumes: {volumes}\n"


NAMED = "volumes: {data: {}}\n"


def test_top_level_volume_becomes_a_claim_with_the_defaults():
    got = objects(service("[data:/srv]", NAMED))
    claim = got[("PersistentVolumeClaim", "data")]
    assert claim == {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": STACK, "labels": {STACK_LABEL: STACK}},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": composevolumes.DEFAULT_SIZE}}}}


def test_an_unused_volume_is_still_created():
    got = objects("volumes: {spare: }\nservices: {web: {image: b}}")
    assert ("PersistentVolumeClaim", "spare") in got
    assert ("Deployment", "web") in got


@pytest.mark.parametrize("size, want", [
    pytest.param("10G", "10Gi", id="docker-units"),
    pytest.param("10Gi", "10Gi", id="kubernetes-units"),
    pytest.param("512m", "512Mi", id="lowercase"),
    pytest.param("1.5GiB", "1536Mi", id="fraction"),
    pytest.param("2T", "2Ti", id="tera"),
    pytest.param(1048576, "1Mi", id="bytes"),
])
def test_driver_opts_size(size, want):
    text = service("[data:/srv]", f"volumes: {{data: {{driver_opts: {{size: {size!r}}}}}}}\n")
    claim = objects(text)[("PersistentVolumeClaim", "data")]
    assert claim["spec"]["resources"]["requests"]["storage"] == want


def test_name_labels_and_driver_local():
    text = service("[data:/srv]", "volumes:\n  data:\n    name: Pg_Data\n    driver: local\n"
                   "    labels: {tier: db, com.example.team: core}\n")
    got = objects(text)
    claim = got[("PersistentVolumeClaim", "pg-data")]
    assert claim["metadata"]["labels"] == {"tier": "db", "com.example.team": "core",
                                           STACK_LABEL: STACK}
    assert pod(text)["volumes"] == [
        {"name": "volume-pg-data", "persistentVolumeClaim": {"claimName": "pg-data"}}]


def test_labels_as_a_list():
    text = service("[data:/srv]", "volumes: {data: {labels: [tier=db]}}\n")
    assert objects(text)[("PersistentVolumeClaim", "data")]["metadata"]["labels"]["tier"] == "db"


def test_external_volume_is_not_created_but_listed():
    text = service("[old:/srv]", "volumes: {old: {external: true, name: legacy}}\n")
    t = translated(text)
    assert not [o for o in t.objects if o["kind"] == "PersistentVolumeClaim"]
    assert t.external_volumes == [composevolumes.Named("legacy", "volumes.old", True)]
    assert pod(text)["volumes"][0]["persistentVolumeClaim"] == {"claimName": "legacy"}


def test_named_volume_makes_a_one_replica_statefulset_with_a_headless_service():
    got = objects(service("[data:/var/lib/db]", NAMED))
    assert ("Deployment", "web") not in got
    sts = got[("StatefulSet", "web")]
    assert sts["apiVersion"] == "apps/v1"
    assert sts["spec"]["replicas"] == 1
    # No ports: the service's own Service is headless, and governs the StatefulSet.
    assert sts["spec"]["serviceName"] == "web"
    assert got[("Service", "web")]["spec"]["clusterIP"] == "None"
    assert sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "volume-data", "mountPath": "/var/lib/db"}]


def test_statefulset_with_ports_gets_a_headless_service_of_its_own():
    text = NAMED + ("services:\n  web:\n    image: b\n    ports: ['30080:80']\n"
                    "    volumes: [data:/srv]\n")
    t = translated(text)
    got = {(o["kind"], o["metadata"]["name"]): o for o in t.objects}
    assert got[("Service", "web")]["spec"]["type"] == "NodePort"
    headless = got[("Service", "web-headless")]
    assert headless["spec"] == {"selector": got[("Service", "web")]["spec"]["selector"],
                                "clusterIP": "None", "type": "ClusterIP"}
    assert got[("StatefulSet", "web")]["spec"]["serviceName"] == "web-headless"
    kinds = [o["kind"] for o in t.objects]
    assert kinds.index("StatefulSet") > max(i for i, k in enumerate(kinds) if k == "Service")


def test_replicas_zero_is_allowed():
    text = NAMED + "services: {web: {image: b, volumes: [data:/srv], deploy: {replicas: 0}}}"
    assert workload(text)["spec"]["replicas"] == 0


def test_two_services_may_mount_one_volume():
    text = NAMED + ("services:\n  db: {image: b, volumes: [data:/srv]}\n"
                    "  backup: {image: b, volumes: ['data:/srv:ro']}\n")
    got = objects(text)
    for name in ("db", "backup"):
        spec = got[("StatefulSet", name)]["spec"]["template"]["spec"]
        assert spec["volumes"][0]["persistentVolumeClaim"] == {"claimName": "data"}


def test_one_volume_mounted_twice_is_one_pod_volume():
    spec = pod(service("[data:/a, 'data:/b:ro']", NAMED))
    assert [v["name"] for v in spec["volumes"]] == ["volume-data"]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "volume-data", "mountPath": "/a"},
        {"name": "volume-data", "mountPath": "/b", "readOnly": True}]


@pytest.mark.parametrize("item, volume, mount", [
    pytest.param("'./conf:/etc/app:ro'", {"hostPath": {"path": "/srv/shop/conf"}},
                 {"mountPath": "/etc/app", "readOnly": True}, id="relative-bind"),
    pytest.param("'../shared:/shared'", {"hostPath": {"path": "/srv/shared"}},
                 {"mountPath": "/shared"}, id="parent-bind"),
    pytest.param("'/var/log/app:/logs:rw'", {"hostPath": {"path": "/var/log/app"}},
                 {"mountPath": "/logs"}, id="absolute-bind"),
    pytest.param("'~/cache:/cache'", {"hostPath": {"path": "/home/ann/cache"}},
                 {"mountPath": "/cache"}, id="home-bind"),
    pytest.param("/scratch/", {"emptyDir": {}}, {"mountPath": "/scratch"}, id="anonymous"),
])
def test_short_syntax_without_named_volumes_is_a_deployment(item, volume, mount):
    text = service(f"[{item}]")
    got = objects(text, env={"HOME": "/home/ann"})
    spec = got[("Deployment", "web")]["spec"]["template"]["spec"]
    (v,) = spec["volumes"]
    (m,) = spec["containers"][0]["volumeMounts"]
    assert {k: v[k] for k in v if k != "name"} == volume
    assert {k: m[k] for k in m if k != "name"} == mount
    assert m["name"] == v["name"]


@pytest.mark.parametrize("item, volume, mount", [
    pytest.param({"type": "volume", "source": "data", "target": "/db", "read_only": True,
                  "volume": {"nocopy": True, "subpath": "pg"}},
                 {"persistentVolumeClaim": {"claimName": "data"}},
                 {"mountPath": "/db", "subPath": "pg", "readOnly": True}, id="volume"),
    pytest.param({"type": "volume", "target": "/tmp/x"}, {"emptyDir": {}},
                 {"mountPath": "/tmp/x"}, id="anonymous-volume"),
    pytest.param({"type": "bind", "source": "./site", "target": "/www",
                  "bind": {"create_host_path": True}},
                 {"hostPath": {"path": "/srv/shop/site", "type": "DirectoryOrCreate"}},
                 {"mountPath": "/www"}, id="bind-create"),
    pytest.param({"type": "bind", "source": "/etc/app.conf", "target": "/app.conf",
                  "read_only": True},
                 {"hostPath": {"path": "/etc/app.conf"}},
                 {"mountPath": "/app.conf", "readOnly": True}, id="bind-no-check"),
    pytest.param({"type": "tmpfs", "target": "/run", "tmpfs": {"size": 67108864}},
                 {"emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                 {"mountPath": "/run"}, id="tmpfs-bytes"),
    pytest.param({"type": "tmpfs", "target": "/run", "tmpfs": {"size": "1g"}},
                 {"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                 {"mountPath": "/run"}, id="tmpfs-units"),
    pytest.param({"type": "tmpfs", "target": "/run"}, {"emptyDir": {"medium": "Memory"}},
                 {"mountPath": "/run"}, id="tmpfs-no-size"),
])
def test_long_syntax(item, volume, mount):
    spec = pod(service(json.dumps([item]), NAMED))
    (v,) = spec["volumes"]
    (m,) = spec["containers"][0]["volumeMounts"]
    assert {k: v[k] for k in v if k != "name"} == volume
    assert {k: m[k] for k in m if k != "name"} == mount


def test_service_tmpfs_string_and_list():
    spec = pod("services: {web: {image: b, tmpfs: /run}}")
    assert spec["volumes"] == [{"name": "tmpfs-0", "emptyDir": {"medium": "Memory"}}]
    spec = pod("services: {web: {image: b, tmpfs: [/run, '/tmp:size=16m']}}")
    assert [v["emptyDir"] for v in spec["volumes"]] == [
        {"medium": "Memory"}, {"medium": "Memory", "sizeLimit": "16Mi"}]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == ["/run", "/tmp"]


def test_volume_names_are_unique_per_kind():
    spec = pod(service("[/a, /b, './x:/x', './y:/y', {type: tmpfs, target: /t}]"))
    assert [v["name"] for v in spec["volumes"]] == ["anonymous-0", "anonymous-1", "bind-0",
                                                    "bind-1", "tmpfs-0"]


def test_a_long_claim_name_gives_a_short_volume_name():
    name = "d" * 63
    spec = pod(service(f"[{name}:/srv]", f"volumes: {{{name}: {{}}}}\n"))
    assert len(spec["volumes"][0]["name"]) <= 63
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == name


def test_mounts_may_nest():
    spec = pod(service("[data:/a, /a/b, './c:/a/b/c']", NAMED))
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == [
        "/a", "/a/b", "/a/b/c"]


def test_volumes_and_configs_share_the_pod():
    text = ("configs: {app: {content: x}}\n" + NAMED +
            "services: {web: {image: b, configs: [app], volumes: [data:/srv]}}")
    spec = pod(text)
    assert [v["name"] for v in spec["volumes"]] == ["config-app", "volume-data"]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == ["/app", "/srv"]


def test_a_statefulset_with_configs_is_told_it_does_not_restart_on_change():
    text = ("configs: {app: {content: x}}\n" + NAMED +
            "services: {web: {image: b, configs: [app], volumes: [data:/srv]}}")
    assert any(n.startswith("services.web: runs as a StatefulSet, whose pod does not restart")
               for n in translated(text).notes)
    assert not any("StatefulSet" in n for n in translated(service("[data:/srv]", NAMED)).notes)


def test_nocopy_note_for_named_volumes():
    assert composevolumes.NOCOPY_NOTE in translated(service("[data:/srv]", NAMED)).notes
    assert composevolumes.NOCOPY_NOTE not in translated(
        service("['data:/srv:nocopy']", NAMED)).notes
    assert composevolumes.NOCOPY_NOTE not in translated(service("[/srv]")).notes


def test_objects_pass_moorage_validation():
    text = NAMED + ("services:\n  web:\n    image: b\n    ports: ['80']\n"
                    "    volumes: [data:/srv, /cache, {type: tmpfs, target: /run}]\n")
    docs = manifest.parse([(f"c#{i}", json.dumps(o))
                           for i, o in enumerate(translated(text).objects)])
    assert [type(d.obj).__name__ for d in docs] == [
        "Namespace", "PersistentVolumeClaim", "Service", "Service", "StatefulSet"]


P = "compose.yaml: "


@pytest.mark.parametrize("text, want", [
    pytest.param(service("[data:/srv]", NAMED).replace("busybox", "b\n    deploy: "
                                                       "{replicas: 3}"),
                 [P + "services.web.deploy.replicas: 3 replicas cannot share the named volume "
                  "'data': a volume is a directory on one node's disk"], id="replicas"),
    pytest.param(service("[nope:/srv]"),
                 [P + "services.web.volumes[0]: no volume named 'nope' in this file's "
                  "top-level volumes"], id="undefined-volume"),
    pytest.param(service("['./x:/srv']"),
                 [P + "services.web.volumes[0]: bind source './x' is relative and the Compose "
                  "file's directory is not known"], id="relative-without-directory"),
    pytest.param(service("['~/x:/srv']"),
                 [P + "services.web.volumes[0]: '~/x': `~` needs HOME"], id="home-unset"),
    pytest.param(service("['data:srv']", NAMED),
                 [P + "services.web.volumes[0]: 'srv': the path in the container must be "
                  "absolute"], id="relative-target"),
    pytest.param(service("['data:/a/../b']", NAMED),
                 [P + "services.web.volumes[0]: '/a/../b': must not contain '..'"],
                 id="dotdot-target"),
    pytest.param(service("['data:/']", NAMED),
                 [P + "services.web.volumes[0]: '/': nothing can be mounted at /"], id="root"),
    pytest.param(service("['data:/srv:z']", NAMED),
                 [P + "services.web.volumes[0]: 'data:/srv:z': mode 'z' is not supported by "
                  "Moorage"], id="selinux-mode"),
    pytest.param(service("['data:/srv:ro,rw']", NAMED),
                 [P + "services.web.volumes[0]: 'data:/srv:ro,rw': give ro or rw"],
                 id="ro-and-rw"),
    pytest.param(service("['./x:/srv:nocopy']"),
                 [P + "services.web.volumes[0]: './x:/srv:nocopy': nocopy is for volumes"],
                 id="nocopy-bind"),
    pytest.param(service("['a:b:c:d']"),
                 [P + "services.web.volumes[0]: 'a:b:c:d': want [SOURCE:]TARGET[:MODE]"],
                 id="too-many-colons"),
    pytest.param(service("[data:/a, data:/a]", NAMED),
                 [P + "services.web.volumes[1]: '/a' is also where services.web.volumes[0] is "
                  "mounted"], id="same-target"),
    pytest.param("configs: {app: {content: x}}\nservices: {web: {image: b, configs: "
                 "[{source: app, target: /etc/app}], volumes: ['/srv:/etc/app']}}",
                 [P + "services.web.volumes[0]: '/etc/app' is also where services.web.configs "
                  "is mounted"], id="over-a-config"),
    pytest.param(service("[{type: npipe, source: x, target: /x}]"),
                 [P + "services.web.volumes[0].type: 'npipe': want volume, bind or tmpfs"],
                 id="npipe"),
    pytest.param(service("[{source: x, target: /x}]"),
                 [P + "services.web.volumes[0].type: required"], id="no-type"),
    pytest.param(service("[{type: bind, target: /x}]"),
                 [P + "services.web.volumes[0].source: required: the path on the host"],
                 id="bind-no-source"),
    pytest.param(service("[{type: bind, source: data, target: /x}]"),
                 [P + "services.web.volumes[0].source: 'data': a bind source is a path"],
                 id="bind-name"),
    pytest.param(service("[{type: volume, source: ./x, target: /x}]"),
                 [P + "services.web.volumes[0].source: './x': a volume's source is the name"],
                 id="volume-path"),
    pytest.param(service("[{type: tmpfs, source: x, target: /x}]"),
                 [P + "services.web.volumes[0].source: a tmpfs has no source"],
                 id="tmpfs-source"),
    pytest.param(service("[{type: volume, source: data}]", NAMED),
                 [P + "services.web.volumes[0].target: want the path in the container"],
                 id="no-target"),
    pytest.param(service("[{type: bind, source: /x, target: /x, bind: {propagation: shared}}]"),
                 [P + "services.web.volumes[0].bind.propagation: not supported by Moorage"],
                 id="propagation"),
    pytest.param(service("[{type: bind, source: /x, target: /x, consistency: cached}]"),
                 [P + "services.web.volumes[0].consistency: not supported by Moorage"],
                 id="consistency"),
    pytest.param(service("[{type: tmpfs, target: /x, tmpfs: {mode: 1777}}]"),
                 [P + "services.web.volumes[0].tmpfs.mode: not supported by Moorage"],
                 id="tmpfs-mode"),
    pytest.param(service("[{type: tmpfs, target: /x, tmpfs: {size: lots}}]"),
                 [P + "services.web.volumes[0].tmpfs.size: 'lots' is not a size"],
                 id="tmpfs-size"),
    pytest.param(service("[{type: tmpfs, target: /x, volume: {nocopy: true}}]"),
                 [P + "services.web.volumes[0].volume: is for type volume, not tmpfs"],
                 id="wrong-section"),
    pytest.param(service("[{type: volume, source: data, target: /x, read_only: yes please}]",
                         NAMED),
                 [P + "services.web.volumes[0].read_only: 'yes please': want true or false"],
                 id="read-only-type"),
    pytest.param(service("[{type: volume, source: data, target: /x, volume: {subpath: ../x}}]",
                         NAMED),
                 [P + "services.web.volumes[0].volume.subpath: '../x': want a relative path"],
                 id="subpath-escape"),
    pytest.param("services: {web: {image: b, tmpfs: '/run:mode=1777'}}",
                 [P + "services.web.tmpfs: '/run:mode=1777': option 'mode' is not supported"],
                 id="tmpfs-option"),
    pytest.param("services: {web: {image: b, volumes: {a: b}}}",
                 [P + "services.web.volumes: want a list"], id="not-a-list"),
    pytest.param(service("[data:/srv]", "volumes: {data: {driver: nfs}}\n"),
                 [P + "volumes.data.driver: 'nfs': only 'local' is supported"], id="driver"),
    pytest.param(service("[data:/srv]", "volumes: {data: {driver_opts: {type: nfs}}}\n"),
                 [P + "volumes.data.driver_opts.type: not supported by Moorage: the local "
                  "driver takes only size"], id="driver-opts"),
    pytest.param(service("[data:/srv]", "volumes: {data: {driver_opts: {size: big}}}\n"),
                 [P + "volumes.data.driver_opts.size: 'big' is not a size"], id="bad-size"),
    pytest.param(service("[data:/srv]", "volumes: {data: {driver_opts: {size: 0}}}\n"),
                 [P + "volumes.data.driver_opts.size: must be more than 0"], id="zero-size"),
    pytest.param(service("[data:/srv]", "volumes: {data: {external: true, labels: {a: b}}}\n"),
                 [P + "volumes.data.labels: may not be given with external: true"],
                 id="external-labels"),
    pytest.param(service("[data:/srv]", "volumes: {data: {external: {name: x}}}\n"),
                 [P + "volumes.data.external: want true or false"], id="external-deprecated"),
    pytest.param(service("[data:/srv]", "volumes: {data: {labels: {a: 'two words'}}}\n"),
                 [P + "volumes.data.labels.a: label value \"two words\" is invalid"],
                 id="label-value"),
    pytest.param(service("[data:/srv]", "volumes: {data: {name: '__'}}\n"),
                 [P + "volumes.data.name: '__' has no letter or digit"], id="empty-name"),
    pytest.param(service("[data:/srv]", "volumes: {data: {}, Data: {}}\n"),
                 [P + "volumes.Data: becomes the PersistentVolumeClaim 'data', as volumes.data "
                  "does"], id="clash"),
    pytest.param(service("[data:/srv]", "volumes: {data: {x-size: 1, size: 2}}\n"),
                 [P + "volumes.data.size: not supported by Moorage"], id="unknown-key"),
    pytest.param(service("[data:/srv]", "volumes: [data]\n"),
                 [P + "volumes: want a mapping", P + "services.web.volumes[0]: no volume "
                  "named 'data'"], id="not-a-mapping"),
])
def test_refusals(text, want):
    got = problems(text, source="compose.yaml")
    assert len(got) == len(want), got
    for line, prefix in zip(got, want):
        assert line.startswith(prefix), line
        assert "\n" not in line


def test_headless_name_taken_by_another_service():
    text = NAMED + ("services:\n  web: {image: b, ports: ['80'], volumes: [data:/srv]}\n"
                    "  web-headless: {image: b}\n")
    assert problems(text) == [f"{SOURCE}: services.web: needs a headless Service "
                              "'web-headless' for its StatefulSet, and that name is another "
                              "service's"]


@pytest.mark.parametrize("value, want", [
    ("1", "1"), ("1k", "1Ki"), ("1 MB", "1Mi"), ("3g", "3Gi"), ("0.5G", "512Mi"),
    (1536, "1536"), ("2p", "2Pi"),
])
def test_byte_quantity(value, want):
    assert composevolumes.byte_quantity(value) == want


@pytest.mark.parametrize("value", ["", "1x", "-1", "1.2.3G", True])
def test_byte_quantity_refuses(value):
    with pytest.raises(ValueError):
        composevolumes.byte_quantity(value)
