"""Pod statuses sent to the control plane when they change, and all again on a new session."""

from __future__ import annotations

import time

from moorage.model.timestamps import rfc3339
from moorage.v1 import objects_pb2 as pb
from nodeagent.session.stream import Session


class StatusReporter:
    """Sends a pod's status through the session when it differs from what was last sent, and
    everything again on each new session (the control plane may have restarted)."""

    def __init__(self, session: Session, host_ip: str, clock=time.time):
        self.session, self.host_ip, self.clock = session, host_ip, clock
        self.sent: dict[str, bytes] = {}
        self.start_time: dict[str, str] = {}
        self.generation = -1

    def __call__(self, pod: pb.Pod, status: pb.PodStatus) -> None:
        uid = pod.metadata.uid
        if uid not in self.session.desired or not self.session.connected:
            return   # a static pod, or nobody to tell: a new session resends anyway
        if self.session.generation != self.generation:
            self.generation, self.sent = self.session.generation, {}
        # Kept from the assigned pod when the control plane has one, so it survives restarts.
        start = pod.status.start_time or self.start_time.setdefault(
            uid, rfc3339(self.clock()))
        status.start_time, status.host_ip = start, self.host_ip
        blob = status.SerializeToString(deterministic=True)
        if self.sent.get(uid) == blob:
            return
        self.sent[uid] = blob
        self.session.report(pod.metadata.namespace, pod.metadata.name, uid, status)

    def forget(self, uid: str) -> None:
        self.sent.pop(uid, None)
        self.start_time.pop(uid, None)
