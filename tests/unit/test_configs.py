"""ConfigMaps and Secrets, the pure parts: manifest checks and their one-line errors, base64,
sealing and rotation (on the in-memory etcd), what a session sends, the ..data writer, env
resolution, pull-secret parsing and the restart-on-change stamp."""

from __future__ import annotations

import base64
import json
import os

import pytest

from controlplane.controllers.deployments import DeploymentController
from controlplane.dispatcher.configs import ConfigIndex, SessionConfigs, split
from controlplane.store import Store
from controlplane.store.memory import MemoryEtcd
from controlplane.store.sealing import MAGIC, Sealer, SealError, parse_keys, reseal
from moorage.manifest import ManifestError, parse
from moorage.manifest.convert import decode_base64
from moorage.model import configs, kinds
from moorage.v1 import agent_pb2
from moorage.v1 import objects_pb2 as pb
from nodeagent.pods import configenv, pullsecrets, volumes
from tests.builders import pb_pod
from tests.conftest import run

SECRET = kinds.BY_NAME["Secret"]


def errors(text: str) -> list[str]:
    with pytest.raises(ManifestError) as err:
        parse([("f.yaml", text)])
    return err.value.problems


def objects(text: str) -> list:
    return [d.obj for d in parse([("f.yaml", text)])]


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
SEC = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
POD = """apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  volumes: [{name: v, configMap: {name: c}}]
  containers:
  - name: app
    image: busybox
"""


@pytest.mark.parametrize("text, expected", [
    (SEC + "type: kubernetes.io/tls\nstringData: {tls.key: k}\n",
     'f.yaml[0] data["tls.crt"]: is required for type kubernetes.io/tls'),
    (SEC + "data: {a: 'not*base64'}\n", "f.yaml[0] data.a: illegal base64 data at input byte 3"),
    (CM + f"data: {{big: {'x' * (configs.MAX_DATA_BYTES + 1)}}}\n",
     "f.yaml[0] data: too long: must have at most 1048576 bytes (has 1048577)"),
    (CM + "data: {a/b: x}\n", 'f.yaml[0] data["a/b"]: "a/b": a valid config key must consist'),
    (CM + "data: {..x: x}\n", 'f.yaml[0] data["..x"]: "..x": must not start with \'..\''),
    (CM + "data: {k: x}\nbinaryData: {k: eA==}\n",
     'f.yaml[0] data.k: "k": duplicate of key present in binaryData'),
    (SEC + "type: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: '{x'}\n",
     'f.yaml[0] data[".dockerconfigjson"]: is not valid JSON'),
    (POD.replace("{name: c}", "{name: c, items: [{key: k, path: /etc/x}]}"),
     'f.yaml[0] spec.volumes[0].configMap.items[0].path: "/etc/x": must be a relative path'),
    (POD.replace("{name: c}", "{name: c, items: [{key: k, path: a/../../x}]}"),
     "f.yaml[0] spec.volumes[0].configMap.items[0].path: \"a/../../x\": must not contain '..'"),
    (POD + "    volumeMounts: [{name: v, mountPath: /etc/a}, {name: v, mountPath: /etc/a/}]\n",
     'f.yaml[0] spec.containers[0].volumeMounts[1].mountPath: "/etc/a/": must be unique '
     "(volumeMounts[0] mounts there too)"),
    (POD.replace("configMap: {name: c}", "secret: {secretName: other/db}"),
     'f.yaml[0] spec.volumes[0].secret.secretName: "other/db": a pod can only use Secrets of '
     "its own namespace"),
    (POD + "    env: [{name: A, valueFrom: {secretKeyRef: {name: prod/db, key: k}}}]\n",
     'spec.containers[0].env[0].valueFrom.secretKeyRef.name: "prod/db": a pod can only use'),
    (POD.replace("configMap: {name: c}", "configMap: {name: c, defaultMode: 01000}"),
     "spec.volumes[0].configMap.defaultMode: 512 must be a number between 0 and 0777"),
])
def test_bad_input_is_one_line_naming_file_document_and_field(text, expected):
    found = errors(text)
    assert any(expected in p for p in found), found
    assert all("\n" not in p for p in found)


def test_secret_values_never_appear_in_errors():
    for text in (SEC + "stringData: {password: 123456789}\n",
                 SEC + "data: {password: 'c2VjcmV0MTIzNDU2Nzg5*'}\n"):
        joined = "\n".join(errors(text))
        assert "123456789" not in joined and "c2VjcmV0" not in joined, joined


def test_real_manifests_apply_unchanged_and_string_data_merges_into_data():
    cm, sec = objects(CM + "data: {ui: dark}\nbinaryData: {blob: AAE=}\nimmutable: true\n"
                      "---\n" + SEC + "type: kubernetes.io/basic-auth\n"
                      "data: {username: YWRtaW4=}\nstringData: {password: s3cret}\n")
    assert dict(cm.data) == {"ui": "dark"} and dict(cm.binary_data) == {"blob": b"\x00\x01"}
    assert cm.immutable
    assert dict(sec.data) == {"username": b"admin", "password": b"s3cret"}
    assert not sec.string_data and sec.type == "kubernetes.io/basic-auth"
    assert objects(SEC)[0].type == "Opaque"


@pytest.mark.parametrize("text, data", [
    ("aGVsbG8=", b"hello"), ("aGVs\nbG8=", b"hello"), ("", b""), ("AAE=", b"\x00\x01")])
def test_base64_as_kubernetes_reads_it(text, data):
    assert decode_base64(text) == (data, "")


@pytest.mark.parametrize("key, problem", [
    ("good.key_1-x", ""), (".", "must not be '.'"), ("..", "must not be '..'"),
    ("..x", "must not start with '..'"), ("a/b", "alphanumeric"), ("x" * 254, "253")])
def test_key_rules(key, problem):
    assert (problem in configs.key_problem(key)) if problem else configs.key_problem(key) == ""


def test_references_cover_env_envfrom_volumes_and_pull_secrets():
    (pod,) = objects(POD.replace("    image: busybox\n", """    image: busybox
    env: [{name: A, valueFrom: {secretKeyRef: {name: s1, key: k}}},
          {name: B, valueFrom: {configMapKeyRef: {name: c2, key: k}}}]
    envFrom: [{secretRef: {name: s2}}, {configMapRef: {name: c3}}]
  imagePullSecrets: [{name: reg}]
"""))
    assert configs.references(pod.spec) == {
        configs.Ref("ConfigMap", n) for n in ("c", "c2", "c3")} | {
        configs.Ref("Secret", n) for n in ("s1", "s2", "reg")}


# ---- sealing ----

def test_seal_binds_the_value_to_its_key_and_a_foreign_key_is_refused(tmp_path):
    sealer = Sealer.load(str(tmp_path / "k"), create=True)
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o600
    sealed = sealer.seal(b"/x/secrets/default/a", b"payload")
    assert sealed.startswith(MAGIC + sealer.primary.encode()) and b"payload" not in sealed
    assert sealer.open(b"/x/secrets/default/a", sealed) == b"payload"
    with pytest.raises(SealError, match="does not verify"):
        sealer.open(b"/x/secrets/default/b", sealed)     # copied to another key
    other = Sealer.load(str(tmp_path / "other"), create=True)
    with pytest.raises(SealError) as err:
        other.open(b"/x/secrets/default/a", sealed)
    assert str(err.value) == (f"cannot decrypt Secrets sealed with key {sealer.primary}: it is "
                              f"not in {tmp_path / 'other'} (copy the key file from the replica "
                              "that made or rotated the key)")
    # Once the operator copies the file, the same replica reads it again and opens it.
    (tmp_path / "other").write_text((tmp_path / "k").read_text())
    assert other.open(b"/x/secrets/default/a", sealed) == b"payload"


def test_key_file_errors_are_one_line(tmp_path):
    with pytest.raises(SealError, match="line 1: want `<id> <base64 of 32 bytes>`"):
        parse_keys("abc notbase64\n", "f")
    good = base64.b64encode(b"k" * 32).decode()
    with pytest.raises(SealError, match="does not match its key"):
        parse_keys(f"deadbeef {good}\n", "f")
    with pytest.raises(SealError, match="does not exist"):
        Sealer.load(str(tmp_path / "missing"))


def test_rotation_reseals_everything_and_old_values_stay_readable(tmp_path):
    async def go():
        sealer = Sealer.load(str(tmp_path / "k"), create=True)
        store = Store(MemoryEtcd(), prefix="/t", sealer=sealer)
        for name in ("a", "b", "c"):
            s = pb.Secret(api_version="v1", kind="Secret")
            s.metadata.name, s.metadata.namespace = name, "default"
            s.data["v"] = name.encode()
            await store.create(s)
        old = sealer.primary
        new = sealer.rotate()
        assert sealer.key_ids() == [new, old]
        assert await reseal(store, store.range_prefix(SECRET)) == 3
        assert await reseal(store, store.range_prefix(SECRET)) == 0     # nothing left to do
        for rec in await store.raw.list(store.range_prefix(SECRET)):
            assert Sealer.sealed_with(rec.value) == new
        got, _ = await store.list(SECRET)
        assert sorted(bytes(s.data["v"]) for s in got) == [b"a", b"b", b"c"]
    run(go())


def test_a_store_without_a_key_refuses_secrets():
    async def go():
        store = Store(MemoryEtcd(), prefix="/t")
        s = pb.Secret(api_version="v1", kind="Secret")
        s.metadata.name, s.metadata.namespace = "a", "default"
        with pytest.raises(SealError, match="no secrets key"):
            await store.create(s)
    run(go())


# ---- what a session sends ----

def _cm(name: str, rv: str, ns: str = "default") -> pb.ConfigMap:
    cm = pb.ConfigMap(api_version="v1", kind="ConfigMap")
    cm.metadata.name, cm.metadata.namespace, cm.metadata.resource_version = name, ns, rv
    return cm


def _using(name: str, *cms: str) -> pb.Pod:
    p = pb_pod(name, uid=name)
    for cm in cms:
        p.spec.volumes.add(name=cm, config_map=pb.ConfigMapVolumeSource(name=cm))
    return p


def test_a_session_sends_what_its_pods_use_once_and_removes_what_none_uses():
    index = ConfigIndex(None, lambda key: None)
    index._resync("ConfigMap", [_cm("a", "1"), _cm("b", "1"), _cm("unused", "1")])
    index._resync("Secret", [])
    sent = SessionConfigs(index)
    first = sent.additions([_using("p", "a", "b", "missing")], full=True)
    assert first.full and [c.metadata.name for c in first.config_maps] == ["a", "b"]
    assert sent.additions([_using("p", "a", "b")]) is None            # nothing new
    index._put(_cm("a", "2"))
    assert [c.metadata.resource_version for c in
            sent.additions([_using("p", "a", "b")]).config_maps] == ["2"]
    gone = sent.removals([_using("p", "a")])
    assert [(r.kind, r.name) for r in gone.removed] == [("ConfigMap", "b")]
    index._delete(_cm("a", "3"))
    assert [r.name for r in sent.additions([_using("p", "a")]).removed] == ["a"]
    assert not sent.concerns(("ConfigMap", "default", "unused"), [_using("p", "a")])


def test_big_config_data_is_split_with_full_first_and_removals_last():
    msg = agent_pb2.ConfigData(full=True)
    for i in range(6):
        cm = msg.config_maps.add()
        cm.metadata.name = f"c{i}"
        cm.binary_data["k"] = b"x" * (1024 * 1024)
    msg.removed.add(kind="Secret", namespace="default", name="old")
    parts = split(msg)
    assert len(parts) >= 2 and parts[0].full and not any(p.full for p in parts[1:])
    assert [c.metadata.name for p in parts for c in p.config_maps] == [f"c{i}" for i in range(6)]
    assert [p.removed[0].name for p in parts if p.removed] == ["old"]
    assert all(p.ByteSize() < 6 * 1024 * 1024 for p in parts)


# ---- the agent's side ----

def test_projection_swaps_data_in_one_rename_and_keeps_the_previous_version(tmp_path):
    d = str(tmp_path / "vol")
    assert volumes.write_projection(d, {"a": (b"1", 0o644), "sub/b": (b"1", 0o400)}, "v1")
    assert not volumes.write_projection(d, {"a": (b"1", 0o644)}, "v1")
    first = os.readlink(os.path.join(d, volumes.DATA))
    assert (tmp_path / "vol" / "a").read_text() == "1"
    assert os.readlink(os.path.join(d, "a")) == "..data/a"
    assert oct(os.stat(os.path.join(d, "sub", "b")).st_mode & 0o777) == "0o400"
    volumes.write_projection(d, {"a": (b"2", 0o644)}, "v2")
    second = os.readlink(os.path.join(d, volumes.DATA))
    assert (tmp_path / "vol" / "a").read_text() == "2"
    assert not os.path.lexists(os.path.join(d, "sub"))            # key gone: link gone
    assert os.path.isdir(os.path.join(d, first))                   # a reader may still be there
    volumes.write_projection(d, {"a": (b"3", 0o644)}, "v3")
    assert not os.path.exists(os.path.join(d, first))
    assert os.path.isdir(os.path.join(d, second))


def test_projected_items_modes_and_missing_keys():
    cm = pb.ConfigMap(data={"a": "1"}, binary_data={"b": b"\x00"})
    src = pb.ConfigMapVolumeSource(name="c", default_mode=0o600)
    assert volumes.projected(src, cm, False) == ({"a": (b"1", 0o600), "b": (b"\x00", 0o600)}, "")
    src.items.add(key="a", path="x/a.conf", mode=0o400)
    assert volumes.projected(src, cm, False) == ({"x/a.conf": (b"1", 0o400)}, "")
    src.items.add(key="zzz", path="z")
    assert volumes.projected(src, cm, False)[1] == "configmap 'c' has no key 'zzz'"
    src.optional = True
    assert volumes.projected(src, cm, False) == ({"x/a.conf": (b"1", 0o400)}, "")


def test_env_resolution_order_optional_and_errors():
    cm = pb.ConfigMap(data={"A": "cm", "bad-1": "x", "1bad": "y"})
    sec = pb.Secret(data={"PW": b"s3cret"})
    found = {("ConfigMap", "c"): cm, ("Secret", "s"): sec}
    c = pb.Container(name="app")
    c.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="c"))
    c.env_from.add(prefix="S_", secret_ref=pb.SecretEnvSource(name="s"))
    c.env.add(name="A", value="literal wins")
    c.env.add(name="PW", value_from=pb.EnvVarSource(
        secret_key_ref=pb.SecretKeySelector(name="s", key="PW")))
    c.env.add(name="OPT", value_from=pb.EnvVarSource(
        config_map_key_ref=pb.ConfigMapKeySelector(name="none", key="k", optional=True)))
    got = configenv.resolve(c, "ns", lambda kind, name: found.get((kind, name)))
    assert got.problem == ""
    assert got.values == {"A": ("literal wins", False), "bad-1": ("x", False),
                          "S_PW": ("s3cret", True), "PW": ("s3cret", True)}
    assert got.skipped == ["Keys [1bad] from the EnvFrom configmap ns/c were skipped since "
                           "they are considered invalid environment variable names."]
    c.env.add(name="K", value_from=pb.EnvVarSource(
        config_map_key_ref=pb.ConfigMapKeySelector(name="c", key="nokey")))
    assert configenv.resolve(c, "ns", lambda k, n: found.get((k, n))).problem == \
        "couldn't find key nokey in ConfigMap ns/c"
    assert configenv.resolve(c, "ns", lambda k, n: None).problem == 'configmap "c" not found'


def test_pull_secret_credentials_as_docker_writes_them():
    auths = {"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "reg.example.com:5000": {"username": "u", "password": "p"},
        "broken": {"auth": "***"}}}
    creds = pullsecrets.parse_auths(json.dumps(auths).encode())
    assert {h: (c.username, c.password) for h, c in creds.items()} == {
        "docker.io": ("hub", "pw"), "reg.example.com:5000": ("u", "p")}
    legacy = pullsecrets.parse_auths(json.dumps({"old.example": {"username": "x",
                                                                 "password": "y"}}).encode())
    assert list(legacy) == ["old.example"]
    secret = pb.Secret(data={".dockerconfigjson": json.dumps(auths).encode()})
    found, missing = pullsecrets.credentials(
        [pb.LocalObjectReference(name="a"), pb.LocalObjectReference(name="gone")],
        lambda kind, name: secret if name == "a" else None)
    assert sorted(found) == ["docker.io", "reg.example.com:5000"] and missing == ["gone"]


# ---- restart on change ----

def test_only_opted_in_deployments_get_a_stamp_and_it_follows_the_data_generation():
    ctl = DeploymentController(Store(MemoryEtcd(), prefix="/t"), record_events=False)
    d = pb.Deployment(api_version="apps/v1", kind="Deployment")
    d.metadata.name, d.metadata.namespace = "web", "default"
    d.spec.template.spec.volumes.add(name="v", config_map=pb.ConfigMapVolumeSource(name="c"))
    assert ctl.effective(d) is d
    d.metadata.annotations[configs.RESTART_ON_CHANGE] = "true"
    cm = _cm("c", "5")
    cm.metadata.uid, cm.metadata.generation = "u1", 1
    ctl.put_config(cm)
    one = ctl.effective(d).spec.template.metadata.annotations[configs.CONFIG_HASH]
    cm.metadata.resource_version = "9"                 # resealed: same generation
    ctl.put_config(cm)
    assert ctl.effective(d).spec.template.metadata.annotations[configs.CONFIG_HASH] == one
    cm.metadata.generation = 2
    ctl.put_config(cm)
    assert ctl.effective(d).spec.template.metadata.annotations[configs.CONFIG_HASH] != one
    assert configs.CONFIG_HASH not in d.spec.template.metadata.annotations   # stored spec
