"""The agent's half of `moor image load`: data frames into a temp file, imported into the
node's store, `Loaded image:` lines and one `exited` frame; errors as PodIOError with one line
naming the archive; the temp file never stays."""

from __future__ import annotations

import asyncio
import os

import pytest

from moorage.v1 import agent_pb2, api_pb2
from nodeagent.runtime.images.store import Store
from nodeagent.streams import imageload
from nodeagent.streams.common import PodIOError
from tests import imagebuild


class Call:
    def __init__(self):
        self.frames: list[api_pb2.StreamFrame] = []

    async def write(self, frame):
        self.frames.append(frame)


def _serve(store: Store, data: bytes, *, eof: bool = True, size: int = 0,
           chunk: int = 1000) -> Call:
    call = Call()

    async def go():
        inbound: asyncio.Queue = asyncio.Queue()
        for i in range(0, len(data), chunk):
            inbound.put_nowait(api_pb2.StreamFrame(data=data[i:i + chunk]))
        inbound.put_nowait(api_pb2.StreamFrame(eof=True) if eof else None)
        msg = agent_pb2.OpenStream(id="x", image_load=api_pb2.ImageLoadStart(
            node="node-1", size=size))
        await imageload.serve_image_load(store, call, msg, inbound)

    asyncio.run(go())
    return call


@pytest.fixture
def store(tmp_state):
    return Store(os.path.join(tmp_state, "images"))


def test_an_archive_in_frames_is_imported(store, tmp_state):
    tar = imagebuild.busybox_tar(tmp_state, ["moortest/a:1", "moortest/b:2"])
    with open(tar, "rb") as f:
        data = f.read()
    call = _serve(store, data, size=len(data), chunk=64 * 1024)
    assert [(f.fd, f.data) for f in call.frames[:-1]] == [
        (1, b"Loaded image: docker.io/moortest/a:1\nLoaded image: docker.io/moortest/b:2\n")]
    assert call.frames[-1].exited and call.frames[-1].exit_code == 0
    assert store.get("moortest/b:2") is not None
    assert os.listdir(store.tmp_dir) == []


def test_a_bad_archive_is_one_line_naming_the_archive(store):
    with pytest.raises(PodIOError) as err:
        _serve(store, b"garbage" * 300)
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message.startswith("node node-1: the image archive: not a readable tar")
    assert "\n" not in err.value.message and store.tmp_dir not in err.value.message
    assert os.listdir(store.tmp_dir) == []


def test_an_archive_cut_short_is_not_imported(store, tmp_state):
    tar = imagebuild.busybox_tar(tmp_state, ["moortest/a:1"])
    with open(tar, "rb") as f:
        data = f.read()
    with pytest.raises(PodIOError) as err:
        _serve(store, data, eof=False)
    assert err.value.code == "CANCELLED"
    assert store.get("moortest/a:1") is None and os.listdir(store.tmp_dir) == []


def test_an_archive_larger_than_the_room_is_refused_before_a_byte_is_written(store):
    free = imageload.free_bytes(store.tmp_dir)
    with pytest.raises(PodIOError) as err:
        _serve(store, b"", size=free)
    assert err.value.code == "RESOURCE_EXHAUSTED" and "needs about twice" in err.value.message
    assert os.listdir(store.tmp_dir) == []
