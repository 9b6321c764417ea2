"""Pod changes queued for an agent's session go out as one message: later changes of a pod
win, and anything that is not a pod change stops the merge and is handed back in order."""

from __future__ import annotations

import asyncio

from controlplane.dispatcher.assignments import Change
from controlplane.dispatcher.sessions import NOTHING, coalesce
from moorage.v1 import objects_pb2 as pb
from tests.builders import pb_pod


def pod(uid: str, image: str = "a") -> pb.Pod:
    return pb_pod(uid, uid=uid, image=image, container="c")


def test_changes_merge_until_something_else():
    q: asyncio.Queue = asyncio.Queue()
    for item in (Change(pods=[pod("2")]), Change(removed=["1"]), Change(pods=[pod("2", "b")]),
                 None, Change(pods=[pod("3")])):
        q.put_nowait(item)
    merged, held = coalesce(Change(pods=[pod("1")]), q)
    assert [p.metadata.uid for p in merged.pods] == ["2"]
    assert merged.pods[0].spec.containers[0].image == "b"
    assert merged.removed == ["1"]
    assert held is None                      # the re-list marker, handled next
    assert q.qsize() == 1 and q.get_nowait().pods[0].metadata.uid == "3"


def test_nothing_waiting():
    q: asyncio.Queue = asyncio.Queue()
    merged, held = coalesce(Change(pods=[pod("1")], removed=["9"]), q)
    assert held is NOTHING and merged.removed == ["9"] and len(merged.pods) == 1
