"""Image references: parse a user's string into a normalised registry/repository/tag/digest."""

from __future__ import annotations

from dataclasses import dataclass

from moorage.model.images import parse_image_reference

DOCKER_HUB = "docker.io"
# docker.io is a name, not a host: the distribution API for Docker Hub lives here.
DOCKER_HUB_API_HOST = "registry-1.docker.io"


class ReferenceError(ValueError):
    """The string is not a valid image reference; the message says why."""


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.repository}"

    @property
    def object(self) -> str:
        """What goes after /manifests/ in a registry URL: the digest wins over the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text


def parse_reference(text: str) -> Reference:
    """`nginx:1.14.2` -> docker.io/library/nginx:1.14.2; raises ReferenceError if invalid."""
    try:
        domain, repository, tag, digest = parse_image_reference(text)
    except ValueError as e:
        raise ReferenceError(str(e)) from None
    return Reference(domain, repository, tag, digest)
