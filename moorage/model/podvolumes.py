"""A pod's volumes as both sides read them: the volume types, hostPath types and emptyDir
media Kubernetes has, and subPathExpr's `$(VAR)` expansion. Pure."""

from __future__ import annotations

import re

# (protobuf field, manifest field) of each volume type, in the order errors list them.
SOURCES = (("config_map", "configMap"), ("secret", "secret"), ("empty_dir", "emptyDir"),
           ("host_path", "hostPath"), ("persistent_volume_claim", "persistentVolumeClaim"))

MEDIUM_DEFAULT, MEDIUM_MEMORY = "", "Memory"
MEDIA = (MEDIUM_DEFAULT, MEDIUM_MEMORY)

# hostPath types (Kubernetes' HostPathType); "" checks nothing.
UNSET = ""
DIRECTORY_OR_CREATE, DIRECTORY = "DirectoryOrCreate", "Directory"
FILE_OR_CREATE, FILE = "FileOrCreate", "File"
SOCKET, CHAR_DEVICE, BLOCK_DEVICE = "Socket", "CharDevice", "BlockDevice"
HOST_PATH_TYPES = (UNSET, DIRECTORY_OR_CREATE, DIRECTORY, FILE_OR_CREATE, FILE, SOCKET,
                   CHAR_DEVICE, BLOCK_DEVICE)

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def source_of(volume) -> str:
    """The protobuf field of the volume's type, or "" when it has none."""
    return next((f for f, _ in SOURCES if volume.HasField(f)), "")


def expand(expr: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """subPathExpr with each `$(VAR)` replaced from `env` (`$$` is a literal `$`), and the
    variables it names that `env` lacks or has empty. Those expand to "", but the kubelet
    then refuses the mount ("missing value for X") rather than mount the whole volume."""
    missing: list[str] = []

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        value = env.get(m.group(1), "")
        if not value and m.group(1) not in missing:
            missing.append(m.group(1))
        return value

    return _VAR.sub(one, expr), sorted(missing)


# The pod fields env[].valueFrom.fieldRef may name (the kubelet's list, less those about
# service accounts and host IPs, which Moorage pods do not have here).
FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
               "status.podIP")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_path_problem(path: str) -> str:
    """Why `path` is not a fieldRef.fieldPath Moorage resolves, or ""."""
    if path in FIELD_PATHS or _SUBSCRIPT.match(path):
        return ""
    return ("Unsupported value: " + repr(path).replace("'", '"') + ": supported values: " +
            ", ".join(f'"{p}"' for p in (*FIELD_PATHS, "metadata.labels['<KEY>']",
                                          "metadata.annotations['<KEY>']")))


def field_value(pod, path: str, pod_ip: str = "") -> str:
    """The value of a fieldRef for `pod` (a pb.Pod); "" for what it lacks."""
    m = _SUBSCRIPT.match(path)
    if m:
        table = pod.metadata.labels if m.group(1) == "labels" else pod.metadata.annotations
        return table.get(m.group(2), "")
    return {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid, "spec.nodeName": pod.spec.node_name,
            "status.podIP": pod_ip or pod.status.pod_ip}.get(path, "")
