"""The build machine's registry settings (builder/registries.py): registries.json, Docker's
config.json, flags, where a push goes, and logins written 0600."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from builder import registries
from builder.errors import BuildError
from builder.paths import BuildRoot
from builder.registryhttp import registry_error
from nodeagent.runtime.images.registry import Credentials, RegistryConfig


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return BuildRoot(str(tmp_path / "build"))


def write(root: BuildRoot, doc) -> None:
    os.makedirs(root.root, exist_ok=True)
    with open(root.registries, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_nothing_configured(root):
    config = registries.load(root, ["reg.example:5000"])
    assert config.mirrors == {} and config.credentials == {}
    assert config.insecure == {"reg.example:5000"}


def test_registries_json_and_docker_config_merge(root, tmp_path):
    os.makedirs(tmp_path / "docker")
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:h")},
        "reg.example:5000": {"auth": b64("old:o")}}, "credsStore": "desktop"}))
    write(root, {"mirrors": {"registry.cluster.local:5000": ["http://10.0.0.5:30500"]},
                 "insecure": ["registry.cluster.local:5000", "10.0.0.5:30500"],
                 "auths": {"reg.example:5000": {"username": "ci", "password": "p"},
                           "https://other.example": {"auth": b64("u:with:colon")}}})
    config = registries.load(root, ["flag.example"])
    assert config.mirrors == {"registry.cluster.local:5000": ["http://10.0.0.5:30500"]}
    assert config.insecure == {"registry.cluster.local:5000", "10.0.0.5:30500", "flag.example"}
    assert config.credentials == {"docker.io": Credentials("hub", "h"),
                                  "reg.example:5000": Credentials("ci", "p"),  # ours win
                                  "other.example": Credentials("u", "with:colon")}


@pytest.mark.parametrize("doc, want", [
    pytest.param("{nope", "registries.json: cannot read: Expecting property name",
                 id="not-json"),
    pytest.param([], "registries.json: want a JSON object", id="not-object"),
    pytest.param({"mirors": {}}, "registries.json: mirors: unknown key", id="typo"),
    pytest.param({"mirrors": {"a": "http://x"}}, "registries.json: mirrors.a: want a list",
                 id="mirror-not-list"),
    pytest.param({"insecure": "a"}, "registries.json: insecure: want a list", id="insecure"),
    pytest.param({"auths": {"a": {"auth": "%%%"}}}, "registries.json: auths.a.auth: not base64",
                 id="auth"),
    pytest.param({"auths": {"a": {"username": "u"}}}, None, id="empty-password-ok"),
    pytest.param({"auths": {"a": {}}}, "registries.json: auths.a: want a username",
                 id="no-user"),
    pytest.param({"mirrors": {"a": ["http://m"]}},
                 "registries.json: mirror http://m for a uses plain HTTP but m is not listed",
                 id="http-mirror-not-insecure"),
])
def test_bad_registries_json_names_the_file_and_key(root, doc, want):
    write(root, doc)
    if want is None:
        registries.load(root)
        return
    with pytest.raises(BuildError) as err:
        registries.load(root)
    assert str(err.value).startswith(root.registries.rsplit("/", 1)[0])
    assert want in str(err.value)


@pytest.mark.parametrize("mirrors, insecure, domain, want", [
    pytest.param({}, (), "reg.example:5000", "https://reg.example:5000", id="itself"),
    pytest.param({}, ("reg.example:5000",), "reg.example:5000", "http://reg.example:5000",
                 id="insecure"),
    pytest.param({"registry.cluster.local:5000": ["http://10.0.0.5:30500"]},
                 ("10.0.0.5:30500",), "registry.cluster.local:5000", "http://10.0.0.5:30500",
                 id="a-name-and-its-address"),
    pytest.param({"docker.io": ["https://mirror.example"]}, (), "docker.io",
                 "https://registry-1.docker.io", id="hub-mirrors-are-caches"),
])
def test_push_endpoint(mirrors, insecure, domain, want):
    config = RegistryConfig(mirrors=mirrors, insecure=frozenset(insecure))
    assert registries.push_endpoint(config, domain).base_url == want


@pytest.mark.parametrize("domain, want", [
    ("localhost:5000", "http"), ("127.0.0.1:5000", "http"), ("127.1.2.3", "http"),
    ("[::1]:5000", "http"), ("reg.example:5000", "https"), ("10.0.0.1:5000", "https"),
])
def test_loopback_registries_are_plain_http(root, domain, want):
    config = registries.load(root)
    assert registries.push_endpoint(config, domain).base_url.split(":")[0] == want
    # Agents keep listing every insecure registry.
    assert RegistryConfig().endpoints(domain)[-1].base_url.startswith("https://")


def test_save_login_keeps_other_settings_and_is_0600(root):
    write(root, {"mirrors": {"r:5000": ["http://10.0.0.5:30500"]}, "insecure": ["10.0.0.5:30500"]})
    os.chmod(root.registries, 0o644)
    assert registries.save_login(root, "https://reg.example:5000/", "ci", "s3cret") == \
        "reg.example:5000"
    assert stat.S_IMODE(os.stat(root.registries).st_mode) == 0o600
    with open(root.registries) as f:
        doc = json.load(f)
    assert doc["mirrors"] == {"r:5000": ["http://10.0.0.5:30500"]}
    assert doc["auths"] == {"reg.example:5000": {"auth": b64("ci:s3cret")}}
    assert registries.load(root).credentials["reg.example:5000"] == Credentials("ci", "s3cret")
    assert sorted(os.listdir(root.root)) == ["registries.json", "registries.json.lock"]


def test_save_login_to_docker_hub(root):
    registries.save_login(root, "index.docker.io", "me", "pw")
    assert registries.load(root).credentials == {"docker.io": Credentials("me", "pw")}


@pytest.mark.parametrize("status, body, want", [
    pytest.param(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"'
                      b',"detail":null}]}', "unauthorized: authentication required", id="401"),
    pytest.param(400, b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to '
                      b'registry"}]}', "manifest blob unknown: blob unknown to registry",
                 id="two-words"),
    pytest.param(403, b'{"errors":[{"code":"DENIED","message":"a"},{"code":"DENIED"}]}',
                 "denied: a; denied", id="several"),
    pytest.param(502, b"<html>bad gateway</html>", "HTTP 502 Bad Gateway", id="not-json"),
])
def test_registry_error_in_dockers_words(status, body, want):
    assert registry_error(status, body, "Bad Gateway")[0] == want
