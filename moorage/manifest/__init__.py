"""Reading manifests: bounded YAML, strict conversion to the API's objects, the checks and
defaults Kubernetes applies, and Compose files as a second front end."""

from moorage.manifest.parse import Document, ManifestError, load_documents, located, parse

__all__ = ["Document", "ManifestError", "load_documents", "located", "parse"]
