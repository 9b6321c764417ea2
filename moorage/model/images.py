"""Container image references (`[registry/]path[:tag][@digest]`), as Docker's grammar has them."""

from __future__ import annotations

import functools
import re

from moorage.model.show import show as _show

_DOMAIN_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
# Docker's grammar writes the dash separator as [-]*; -+ accepts the same language without the
# nested-quantifier backtracking that makes a long non-matching string take exponential time.
_PATH_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                      r"[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_IMAGE_NAME = 255


def _split_image(ref: object) -> tuple[str | None, str, str | None, str | None]:
    return _split_image_cached(ref) if type(ref) is str else _split_image_uncached(ref)


@functools.lru_cache(maxsize=4096)
def _split_image_cached(ref: str) -> tuple[str | None, str, str | None, str | None]:
    return _split_image_uncached(ref)


def _split_image_uncached(ref: object) -> tuple[str | None, str, str | None, str | None]:
    """(domain or None, path, tag, digest) exactly as written; ValueError says why not."""
    if ref == "":
        raise ValueError('"" is not a valid image reference')

    def bad(reason: str) -> ValueError:
        return ValueError(f"{_show(ref)} is not a valid image reference: {reason}")

    if not isinstance(ref, str):
        raise bad("must be a string")
    if any(c.isspace() for c in ref):
        raise bad("must not contain whitespace")
    rest, at, digest = ref.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise bad("digest must be 'sha256:' followed by 64 lowercase hex digits")
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a ':' before the last '/' is a registry port, not a tag
        rest, tag = rest[:colon], rest[colon + 1:]
        if tag == "":
            raise bad("tag after ':' is empty")
        if not _TAG_RE.fullmatch(tag):
            raise bad("tag must be 1-128 letters, digits, '_', '.' or '-', "
                      "not starting with '.' or '-'")
    if rest == "":
        raise bad("repository name is missing")
    if len(rest) > _MAX_IMAGE_NAME:
        raise bad(f"repository name is longer than {_MAX_IMAGE_NAME} characters")
    domain, slash, path = rest.partition("/")
    if not slash or not ("." in domain or ":" in domain or domain == "localhost"):
        domain, path = None, rest
    elif not _DOMAIN_RE.fullmatch(domain):
        raise bad(f"registry {_show(domain)} is not a valid host[:port]")
    if not _PATH_RE.fullmatch(path):
        if _PATH_RE.fullmatch(path.lower()):
            raise bad("repository names must be lowercase")
        raise bad(f"repository {_show(path)} must be '/'-separated parts of lowercase letters "
                  "and digits, joined within a part by '.', '_', '__' or dashes")
    return domain, path, tag, digest if at else None


def image_reference(ref: object) -> str | None:
    """None if ref is a valid Docker image reference, else why not."""
    try:
        _split_image(ref)
    except ValueError as e:
        return str(e)
    return None


def parse_image_reference(ref: str) -> tuple[str, str, str | None, str | None]:
    """(domain, repository, tag, digest) with Docker Hub defaults; raises ValueError if invalid."""
    domain, path, tag, digest = _split_image(ref)
    if domain in (None, "index.docker.io"):
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    if tag is None and digest is None:
        tag = "latest"
    return domain, path, tag, digest
