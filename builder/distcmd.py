"""`moor push NAME[:TAG]`, `moor pull NAME[:TAG|@DIGEST]`, `moor login SERVER -u USER`: the
build machine's store against registries, printing what `docker push|pull|login` print."""

from __future__ import annotations

import dataclasses
import getpass
import sys

from builder import distribution, registries
from builder.errors import BuildError
from builder.paths import BuildRoot
from builder.registryhttp import RegistryHTTPError, Session
from nodeagent.runtime.images.dockerconfig import registry_host
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.registry import Credentials, RegistryConfig
from nodeagent.runtime.images.store import Store


def _say(line: str) -> None:
    print(line, flush=True)


def _store(root: BuildRoot, what: str) -> Store:
    try:
        return Store(root.images)
    except OSError as e:
        raise BuildError(f"{what}: cannot open the image store {root.images}: "
                         f"{e.strerror}") from None


def _normal(name: str, what: str) -> str:
    try:
        return str(parse_reference(name))
    except ReferenceError as e:
        raise BuildError(f"{what}: {e}") from None


def require_registry(name: str, what: str) -> None:
    """A push needs the registry in the name: one without (`web:1`) would go to Docker Hub,
    which a build machine without Internet cannot reach and an operator rarely means (the
    cluster's registry is the usual target); `docker.io/web:1` says Docker Hub on purpose."""
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return
    raise BuildError(f"{what}: {name!r} names no registry, so it would go to Docker Hub: "
                     f"name one (REGISTRY[:PORT]/{name}), or write docker.io/{name} to mean "
                     "Docker Hub")


def push(args) -> int:
    root = BuildRoot.from_args(args.root)
    what = f"push {args.name}"
    config = registries.load(root, args.insecure_registry)
    ref = _normal(args.name, what)
    store = _store(root, what)
    image = store.get(ref)
    if image is None:
        # Docker's words, with the repository as Docker shows it (`web`, `reg:5000/web`).
        from builder.imagecmd import familiar

        raise BuildError("An image does not exist locally with the tag: "
                         + familiar(parse_reference(ref).name))
    require_registry(args.name, what)
    distribution.push(store, image, ref, config, None if args.quiet else _say)
    if args.quiet:
        _say(ref)
    return 0


def pull(args) -> int:
    root = BuildRoot.from_args(args.root)
    what = f"pull {args.name}"
    config = registries.load(root, args.insecure_registry)
    ref = _normal(args.name, what)
    store = _store(root, what)
    before = store.get(ref)
    image = distribution.pull(store, ref, config, None if args.quiet else _say)
    if not args.quiet:
        _say(f"Digest: {image.index_digest or image.manifest_digest}")
        if before is not None and before.manifest_digest == image.manifest_digest:
            _say(f"Status: Image is up to date for {args.name}")
        else:
            _say(f"Status: Downloaded newer image for {args.name}")
    _say(ref)
    return 0


def _password(args) -> str:
    if args.password is not None:
        if args.password_stdin:
            raise BuildError("login: --password and --password-stdin are exclusive")
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. "
                         "Use --password-stdin.\n")
        return args.password
    if not args.password_stdin and sys.stdin.isatty():
        return getpass.getpass("Password: ")
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise BuildError("login: no password on stdin")
    return password


def check_login(config: RegistryConfig, server: str, username: str, password: str) -> None:
    """GET /v2/ with the credentials (Basic, or a token from the registry's token server);
    RegistryHTTPError if the registry refuses them."""
    host = registry_host(server)
    endpoint = registries.push_endpoint(config, host)
    creds = Credentials(username, password)
    config = dataclasses.replace(config, credentials={**config.credentials, host: creds,
                                                      endpoint.host: creds})
    session = Session(config, endpoint, host, scopes=())
    try:
        session.request("GET", session.url("/v2/"), ok=(200,), what="GET /v2/")
    finally:
        session.close()


def login(args) -> int:
    root = BuildRoot.from_args(args.root)
    what = f"login {args.server}"
    config = registries.load(root, args.insecure_registry)
    password = _password(args)
    try:
        check_login(config, args.server, args.username, password)
    except RegistryHTTPError as e:
        raise BuildError(f"{what}: {e}") from None
    try:
        registries.save_login(root, args.server, args.username, password)
    except OSError as e:
        raise BuildError(f"{what}: cannot write {root.registries}: {e.strerror}") from None
    _say("Login Succeeded")
    return 0
