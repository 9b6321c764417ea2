"""Unit tests of `moor create configmap|secret`, the ConfigMap and Secret tables and describe
texts, `moor rollout restart`'s edit and the rotate-key line: no server involved."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest
import yaml

from moorage.cli import configbuild as cb
from moorage.cli import configs, describe, main, printers, rollout
from moorage.cli.errors import CliError
from moorage.model import kinds
from moorage.v1 import api_pb2
from moorage.v1 import objects_pb2 as pb

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
CREATED = "2024-05-01T11:55:00Z"
SECRET_VALUE = "hunter2-do-not-print"


# ---- parsing the sources -----------------------------------------------------------------

@pytest.mark.parametrize("source, want", [
    pytest.param("conf/nginx.conf", ("", "conf/nginx.conf"), id="path"),
    pytest.param("site=conf/site.conf", ("site", "conf/site.conf"), id="key-and-path"),
])
def test_parse_file_source(source, want):
    assert cb.parse_file_source(source) == want


@pytest.mark.parametrize("source, message", [
    pytest.param("=a.conf", "key name for file path a.conf missing", id="no-key"),
    pytest.param("k=", "file path for key name k missing", id="no-path"),
    pytest.param("a=b=c", "key names or file paths cannot contain '='", id="two-equals"),
])
def test_parse_file_source_refuses(source, message):
    with pytest.raises(cb.BuildError, match=message):
        cb.parse_file_source(source)


def test_parse_literal_splits_at_the_first_equals():
    assert cb.parse_literal("url=http://x/?a=b") == ("url", "http://x/?a=b")
    assert cb.parse_literal("empty=") == ("empty", "")
    with pytest.raises(cb.BuildError, match="invalid literal source key, expected key=value"):
        cb.parse_literal("key")


def test_env_file_lines_as_kubectl_reads_them():
    text = (cb.UTF8_BOM + b"# a comment\n\n   A=1\nB=x=y\nQUOTED=\"kept\"\r\nFROM_ENV\n"
            b"MISSING\n  # indented comment\n")
    got = cb.parse_env_file(cb.EnvFile("app.env", text), {"FROM_ENV": "outside"})
    assert got == [("A", "1"), ("B", "x=y"), ("QUOTED", '"kept"'), ("FROM_ENV", "outside"),
                   ("MISSING", "")]


def test_env_file_errors_name_file_and_line_never_the_content():
    with pytest.raises(cb.BuildError) as err:
        cb.parse_env_file(cb.EnvFile("a.env", b"OK=1\n1BAD=" + SECRET_VALUE.encode()), {})
    assert str(err.value).startswith('"1BAD" is not a valid key name: a valid environment')
    assert "(env file a.env, line 2)" in str(err.value)
    assert SECRET_VALUE not in str(err.value)
    with pytest.raises(cb.BuildError) as err:
        cb.parse_env_file(cb.EnvFile("b.env", b"K=\xff" + SECRET_VALUE.encode()), {})
    assert str(err.value) == "env file b.env contains invalid utf8 bytes at line 1"


# ---- building the objects ----------------------------------------------------------------

def test_config_map_puts_text_in_data_and_the_rest_in_binary_data():
    sources = cb.Sources(literals=["mode=fast"],
                         files=[cb.FileSource("nginx.conf", "nginx.conf", b"worker 1;\n"),
                                cb.FileSource("logo.png", "logo.png", b"\x89PNG\xff")])
    cm = cb.config_map("web", "", sources)
    assert dict(cm.data) == {"mode": "fast", "nginx.conf": "worker 1;\n"}
    assert dict(cm.binary_data) == {"logo.png": b"\x89PNG\xff"}
    assert cm.metadata == pb.ObjectMeta(name="web")
    assert cb.config_map("web", "shop", cb.Sources()).metadata.namespace == "shop"


@pytest.mark.parametrize("sources, section", [
    pytest.param(cb.Sources(literals=["a=1", "a=2"]), "Data", id="two-literals"),
    pytest.param(cb.Sources(literals=["a=1"], files=[cb.FileSource("a", "f", b"x")]), "Data",
                 id="file-then-literal"),
    pytest.param(cb.Sources(literals=["a=1"], files=[cb.FileSource("a", "f", b"\xff")]),
                 "BinaryData", id="binary-file-then-literal"),
])
def test_config_map_duplicate_keys_in_kubectl_words(sources, section):
    with pytest.raises(cb.BuildError) as err:
        cb.config_map("x", "", sources)
    assert str(err.value) == (f'cannot add key "a", another key by that name already exists '
                              f'in {section} for ConfigMap "x"')


def test_bad_key_names_give_the_model_s_reason():
    with pytest.raises(cb.BuildError) as err:
        cb.config_map("x", "", cb.Sources(literals=["no spaces=1"]))
    assert str(err.value).startswith('"no spaces" is not a valid key name for a ConfigMap: '
                                     "a valid config key must consist of")
    with pytest.raises(cb.BuildError, match="is not a valid key name for a Secret: must not "
                                            "be '..'"):
        cb.generic_secret("x", "", cb.Sources(literals=["..=" + SECRET_VALUE]))


def test_env_files_do_not_mix_with_other_sources():
    with pytest.raises(cb.BuildError, match="from-env-file cannot be combined"):
        cb.config_map("x", "", cb.Sources(literals=["a=1"],
                                          env_files=[cb.EnvFile("e", b"B=2")]))


def test_generic_secret_keeps_bytes_and_type():
    sources = cb.Sources(literals=[f"password={SECRET_VALUE}"],
                         files=[cb.FileSource("key.bin", "key.bin", b"\x00\xff")])
    secret = cb.generic_secret("db", "", sources, "example.com/token")
    assert dict(secret.data) == {"password": SECRET_VALUE.encode(), "key.bin": b"\x00\xff"}
    assert secret.type == "example.com/token"
    with pytest.raises(cb.BuildError) as err:
        cb.generic_secret("db", "", cb.Sources(literals=[f"p={SECRET_VALUE}", "p=other"]))
    assert str(err.value) == ('cannot add key "p", another key by that name already exists '
                              'in Data for Secret "db"')


def test_docker_config_json_is_kubectl_s_shape():
    raw = cb.docker_config_json("reg.example:5000", "ci", "pa:ss")
    assert raw == (b'{"auths":{"reg.example:5000":{"username":"ci","password":"pa:ss",'
                   b'"auth":"' + base64.b64encode(b"ci:pa:ss") + b'"}}}')
    with_email = json.loads(cb.docker_config_json(cb.DEFAULT_DOCKER_SERVER, "u", "p", "u@x"))
    assert with_email == {"auths": {"https://index.docker.io/v1/": {
        "username": "u", "password": "p", "email": "u@x", "auth": "dTpw"}}}
    secret = cb.docker_registry_secret("regcred", "", raw)
    assert secret.type == "kubernetes.io/dockerconfigjson"
    assert dict(secret.data) == {".dockerconfigjson": raw}


def make_pair(common_name: str = "web.example") -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_key_pair_problems_in_go_s_words():
    cert, key = make_pair()
    other_cert, other_key = make_pair("other")
    assert cb.key_pair_problem(cert, key) == ""
    assert cb.key_pair_problem(cert, other_key) == "tls: private key does not match public key"
    assert cb.key_pair_problem(b"nonsense", key) == \
        "tls: failed to find any PEM data in certificate input"
    assert cb.key_pair_problem(key, key) == \
        "tls: failed to find certificate PEM data in certificate input"
    assert cb.key_pair_problem(cert, b"") == "tls: failed to find any PEM data in key input"
    assert cb.key_pair_problem(cert, other_cert) == "tls: failed to parse private key"
    secret = cb.tls_secret("web-tls", "", cert, key)
    assert secret.type == "kubernetes.io/tls"
    assert dict(secret.data) == {"tls.crt": cert, "tls.key": key}


# ---- reading files -------------------------------------------------------------------------

def test_a_directory_gives_its_regular_files_by_name(tmp_path):
    d = tmp_path / "conf"
    (d / "sub").mkdir(parents=True)
    (d / "b.conf").write_text("b")
    (d / "a.conf").write_text("a")
    (d / "sub" / "inner").write_text("not taken")
    os.symlink(d / "a.conf", d / "link")
    got = configs.read_file_sources([str(d), f"single={d / 'b.conf'}", str(d / "a.conf")])
    assert [(f.key, f.content) for f in got] == [
        ("a.conf", b"a"), ("b.conf", b"b"), ("single", b"b"), ("a.conf", b"a")]


def test_file_source_errors(tmp_path):
    with pytest.raises(CliError) as err:
        configs.read_file_sources([f"k={tmp_path}"])
    assert err.value.message == \
        f"error: cannot give a key name for a directory path ({tmp_path})"
    with pytest.raises(CliError) as err:
        configs.read_file_sources([str(tmp_path / "none")])
    assert err.value.message == \
        f"error: error reading {tmp_path / 'none'}: no such file or directory"
    big = tmp_path / "big"
    big.write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(CliError, match="is larger than 1048576 bytes"):
        configs.read_file_sources([str(big)])


# ---- the whole command, without a server ---------------------------------------------------

def run_moor(capsys, *argv) -> tuple[int, str, str]:
    # An unreachable server and no credentials: a client dry run must not need either.
    code = main.main(["--server", "127.0.0.1:1", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_client_dry_run_prints_kubectl_s_manifest(capsys, tmp_path):
    env = tmp_path / "app.env"
    env.write_text("LEVEL=2\n")
    code, out, err = run_moor(capsys, "create", "cm", "web", "-n", "shop", "--from-env-file",
                              str(env), "--dry-run=client", "-o", "yaml")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out) == {"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "web", "namespace": "shop"},
                                   "data": {"LEVEL": "2"}}
    code, out, _ = run_moor(capsys, "create", "secret", "generic", "db", "--from-literal",
                            f"password={SECRET_VALUE}", "--dry-run", "-o", "json")
    assert code == 0
    assert json.loads(out) == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                               "data": {"password": base64.b64encode(
                                   SECRET_VALUE.encode()).decode()}}
    code, out, _ = run_moor(capsys, "create", "secret", "generic", "db", "--from-literal",
                            f"password={SECRET_VALUE}", "--dry-run=client")
    assert (code, out) == (0, "secret/db created (dry run)\n")


@pytest.mark.parametrize("argv, message", [
    pytest.param(["create", "cm", "--dry-run"], "error: exactly one NAME is required, got 0",
                 id="no-name"),
    pytest.param(["create", "cm", "a", "b", "--dry-run"],
                 "error: exactly one NAME is required, got 2", id="two-names"),
    pytest.param(["create", "cm", "a", "--from-literal", "k=1", "--from-literal", "k=2",
                  "--dry-run"], 'error: cannot add key "k", another key by that name already '
                 'exists in Data for ConfigMap "a"', id="duplicate"),
    pytest.param(["create", "secret", "docker-registry", "r", "--dry-run"],
                 "error: either --from-file or the combination of --docker-username, "
                 "--docker-password and --docker-server is required", id="registry"),
    pytest.param(["create", "cm", "a", "--dry-run=maybe"],
                 'error: argument --dry-run: Invalid dry-run value (maybe). Must be "none", '
                 '"server", or "client". (see "moor create configmap --help")', id="dry-run"),
])
def test_create_errors_are_one_line(capsys, argv, message):
    code, out, err = run_moor(capsys, *argv)
    assert (code, out, err) == (1, "", message + "\n")


def test_tls_dry_run_and_a_mismatched_key(capsys, tmp_path):
    cert, key = make_pair()
    _, other = make_pair("other")
    for name, data in (("tls.crt", cert), ("tls.key", key), ("other.key", other)):
        (tmp_path / name).write_bytes(data)
    code, out, _ = run_moor(capsys, "create", "secret", "tls", "web", "--cert",
                            str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key"),
                            "--dry-run", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert code == 0 and doc["type"] == "kubernetes.io/tls"
    assert base64.b64decode(doc["data"]["tls.crt"]) == cert
    code, out, err = run_moor(capsys, "create", "secret", "tls", "web", "--cert",
                              str(tmp_path / "tls.crt"), "--key", str(tmp_path / "other.key"),
                              "--dry-run")
    assert (code, out) == (1, "")
    assert err.startswith("error: failed to load key pair tls: private key does not match "
                          "public key (--cert ")
    assert "PRIVATE KEY" not in err


# ---- tables and describe -------------------------------------------------------------------

def config_map_obj() -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="web", namespace="shop",
                                             creation_timestamp=CREATED,
                                             labels={"app": "web"}))
    cm.data.update({"mode": "fast", "nginx.conf": "worker 1;\nuser www;\n"})
    cm.binary_data["logo.png"] = b"\x89PNG\xff"
    return cm


def secret_obj() -> pb.Secret:
    secret = pb.Secret(metadata=pb.ObjectMeta(name="db", namespace="shop",
                                              creation_timestamp=CREATED,
                                              annotations={"team": "data"}), type="Opaque")
    secret.data.update({"password": SECRET_VALUE.encode(), "user": b"root"})
    return secret


@pytest.mark.parametrize("obj, all_ns, header, row", [
    pytest.param(config_map_obj(), False, ["NAME", "DATA", "AGE"], ["web", "3", "5m"], id="cm"),
    pytest.param(secret_obj(), False, ["NAME", "TYPE", "DATA", "AGE"],
                 ["db", "Opaque", "2", "5m"], id="secret"),
    pytest.param(pb.Secret(metadata=pb.ObjectMeta(name="e", namespace="shop")), True,
                 ["NAMESPACE", "NAME", "TYPE", "DATA", "AGE"],
                 ["shop", "e", "Opaque", "0", "<unknown>"], id="secret-all-namespaces"),
])
def test_tables(obj, all_ns, header, row):
    kind = kinds.kind_of(obj)
    assert printers.table_header(kind, all_namespaces=all_ns) == header
    assert printers.table_row(obj, kind, all_namespaces=all_ns, now=NOW) == row


def test_describe_config_map_as_kubectl():
    assert describe.describe(config_map_obj(), [], now=NOW) == """\
Name:         web
Namespace:    shop
Labels:       app=web
Annotations:  <none>

Data
====
mode:
----
fast

nginx.conf:
----
worker 1;
user www;



BinaryData
====
logo.png: 5 bytes

Events: <none>
"""


def test_describe_secret_shows_sizes_never_values():
    text = describe.describe(secret_obj(), [], now=NOW)
    assert text == f"""\
Name:         db
Namespace:    shop
Labels:       <none>
Annotations:  team: data

Type:  Opaque

Data
====
password:  {len(SECRET_VALUE)} bytes
user:      4 bytes
"""
    assert SECRET_VALUE not in text and "root" not in text


# ---- rollout restart and rotate-key --------------------------------------------------------

def test_restart_edit_stamps_the_template():
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web"))
    assert rollout.restart_edit("web", "2024-05-01T12:00:00Z")(d) == "restarted"
    assert dict(d.spec.template.metadata.annotations) == {
        "kubectl.kubernetes.io/restartedAt": "2024-05-01T12:00:00Z"}
    d.spec.paused = True
    with pytest.raises(CliError, match=r"can't restart paused deployment"):
        rollout.restart_edit("web", "2024-05-01T12:00:01Z")(d)


def test_rotation_line():
    response = api_pb2.RotateSecretsKeyResponse(
        key_id="ab12cd34", resealed=3, key_file="/var/lib/moorage/secrets.key",
        previous_key_ids=["0011aabb", "99887766"])
    assert configs.rotation_message(response) == (
        "secrets key rotated to ab12cd34: 3 Secrets sealed again; copy "
        "/var/lib/moorage/secrets.key to every other control-plane replica (it still holds "
        "the old keys 0011aabb, 99887766 for reading)")
    response.resealed, response.replica = 1, "cp-2"
    assert "1 Secret sealed again; copy /var/lib/moorage/secrets.key (on cp-2) to" in \
        configs.rotation_message(response)
