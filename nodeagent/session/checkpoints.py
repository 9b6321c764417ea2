"""The session's pods as last assigned, kept on disk so a restarted agent knows them."""

from __future__ import annotations

import logging
import os

from moorage.fsutil import write_atomic
from moorage.v1 import objects_pb2 as pb

log = logging.getLogger("moorage.agent.session")


class Checkpoints:
    """The session's pods as last assigned, one file per uid under <state>/pods.

    They let a restarted agent name the pods it runs in Hello (container ids carry only a uid
    prefix) and keep running them, or tear them down, once the control plane says.
    """

    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "pods")
        self.written: dict[str, bytes] = {}   # uid -> what its file holds
        self.saved: dict[str, pb.Pod] = {}    # uid -> the object last saved

    def load(self) -> dict[str, pb.Pod]:
        pods: dict[str, pb.Pod] = {}
        for name in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else ():
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    pod = pb.Pod.FromString(f.read())
            except (OSError, ValueError) as err:
                log.error("skipping pod checkpoint %s: %s", name, err)
                continue
            pods[pod.metadata.uid] = pod
            self.written[pod.metadata.uid] = pod.SerializeToString(deterministic=True)
        return pods

    def save(self, pods: dict[str, pb.Pod]) -> None:
        """Writes the pods whose file is missing or differs (each assignment message carries
        the whole set, and rewriting it all made starting N pods cost N^2 writes)."""
        os.makedirs(self.dir, exist_ok=True)
        for uid, pod in pods.items():
            if self.saved.get(uid) is pod:
                continue   # the same object as last time: unchanged (no serialising)
            data = pod.SerializeToString(deterministic=True)
            self.saved[uid] = pod
            if self.written.get(uid) == data:
                continue
            # Not fsynced, as before: a checkpoint a crash loses is sent again on reconnect.
            write_atomic(os.path.join(self.dir, uid), data, sync=False)
            self.written[uid] = data

    def drop(self, uid: str) -> None:
        self.written.pop(uid, None)
        self.saved.pop(uid, None)
        try:
            os.remove(os.path.join(self.dir, uid))
        except FileNotFoundError:
            pass
