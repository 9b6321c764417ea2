"""A deterministic gzip writer that compresses on several cores and hashes both sides as it goes.

The input is cut into fixed-size blocks; each is deflated on its own thread (zlib releases the
GIL), primed with the last 32 KiB of the block before it and ended with a sync flush, so the
pieces join into one ordinary deflate stream (the way pigz does it). The output depends only on
the input, the block size and the level, never on the number of threads or their timing. The
header carries no file name and mtime 0, so the same tar always gives the same blob.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

BLOCK = 1 << 20
DICT = 32 << 10  # deflate's window: the most of the previous block a block can refer to
LEVEL = 6  # gzip's and Go's default level; callers may pick another
# magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (as Go's gzip writes it)
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _deflate(block: bytes, zdict: bytes, level: int, last: bool) -> bytes:
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(block) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class GzipWriter:
    """write() the uncompressed stream, then close(); .raw_sha256 and .raw_size describe what
    went in (a layer's diff_id), .sha256 and .size what came out (its blob digest)."""

    def __init__(self, out, *, level: int = LEVEL, threads: int | None = None,
                 block: int = BLOCK):
        self._out = out
        self._level = level
        self._block = block
        self._buf = bytearray()
        self._prev_tail = b""
        self._crc = 0
        self._pool = ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="gzip")
        self._pending: deque[Future] = deque()
        self._window = 2 * (threads or min(4, os.cpu_count() or 1)) + 1
        self.raw = hashlib.sha256()
        self.raw_size = 0
        self.sha = hashlib.sha256()
        self.size = 0
        self._emit(HEADER)

    @property
    def raw_sha256(self) -> str:
        return "sha256:" + self.raw.hexdigest()

    @property
    def sha256(self) -> str:
        return "sha256:" + self.sha.hexdigest()

    def write(self, data) -> None:
        self._buf += data
        while len(self._buf) >= self._block:
            block = bytes(self._buf[:self._block])
            del self._buf[:self._block]
            self._submit(block, last=False)

    def close(self) -> None:
        """Flushes the last block and the trailer; the pool is shut down either way."""
        try:
            self._submit(bytes(self._buf), last=True)
            self._buf.clear()
            while self._pending:
                self._emit(self._pending.popleft().result())
            self._emit(struct.pack("<II", self._crc, self.raw_size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def _submit(self, block: bytes, last: bool) -> None:
        self.raw.update(block)
        self.raw_size += len(block)
        self._crc = zlib.crc32(block, self._crc)
        zdict, self._prev_tail = self._prev_tail, block[-DICT:]
        self._pending.append(self._pool.submit(_deflate, block, zdict, self._level, last))
        while len(self._pending) > self._window or (self._pending and self._pending[0].done()):
            self._emit(self._pending.popleft().result())

    def _emit(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self._out.write(data)
