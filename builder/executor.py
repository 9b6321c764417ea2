"""Runs a parsed Dockerfile: the stages the target needs, side by side where they do not
depend on each other, each from its base (an
image of the build machine's store, pulled when absent; scratch; an earlier stage), every
instruction either applied to the stage's config (stageconfig) or run as a filesystem step
(RUN in a container of the node runtime, COPY/ADD, WORKDIR) that becomes a layer; steps are
reused from the build cache until the first miss of a stage; the stages are committed with
images.commit, the final one with the tags.

Invariant: a failed build leaves no image, tag, container or mount behind; the cache records
(and store layers) of the steps that succeeded stay for the next build.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from builder import cache as cachemod
from builder.context import Context
from builder.errors import BuildError
from builder.paths import BuildRoot
from builder.progress import Progress
from builder.steps import Cancelled, LayerRef, StepError, Steps
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.registry import RegistryConfig, host_architecture
from nodeagent.runtime.images.store import Image, Store, StoreError
from nodeagent.runtime.spec import alive, proc_start_time

LAYER_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")
SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"


@dataclass
class StageResult:
    image: Image
    layers: list[LayerRef]  # bottom first, the base's included
    config_doc: dict

    @property
    def lowers(self) -> list[str]:
        return [layer.dir for layer in reversed(self.layers)]

    @property
    def base_key(self) -> str:
        return cachemod.stage_base_key([layer.diff_id for layer in self.layers],
                                       self.config_doc)


@dataclass
class StageRun:
    """A stage being built: its layers so far, config state, cache chain and history."""

    label: str
    layers: list[LayerRef]
    new: list[LayerRef]
    sc: object  # stageconfig.StageState (immutable: each step replaces it)
    key: str
    base: Image | None
    missed: bool = False
    run_ahead: bool = False  # a RUN follows the current step

    @property
    def lowers(self) -> list[str]:
        return [layer.dir for layer in reversed(self.layers)]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


class Build:
    """One build on a build root. Not thread-safe; several Builds may share a root."""

    def __init__(self, root: BuildRoot, *,
                 registry_config: RegistryConfig | Callable[[], RegistryConfig] | None = None,
                 cgroup_root: str | None = None, media: str = "docker", pull: bool = False,
                 quiet: bool = False, source_date_epoch: int | None = None):
        self.root = root
        self.store = Store(root.images)
        self.cache = cachemod.Cache(root.cache)
        # Settings for pulls (a function making them is called on the first pull only).
        self._registry_config = registry_config
        self.cgroup_root = cgroup_root
        self.media = media
        self.pull = pull
        self.quiet = quiet
        self.source_date_epoch = source_date_epoch
        self._pulled: dict[str, Image] = {}
        self._lock = threading.Lock()
        self._config_lock = threading.Lock()
        self.progress: Progress | None = None

    # ---- images ----

    def image(self, ref: str) -> Image:
        """The image named ref: from the store (as Docker, no re-pull without --pull), else
        pulled through the registry settings."""
        try:
            name = str(parse_reference(ref))
        except ReferenceError as e:
            raise BuildError(f"invalid image reference {ref!r}: {e}") from None
        with self._lock:  # stages run in threads: one pull per image
            if name in self._pulled:
                return self._pulled[name]
            image = None if self.pull else self.store.get(name)
            if image is None:
                try:
                    image = self.store.pull(name, self.registry_config(), self._pull_progress)
                except StoreError as e:
                    raise BuildError(str(e)) from None
            self._pulled[name] = image
            return image

    def registry_config(self) -> RegistryConfig:
        with self._config_lock:
            if callable(self._registry_config):
                self._registry_config = self._registry_config()
            return self._registry_config or RegistryConfig()

    def _pull_progress(self, p) -> None:
        if p.done == p.total and self.progress is not None:
            self.progress.note(f"pulled {p.digest[:19]} {p.total / 1e6:.1f}MB")

    def config_doc(self, image: Image) -> dict:
        try:
            with open(self.store.blob_path(image.config_digest), "rb") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise BuildError(f"the config of {image.reference} cannot be read: {e}") from None

    def image_layers(self, image: Image) -> list[LayerRef]:
        return [LayerRef(diff_id, digest, 0, "", os.path.join(self.store.layer_path(diff_id),
                                                               "rootfs"))
                for diff_id, digest in zip(image.diff_ids, image.layer_digests)]

    # ---- the build ----

    def run(self, dockerfile, context: Context | str, target: str | None = None,
            build_args: dict[str, str | None] | None = None,
            labels: dict[str, str] | None = None, tags: list[str] | tuple = (),
            no_cache: bool = False, out: TextIO | None = None) -> Image:
        from builder import dockerfile as df
        from builder import stageconfig

        build_args = dict(build_args or {})
        if isinstance(context, str):
            context = Context.open(context)
        progress = self.progress = Progress(out or sys.stdout, self.quiet)
        stages = df.stage_order(dockerfile, target, build_args,
                                df.platform_args("linux", host_architecture()))
        epoch = self.source_date_epoch
        if epoch is None and build_args.get(SOURCE_DATE_EPOCH):
            epoch = _epoch(build_args[SOURCE_DATE_EPOCH])
        created = stageconfig.build_time(epoch, time.time())
        build_id = uuid.uuid4().hex[:12]
        reap_dead_builds(self.root, self.cgroup_root)
        work = os.path.join(self.root.work, build_id)
        os.makedirs(work)
        with open(os.path.join(work, OWNER_FILE), "w") as f:
            f.write(f"{os.getpid()} {proc_start_time(os.getpid()) or 0}\n")
        steps = Steps(self, dockerfile, context, work, build_id, progress, no_cache, epoch,
                      created)
        results: dict[int, StageResult] = {}
        multi = len(dockerfile.stages) > 1

        def build_stage(rs, final: bool, deps: list[StageFuture]) -> None:
            for dep in deps:
                dep.result()  # raises what failed it
            stage = rs.stage
            label = stage.display_name if multi else ""
            total = (rs.base_stage is None and not rs.is_scratch) + sum(
                1 for x in stage.instructions if x.keyword in LAYER_STEPS)
            if steps.cancel.is_set():
                raise Cancelled()
            st = self._start_stage(dockerfile, rs, results, build_args, label, progress,
                                   total, created)
            try:
                steps.run_stage(st, rs, results)
            except StepError as e:
                raise BuildError(f"{dockerfile.path}:{e.line}: {e}") from None
            results[stage.index] = self._commit(
                st, (labels or {}) if final else {}, list(tags) if final else [])

        try:
            _run_parallel(stages, build_stage, steps)
        finally:
            steps.close()
            shutil.rmtree(work, ignore_errors=True)
            self._forget_stages(results, stages[-1].stage.index)
        image = results[stages[-1].stage.index].image
        from builder import images
        unused = df.unused_build_args(dockerfile, stages, build_args)
        if unused:
            progress.note(f"[Warning] One or more build-args [{' '.join(unused)}] were not "
                          "consumed")
        progress.finished(images.image_id(image), [_display(t) for t in tags])
        return image

    def _forget_stages(self, results: dict[int, StageResult], final: int) -> None:
        """Drops the ID records of the stages before the target (as BuildKit, no `<none>`
        image per stage; nor one left by a build that failed): their layers stay for the
        cache until something frees them. An ID another record names is kept."""
        from builder import images

        keep = {r.config_digest for r in self.store.list() if not images.is_id_record(r)}
        if final in results:
            keep.add(results[final].image.config_digest)
        for index, res in results.items():
            if index != final and res.image.config_digest not in keep:
                self.store.remove(images.image_id(res.image))

    def _start_stage(self, dockerfile, rs, results: dict[int, StageResult], build_args,
                     label: str, progress: Progress, total: int, created: str) -> StageRun:
        from builder import stageconfig

        stage = rs.stage
        where = f"{dockerfile.path}:{stage.line}"
        # FROM an earlier stage or scratch is no step of its own (BuildKit shows none:
        # `[final 1/1] RUN ...`).
        from_step = rs.base_stage is None and not rs.is_scratch
        if from_step:
            progress.step(label, 1, total, f"FROM {_display_ref(rs.base)}")
        arch = host_architecture()
        if rs.platform and rs.platform.split("/")[:2] != ["linux", arch]:
            raise BuildError(f"{where}: FROM --platform={rs.platform}: only the build "
                             f"machine's platform (linux/{arch}) can be built")
        if rs.is_scratch:
            layers, doc, key, base = [], None, cachemod.SCRATCH_KEY, None
        elif rs.base_stage is not None:
            res = results[rs.base_stage]
            layers, doc, key, base = list(res.layers), res.config_doc, res.base_key, res.image
        else:
            try:
                base = self.image(rs.base)
            except BuildError as e:
                raise BuildError(f"{where}: {e}") from None
            layers, doc = self.image_layers(base), self.config_doc(base)
            key = cachemod.image_base_key(base.config_digest)
        sc = stageconfig.StageState.start(doc, meta_args=rs.meta_args, build_args=build_args,
                                          created=created, escape=dockerfile.escape,
                                          path=dockerfile.path, platform=("linux", arch, ""))
        if sc.onbuild:
            progress.note(f"warning: {rs.base} has ONBUILD triggers, which this builder does "
                          f"not run: {'; '.join(sc.onbuild)}")
        if from_step:
            progress.done()
        return StageRun(label, layers, [], sc, key, base)

    def _commit(self, st: StageRun, labels: dict[str, str], tags: list[str]) -> StageResult:
        from builder import images, layers

        doc = st.sc.config_doc(labels=labels or None)
        new = [layers.Layer(path=self.store.blob_path(x.digest), digest=x.digest,
                            diff_id=x.diff_id, size=x.size, media_type=x.media_type)
               for x in st.new]
        try:
            image = images.commit(self.store, doc, new, st.base, media=self.media, tags=tags)
        except (StoreError, OSError, ValueError) as e:
            raise BuildError(f"committing the image: {e}") from None
        return StageResult(image, list(st.layers), doc)


class StageFuture:
    """One stage's thread: result() waits for it and re-raises what ended it."""

    def __init__(self, fn, *args):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True,
                                        name="stage")

    def _run(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits
            self._error = e

    def start(self) -> StageFuture:
        self._thread.start()
        return self

    def join(self) -> None:
        # A timeout keeps the wait interruptible by Ctrl-C and SIGTERM in the main thread.
        while self._thread.is_alive():
            self._thread.join(0.5)

    def result(self) -> None:
        self.join()
        if self._error is not None:
            raise self._error


def _run_parallel(stages, build_stage, steps) -> None:
    """Each stage in a thread of its own, started once its base stage is built; a COPY
    --from waits for its stage only when it gets there (BuildKit too builds what does not
    depend on each other side by side). The first failure stops the others at their next
    step (their running RUNs are killed) and is what the build reports."""
    futures: dict[int, StageFuture] = {}
    first: list[BaseException] = []
    lock = threading.Lock()

    def guarded(rs, final, deps):
        try:
            build_stage(rs, final, deps)
        except BaseException as e:
            with lock:
                if not isinstance(e, Cancelled) and not first:
                    first.append(e)
                    steps.interrupt()
            raise

    steps.stages = futures  # a COPY --from waits for its stage when it gets there
    try:
        for i, rs in enumerate(stages):
            deps = [futures[rs.base_stage]] if rs.base_stage is not None else []
            futures[rs.stage.index] = StageFuture(guarded, rs, i == len(stages) - 1,
                                                  deps).start()
        for f in futures.values():
            f.join()
    except BaseException:  # Ctrl-C or SIGTERM, in this (the main) thread
        steps.interrupt()
        for f in futures.values():
            f.join()
        raise
    if first:
        raise first[0]
    for f in futures.values():
        f.result()  # a Cancelled with no failure behind it cannot happen; be loud if it does


OWNER_FILE = ".owner"  # "<pid> <start time>" of the builder a work dir belongs to


def reap_dead_builds(root: BuildRoot, cgroup_root: str | None) -> None:
    """Removes what a killed builder left (its RUN containers, its work dir): a work dir
    whose owner process is gone. Builds alive on the same root are left alone."""
    try:
        names = os.listdir(root.work)
    except FileNotFoundError:
        return
    for name in names:
        try:
            with open(os.path.join(root.work, name, OWNER_FILE)) as f:
                pid, start = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue  # being made, or not a build's
        if alive(pid, start):
            continue
        containers = [c for c in _listdir(root.containers) if c.startswith(f"build-{name}-")]
        if containers:
            from builder.runstep import Runner

            runner = Runner(root.containers, name, cgroup_root)
            for cid in containers:
                runner.runtime.remove(cid)
            runner.close()
        shutil.rmtree(os.path.join(root.work, name), ignore_errors=True)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _display_ref(ref: str) -> str:
    try:
        return str(parse_reference(ref))
    except ReferenceError:
        return ref


def _display(tag: str) -> str:
    """A tag as Docker prints it: as given, with :latest when it names no tag or digest."""
    last = tag.rsplit("/", 1)[-1]
    return tag if (":" in last or "@" in tag) else tag + ":latest"


def _epoch(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BuildError(f"{SOURCE_DATE_EPOCH}={text!r}: want seconds since the epoch") from None

