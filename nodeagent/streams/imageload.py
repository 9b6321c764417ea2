"""`moor image load` on the agent: an image archive (a `docker save` tarball or an OCI layout
tar) arriving as data frames is written to a temp file in the image store's tmp dir, then
imported (nodeagent/runtime/images/archive.py, which treats it as untrusted), and each image
it held is named on fd 1 as `docker load` does. Disk writes and the import run in threads.

The temp file is always removed; a crash leaves it as a dot-file in the store's tmp dir,
which the store's gc removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile

from moorage.v1 import agent_pb2, api_pb2
from nodeagent.runtime.images.archive import ArchiveError, import_archive
from nodeagent.runtime.images.store import Store, StoreError
from nodeagent.streams.common import PodIOError

# Room left free on the store's filesystem beyond the archive itself (its layers are
# unpacked next to it).
HEADROOM_BYTES = 64 << 20


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _check_room(store: Store, size: int, node: str) -> None:
    if size <= 0:
        return
    free = free_bytes(store.tmp_dir)
    # The archive, and about as much again for its unpacked layers.
    if 2 * size + HEADROOM_BYTES > free:
        raise PodIOError("RESOURCE_EXHAUSTED",
                         f"node {node}: the image archive is {size} bytes, and the image "
                         f"store has {free} bytes free (it needs about twice the archive)")


async def _receive(inbound: asyncio.Queue, out) -> int:
    """Writes data frames to `out` until the frame with eof; the bytes written."""
    done = 0
    while True:
        frame = await inbound.get()
        if frame is None:
            raise PodIOError("CANCELLED", "the image archive ended before its last frame")
        if frame.data:
            await asyncio.to_thread(out.write, frame.data)
            done += len(frame.data)
        if frame.eof:
            return done


def one_line(err: Exception, path: str) -> str:
    """The importer's message about our temp file, as the caller knows it: "the image
    archive", on one line (tarfile's explanations of what it tried go)."""
    text = str(err).replace(path, "the image archive").strip().splitlines()[0]
    return text.rstrip(": ") or type(err).__name__


def _import(store: Store, path: str) -> list[str]:
    return [image.reference for image in import_archive(store, path)]


async def serve_image_load(store: Store, call, msg: agent_pb2.OpenStream,
                           inbound: asyncio.Queue, node: str = "") -> None:
    node = node or msg.image_load.node
    _check_room(store, msg.image_load.size, node)
    fd, path = tempfile.mkstemp(dir=store.tmp_dir, prefix=".load-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as out:
            await _receive(inbound, out)
        try:
            refs = await asyncio.to_thread(_import, store, path)
        except (ArchiveError, StoreError) as err:
            raise PodIOError("INVALID_ARGUMENT", f"node {node}: {one_line(err, path)}") \
                from None
        except OSError as err:
            raise PodIOError("INTERNAL", f"node {node}: importing the archive: {err}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    text = "".join(f"Loaded image: {ref}\n" for ref in refs)
    await call.write(api_pb2.StreamFrame(fd=1, data=text.encode()))
    await call.write(api_pb2.StreamFrame(exited=True, exit_code=0))
