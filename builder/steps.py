"""The instructions of one stage, in order: metadata ones applied to the stage's config state,
RUN, COPY, ADD and WORKDIR run as filesystem steps, each reused from the build cache while no
earlier step of the stage missed it, else executed and its upper dir made a layer.

A new layer's blob goes into the store at once and the upper dir itself becomes the layer's
unpacked dir (it already is in overlay's format: whiteout devices, opaque xattrs), so the next
step can stack on it without unpacking anything. A COPY that only adds names writes straight
into that dir (no overlay), and links what it takes unchanged from another image's layers.

One Steps serves every stage of a build; stages run in threads of their own (executor.py), so
what it shares (the container runner, work dir names) is made thread-safe.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace

from builder import cache as cachemod
from builder import rootview
from builder.context import Context, Source
from builder.copier import (
    Copier,
    CopyOptions,
    CopySource,
    Owner,
    is_archive,
    parse_chmod,
    parse_chown,
    tree_entries,
    unpacked_archive,
)
from builder.errors import BuildError
from nodeagent.runtime.images.store import StoreError

LAYER_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")
COPY_FLAGS = {"COPY": {"from", "chown", "chmod", "link"}, "ADD": {"chown", "chmod", "link"}}
_URL = re.compile(r"^(https?|git|ssh)://|^git@", re.IGNORECASE)
ADD_URL = ("ADD from a URL is not supported: no network may be reachable from builds; "
           "download it into the context and COPY it")


@dataclass(frozen=True, slots=True)
class LayerRef:
    """One layer of a stage: its store entries and unpacked dir (lowerdir)."""

    diff_id: str
    digest: str
    size: int
    media_type: str
    dir: str


def now_rfc3339() -> str:
    t = time.time_ns()
    secs, frac = divmod(t, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class Cancelled(Exception):
    """Another stage failed (or the build was stopped): this one stops at its next step."""


class StepError(Exception):
    """A step failed; the message is Docker's, line is the instruction's."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class Steps:
    def __init__(self, build, dockerfile, context: Context, work: str, build_id: str,
                 progress, no_cache: bool, epoch: int | None, created: str):
        self.build, self.store, self.cache = build, build.store, build.cache
        self.dockerfile, self.context, self.work = dockerfile, context, work
        self.build_id, self.progress, self.no_cache, self.epoch = (build_id, progress,
                                                                   no_cache, epoch)
        self.created = created  # this build's time for the history of the steps it runs
        self._runner = None  # runstep.Runner, made on the first RUN that runs
        self._runner_lock = threading.Lock()
        self._numbers = itertools.count(1)
        self.cancel = threading.Event()  # set: stages stop at their next step
        self.stages: dict = {}  # stage index -> executor.StageFuture, set by the executor

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def interrupt(self) -> None:
        """Stops every stage at its next step, and the RUNs running now."""
        self.cancel.set()
        runner = self._runner
        if runner is not None:
            runner.kill_all()

    def _dir(self, what: str) -> str:
        d = os.path.join(self.work, f"{next(self._numbers)}-{what}")
        os.makedirs(d)
        return d

    # ---- the stage ----

    def run_stage(self, st, rs, results: dict) -> None:
        from builder.dockerfile import DockerfileError

        stage = rs.stage
        n = int(rs.base_stage is None and not rs.is_scratch)  # the FROM step, if an image
        total = n + sum(1 for x in stage.instructions if x.keyword in LAYER_STEPS)
        for pos, instr in enumerate(stage.instructions):
            if instr.keyword not in LAYER_STEPS:
                self._meta(st, instr)
                continue
            if self.cancel.is_set():
                raise Cancelled()
            # Once a step misses, every later one runs: a RUN ahead will need the runtime.
            st.run_ahead = any(x.keyword == "RUN" for x in stage.instructions[pos + 1:])
            n += 1
            self.progress.step(st.label, n, total, instr.original)
            try:
                if instr.keyword == "RUN":
                    self._run(st, instr)
                elif instr.keyword == "WORKDIR":
                    self._workdir(st, instr)
                else:
                    self._copy(st, instr, rs, results)
            except DockerfileError:
                raise  # already names the file and line
            except BuildError as e:
                raise StepError(instr.line, str(e)) from None

    def _meta(self, st, instr) -> None:
        """A config-only instruction; its record keeps the history time stable across builds,
        so an unchanged rebuild makes the same image ID."""
        parent = st.key
        st.key = cachemod.step_key(parent, st.diff_ids, instr.original, st.sc.cache_scope())
        record = None if self.no_cache else self.cache.get(st.key)
        if record is None:
            record = cachemod.Record(st.key, None, self.created, instr.original)
            self.cache.put(record)
        st.sc = replace(st.sc, created=record.created).apply(instr)

    # ---- cache ----

    def _reuse(self, st, key: str) -> cachemod.Record | None:
        if self.no_cache or st.missed:
            return None
        record = self.cache.get(key)
        if record is None or (record.layer and not self._present(record.layer)):
            return None
        return record

    def _present(self, layer: cachemod.CachedLayer) -> bool:
        if not self.store.has_blob(layer.digest):
            return False
        if not os.path.isdir(self.store.layer_path(layer.diff_id)):
            try:
                with self.store.writing():
                    self.store.ensure_layer(layer.digest, layer.diff_id)
            except (StoreError, OSError):
                return False
        return True

    def _apply(self, st, instr, record: cachemod.Record, cached: bool) -> None:
        diff_id = None
        if record.layer:
            x = record.layer
            ref = LayerRef(x.diff_id, x.digest, x.size, x.media_type,
                           os.path.join(self.store.layer_path(x.diff_id), "rootfs"))
            st.layers.append(ref)
            st.new.append(ref)
            diff_id = x.diff_id
        st.sc = replace(st.sc, created=record.created).commit(instr, diff_id)
        st.key = record.key
        if cached:
            self.progress.cached()
        else:
            self.progress.done()

    def _store_result(self, st, instr, key: str, layer) -> None:
        record = cachemod.Record(key, layer, self.created, st.sc.created_by(instr))
        self.cache.put(record)
        self._apply(st, instr, record, cached=False)

    # ---- layers ----

    def _take_layer(self, upper: str) -> cachemod.CachedLayer | None:
        """The upper dir as a layer: its blob into the store, and the dir itself (trimmed by
        from_upper to what the tar records) moved in as the layer's unpacked form."""
        from builder import layers

        out = self._dir("layer")
        layer = layers.from_upper(upper, out, source_date_epoch=self.epoch,
                                  media=self.build.media, adopt=True)
        if layer is None:
            return None
        with self.store.writing():
            if self.store.has_blob(layer.digest):
                os.unlink(layer.path)
            else:
                self.store.commit_blob(layer.path, layer.digest)
            if not self.store.adopt_layer(layer.tree, layer.diff_id):
                self.store.ensure_layer(layer.digest, layer.diff_id)  # another fs, or there
        return cachemod.CachedLayer(layer.digest, layer.diff_id, layer.size, layer.media_type)

    def _fresh_layer(self, st, fill, direct: str | None = None) -> cachemod.CachedLayer | None:
        """fill(root) writes into the image's '/' (a mounted overlay, or the upper dir itself
        when the image below is empty, or when `direct` names a destination whose every
        written name is new to the image: its existing parents are then copied up as
        overlayfs would); what changed becomes the layer."""
        d = self._dir("step")
        upper, wk = os.path.join(d, "upper"), os.path.join(d, "work")
        os.mkdir(upper)
        if not st.lowers:
            fill(upper)
        elif direct is not None:
            rootview.copy_up(upper, st.lowers, direct)
            fill(upper)
        else:
            os.mkdir(wk)
            with rootview.mounted(st.lowers, os.path.join(d, "merged"), upper, wk) as root:
                fill(root)
        return self._take_layer(upper)

    # ---- RUN ----

    def _run(self, st, instr) -> None:
        if instr.flags:
            raise BuildError(f"RUN --{next(iter(instr.flags))} is not supported")
        argv = st.sc.run_argv(instr)
        cmd = " ".join(argv)
        key = cachemod.step_key(st.key, st.diff_ids, "RUN " + json.dumps(argv),
                                st.sc.cache_scope())
        record = self._reuse(st, key)
        if record:
            self._apply(st, instr, record, cached=True)
            return
        st.missed = True
        from builder.runstep import RunError

        self._start_runner()
        empty = os.path.join(self.work, "empty")
        os.makedirs(empty, exist_ok=True)
        try:
            result = self._runner.run(argv, st.lowers, st.sc.run_env(), st.sc.user,
                                      st.sc.working_dir, self.progress.output, empty,
                                      self.cancel.is_set)
        except RunError as e:
            raise BuildError(f'process "{cmd}" could not be started: {e}') from None
        try:
            if result.exit_code != 0:
                if self.cancel.is_set():
                    raise Cancelled()
                self._show_held()
                raise BuildError(f'process "{cmd}" did not complete successfully: exit code: '
                                 f"{result.exit_code}")
            layer = self._take_layer(result.upper)
        finally:
            self._runner.remove(result.cid)
        self._store_result(st, instr, key, layer)

    def _start_runner(self) -> None:
        with self._runner_lock:
            if self._runner is None:
                from builder.runstep import Runner  # the runtime: only when a RUN runs

                self._runner = Runner(self.build.root.containers, self.build_id,
                                      self.build.cgroup_root)

    def _miss(self, st) -> None:
        """The stage's first miss: what follows runs; a RUN ahead gets the container fork
        server started now, so its start-up overlaps this step."""
        st.missed = True
        if st.run_ahead:
            self._start_runner()
            self._runner.warm()

    def _show_held(self) -> None:
        for line in self.progress.held_output():
            sys.stderr.write(line + "\n")

    # ---- WORKDIR ----

    def _workdir(self, st, instr) -> None:
        st.sc = st.sc.apply(instr)
        wd, mkdir = st.sc.working_dir, st.sc.mkdir
        key = cachemod.step_key(st.key, st.diff_ids, "WORKDIR " + wd, st.sc.cache_scope())
        record = self._reuse(st, key)
        if record:
            self._apply(st, instr, record, cached=True)
            return
        layer = None
        if mkdir and mkdir != "/" and not rootview.exists(st.lowers, mkdir, follow_last=True):
            owner = self._user_owner(st)
            self._miss(st)
            layer = self._fresh_layer(
                st, lambda root: Copier(root, CopyOptions(parent_owner=owner)).make_dirs(mkdir))
        self._store_result(st, instr, key, layer)

    def _user_owner(self, st) -> Owner:
        """The USER's uid:gid, which BuildKit gives the dirs WORKDIR makes."""
        if not st.sc.user:
            return Owner(0, 0)
        from nodeagent.runtime.security import resolve_user

        try:
            ident = resolve_user(st.sc.user, rootview.read_file(st.lowers, "/etc/passwd"),
                                 rootview.read_file(st.lowers, "/etc/group"))
        except (LookupError, ValueError):
            return Owner(0, 0)
        return Owner(ident.uid, ident.gid)

    # ---- COPY and ADD ----

    def _copy(self, st, instr, rs, results: dict) -> None:
        kw = instr.keyword
        for flag in instr.flags:
            if flag not in COPY_FLAGS[kw]:
                raise BuildError(f"{kw} --{flag} is not supported")
        if len(instr.args) < 2:
            raise BuildError(f"{kw} requires at least two arguments, but only one was provided:"
                             f" destination could not be determined")
        spec = st.sc.copy_spec(instr)
        srcs, dest = list(spec.sources), spec.dest
        if kw == "ADD" and any(_URL.match(s) for s in srcs):
            raise BuildError(ADD_URL)
        chmod = parse_chmod(spec.chmod) if spec.chmod else None
        if spec.from_ is not None:
            from_lowers, content = self._from_source(rs.copy_from.get(instr.line, spec.from_),
                                                     results)
            matched: list[list[Source]] = []
        else:
            from_lowers = None
            matched = [self.context.sources(s, kw) for s in srcs]
        desc = json.dumps([kw, spec.from_ is not None, spec.chown, chmod, srcs, dest])
        parent, scope = st.key, st.sc.cache_scope()
        probe = cachemod.step_key(parent, st.diff_ids, desc, scope, "probe")
        if from_lowers is None:
            # A step sure to miss checksums the files as it copies them (one read, not two).
            sure_miss = self.no_cache or st.missed or not self.cache.seen(probe)
            content = None if sure_miss else self.context.checksum(
                [s for group in matched for s in group])
        key = None if content is None else cachemod.step_key(parent, st.diff_ids, desc, scope,
                                                             content)
        record = self._reuse(st, key) if key else None
        if record:
            self._apply(st, instr, record, cached=True)
            return
        self._miss(st)
        diff_ids = list(st.diff_ids)
        # The chown names are the image's as it is before this step.
        owner = parse_chown(spec.chown, rootview.read_file(st.lowers, "/etc/passwd"),
                            rootview.read_file(st.lowers, "/etc/group")) if spec.chown else None
        with contextlib.ExitStack() as stack:
            if from_lowers is None:
                ctx, flat = self.context, [s for group in matched for s in group]
                keep = Owner(0, 0)  # a context's files belong to root unless --chown
            else:
                view = stack.enter_context(rootview.mounted(
                    from_lowers, os.path.join(self._dir("from"), "merged")))
                ctx = Context(view)
                flat = [s for pattern in srcs
                        for s in ctx.sources(pattern, f"{kw} --from={spec.from_}",
                                             "that stage or image")]
                keep = None  # another image's files keep their owners
            sources, archives = [], []
            for src in flat:
                if kw == "ADD" and not src.is_dir and is_archive(src.host):
                    archives.append(src)
                else:
                    sources.append(CopySource(_name(src), src.is_dir, list(ctx.walk(src)),
                                              src.host))
            # One file, even through a wildcard, follows dest's form (`COPY target/*.jar
            # app.jar` makes the file app.jar, in both of Docker's builders); several go into it.
            many = len(flat) > 1
            direct = None if archives else direct_dest(st.lowers, dest, sources)
            digest = self.context.sums.record if from_lowers is None else None
            # Unchanged files of another image's layers are linked, not copied: those layers
            # never change, and the copy would get their metadata exactly.
            link = _layer_file(from_lowers, view) if (
                from_lowers and direct is not None and owner is None and chmod is None) \
                else None

            def fill(root: str) -> None:
                copier = Copier(root, CopyOptions(owner or keep, chmod, owner or Owner(0, 0)),
                                on_digest=digest, link_from=link)
                if sources:
                    copier.copy(sources, direct or dest, as_dir=True if many else None)
                for src in archives:
                    self._extract(root, src, dest, owner, chmod)

            layer = self._fresh_layer(st, fill, direct)
        if key is None:
            content = self.context.checksum([s for group in matched for s in group])
            key = cachemod.step_key(parent, diff_ids, desc, scope, content)
        self._store_result(st, instr, key, layer)
        self.cache.mark(probe)

    def _extract(self, root: str, src: Source, dest: str, owner, chmod) -> None:
        """ADD of a local archive: unpacked into dest; its entries keep the owners it
        records unless --chown says otherwise."""
        unpacked = unpacked_archive(src.host, self.work)
        try:
            Copier(root, CopyOptions(owner, chmod, owner or Owner(0, 0))).extract(
                tree_entries(unpacked), dest)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)

    def _from_source(self, source: int | str, results: dict):
        """(lower dirs, cache identity) of what --from names (stage_order resolved it to an
        earlier stage's index or an image reference)."""
        if isinstance(source, int):
            if source in self.stages:
                self.stages[source].result()  # built by its own thread: wait for it
            if source not in results:
                raise BuildError(f"COPY --from: stage {source} was not built before this one")
            res = results[source]
            return res.lowers, res.base_key
        try:
            image = self.build.image(source)
        except BuildError as e:  # most often a mistyped stage name: say it is none
            raise BuildError(f"COPY --from={source}: no stage of that name, and the image: {e}",
                             e.code) from None
        lowers = [os.path.join(self.store.layer_path(d), "rootfs")
                  for d in reversed(image.diff_ids)]
        return lowers, cachemod.image_base_key(image.config_digest)


def direct_dest(lowers: list[str], dest: str, sources: list[CopySource]) -> str | None:
    """dest resolved in the image (its symlinks followed) when a COPY can write straight
    into its new layer's dir: dest is absent, or a directory none of whose written names
    exist; None when the copy needs the overlay (it would replace something)."""
    if not lowers:
        return None
    parts = rootview.resolve(lowers, dest, missing_ok=True)
    if parts is None:
        return None
    path = "/" + "/".join(parts)
    found = rootview.lookup(lowers, path, follow_last=False)
    if found is None:
        return path + "/" if dest.endswith("/") and path != "/" else path
    if not stat.S_ISDIR(found[1].st_mode):
        return None
    for src in sources:
        # A directory's contents go into dest, a file into it (dest is a directory).
        names = [b for b, _, _ in src.entries if b and "/" not in b] if src.is_dir \
            else [src.name]
        if any(rootview.exists(lowers, posixpath.join(path, n)) for n in names):
            return None
    return path.rstrip("/") + "/"


def _layer_file(lowers: list[str], view: str):
    """For COPY --from: a file seen in the mounted view -> the store layer file it is."""
    def real(host: str) -> str | None:
        found = rootview.lookup(lowers, "/" + os.path.relpath(host, view), follow_last=False)
        if found is None or not stat.S_ISREG(found[1].st_mode) or \
                found[1].st_mtime_ns % 1_000_000_000:
            return None  # only whole-second mtimes: what the copy would give it
        return found[0]
    return real


def _name(src: Source) -> str:
    return posixpath.basename(src.rel.rstrip("/")) or "."


def _now() -> str:
    return now_rfc3339()
