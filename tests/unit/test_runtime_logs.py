"""CRI log format, rotation and a follower that survives rotation."""

from __future__ import annotations

import itertools
import os
import threading
import time

from nodeagent.runtime.logs import MAX_LINE, LogWriter, follow, parse_line, rfc3339nano


def clock():
    ticks = itertools.count(1_700_000_000_000_000_000, 1_000)
    return lambda: next(ticks)


def read(path):
    with open(path) as f:
        return [parse_line(ln) for ln in f]


def test_rfc3339nano():
    assert rfc3339nano(1_704_067_200_123_456_789) == "2024-01-01T00:00:00.123456789Z"


def test_lines_split_across_chunks_and_streams(tmp_path):
    w = LogWriter(str(tmp_path / "c.log"), clock=clock())
    w.write("stdout", b"hel")
    w.write("stderr", b"oops\n")
    w.write("stdout", b"lo\nwor")
    w.close()
    got = [(ln.stream, ln.tag, ln.text) for ln in read(tmp_path / "c.log")]
    assert got == [("stderr", "F", "oops"), ("stdout", "F", "hello"), ("stdout", "F", "wor")]


def test_long_line_becomes_partial_records(tmp_path):
    w = LogWriter(str(tmp_path / "c.log"), clock=clock())
    w.write("stdout", b"x" * (MAX_LINE + 5) + b"\n")
    w.close()
    assert [(ln.tag, len(ln.text)) for ln in read(tmp_path / "c.log")] == [
        ("P", MAX_LINE), ("F", 5)]


def test_rotation_keeps_max_files_and_every_recent_line(tmp_path):
    path = str(tmp_path / "container.log")
    w = LogWriter(path, max_bytes=200, max_files=3, clock=clock())
    for i in range(100):
        w.write("stdout", f"line{i}\n".encode())
    w.close()
    assert sorted(os.listdir(tmp_path)) == ["container.log", "container.log.1", "container.log.2"]
    texts = []
    for name in ("container.log.2", "container.log.1", "container.log"):
        assert os.path.getsize(tmp_path / name) <= 200
        texts += [ln.text for ln in read(tmp_path / name)]
    first = int(texts[0][4:])
    assert texts == [f"line{i}" for i in range(first, 100)]


def test_single_file_rotation_truncates(tmp_path):
    path = str(tmp_path / "container.log")
    w = LogWriter(path, max_bytes=100, max_files=1, clock=clock())
    for i in range(20):
        w.write("stdout", f"l{i}\n".encode())
    w.close()
    assert os.listdir(tmp_path) == ["container.log"]
    assert read(path)[-1].text == "l19"


def test_follow_survives_rotation(tmp_path):
    path = str(tmp_path / "container.log")
    w = LogWriter(path, max_bytes=150, max_files=5, clock=clock())
    done = threading.Event()
    seen = []

    def reader():
        seen.extend(parse_line(ln).text for ln in follow(path, done.is_set, poll=0.005))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(30):
        w.write("stdout", f"n{i}\n".encode())
        if i % 5 == 0:   # let the follower catch up now and then (a sleep raced under load)
            deadline = time.monotonic() + 10
            while len(seen) <= i and time.monotonic() < deadline:
                time.sleep(0.002)
    w.close()
    done.set()
    t.join(10)
    assert seen == [f"n{i}" for i in range(30)]
