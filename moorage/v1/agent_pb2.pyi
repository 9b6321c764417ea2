from moorage.v1 import api_pb2 as _api_pb2
from moorage.v1 import objects_pb2 as _objects_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCAResponse(_message.Message):
    __slots__ = ("ca_pem", "join_port")
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    JOIN_PORT_FIELD_NUMBER: _ClassVar[int]
    ca_pem: bytes
    join_port: int
    def __init__(self, ca_pem: _Optional[bytes] = ..., join_port: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("token", "csr_pem", "node_name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: bytes
    node_name: str
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., node_name: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("cert_pem", "ca_pem")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    cert_pem: bytes
    ca_pem: bytes
    def __init__(self, cert_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class OpenStream(_message.Message):
    __slots__ = ("id", "pod_uid", "logs", "exec", "image_load")
    ID_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    IMAGE_LOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    pod_uid: str
    logs: _api_pb2.LogsRequest
    exec: _api_pb2.ExecStart
    image_load: _api_pb2.ImageLoadStart
    def __init__(self, id: _Optional[str] = ..., pod_uid: _Optional[str] = ..., logs: _Optional[_Union[_api_pb2.LogsRequest, _Mapping]] = ..., exec: _Optional[_Union[_api_pb2.ExecStart, _Mapping]] = ..., image_load: _Optional[_Union[_api_pb2.ImageLoadStart, _Mapping]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StatsReport(_message.Message):
    __slots__ = ("id", "node", "pods", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    node: _api_pb2.NodeUsage
    pods: _containers.RepeatedCompositeFieldContainer[_api_pb2.PodUsage]
    error: str
    def __init__(self, id: _Optional[str] = ..., node: _Optional[_Union[_api_pb2.NodeUsage, _Mapping]] = ..., pods: _Optional[_Iterable[_Union[_api_pb2.PodUsage, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_name", "labels", "capacity", "addresses", "node_info", "running_pod_uids", "allowed_host_paths")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CapacityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    NODE_INFO_FIELD_NUMBER: _ClassVar[int]
    RUNNING_POD_UIDS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_HOST_PATHS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    labels: _containers.ScalarMap[str, str]
    capacity: _containers.ScalarMap[str, str]
    addresses: _containers.RepeatedCompositeFieldContainer[_objects_pb2.NodeAddress]
    node_info: _objects_pb2.NodeSystemInfo
    running_pod_uids: _containers.RepeatedScalarFieldContainer[str]
    allowed_host_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Mapping[str, str]] = ..., addresses: _Optional[_Iterable[_Union[_objects_pb2.NodeAddress, _Mapping]]] = ..., node_info: _Optional[_Union[_objects_pb2.NodeSystemInfo, _Mapping]] = ..., running_pod_uids: _Optional[_Iterable[str]] = ..., allowed_host_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PodStatusReport(_message.Message):
    __slots__ = ("namespace", "name", "uid", "status")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    status: _objects_pb2.PodStatus
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., status: _Optional[_Union[_objects_pb2.PodStatus, _Mapping]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "pod_status", "stats", "net_check", "event", "pod_terminated", "volumes")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    POD_STATUS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    NET_CHECK_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    POD_TERMINATED_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    pod_status: PodStatusReport
    stats: StatsReport
    net_check: NetCheckReport
    event: PodEvent
    pod_terminated: PodTerminated
    volumes: VolumeReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., pod_status: _Optional[_Union[PodStatusReport, _Mapping]] = ..., stats: _Optional[_Union[StatsReport, _Mapping]] = ..., net_check: _Optional[_Union[NetCheckReport, _Mapping]] = ..., event: _Optional[_Union[PodEvent, _Mapping]] = ..., pod_terminated: _Optional[_Union[PodTerminated, _Mapping]] = ..., volumes: _Optional[_Union[VolumeReport, _Mapping]] = ...) -> None: ...

class PodTerminated(_message.Message):
    __slots__ = ("namespace", "name", "uid")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("full", "pods", "removed_uids")
    FULL_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_UIDS_FIELD_NUMBER: _ClassVar[int]
    full: bool
    pods: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Pod]
    removed_uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: _Optional[bool] = ..., pods: _Optional[_Iterable[_Union[_objects_pb2.Pod, _Mapping]]] = ..., removed_uids: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionSettings(_message.Message):
    __slots__ = ("heartbeat_period_ms", "network", "control_planes")
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANES_FIELD_NUMBER: _ClassVar[int]
    heartbeat_period_ms: int
    network: NetworkSettings
    control_planes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heartbeat_period_ms: _Optional[int] = ..., network: _Optional[_Union[NetworkSettings, _Mapping]] = ..., control_planes: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkSettings(_message.Message):
    __slots__ = ("pod_cidr", "cluster_cidr", "vxlan_vni", "vxlan_port")
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CIDR_FIELD_NUMBER: _ClassVar[int]
    VXLAN_VNI_FIELD_NUMBER: _ClassVar[int]
    VXLAN_PORT_FIELD_NUMBER: _ClassVar[int]
    pod_cidr: str
    cluster_cidr: str
    vxlan_vni: int
    vxlan_port: int
    def __init__(self, pod_cidr: _Optional[str] = ..., cluster_cidr: _Optional[str] = ..., vxlan_vni: _Optional[int] = ..., vxlan_port: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("name", "underlay_ip", "pod_cidr")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    pod_cidr: str
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ...) -> None: ...

class Peers(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class NetCheckRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class NetCheckReport(_message.Message):
    __slots__ = ("id", "findings", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    findings: _containers.RepeatedCompositeFieldContainer[_api_pb2.NetFinding]
    error: str
    def __init__(self, id: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[_api_pb2.NetFinding, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class DispatcherMessage(_message.Message):
    __slots__ = ("settings", "assignments", "open_stream", "stats_request", "peers", "net_check", "services", "config", "volumes", "registries")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAM_FIELD_NUMBER: _ClassVar[int]
    STATS_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NET_CHECK_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    REGISTRIES_FIELD_NUMBER: _ClassVar[int]
    settings: SessionSettings
    assignments: Assignments
    open_stream: OpenStream
    stats_request: StatsRequest
    peers: Peers
    net_check: NetCheckRequest
    services: ServiceTable
    config: ConfigData
    volumes: VolumeData
    registries: ClusterRegistries
    def __init__(self, settings: _Optional[_Union[SessionSettings, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., open_stream: _Optional[_Union[OpenStream, _Mapping]] = ..., stats_request: _Optional[_Union[StatsRequest, _Mapping]] = ..., peers: _Optional[_Union[Peers, _Mapping]] = ..., net_check: _Optional[_Union[NetCheckRequest, _Mapping]] = ..., services: _Optional[_Union[ServiceTable, _Mapping]] = ..., config: _Optional[_Union[ConfigData, _Mapping]] = ..., volumes: _Optional[_Union[VolumeData, _Mapping]] = ..., registries: _Optional[_Union[ClusterRegistries, _Mapping]] = ...) -> None: ...

class ClusterRegistries(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[RegistryAlias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[RegistryAlias, _Mapping]]] = ...) -> None: ...

class RegistryAlias(_message.Message):
    __slots__ = ("name", "mirrors", "insecure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    mirrors: _containers.RepeatedScalarFieldContainer[str]
    insecure: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., mirrors: _Optional[_Iterable[str]] = ..., insecure: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfigData(_message.Message):
    __slots__ = ("full", "config_maps", "secrets", "removed")
    FULL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_MAPS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    full: bool
    config_maps: _containers.RepeatedCompositeFieldContainer[_objects_pb2.ConfigMap]
    secrets: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Secret]
    removed: _containers.RepeatedCompositeFieldContainer[_objects_pb2.ObjectReference]
    def __init__(self, full: _Optional[bool] = ..., config_maps: _Optional[_Iterable[_Union[_objects_pb2.ConfigMap, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[_objects_pb2.Secret, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_objects_pb2.ObjectReference, _Mapping]]] = ...) -> None: ...

class LocalVolume(_message.Message):
    __slots__ = ("name", "claim_namespace", "claim_name", "capacity_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLAIM_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CLAIM_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    claim_namespace: str
    claim_name: str
    capacity_bytes: int
    def __init__(self, name: _Optional[str] = ..., claim_namespace: _Optional[str] = ..., claim_name: _Optional[str] = ..., capacity_bytes: _Optional[int] = ...) -> None: ...

class VolumeData(_message.Message):
    __slots__ = ("full", "volumes", "deleted")
    FULL_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    full: bool
    volumes: _containers.RepeatedCompositeFieldContainer[LocalVolume]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: _Optional[bool] = ..., volumes: _Optional[_Iterable[_Union[LocalVolume, _Mapping]]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class VolumeUsage(_message.Message):
    __slots__ = ("name", "used_bytes", "capacity_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    used_bytes: int
    capacity_bytes: int
    def __init__(self, name: _Optional[str] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ...) -> None: ...

class VolumeReport(_message.Message):
    __slots__ = ("usage", "deleted")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[VolumeUsage]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, usage: _Optional[_Iterable[_Union[VolumeUsage, _Mapping]]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class PodEvent(_message.Message):
    __slots__ = ("namespace", "pod", "uid", "type", "reason", "message")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pod: str
    uid: str
    type: str
    reason: str
    message: str
    def __init__(self, namespace: _Optional[str] = ..., pod: _Optional[str] = ..., uid: _Optional[str] = ..., type: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ServiceTable(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceEntry]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceEntry, _Mapping]]] = ...) -> None: ...

class ServiceEntry(_message.Message):
    __slots__ = ("namespace", "name", "type", "cluster_ip", "ports", "endpoints")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    type: str
    cluster_ip: str
    ports: _containers.RepeatedCompositeFieldContainer[ServicePortEntry]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointEntry]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., cluster_ip: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ServicePortEntry, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[EndpointEntry, _Mapping]]] = ...) -> None: ...

class ServicePortEntry(_message.Message):
    __slots__ = ("name", "protocol", "port", "node_port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    port: int
    node_port: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ..., node_port: _Optional[int] = ...) -> None: ...

class EndpointEntry(_message.Message):
    __slots__ = ("ip", "node", "pod", "hostname", "ports")
    IP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ip: str
    node: str
    pod: str
    hostname: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ip: _Optional[str] = ..., node: _Optional[str] = ..., pod: _Optional[str] = ..., hostname: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...
