"""Compose configs and secrets to ConfigMaps, Secrets and one-file mounts: every supported
form, Swarm's defaults, and every error (none of which may show a secret's value)."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest

from moorage import manifest
from moorage.manifest import composeconfigs
from moorage.manifest.compose import STACK_LABEL, ComposeError, translate
from moorage.model import configs

STACK = "moortest-shop"
SECRET_VALUE = "hunter2-do-not-print"
ENV = {"DB_PW": SECRET_VALUE, "APP_CONF": "level=debug\n"}


def reader(files: dict[str, bytes], seen: list[str] | None = None):
    """A Reader over `files` that records the paths it was asked for."""
    def read(path: str) -> bytes:
        if seen is not None:
            seen.append(path)
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]
    return read


def translated(text: str, files: dict[str, bytes] | None = None, source: str = "compose.yaml"):
    return translate(textwrap.dedent(text), STACK, source=source, env=ENV,
                     read=reader(files or {}))


def objects(text: str, files: dict[str, bytes] | None = None) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in translated(text, files).objects}


def pod(text: str, files: dict[str, bytes] | None = None, service: str = "web") -> dict:
    return objects(text, files)[("Deployment", service)]["spec"]["template"]["spec"]


def problems(text: str, files: dict[str, bytes] | None = None) -> list[str]:
    with pytest.raises(ComposeError) as err:
        translated(text, files)
    return err.value.problems


FULL = """\
    configs:
      nginx.conf: {file: ./conf/nginx.conf}
      app_cfg: {environment: APP_CONF}
      motd: {content: "hello\\n"}
    secrets:
      db_pw: {environment: DB_PW}
      tls_key: {file: /etc/ssl/app.key}
    services:
      web:
        image: nginx
        configs: [nginx.conf, app_cfg]
        secrets: [db_pw, tls_key]
    """
FULL_FILES = {"app/conf/nginx.conf": b"events {}\n", "/etc/ssl/app.key": b"\x00key\xff"}


def test_definitions_become_labelled_objects_of_the_stack():
    t = translate(textwrap.dedent(FULL), STACK, source="app/compose.yaml", env=ENV,
                  read=reader(FULL_FILES))
    got = {(o["kind"], o["metadata"]["name"]): o for o in t.objects}
    for kind, name in (("ConfigMap", "nginx-conf"), ("ConfigMap", "app-cfg"),
                       ("ConfigMap", "motd"), ("Secret", "db-pw"), ("Secret", "tls-key")):
        meta = got[(kind, name)]["metadata"]
        assert meta == {"name": name, "namespace": STACK, "labels": {STACK_LABEL: STACK}}
    assert got[("ConfigMap", "nginx-conf")]["data"] == {"nginx.conf": "events {}\n"}
    assert got[("ConfigMap", "app-cfg")]["data"] == {"app_cfg": "level=debug\n"}
    assert got[("ConfigMap", "motd")]["data"] == {"motd": "hello\n"}
    pw = got[("Secret", "db-pw")]
    assert pw["type"] == configs.OPAQUE
    assert pw["data"] == {"db_pw": base64.b64encode(SECRET_VALUE.encode()).decode()}
    assert base64.b64decode(got[("Secret", "tls-key")]["data"]["tls_key"]) == b"\x00key\xff"
    assert t.external == []


def test_files_are_relative_to_the_compose_files_directory():
    seen: list[str] = []
    translate(textwrap.dedent(FULL), STACK, source="app/compose.yaml", env=ENV,
              read=reader(FULL_FILES, seen))
    assert seen == ["app/conf/nginx.conf", "/etc/ssl/app.key"]


def test_a_non_utf8_config_goes_to_binary_data():
    got = objects("configs: {logo: {file: logo.png}}\nservices: {web: {image: b}}",
                  {"logo.png": b"\x89PNG\r\n\x1a\n"})
    cm = got[("ConfigMap", "logo")]
    assert "data" not in cm
    assert base64.b64decode(cm["binaryData"]["logo"]) == b"\x89PNG\r\n\x1a\n"


def test_unreferenced_definitions_are_created_too():
    # As `docker stack deploy` creates every secret of the file.
    got = objects("secrets: {db_pw: {environment: DB_PW}}\nservices: {web: {image: b}}")
    assert ("Secret", "db-pw") in got
    assert "volumes" not in got[("Deployment", "web")]["spec"]["template"]["spec"]
    assert "annotations" not in got[("Deployment", "web")]["metadata"]


def test_short_form_mounts_one_file_each_with_swarms_defaults():
    spec = pod(FULL, {"conf/nginx.conf": b"x", "/etc/ssl/app.key": b"k"})
    mounts = spec["containers"][0]["volumeMounts"]
    assert [(m["mountPath"], m["name"], m["subPath"], m["readOnly"]) for m in mounts] == [
        ("/nginx.conf", "config-nginx-conf", "nginx.conf", True),
        ("/app_cfg", "config-app-cfg", "app_cfg", True),
        ("/run/secrets/db_pw", "secret-db-pw", "db_pw", True),
        ("/run/secrets/tls_key", "secret-tls-key", "tls_key", True)]
    assert spec["volumes"] == [
        {"name": "config-nginx-conf", "configMap": {"name": "nginx-conf", "items": [
            {"key": "nginx.conf", "path": "nginx.conf", "mode": 0o444}]}},
        {"name": "config-app-cfg", "configMap": {"name": "app-cfg", "items": [
            {"key": "app_cfg", "path": "app_cfg", "mode": 0o444}]}},
        {"name": "secret-db-pw", "secret": {"secretName": "db-pw", "items": [
            {"key": "db_pw", "path": "db_pw", "mode": 0o444}]}},
        {"name": "secret-tls-key", "secret": {"secretName": "tls-key", "items": [
            {"key": "tls_key", "path": "tls_key", "mode": 0o444}]}}]


def test_a_deployment_that_mounts_files_rolls_when_they_change():
    d = objects(FULL, {"conf/nginx.conf": b"x", "/etc/ssl/app.key": b"k"})[("Deployment", "web")]
    assert d["metadata"]["annotations"] == {configs.RESTART_ON_CHANGE: "true"}


@pytest.mark.parametrize("section, ref, target, mode", [
    pytest.param("secrets", "{source: s, target: /etc/app/pw}", "/etc/app/pw", 0o444,
                 id="secret-absolute"),
    pytest.param("secrets", "{source: s, target: app/pw}", "/run/secrets/app/pw", 0o444,
                 id="secret-relative"),
    pytest.param("configs", "{source: s, target: etc/app.ini}", "/etc/app.ini", 0o444,
                 id="config-relative"),
    pytest.param("configs", "{source: s, target: /etc/app.ini}", "/etc/app.ini", 0o444,
                 id="config-absolute"),
    pytest.param("secrets", "{source: s, target: ./x//y}", "/run/secrets/x/y", 0o444,
                 id="normalised"),
    pytest.param("secrets", "{source: s, mode: 0440}", "/run/secrets/s", 0o440,
                 id="mode-yaml-octal"),
    pytest.param("secrets", "{source: s, mode: '0440'}", "/run/secrets/s", 0o440,
                 id="mode-octal-string"),
    pytest.param("secrets", "{source: s, mode: '0o400'}", "/run/secrets/s", 0o400,
                 id="mode-0o-string"),
    pytest.param("configs", "{source: s, mode: 288}", "/s", 0o440, id="mode-decimal"),
    pytest.param("configs", "{source: s, uid: '0', gid: 0}", "/s", 0o444, id="root-owner"),
])
def test_long_form(section, ref, target, mode):
    spec = pod(f"{section}: {{s: {{environment: DB_PW}}}}\n"
               f"services: {{web: {{image: b, {section}: [{ref}]}}}}")
    (m,) = spec["containers"][0]["volumeMounts"]
    (v,) = spec["volumes"]
    items = (v.get("secret") or v["configMap"])["items"]
    assert m["mountPath"] == target and items == [{"key": "s", "path": "s", "mode": mode}]
    assert m["subPath"] == "s"


def test_one_object_mounted_twice_shares_a_volume_with_a_file_per_mode():
    spec = pod("""\
        secrets: {db_pw: {environment: DB_PW}}
        services:
          web:
            image: b
            secrets:
              - db_pw
              - {source: db_pw, target: /etc/pw}
              - {source: db_pw, target: /etc/pw-owner, mode: 0400}
        """)
    (v,) = spec["volumes"]
    assert v["secret"]["items"] == [{"key": "db_pw", "path": "db_pw", "mode": 0o444},
                                    {"key": "db_pw", "path": "db_pw-400", "mode": 0o400}]
    assert [(m["mountPath"], m["subPath"]) for m in spec["containers"][0]["volumeMounts"]] == [
        ("/run/secrets/db_pw", "db_pw"), ("/etc/pw", "db_pw"), ("/etc/pw-owner", "db_pw-400")]


def test_every_service_gets_its_own_volumes():
    text = ("secrets: {db_pw: {environment: DB_PW}}\n"
            "services: {web: {image: b, secrets: [db_pw]}, api: {image: b, secrets: [db_pw]}}")
    for service in ("web", "api"):
        assert [v["name"] for v in pod(text, service=service)["volumes"]] == ["secret-db-pw"]


def test_name_overrides_and_the_key():
    got = objects("""\
        secrets:
          pw: {environment: DB_PW, name: myapp_db_pw_v2}
          odd: {environment: DB_PW, name: "db pw"}
        services: {web: {image: b, secrets: [pw, odd]}}
        """)
    # The key is the name Swarm knows it by when that is a valid key, else the object's name.
    assert list(got[("Secret", "myapp-db-pw-v2")]["data"]) == ["myapp_db_pw_v2"]
    assert list(got[("Secret", "db-pw")]["data"]) == ["db-pw"]
    mounts = got[("Deployment", "web")]["spec"]["template"]["spec"]["containers"][0][
        "volumeMounts"]
    assert [m["mountPath"] for m in mounts] == ["/run/secrets/pw", "/run/secrets/odd"]


def test_external_objects_are_mounted_not_created():
    t = translated("""\
        configs: {site: {external: true}}
        secrets:
          tls: {external: true, name: prod_tls}
          tls_again: {external: true, name: prod_tls}
        services: {web: {image: b, configs: [site], secrets: [tls, {source: tls_again,
                   target: /etc/tls.key}]}}
        """)
    assert [o["kind"] for o in t.objects] == ["Namespace", "Deployment", "Service"]
    assert [(d.kind, d.name, d.key, d.path) for d in t.external] == [
        ("ConfigMap", "site", "site", "configs.site"),
        ("Secret", "prod-tls", "prod_tls", "secrets.tls"),
        ("Secret", "prod-tls", "prod_tls", "secrets.tls_again")]
    spec = t.objects[1]["spec"]["template"]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["config-site", "secret-prod-tls"]
    assert spec["volumes"][1]["secret"] == {"secretName": "prod-tls", "items": [
        {"key": "prod_tls", "path": "prod_tls", "mode": 0o444}]}


def test_a_long_name_makes_a_valid_volume_name():
    long = "a" * 60
    spec = pod(f"configs: {{{long}: {{content: x}}}}\n"
               f"services: {{web: {{image: b, configs: [{long}]}}}}")
    name = spec["volumes"][0]["name"]
    assert len(name) <= 63 and name.startswith("config-aaa")
    assert name == composeconfigs.Defined("config", long, long, "").volume


def test_objects_pass_moorage_validation():
    t = translate(textwrap.dedent("""\
        configs: {app.ini: {content: "a=1"}, bin: {file: bin}}
        secrets: {db_pw: {environment: DB_PW}}
        services:
          web:
            image: b
            configs: [app.ini, {source: bin, target: /etc/bin, mode: 0400}]
            secrets: [db_pw, {source: db_pw, target: /etc/pw, mode: 0400, uid: "0"}]
        """), STACK, env=ENV, read=reader({"bin": b"\xff"}))
    docs = manifest.parse([(f"c#{i}", json.dumps(o)) for i, o in enumerate(t.objects)])
    assert [type(d.obj).__name__ for d in docs] == [
        "Namespace", "ConfigMap", "ConfigMap", "Secret", "Deployment", "Service"]


@pytest.mark.parametrize("value, want", [
    (None, 0o444), (0o440, 0o440), (0, 0), ("0440", 0o440), ("0o777", 0o777), ("644", 0o644)])
def test_file_mode(value, want):
    assert composeconfigs.file_mode(value) == want


@pytest.mark.parametrize("text, want", [
    ("a", "a"), ("db_pw", "db-pw"), ("My.App__Key", "my-app-key"), ("-x-", "x"), ("___", ""),
    ("b" * 70, "b" * 63)])
def test_object_name(text, want):
    assert composeconfigs.object_name(text) == want


SERVICE = "services: {web: {image: b}}\n"


@pytest.mark.parametrize("text, want", [
    pytest.param("secrets: [db_pw]\n" + SERVICE,
                 ["compose.yaml: secrets: want a mapping of secret names"], id="section-type"),
    pytest.param("secrets: {db_pw: }\nservices: {web: {image: b, secrets: [db_pw]}}",
                 ["compose.yaml: secrets.db_pw: want a mapping with file or environment, or "
                  "external: true"], id="definition-type"),
    pytest.param("secrets: {db_pw: {file: pw, driver: vault, x-note: 1}}\n" + SERVICE,
                 ["compose.yaml: secrets.db_pw.driver: not supported by Moorage"],
                 id="secret-driver"),
    pytest.param("secrets: {db_pw: {file: pw, labels: {a: b}}}\n" + SERVICE,
                 ["compose.yaml: secrets.db_pw.labels: not supported by Moorage"],
                 id="secret-labels"),
    pytest.param("configs: {c: {content: x, template_driver: golang}}\n" + SERVICE,
                 ["compose.yaml: configs.c.template_driver: not supported by Moorage"],
                 id="config-template-driver"),
    pytest.param("secrets: {s: {content: x}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.content: not supported by Moorage",
                  "compose.yaml: secrets.s: needs file or environment, or external: true"],
                 id="secret-content"),
    pytest.param("configs: {c: {name: x}}\n" + SERVICE,
                 ["compose.yaml: configs.c: needs file, environment or content, or external: "
                  "true"], id="no-source"),
    pytest.param("configs: {c: {file: c.conf, content: x}}\n" + SERVICE,
                 ["compose.yaml: configs.c: give only one of file, content"], id="two-sources"),
    pytest.param("secrets: {s: {external: true, environment: DB_PW}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.environment: may not be given with external: true"],
                 id="external-and-source"),
    pytest.param("secrets: {s: {external: 'yes'}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.external: 'yes': want true or false"],
                 id="external-type"),
    pytest.param("secrets: {s: {external: {name: x}}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.external: want true or false; give the existing "
                  "secret's name in `name`"], id="external-legacy"),
    pytest.param("secrets: {s: {environment: DB_PW, name: 5}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.name: want a non-empty string"], id="name-type"),
    pytest.param("secrets: {s: {environment: DB_PW, name: ___}}\n" + SERVICE,
                 ["compose.yaml: secrets.s.name: '___' has no letter or digit"],
                 id="name-empty"),
    pytest.param("secrets: {db_pw: {environment: DB_PW}, db-pw: {environment: DB_PW}}\n"
                 + SERVICE,
                 ["compose.yaml: secrets.db-pw: becomes the Secret 'db-pw', as secrets.db_pw "
                  "does; rename one"], id="collision"),
    pytest.param("configs: {a: {content: x}, b: {content: y, name: A}}\n" + SERVICE,
                 ["compose.yaml: configs.b: becomes the ConfigMap 'a', as configs.a does"],
                 id="collision-by-name"),
    pytest.param("secrets: {pw: {external: true}, p_w: {environment: DB_PW, name: pw}}\n"
                 + SERVICE,
                 ["compose.yaml: secrets.p_w: becomes the Secret 'pw', as secrets.pw does"],
                 id="collision-with-external"),
    pytest.param("configs: {c: {file: missing.conf}}\n" + SERVICE,
                 ["compose.yaml: configs.c.file: cannot read 'missing.conf': No such file or "
                  "directory"], id="file-missing"),
    pytest.param("configs: {c: {file: 5}}\n" + SERVICE,
                 ["compose.yaml: configs.c.file: want the path of a file"], id="file-type"),
    pytest.param("secrets: {db_pw: {environment: NOT_SET}}\n" + SERVICE,
                 ["compose.yaml: secrets.db_pw.environment: secret 'db_pw' reads the variable "
                  "'NOT_SET', which is not set in the environment of moor stack deploy"],
                 id="variable-unset"),
    pytest.param("configs: {c: {environment: [A]}}\n" + SERVICE,
                 ["compose.yaml: configs.c.environment: want the name of an environment "
                  "variable"], id="variable-type"),
    pytest.param("configs: {c: {content: 5}}\n" + SERVICE,
                 ["compose.yaml: configs.c.content: want a string"], id="content-type"),
    pytest.param("configs: {c: {file: big}}\n" + SERVICE,
                 ["compose.yaml: configs.c.file: over 1048576 bytes, the most a ConfigMap "
                  "holds"], id="too-big"),
    pytest.param("secrets: {db_pw: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: db_pw}}",
                 ["compose.yaml: services.web.secrets: want a list of secret names"],
                 id="refs-type"),
    pytest.param("services: {web: {image: b, secrets: [db_pw]}}",
                 ["compose.yaml: services.web.secrets[0]: no secret named 'db_pw' in this "
                  "file's top-level secrets"], id="undefined"),
    pytest.param("secrets: {db_pw: {environment: DB_PW}}\n"
                 "services: {web: {image: b, configs: [db_pw]}}",
                 ["compose.yaml: services.web.configs[0]: no config named 'db_pw' in this "
                  "file's top-level configs"], id="secret-is-not-a-config"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [{target: /x}]}}",
                 ["compose.yaml: services.web.secrets[0].source: required"], id="no-source-ref"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [{source: s, driver: x}]}}",
                 ["compose.yaml: services.web.secrets[0].driver: not supported by Moorage"],
                 id="ref-key"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [5]}}",
                 ["compose.yaml: services.web.secrets[0]: want a secret name or a mapping"],
                 id="ref-type"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [{source: s, uid: '1000'}]}}",
                 ["compose.yaml: services.web.secrets[0].uid: '1000': only 0 is supported "
                  "(Moorage mounts secrets owned by root)"], id="uid"),
    pytest.param("configs: {c: {content: x}}\n"
                 "services: {web: {image: b, configs: [{source: c, gid: 33}]}}",
                 ["compose.yaml: services.web.configs[0].gid: 33: only 0 is supported"],
                 id="gid"),
    pytest.param("configs: {c: {content: x}}\n"
                 "services: {web: {image: b, configs: [{source: c, mode: 777}]}}",
                 ["compose.yaml: services.web.configs[0].mode: 777 is 0o1411, over 0777: write "
                  "a mode in octal with a leading 0"], id="mode-decimal-777"),
    pytest.param("configs: {c: {content: x}}\n"
                 "services: {web: {image: b, configs: [{source: c, mode: rw}]}}",
                 ["compose.yaml: services.web.configs[0].mode: 'rw': want a file mode"],
                 id="mode-text"),
    pytest.param("configs: {c: {content: x}}\n"
                 "services: {web: {image: b, configs: [{source: c, mode: true}]}}",
                 ["compose.yaml: services.web.configs[0].mode: True: want a file mode"],
                 id="mode-bool"),
    pytest.param("configs: {c: {content: x}}\n"
                 "services: {web: {image: b, configs: [{source: c, target: /etc/../x}]}}",
                 ["compose.yaml: services.web.configs[0].target: '/etc/../x': must not contain "
                  "'..'"], id="target-dotdot"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [{source: s, target: /}]}}",
                 ["compose.yaml: services.web.secrets[0].target: '/': a file cannot be mounted "
                  "at /"], id="target-root"),
    pytest.param("secrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [{source: s, target: 5}]}}",
                 ["compose.yaml: services.web.secrets[0].target: want a path"], id="target-type"),
    pytest.param("secrets: {a: {environment: DB_PW}, b: {environment: DB_PW}}\n"
                 "services: {web: {image: b, secrets: [a, {source: b, target: a}]}}",
                 ["compose.yaml: services.web.secrets[1]: '/run/secrets/a' is also where "
                  "services.web.secrets[0] is mounted"], id="same-target"),
    pytest.param("configs: {c: {content: x}}\nsecrets: {s: {environment: DB_PW}}\n"
                 "services: {web: {image: b, configs: [{source: c, target: /etc/app}], "
                 "secrets: [{source: s, target: /etc/app/key}]}}",
                 ["compose.yaml: services.web.secrets[0]: '/etc/app/key' is inside '/etc/app', "
                  "where services.web.configs[0] is mounted"], id="nested-targets"),
])
def test_errors_name_the_key(text, want):
    got = problems(text, {"big": b"x" * (configs.MAX_DATA_BYTES + 1),
                          "pw": SECRET_VALUE.encode()})
    assert len(got) == len(want), got
    for line, prefix in zip(got, want):
        assert line.startswith(prefix), line
        assert "\n" not in line
        assert SECRET_VALUE not in line


def test_without_a_reader_a_file_is_a_problem():
    with pytest.raises(ComposeError) as err:
        translate("configs: {c: {file: c.conf}}\n" + SERVICE, STACK)
    assert err.value.problems == ["compose.yaml: configs.c.file: files are read by `moor stack "
                                  "deploy`; none can be read here"]


def test_problems_with_configs_and_services_are_reported_together():
    got = problems("secrets: {s: {file: pw, driver: x}}\n"
                   "services: {web: {image: b, cap_add: [], secrets: [t]}}", {"pw": b"v"})
    assert got == ["compose.yaml: secrets.s.driver: not supported by Moorage",
                   "compose.yaml: services.web.cap_add: not supported by Moorage",
                   "compose.yaml: services.web.secrets[0]: no secret named 't' in this file's "
                   "top-level secrets"]
