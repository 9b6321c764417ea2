"""Converts between Kubernetes-shaped dicts (YAML/JSON) and the protobuf objects, strictly.

`from_dict` walks a document alongside the message descriptor, so the schema is the .proto
itself: every unknown field, Kubernetes field Moorage does not support, or wrong type becomes a
`FieldError` naming its path; nothing is silently dropped. `to_dict` gives kubectl's shapes.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import re
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor as FD

from moorage.v1 import objects_pb2 as pb

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Maps whose values are quantities: Kubernetes accepts `cpu: 1` or `cpu: 0.5` there.
_QUANTITY_MAPS = {
    "moorage.v1.ResourceRequirements.limits",
    "moorage.v1.ResourceRequirements.requests",
    "moorage.v1.NodeStatus.capacity",
    "moorage.v1.NodeStatus.allocatable",
    "moorage.v1.VolumeResourceRequirements.requests",
    "moorage.v1.VolumeResourceRequirements.limits",
    "moorage.v1.PersistentVolumeSpec.capacity",
    "moorage.v1.PersistentVolumeClaimStatus.capacity",
}

# A Secret's values: errors about them say what shape was found, never the value.
_SENSITIVE_MAPS = {"moorage.v1.Secret.data", "moorage.v1.Secret.string_data"}

# Read-only metadata that `moor get -o yaml` prints; accepted in manifests so that output can be
# applied back, and ignored (resourceVersion is checked as a precondition by the server).
SERVER_SET_METADATA = {"uid", "creationTimestamp", "generation", "resourceVersion",
                       "deletionTimestamp", "deletionGracePeriodSeconds"}

# Valid Kubernetes fields that Moorage does not implement. Naming them gives a clearer error
# than "unknown field" for a manifest that works on Kubernetes.
K8S_UNSUPPORTED: dict[str, frozenset[str]] = {
    "moorage.v1.ObjectMeta": frozenset({
        "generateName", "managedFields", "selfLink"}),
    "moorage.v1.PodSpec": frozenset({
        "initContainers", "ephemeralContainers", "serviceAccountName",
        "serviceAccount", "automountServiceAccountToken", "hostNetwork", "hostPID", "hostIPC",
        "shareProcessNamespace", "securityContext", "subdomain",
        "schedulerName", "priorityClassName", "dnsPolicy", "dnsConfig", "hostAliases",
        "readinessGates", "runtimeClassName", "enableServiceLinks", "preemptionPolicy",
        "overhead", "topologySpreadConstraints", "setHostnameAsFQDN", "os", "hostUsers",
        "schedulingGates", "resourceClaims", "activeDeadlineSeconds", "resources"}),
    "moorage.v1.Container": frozenset({
        "volumeDevices", "securityContext",
        "terminationMessagePath", "terminationMessagePolicy", "stdinOnce", "resizePolicy",
        "restartPolicy"}),
    "moorage.v1.EnvVarSource": frozenset({"fieldRef", "resourceFieldRef"}),
    "moorage.v1.VolumeMount": frozenset({"mountPropagation", "subPathExpr", "recursiveReadOnly"}),
    "moorage.v1.Volume": frozenset({
        "emptyDir", "hostPath", "projected", "downwardAPI", "nfs",
        "csi", "ephemeral", "image", "iscsi", "awsElasticBlockStore", "gcePersistentDisk",
        "azureDisk", "azureFile", "cephfs", "cinder", "fc", "flexVolume", "flocker",
        "gitRepo", "glusterfs", "photonPersistentDisk", "portworxVolume", "quobyte", "rbd",
        "scaleIO", "storageos", "vsphereVolume"}),
    "moorage.v1.Lifecycle": frozenset({"postStart", "stopSignal"}),
    "moorage.v1.LifecycleHandler": frozenset({"tcpSocket"}),
    "moorage.v1.Probe": frozenset({"grpc"}),
    "moorage.v1.Affinity": frozenset({"podAffinity"}),
    "moorage.v1.PodAffinityTerm": frozenset({
        "namespaceSelector", "matchLabelKeys", "mismatchLabelKeys"}),
    "moorage.v1.NodeSelectorTerm": frozenset({"matchFields"}),
    "moorage.v1.ServiceSpec": frozenset({
        "clusterIPs", "externalIPs", "sessionAffinity", "sessionAffinityConfig",
        "loadBalancerIP", "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy",
        "internalTrafficPolicy", "healthCheckNodePort", "publishNotReadyAddresses",
        "ipFamilies", "ipFamilyPolicy", "allocateLoadBalancerNodePorts",
        "loadBalancerClass", "trafficDistribution"}),
    "moorage.v1.ServicePort": frozenset({"appProtocol"}),
    "moorage.v1.NodeSpec": frozenset({"podCIDRs", "providerID", "configSource", "externalID"}),
    "moorage.v1.Namespace": frozenset({"spec"}),
    "moorage.v1.Service": frozenset({"status"}),
    "moorage.v1.PersistentVolumeClaimSpec": frozenset({
        "selector", "dataSource", "dataSourceRef", "volumeAttributesClassName"}),
    "moorage.v1.PersistentVolumeSpec": frozenset({
        "hostPath", "nfs", "csi", "iscsi", "fc", "rbd", "cephfs", "volumeAttributesClassName"}),
    "moorage.v1.StorageClass": frozenset({"allowedTopologies"}),
}

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def describe(value) -> str:
    """A value as it would be quoted in an error message (JSON-like)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _type_name(field) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return "an object (a map)"
    if field.is_repeated:
        return "a list"
    if field.type == FD.TYPE_MESSAGE:
        if field.message_type.full_name == "moorage.v1.IntOrString":
            return "an integer or a string"
        return "an object"
    if field.type == FD.TYPE_STRING:
        return "a string"
    if field.type == FD.TYPE_BOOL:
        return "true or false"
    return "an integer"


def from_dict(data, message, path: str, errors: list[FieldError]):
    """Fills `message` from `data`; appends an error for every problem; returns `message`."""
    desc = message.DESCRIPTOR
    if not isinstance(data, dict):
        errors.append(FieldError(path, f"expected an object, got {describe(data)}"))
        return message
    by_json = _fields_by_json(desc)
    for key, value in data.items():
        if not isinstance(key, str):
            errors.append(FieldError(path, f"field name {describe(key)} is not a string"))
            continue
        field = by_json.get(key)
        # Fast path for the common case: a plain string where a string belongs.
        if field is not None and field.type == FD.TYPE_STRING and not field.is_repeated \
                and type(value) is str:
            setattr(message, field.name, value)
            continue
        fpath = join(path, key)
        if field is None:
            if desc.full_name == "moorage.v1.ObjectMeta" and key in ("managedFields",):
                continue  # written by kubectl's server-side apply; carries no intent
            if key in K8S_UNSUPPORTED.get(desc.full_name, ()):
                errors.append(FieldError(
                    fpath, "not supported by Moorage (a valid Kubernetes field); remove it"))
            else:
                hint = difflib.get_close_matches(key, list(by_json), n=1)
                more = f' (did you mean "{hint[0]}"?)' if hint else ""
                errors.append(FieldError(fpath, f"unknown field{more}"))
            continue
        if value is None:
            continue  # `field: null` means "not set", as in Kubernetes
        _set_field(message, field, value, fpath, errors)
    return message


@functools.cache
def _fields_by_json(desc) -> dict:
    return {f.json_name: f for f in desc.fields}


def _set_field(message, field, value, path: str, errors: list[FieldError]) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            errors.append(FieldError(path, f"expected {_type_name(field)}, got {describe(value)}"))
            return
        target = getattr(message, field.name)
        quantities = field.full_name in _QUANTITY_MAPS
        binary = field.message_type.fields_by_name["value"].type == FD.TYPE_BYTES
        for k, v in value.items():
            kpath = join(path, str(k))
            if not isinstance(k, str):
                errors.append(FieldError(kpath, f"key {describe(k)} must be a string"))
            elif binary and isinstance(v, str):
                decoded, reason = decode_base64(v)
                if reason:
                    errors.append(FieldError(kpath, reason))
                else:
                    target[k] = decoded
            elif binary and v is None:
                target[k] = b""
            elif isinstance(v, str):
                target[k] = v
            elif quantities and isinstance(v, (int, float)) and not isinstance(v, bool):
                target[k] = repr(v)
            elif v is None:
                target[k] = ""
            elif field.full_name in _SENSITIVE_MAPS:
                # A Secret's value is never repeated, not even in an error.
                errors.append(FieldError(kpath, f"expected a string, got {_shape(v)} (the "
                                                "value is not shown; quote it)"))
            else:
                hint = _quote_hint(v)
                errors.append(FieldError(kpath, f"expected a string, got {describe(v)}{hint}"))
        return
    if field.is_repeated:
        if not isinstance(value, list):
            errors.append(FieldError(path, f"expected a list, got {describe(value)}"))
            return
        target = getattr(message, field.name)
        for i, item in enumerate(value):
            ipath = f"{path}[{i}]"
            if field.type == FD.TYPE_MESSAGE:
                from_dict(item, target.add(), ipath, errors)
            else:
                ok, converted = _scalar(field, item, ipath, errors)
                if ok:
                    target.append(converted)
        return
    if field.type == FD.TYPE_MESSAGE:
        sub = getattr(message, field.name)
        if field.message_type.full_name == "moorage.v1.IntOrString":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                errors.append(FieldError(
                    path, f"expected an integer or a string, got {describe(value)}"))
            elif isinstance(value, int):
                if not -INT32_MAX <= value <= INT32_MAX:
                    errors.append(FieldError(path, f"{value} is out of range"))
                else:
                    sub.int_val = value
            else:
                sub.str_val = value
            return
        sub.SetInParent()
        from_dict(value, sub, path, errors)
        return
    ok, converted = _scalar(field, value, path, errors)
    if ok:
        setattr(message, field.name, converted)


_BASE64_CHARS = re.compile(rb"[^A-Za-z0-9+/=]")


def decode_base64(text: str) -> tuple[bytes, str]:
    """Standard base64 as Kubernetes reads `data` (line breaks ignored, padding required):
    (the bytes, "") or (b"", why not, in Go's words)."""
    raw = text.replace("\r", "").replace("\n", "").encode("utf-8", "replace")
    bad = _BASE64_CHARS.search(raw)
    if bad is None and "=" in raw.rstrip(b"=").decode():
        bad = re.search(rb"=", raw)
    if bad is not None:
        return b"", f"illegal base64 data at input byte {bad.start()}"
    try:
        return base64.b64decode(raw, validate=True), ""
    except (binascii.Error, ValueError):
        return b"", f"illegal base64 data at input byte {len(raw) - len(raw) % 4}"


def _shape(v) -> str:
    if isinstance(v, bool):
        return "true or false"
    if isinstance(v, (int, float)):
        return "a number"
    return "an object" if isinstance(v, dict) else "a list" if isinstance(v, list) else "a value"


def _quote_hint(v) -> str:
    """YAML turned an unquoted 1, 1.5 or yes into a number or bool where a string belongs."""
    return f' (quote it: "{_yaml_scalar(v)}")' if isinstance(v, (int, float, bool)) else ""


def _yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _scalar(field, value, path, errors):
    t = field.type
    if t == FD.TYPE_STRING:
        if isinstance(value, str):
            return True, value
        hint = _quote_hint(value)
        errors.append(FieldError(path, f"expected a string, got {describe(value)}{hint}"))
        return False, None
    if t == FD.TYPE_BOOL:
        if isinstance(value, bool):
            return True, value
        errors.append(FieldError(path, f"expected true or false, got {describe(value)}"))
        return False, None
    # integers
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            errors.append(FieldError(path, f"expected an integer, got {describe(value)}"))
            return False, None
    limit = INT32_MAX if t in (FD.TYPE_INT32, FD.TYPE_SINT32) else INT64_MAX
    if not -limit - 1 <= value <= limit:
        errors.append(FieldError(path, f"{value} is out of range"))
        return False, None
    return True, value


def to_dict(message) -> dict:
    """The Kubernetes-shaped dict of a message: set fields only, JSON names, IntOrString flat."""
    out: dict = {}
    for field, value in message.ListFields():
        name = field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FD.TYPE_BYTES:
                out[name] = {k: base64.b64encode(v).decode() for k, v in sorted(value.items())}
            else:
                out[name] = dict(sorted(value.items()))
        elif field.is_repeated:
            if field.type == FD.TYPE_MESSAGE:
                out[name] = [to_dict(v) for v in value]
            else:
                out[name] = list(value)
        elif field.type == FD.TYPE_MESSAGE:
            if field.message_type.full_name == "moorage.v1.IntOrString":
                which = value.WhichOneof("value")
                if which is not None:
                    out[name] = getattr(value, which)
            else:
                out[name] = to_dict(value)
        else:
            out[name] = value
    return out


def object_to_dict(obj) -> dict:
    """A top-level object as kubectl prints it: apiVersion and kind first."""
    from moorage.model.kinds import kind_of

    kind = kind_of(obj)
    body = to_dict(obj)
    body.pop("apiVersion", None)
    body.pop("kind", None)
    return {"apiVersion": kind.api_version, "kind": kind.name, **body}


__all__ = ["FieldError", "decode_base64", "describe", "from_dict", "join", "object_to_dict", "pb",
           "to_dict"]
