"""Runs one pod on this node: its sandbox, its images and its containers, as `pods.reconcile`
decides; one `sync()` observes the runtime, plans and applies, and reports the pod's status.

Container ids say what they are (`<pod uid>-<container>-<attempt>-<spec hash>`), so a
restarted agent rebuilds everything it needs from the runtime's own records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from moorage.model import quantities
from moorage.model.pods import spec_grace
from moorage.model.timestamps import rfc3339
from moorage.v1 import objects_pb2 as pb
from nodeagent.metrics.events import START_DURATION, pull_progress, timed_pull
from nodeagent.network.datapath import NetworkError
from nodeagent.network.ipam import PodIPAMError
from nodeagent.pods import configenv, hooks, pullsecrets, sandbox
from nodeagent.pods import files as podfiles
from nodeagent.pods.configstore import ConfigStore
from nodeagent.pods.plan import (
    DesiredContainer,
    DesiredPod,
    ObservedContainer,
    Plan,
    RemoveContainer,
    StartContainer,
    StopContainer,
    reconcile,
)
from nodeagent.pods.probes import KILL_REASONS
from nodeagent.pods.volumes import (
    CONTAINER_CREATING,
    HostPolicy,
    PodVolumes,
    VolumeProblem,
)
from nodeagent.runtime.images.archive import ArchiveError
from nodeagent.runtime.images.layers import LayerError
from nodeagent.runtime.images.registry import RegistryConfig, RegistryError
from nodeagent.runtime.images.store import Image, Store
from nodeagent.runtime.images.store import StoreError as ImageStoreError
from nodeagent.runtime.restart import NEVER, backoff
from nodeagent.runtime.runtime import Runtime, StartError
from nodeagent.runtime.spec import RUNNING, ContainerSpec
from nodeagent.runtime.syscalls import LibcSyscalls

log = logging.getLogger(__name__)

UID_CHARS = 12
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ERR_IMAGE_PULL, IMAGE_PULL_BACKOFF = "ErrImagePull", "ImagePullBackOff"
ERR_IMAGE_NEVER_PULL, CREATE_ERROR = "ErrImageNeverPull", "CreateContainerError"
CREATE_CONFIG_ERROR = "CreateContainerConfigError"
FAILED_MOUNT = "FailedMount"
# Waits that end at once when a ConfigMap, Secret or local volume arrives.
WAITS_ON_OBJECTS = (CREATE_CONFIG_ERROR, CONTAINER_CREATING)


def spec_hash(container: pb.Container) -> str:
    return hashlib.sha256(container.SerializeToString(deterministic=True)).hexdigest()[:8]


def container_id(pod_uid: str, name: str, attempt: int, hash_: str) -> str:
    return f"{pod_uid.replace('-', '')[:UID_CHARS]}-{name}-{attempt}-{hash_}"


def parse_container_id(cid: str) -> tuple[str, str, int, str] | None:
    """(uid prefix, container name, attempt, spec hash), or None if not one of ours."""
    head, _, rest = cid.partition("-")
    name, _, tail = rest.rpartition("-")
    name, _, attempt = name.rpartition("-")
    if len(head) != UID_CHARS or not name or not attempt.isdigit():
        return None
    return head, name, int(attempt), tail


def desired_pod(pod: pb.Pod) -> DesiredPod:
    return DesiredPod(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid,
                      pod.spec.restart_policy or "Always", spec_grace(pod),
                      tuple(DesiredContainer(c.name, c.image, spec_hash(c))
                            for c in pod.spec.containers))


def container_spec(cid: str, pod: pb.Pod, c: pb.Container, image: Image,
                   netns_path: str | None, files: tuple = (), *,
                   env_values: dict[str, tuple[str, bool]] | None = None,
                   mounts: tuple = (), env_file: str = "") -> ContainerSpec:
    """Kubernetes' rules: command replaces the image's Entrypoint, args its Cmd.
    `env_values` (configenv.resolve's) replace the literal env; those from Secrets are left
    out of the spec, for `env_file`."""
    cfg = image.config
    entrypoint = list(c.command) or list(cfg.entrypoint or ())
    args = list(c.args) if (c.args or c.command) else list(cfg.cmd or ())
    argv = tuple(entrypoint + args)
    if not argv:
        raise ValueError(f"container {c.name}: no command, and image {c.image} sets none")
    env = dict(e.split("=", 1) for e in (cfg.env or ()) if "=" in e)
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOSTNAME"] = pod.spec.hostname or pod.metadata.name
    if env_values is None:
        env.update({e.name: e.value for e in c.env})
    else:
        for name, (value, secret) in env_values.items():
            if secret:
                env.pop(name, None)
            else:
                env[name] = value
    limits, requests = c.resources.limits, c.resources.requests
    cpu_request = requests.get("cpu") or limits.get("cpu")
    return ContainerSpec(
        id=cid, args=argv, lower_dirs=tuple(image.layer_dirs()),
        env=tuple(sorted(env.items())), cwd=c.working_dir or cfg.working_dir or "/",
        user=cfg.user or "0:0", hostname=pod.spec.hostname or pod.metadata.name,
        netns_path=netns_path,
        memory_limit=quantities.memory_bytes(limits["memory"]) if "memory" in limits else None,
        cpu_quota_millicores=quantities.cpu_millicores(limits["cpu"]) if "cpu" in limits else None,
        cpu_request_millicores=quantities.cpu_millicores(cpu_request) if cpu_request else None,
        tty=c.tty, stdin=c.stdin, files=files, mounts=mounts, env_file=env_file)


@dataclass
class _Waiting:
    reason: str
    message: str
    failures: int
    until: float
    # The ConfigStore's generation then: a change of any object ends a config error's wait.
    generation: int = 0


class PodWorker:
    def __init__(self, pod: pb.Pod, runtime: Runtime, images: Store,
                 registry: RegistryConfig | Callable[[], RegistryConfig] | None = None, *,
                 netns_prefix: str = sandbox.DEFAULT_PREFIX, clock=time.time, network=None,
                 prober=None, event=None, sandboxes: sandbox.Sandboxes | None = None,
                 configs: ConfigStore | None = None, volumes_root: str = "",
                 host_paths: HostPolicy | None = None, local_volumes=None):
        self.pod = pod
        # The ConfigMaps and Secrets the control plane sent, and this pod's volumes (configs
        # on a tmpfs under volumes_root, the rest on disk beside it; hostPaths as
        # `host_paths` allows; claims from `local_volumes`, a storage LocalVolumes); None
        # without a volumes root.
        self.configs = configs or ConfigStore()
        self.volumes = PodVolumes(pod, volumes_root, self.configs, LibcSyscalls(),
                                  host=host_paths, local=local_volumes) \
            if volumes_root else None
        # Runs the containers' probes (nodeagent/pods/prober.py Prober), or None: no probing.
        self.prober = prober
        # The pod network (nodeagent/network/agent.py AgentNetwork), or None for loopback only.
        self.network = network
        self.pod_ip = ""
        # The pod's /etc/resolv.conf and /etc/hosts (ContainerSpec.files), on the overlay only.
        self.files: tuple[tuple[str, str], ...] = ()
        self.runtime, self.images, self.registry = runtime, images, registry
        self.netns = sandbox.sandbox_name(pod.metadata.uid, netns_prefix)
        self.sandboxes = sandboxes or sandbox.Sandboxes(LibcSyscalls())
        self.sandbox_path: str | None = None
        self.clock = clock
        self.uid_prefix = pod.metadata.uid.replace("-", "")[:UID_CHARS]
        # Containers that could not start (image pull, bad spec), with their own back-off.
        self.waiting: dict[str, _Waiting] = {}
        # Held for a whole sync pass, and by the teardown that ends a termination (which so
        # waits for a pass still pulling an image, without keeping the pod's containers up).
        self.pass_lock = threading.Lock()
        # Held while a container is created and started, and to set `terminating`: once that
        # is set, nothing of this pod starts again.
        self.state_lock = threading.Lock()
        self.terminating = False
        # Called with (pod, type, reason, message) for the pod's Events (Session.event).
        self.event = event

    def observe(self) -> list[ObservedContainer]:
        out = []
        for info in self.runtime.list(prefix=self.uid_prefix + "-"):   # not every pod's status
            parsed = parse_container_id(info.id)
            if parsed is None or parsed[0] != self.uid_prefix:
                continue
            _, name, attempt, hash_ = parsed
            st = info.status
            out.append(ObservedContainer(
                info.id, name, hash_, attempt, st.state == RUNNING,
                st.exit_code, st.reason, st.started_at or 0.0, st.finished_at or 0.0))
        return out

    def sync(self) -> Plan:
        """One pass: make the runtime match the pod; returns the plan with the pod's status."""
        with self.pass_lock:
            if self.terminating:
                return Plan((), "Running", (), None)
            return self._sync()

    def _sync(self) -> Plan:
        # Entering the namespace to check loopback costs a thread and a netlink socket, so it
        # is done once per worker; later passes only check that the namespace is still there.
        path = self.sandbox_path
        if path is None or not os.path.exists(path):
            path = self.sandbox_path = self.sandboxes.ensure(self.netns)
        now = self.clock()
        if self.network is not None and not self.pod_ip:
            try:
                self.pod_ip = self.network.attach(self.netns, self.pod.metadata.uid)
                self.files = self._write_pod_files()
            except (NetworkError, PodIPAMError, OSError) as err:   # retried next pass
                log.warning("pod %s/%s: network: %s", self.pod.metadata.namespace,
                            self.pod.metadata.name, err)
                return Plan([], "Pending", [], now + 1.0)
        observed = self.observe()
        unhealthy = self.prober.unhealthy(self.pod.metadata.uid) if self.prober else None
        plan = reconcile(desired_pod(self.pod), observed, now, unhealthy)
        wake = [plan.wake_at] if plan.wake_at else []
        volume_problem = self._sync_volumes()
        for action in plan.actions:
            if self.terminating:
                break   # a termination began meanwhile: it stops what runs
            if isinstance(action, StopContainer):
                if self.prober and action.why in KILL_REASONS:
                    self._kill_for_probe(action)
                self.runtime.stop(action.id, action.grace_seconds)
            elif isinstance(action, RemoveContainer):
                self.runtime.remove(action.id)
            elif isinstance(action, StartContainer):
                until = self._hold_volume(action.name, *volume_problem, now) \
                    if volume_problem[0] else self._start(action, path, now)
                if until:
                    wake.append(until)
        if self.prober:
            stopped = {a.id for a in plan.actions if isinstance(a, StopContainer)}
            self.prober.sync(self.pod, path, self.pod_ip, [
                (c.id, c.name, c.started_at) for c in observed
                if c.running and c.id not in stopped])
        return Plan(plan.actions, plan.phase, plan.containers, min(wake) if wake else None)

    def _kill_for_probe(self, action: StopContainer) -> None:
        parsed = parse_container_id(action.id)
        # A killed container exits non-zero, so OnFailure restarts it as Always does.
        restarts = (self.pod.spec.restart_policy or "Always") != NEVER
        self.prober.killing(self.pod, action.id, action.why, restarts)
        log.info("pod %s/%s container %s %s: killing it", self.pod.metadata.namespace,
                 self.pod.metadata.name, parsed[1] if parsed else action.id, action.why)

    def _sync_volumes(self) -> tuple[str, str]:
        """Sets up the pod's volumes, configs as their objects now stand (so updates reach
        running containers within a pass); why they cannot be, as (waiting reason,
        message), or ("", "")."""
        if self.volumes is None:
            return "", ""
        self.volumes.pod = self.pod
        try:
            return self.volumes.sync()
        except OSError as err:
            return CREATE_ERROR, f"setting up the pod's volumes: {err}"

    def _generation(self) -> int:
        return self.volumes.generation() if self.volumes else self.configs.generation

    def _hold_volume(self, name: str, reason: str, problem: str, now: float) -> float:
        held = self.waiting.get(name)
        if held and held.reason == reason and held.message == problem and \
                held.generation == self._generation() and held.until > now:
            return held.until
        return self._hold(name, reason, problem, now)

    def _start(self, action: StartContainer, netns_path: str, now: float) -> float | None:
        """Starts a container; on failure records why and returns when to try again."""
        held = self.waiting.get(action.name)
        if held and held.until > now and not (held.reason in WAITS_ON_OBJECTS and
                                              held.generation != self._generation()):
            return held.until
        begun = time.perf_counter()
        c = next(c for c in self.pod.spec.containers if c.name == action.name)
        cid = container_id(self.pod.metadata.uid, c.name, action.attempt, spec_hash(c))
        try:
            image = self._image(c)
        except (RegistryError, ImageStoreError, LayerError, ArchiveError, LookupError,
                OSError, ValueError) as err:   # reported in the pod status, retried
            return self._hold(c.name, ERR_IMAGE_PULL, str(err), now)
        resolved = configenv.resolve(c, self.pod.metadata.namespace, self._lookup, self.pod,
                                     self.pod_ip)
        if resolved.problem:
            return self._hold(c.name, CREATE_CONFIG_ERROR, resolved.problem, now)
        for warning in resolved.skipped:
            self._event("Warning", "InvalidEnvironmentVariableNames", warning)
        with self.state_lock:
            if self.terminating:
                return None   # deleted while its image was pulled: never started
            try:
                self.runtime.create(self._spec(cid, c, image, netns_path, resolved.values))
                self.runtime.start(cid)
            except VolumeProblem as err:   # a subPath that is not in the volume, ...
                return self._hold(c.name, err.reason, err.message, now)
            except (StartError, ValueError, OSError) as err:
                return self._hold(c.name, CREATE_ERROR, str(err), now)
        self.waiting.pop(c.name, None)
        START_DURATION.observe(time.perf_counter() - begun)
        return None

    def _lookup(self, kind: str, name: str):
        return self.configs.get(kind, self.pod.metadata.namespace, name)

    def _spec(self, cid: str, c: pb.Container, image: Image, netns_path: str,
              values: dict[str, tuple[str, bool]]) -> ContainerSpec:
        secret = {k: v for k, (v, from_secret) in values.items() if from_secret}
        env_file = self.volumes.env_file(cid, secret) if secret and self.volumes else ""
        if secret and self.volumes is None:
            raise ValueError("values from Secrets need the pod's tmpfs (no volumes root)")
        env = {k: v for k, (v, _) in values.items()}
        mounts = self.volumes.mounts(c, env) if self.volumes else ()
        return container_spec(cid, self.pod, c, image, netns_path, self.files,
                              env_values=values, mounts=mounts, env_file=env_file)

    def _event(self, type_: str, reason: str, message: str) -> None:
        if self.event is not None:
            self.event(self.pod, type_, reason, message)

    def _files_dir(self) -> str:
        return os.path.join(self.network.state_dir, "pods", self.pod.metadata.uid)

    def _write_pod_files(self) -> tuple[tuple[str, str], ...]:
        """resolv.conf naming the node's DNS server (the pod's gateway), and hosts."""
        hostname = self.pod.spec.hostname or self.pod.metadata.name
        return podfiles.write(self._files_dir(), nameserver=self.network.net.gateway,
                              namespace=self.pod.metadata.namespace, pod_ip=self.pod_ip,
                              hostname=hostname)

    def _hold(self, name: str, reason: str, message: str, now: float) -> float:
        prev = self.waiting.get(name)
        failures = prev.failures + 1 if prev else 1
        if reason == ERR_IMAGE_PULL and failures > 1:
            reason = IMAGE_PULL_BACKOFF
        until = now + max(1.0, backoff(failures))
        self.waiting[name] = _Waiting(reason, message, failures, until, self._generation())
        log.warning("pod %s/%s container %s: %s: %s", self.pod.metadata.namespace,
                    self.pod.metadata.name, name, reason, message)
        if prev is None or prev.message != message:
            if reason == CREATE_CONFIG_ERROR:
                self._event("Warning", "Failed", f"Error: {message}")
            elif reason == CONTAINER_CREATING or message.startswith("MountVolume."):
                self._event("Warning", FAILED_MOUNT, message)
        return until

    def _image(self, c: pb.Container) -> Image:
        policy = c.image_pull_policy or "IfNotPresent"
        have = self.images.get(c.image)
        if policy == "Never":
            if have is None:
                raise LookupError(f"image {c.image} is not present and imagePullPolicy is Never")
            return have
        if have is not None and policy == "IfNotPresent":
            return have
        with timed_pull():
            return self.images.pull(c.image, self._registry(), pull_progress())

    def _registry(self) -> RegistryConfig | None:
        """The node's registry settings (now: `registry` may be a callable returning them, as
        the cluster's registry aliases change) plus the pod's imagePullSecrets' credentials."""
        node = self.registry() if callable(self.registry) else self.registry
        if not self.pod.spec.image_pull_secrets:
            return node
        creds, missing = pullsecrets.credentials(self.pod.spec.image_pull_secrets,
                                                 self._lookup)
        if missing:
            self._event("Warning", "FailedToRetrieveImagePullSecret",
                        f"Unable to retrieve some image pull secrets ({', '.join(missing)}); "
                        "attempting to pull the image may not succeed.")
        base = node or RegistryConfig()
        return dataclasses.replace(base, credentials={**base.credentials, **creds})

    def status(self, plan: Plan) -> pb.PodStatus:
        """The pod's status as the API shows it (phase, per-container states, restarts)."""
        out = pb.PodStatus(phase=plan.phase, pod_ip=self.pod_ip)
        for cs in plan.containers:
            held = self.waiting.get(cs.name)
            state, reason = cs.state, cs.reason
            if held and cs.state == "waiting":
                reason = held.reason
            image = next((c.image for c in self.pod.spec.containers if c.name == cs.name), "")
            out.container_statuses.add(
                name=cs.name, state=state, reason=reason, restart_count=cs.restarts,
                message=held.message if held and cs.state == "waiting" else "",
                exit_code=cs.exit_code or 0, ready=self._ready(cs), image=image,
                started_at=_ts(cs.started_at), finished_at=_ts(cs.finished_at))
        return out

    def _ready(self, cs) -> bool:
        """Running, and (with probes) started and passing its readiness probe."""
        if cs.state != "running":
            return False
        if self.prober is None:
            return True
        c = next((c for c in self.pod.spec.containers if c.name == cs.name), None)
        return self.prober.ready(cs.id, c)

    def terminate(self, deadline: Callable[[], float],
                  stopped: Callable[[], None] = lambda: None) -> None:
        """Stops the pod for good, on the caller's thread (each termination has its own): no
        container starts again; each running one gets its preStop hook, then SIGTERM, then
        SIGKILL at `deadline()` (monotonic, read again as it waits). `stopped()` is called
        once every container has stopped; then the pod's containers, network and sandbox are
        removed, after any sync pass still running (an image pull) has ended."""
        with self.state_lock:
            self.terminating = True
        if self.prober:
            self.prober.forget(self.pod.metadata.uid)
        running = [c for c in self.observe() if c.running]
        threads = [threading.Thread(target=self._stop_container, args=(c, deadline),
                                    name=f"stop-{c.id}", daemon=True) for c in running[1:]]
        for t in threads:
            t.start()
        if running:
            self._stop_container(running[0], deadline)
        for t in threads:
            t.join()
        stopped()
        with self.pass_lock:
            self.teardown(0)

    def _stop_container(self, c: ObservedContainer, deadline: Callable[[], float]) -> None:
        spec = next((x for x in self.pod.spec.containers if x.name == c.name), None)
        handler = hooks.pre_stop_handler(spec) if spec is not None else None
        if handler is not None:
            ok, why = hooks.run_pre_stop(self.runtime, c.id, spec, handler,
                                         self.sandbox_path or sandbox.path(self.netns),
                                         self.pod_ip, deadline() - time.monotonic())
            if not ok:
                message = f"PreStopHook failed: {why}"
                log.warning("pod %s/%s container %s: %s", self.pod.metadata.namespace,
                            self.pod.metadata.name, c.name, message)
                if self.event is not None:
                    self.event(self.pod, "Warning", hooks.FAILED_PRE_STOP, message)
        self.runtime.stop(c.id, deadline)

    def teardown(self, grace_seconds: int | None = None) -> None:
        """Stops and removes every container of the pod, then its sandbox."""
        observed = self.observe()
        for c in observed:
            if c.running:
                self.runtime.stop(c.id, desired_pod(self.pod).grace_seconds
                                  if grace_seconds is None else grace_seconds)
            self.runtime.remove(c.id)
        if self.network is not None:
            self.network.detach(self.pod.metadata.uid)
            podfiles.remove(self._files_dir())
        if self.prober:
            self.prober.forget(self.pod.metadata.uid)
        if self.volumes is not None:
            self.volumes.remove()
        self.sandboxes.remove(self.netns)
        self.sandbox_path = None


def _ts(t: float) -> str:
    return rfc3339(t) if t else ""
