from moorage.v1 import objects_pb2 as _objects_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_name", "labels", "capacity", "addresses", "node_info", "running_pod_uids")
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
    node_name: str
    labels: _containers.ScalarMap[str, str]
    capacity: _containers.ScalarMap[str, str]
    addresses: _containers.RepeatedCompositeFieldContainer[_objects_pb2.NodeAddress]
    node_info: _objects_pb2.NodeSystemInfo
    running_pod_uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Mapping[str, str]] = ..., addresses: _Optional[_Iterable[_Union[_objects_pb2.NodeAddress, _Mapping]]] = ..., node_info: _Optional[_Union[_objects_pb2.NodeSystemInfo, _Mapping]] = ..., running_pod_uids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("hello", "heartbeat", "pod_status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    POD_STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    pod_status: PodStatusReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., pod_status: _Optional[_Union[PodStatusReport, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("heartbeat_period_ms",)
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_period_ms: int
    def __init__(self, heartbeat_period_ms: _Optional[int] = ...) -> None: ...

class DispatcherMessage(_message.Message):
    __slots__ = ("settings", "assignments")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    settings: SessionSettings
    assignments: Assignments
    def __init__(self, settings: _Optional[_Union[SessionSettings, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ...) -> None: ...
