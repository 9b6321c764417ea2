"""Build cache keys and records: a key changes with each thing a step sees and with nothing
else; records round-trip and a damaged one is a miss, never an error."""

from __future__ import annotations

import json
import os

import pytest

from builder import cache

BASE = cache.image_base_key("sha256:" + "1" * 64)
LAYERS = ("sha256:" + "a" * 64,)
ARGS = dict(parent=BASE, diff_ids=LAYERS, instruction='RUN ["/bin/sh","-c","make"]',
            scope='{"env":[]}', content="")


def test_step_key_is_stable():
    assert cache.step_key(**ARGS) == cache.step_key(**ARGS)
    assert cache.step_key(**ARGS).startswith("sha256:")


@pytest.mark.parametrize("field, value", [
    pytest.param("parent", cache.SCRATCH_KEY, id="parent"),
    pytest.param("diff_ids", ("sha256:" + "b" * 64,), id="layers-below"),
    pytest.param("instruction", 'RUN ["/bin/sh","-c","make all"]', id="instruction"),
    pytest.param("scope", '{"env":[["A","1"]]}', id="env-and-args"),
    pytest.param("content", "sha256:" + "c" * 64, id="copied-content"),
])
def test_step_key_changes_with_each_input(field, value):
    assert cache.step_key(**{**ARGS, field: value}) != cache.step_key(**ARGS)


def test_bases_differ():
    assert len({cache.SCRATCH_KEY, cache.image_base_key("sha256:" + "1" * 64),
                cache.image_base_key("sha256:" + "2" * 64)}) == 3


def test_stage_base_key_ignores_times_and_history_but_not_config():
    doc = {"created": "2026-01-01T00:00:00Z", "history": [{"created_by": "x"}],
           "config": {"Env": ["A=1"]}, "rootfs": {"type": "layers", "diff_ids": list(LAYERS)}}
    later = {**doc, "created": "2027-01-01T00:00:00Z", "history": []}
    assert cache.stage_base_key(LAYERS, doc) == cache.stage_base_key(LAYERS, later)
    changed = {**doc, "config": {"Env": ["A=2"]}}
    assert cache.stage_base_key(LAYERS, changed) != cache.stage_base_key(LAYERS, doc)
    assert cache.stage_base_key((), doc) != cache.stage_base_key(LAYERS, doc)


def test_records_round_trip(tmp_path):
    c = cache.Cache(str(tmp_path))
    key = cache.step_key(**ARGS)
    layer = cache.CachedLayer("sha256:" + "d" * 64, "sha256:" + "e" * 64, 123,
                              "application/vnd.docker.image.rootfs.diff.tar.gzip")
    c.put(cache.Record(key, layer, "2026-12-03T12:00:00Z", "RUN make # buildkit"))
    c.put(cache.Record(BASE, None, "2026-12-03T12:00:01Z"))
    assert c.get(key) == cache.Record(key, layer, "2026-12-03T12:00:00Z", "RUN make # buildkit")
    assert c.get(BASE).layer is None
    assert c.get(cache.SCRATCH_KEY) is None


@pytest.mark.parametrize("damage", [
    pytest.param(lambda doc: "{not json", id="not-json"),
    pytest.param(lambda doc: json.dumps({**doc, "version": 99}), id="other-version"),
    pytest.param(lambda doc: json.dumps({**doc, "key": cache.SCRATCH_KEY}), id="other-key"),
    pytest.param(lambda doc: json.dumps({"version": 1}), id="fields-missing"),
])
def test_damaged_record_is_a_miss(tmp_path, damage):
    c = cache.Cache(str(tmp_path))
    key = cache.step_key(**ARGS)
    c.put(cache.Record(key, None, "t"))
    path = os.path.join(str(tmp_path), key.split(":", 1)[1] + ".json")
    with open(path) as f:
        doc = json.load(f)
    with open(path, "w") as f:
        f.write(damage(doc))
    assert c.get(key) is None


def test_probes_say_whether_a_step_was_ever_stored(tmp_path):
    c = cache.Cache(str(tmp_path))
    probe = cache.step_key(**{**ARGS, "content": "probe"})
    assert not c.seen(probe)
    c.mark(probe)
    c.mark(probe)
    assert c.seen(probe) and not c.seen(cache.step_key(**ARGS))
