"""A Deployment's shapes that the controller, the CLI and explain share: the labels and
annotations it writes, Kubernetes' defaults, the template hash, and the revision history
format (`moorage.io/revision-history`: revision -> {"hash", "template"} as JSON)."""

from __future__ import annotations

import hashlib
import json

from google.protobuf import json_format

from moorage.v1 import objects_pb2 as pb

TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
HISTORY_ANNOTATION = "moorage.io/revision-history"
RECREATE, ROLLING_UPDATE = "Recreate", "RollingUpdate"
DEFAULT_MAX_SURGE = DEFAULT_MAX_UNAVAILABLE = "25%"
DEFAULT_HISTORY_LIMIT = 10
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
# Consonants and digits only, as Kubernetes does, so hashes never spell words.
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HASH_LENGTH = 10


def template_hash(template: pb.PodTemplateSpec) -> str:
    """A short hash of the template that is stable across processes (deterministic bytes)."""
    digest = int.from_bytes(hashlib.sha256(template.SerializeToString(deterministic=True))
                            .digest()[:8], "big")
    chars = []
    for _ in range(HASH_LENGTH):
        digest, i = divmod(digest, len(HASH_ALPHABET))
        chars.append(HASH_ALPHABET[i])
    return "".join(chars)


def desired_replicas(d: pb.Deployment) -> int:
    return d.spec.replicas if d.spec.HasField("replicas") else 1


def read_history(d: pb.Deployment) -> dict[int, dict]:
    """revision -> {"hash": ..., "template": <template as JSON>} from the annotation."""
    try:
        raw = json.loads(d.metadata.annotations.get(HISTORY_ANNOTATION, "") or "{}")
        return {int(rev): entry for rev, entry in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def template_of(entry: dict) -> pb.PodTemplateSpec:
    return json_format.ParseDict(entry["template"], pb.PodTemplateSpec())


def history_entry(hash_: str, template: pb.PodTemplateSpec) -> dict:
    return {"hash": hash_, "template": json_format.MessageToDict(
        template, preserving_proto_field_name=False)}


def format_history(history: dict[int, dict]) -> str:
    return json.dumps({str(r): history[r] for r in sorted(history)}, separators=(",", ":"),
                      sort_keys=True)
