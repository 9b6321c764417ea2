"""Pure StatefulSet reconciler: from a StatefulSet, its pods and the namespace's claims, plans
claim creates, pod creates and deletes, claim resizes and deletes, status and history.

Pure: never mutates its inputs, reads no clock (it comes in as an argument). It keeps
Kubernetes' invariants: pod `<name>-<i>` is never planned while any object of that name
exists (whoever owns it, Terminating included), so an ordinal never runs twice; a pod's claims
are created before it (the pass before) and outlive it unless the retention policy says
Delete. OrderedReady creates ordinal i only when every lower one is Running and Ready, and
removes the highest surplus pod only when all others are; RollingUpdate replaces pods from the
highest ordinal down to the partition, maxUnavailable at a time.

Beyond Kubernetes (its issue 67250): a pod that is not Ready and runs a revision other than
the update revision is replaced at once when the update revision is one that was Ready
before, so reverting a template unblocks a rollout stuck on a broken pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.controllers.deployment import is_ready
from moorage.model import quantities
from moorage.model import statefulsets as sts_model
from moorage.model.deployments import (
    HISTORY_ANNOTATION,
    format_history,
    history_entry,
    read_history,
    template_of,
)
from moorage.model.pods import TERMINAL_PHASES, is_terminating
from moorage.model.statefulsets import (
    DELETE,
    ON_DELETE,
    ORDERED_READY,
    POD_INDEX_LABEL,
    POD_NAME_LABEL,
    REVISION_ANNOTATION,
    REVISION_LABEL,
)
from moorage.model.timestamps import parse_rfc3339, rfc3339
from moorage.v1 import objects_pb2 as pb

NORMAL, WARNING = "Normal", "Warning"
STORAGE = "storage"


@dataclass(frozen=True, slots=True)
class Plan:
    create_claims: tuple[pb.PersistentVolumeClaim, ...]
    create: tuple[pb.Pod, ...]
    delete: tuple[pb.Pod, ...]
    # Copies of existing claims with a larger storage request (a template's grew).
    resize_claims: tuple[pb.PersistentVolumeClaim, ...]
    delete_claims: tuple[pb.PersistentVolumeClaim, ...]
    status: pb.StatefulSetStatus
    # The StatefulSet's new revision/history annotations, or None when they are unchanged.
    annotations: dict[str, str] | None
    # (type, reason, message) worth an Event.
    events: tuple[tuple[str, str, str], ...]

    @property
    def changes_objects(self) -> bool:
        return bool(self.create_claims or self.create or self.delete or self.resize_claims
                    or self.delete_claims)


def is_owned_by(pod: pb.Pod, sts: pb.StatefulSet) -> bool:
    for ref in pod.metadata.owner_references:
        if ref.controller and ref.kind == sts_model.KIND and ref.name == sts.metadata.name:
            return not ref.uid or not sts.metadata.uid or ref.uid == sts.metadata.uid
    return False


def is_available(pod: pb.Pod, min_ready_seconds: int, now: float) -> bool:
    """Ready for at least minReadySeconds (by its Ready condition's transition time)."""
    if not is_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    for cond in pod.status.conditions:
        if cond.type == "Ready" and cond.last_transition_time:
            try:
                return now - parse_rfc3339(cond.last_transition_time) >= min_ready_seconds
            except ValueError:
                return True
    return True


def healthy(pod: pb.Pod) -> bool:
    return is_ready(pod) and not is_terminating(pod)


def revision_of(pod: pb.Pod) -> str:
    return pod.metadata.labels.get(REVISION_LABEL, "")


# ---- building pods and claims ----

def new_pod(sts: pb.StatefulSet, ordinal: int, revision: str, template: pb.PodTemplateSpec,
            now: float) -> pb.Pod:
    """Pod `ordinal` from `template` (the one of `revision`); the shell stamps its uid."""
    name = sts_model.pod_name(sts, ordinal)
    pod = pb.Pod(api_version="v1", kind="Pod")
    meta = pod.metadata
    meta.name = name
    meta.namespace = sts.metadata.namespace
    meta.labels.update(template.metadata.labels)
    meta.labels[POD_NAME_LABEL] = name
    meta.labels[POD_INDEX_LABEL] = str(ordinal)
    meta.labels[REVISION_LABEL] = revision
    meta.annotations.update(template.metadata.annotations)
    meta.creation_timestamp = rfc3339(now)
    meta.generation = 1
    meta.owner_references.add(api_version="apps/v1", kind=sts_model.KIND,
                              name=sts.metadata.name, uid=sts.metadata.uid, controller=True)
    pod.spec.CopyFrom(template.spec)
    pod.spec.hostname = name
    pod.spec.subdomain = sts.spec.service_name
    for claim in sts.spec.volume_claim_templates:
        vol = next((v for v in pod.spec.volumes if v.name == claim.metadata.name), None)
        if vol is None:
            vol = pod.spec.volumes.add(name=claim.metadata.name)
        vol.Clear()
        vol.name = claim.metadata.name
        vol.persistent_volume_claim.claim_name = sts_model.claim_name(claim, name)
    pod.status.phase = "Pending"
    return pod


def new_claim(sts: pb.StatefulSet, template: pb.PersistentVolumeClaim, pod: str,
              now: float) -> pb.PersistentVolumeClaim:
    """The claim of `template` for `pod`: the template's labels plus the selector's."""
    claim = pb.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
    meta = claim.metadata
    meta.name = sts_model.claim_name(template, pod)
    meta.namespace = sts.metadata.namespace
    meta.labels.update(template.metadata.labels)
    meta.labels.update(sts.spec.selector.match_labels)
    meta.annotations.update(template.metadata.annotations)
    meta.creation_timestamp = rfc3339(now)
    meta.generation = 1
    claim.spec.CopyFrom(template.spec)
    claim.status.phase = "Pending"
    return claim


def _storage(claim: pb.PersistentVolumeClaim) -> int | None:
    raw = claim.spec.resources.requests.get(STORAGE)
    if raw is None:
        return None
    try:
        return int(quantities.parse_quantity(raw))
    except (quantities.QuantityError, ValueError):
        return None


# ---- revision history ----

def next_history(sts: pb.StatefulSet, hash_: str, ready: Iterable[str] = ()
                 ) -> dict[str, str] | None:
    """The history with `hash_` as the newest revision (a template seen before moves to the
    new number, as in Kubernetes, keeping what was known of it), entries whose hash is in
    `ready` flagged as having been Ready; None when nothing changes."""
    history = read_history(sts)
    ready = set(ready)
    current = int(sts.metadata.annotations.get(REVISION_ANNOTATION, "0") or 0)
    changed = False
    for entry in history.values():
        if entry.get("hash") in ready and not entry.get("ready"):
            entry["ready"] = True
            changed = True
    if not (current in history and history[current].get("hash") == hash_):
        old = next((e for e in history.values() if e.get("hash") == hash_), None)
        history = {rev: e for rev, e in history.items() if e.get("hash") != hash_}
        revision = max([current, *history]) + 1
        entry = history_entry(hash_, sts.spec.template)
        if (old and old.get("ready")) or hash_ in ready:
            entry["ready"] = True
        history[revision] = entry
        current = revision
        changed = True
    keep = sorted(history)[-(sts_model.history_limit(sts) + 1):]
    if len(keep) != len(history):
        changed = True
    if not changed:
        return None
    return {REVISION_ANNOTATION: str(current),
            HISTORY_ANNOTATION: format_history({r: history[r] for r in keep})}


def _templates(sts: pb.StatefulSet) -> dict[str, dict]:
    """hash -> its history entry."""
    return {e.get("hash", ""): e for e in read_history(sts).values()}


# ---- reconcile ----

def _max_unavailable(sts: pb.StatefulSet, replicas: int) -> int:
    value = sts.spec.update_strategy.rolling_update.max_unavailable
    which = value.WhichOneof("value")
    if which is None:
        return sts_model.DEFAULT_MAX_UNAVAILABLE
    if which == "int_val":
        return max(1, value.int_val)
    text = value.str_val
    if text.endswith("%"):
        return max(1, int(text[:-1]) * replicas // 100)
    return max(1, int(text))


def reconcile(sts: pb.StatefulSet, pods: Sequence[pb.Pod],
              claims: Sequence[pb.PersistentVolumeClaim], now: float) -> Plan:
    """The next step toward `sts`'s desired pods. `pods` are the namespace's pods (any owner:
    a name held by another object is never planned); `claims` the namespace's claims."""
    name = sts.metadata.name
    replicas = sts_model.desired_replicas(sts)
    want = sts_model.ordinals(sts)
    monotonic = sts_model.pod_management_policy(sts) == ORDERED_READY
    rolling = sts_model.update_strategy(sts) != ON_DELETE
    part = sts_model.partition(sts) if rolling else 0

    upd_hash = sts_model.update_hash(sts)
    update_rev = sts_model.revision_name(sts, upd_hash)
    entries = _templates(sts)
    cur_hash = sts_model.hash_of_revision(sts, sts.status.current_revision)
    if not cur_hash or (cur_hash != upd_hash and cur_hash not in entries):
        cur_hash = upd_hash
    current_rev = sts_model.revision_name(sts, cur_hash)
    cur_template = (sts.spec.template if cur_hash == upd_hash
                    else template_of(entries[cur_hash]))
    # Revisions known to have run Ready: the current one, and any flagged in the history.
    good = {cur_hash} | {h for h, e in entries.items() if e.get("ready")}
    revert_unblocks = rolling and upd_hash in good

    taken = {p.metadata.name for p in pods}
    claims_by_name = {c.metadata.name: c for c in claims}
    by_ordinal: dict[int, pb.Pod] = {}
    condemned: list[tuple[int, pb.Pod]] = []
    for p in pods:
        if not is_owned_by(p, sts):
            continue
        o = sts_model.ordinal_of(name, p.metadata.name)
        if o is None:
            continue
        if o in want:
            by_ordinal[o] = p
        else:
            condemned.append((o, p))
    condemned.sort(key=lambda t: t[0], reverse=True)

    create: list[pb.Pod] = []
    create_claims: list[pb.PersistentVolumeClaim] = []
    delete: list[pb.Pod] = []
    events: list[tuple[str, str, str]] = []

    def make(o: int) -> bool:
        """Plans pod `o` and its missing claims; False when it must wait."""
        pname = sts_model.pod_name(sts, o)
        if pname in taken:
            return False   # another object holds the name: never a second one
        claims_for: list[pb.PersistentVolumeClaim] = []
        for tmpl in sts.spec.volume_claim_templates:
            cname = sts_model.claim_name(tmpl, pname)
            existing = claims_by_name.get(cname)
            if existing is not None and is_terminating(existing):
                return False   # its old claim is still going away
            if existing is None:
                claims_for.append(new_claim(sts, tmpl, pname, now))
        for c in claims_for:
            create_claims.append(c)
            claims_by_name[c.metadata.name] = c
            events.append((NORMAL, "SuccessfulCreate", f"create Claim {c.metadata.name} Pod "
                           f"{pname} in StatefulSet {name} success"))
        if claims_for:
            # The claims first, the pod in a later pass: whoever watches pods (the scheduler)
            # then finds its claims already there, as in Kubernetes.
            return False
        older = rolling and o < part
        pod = new_pod(sts, o, current_rev if older else update_rev,
                      cur_template if older else sts.spec.template, now)
        create.append(pod)
        taken.add(pname)
        events.append((NORMAL, "SuccessfulCreate",
                       f"create Pod {pname} in StatefulSet {name} successful"))
        return True

    # 1. Every ordinal in range exists and is healthy, in order when OrderedReady.
    blocked = False
    for o in want:
        pod = by_ordinal.get(o)
        if pod is None:
            make(o)   # or wait: another object still holds its name or claim
            if monotonic:
                blocked = True
                break
            continue
        if is_terminating(pod):
            if monotonic:
                blocked = True
                break
            continue
        if pod.status.phase in TERMINAL_PHASES:
            delete.append(pod)
            events.append((WARNING, "RecreatingFailedPod", f"StatefulSet "
                           f"{sts.metadata.namespace}/{name} is recreating failed Pod "
                           f"{pod.metadata.name}"))
            if monotonic:
                blocked = True
                break
            continue
        if not is_ready(pod) and revert_unblocks and o >= part and \
                revision_of(pod) != update_rev:
            # Stuck on a revision that never got Ready while the set went back to one that
            # was: replace it rather than wait forever (Kubernetes makes the user do it).
            delete.append(pod)
            events.append((NORMAL, "SuccessfulDelete", f"delete Pod {pod.metadata.name} in "
                           f"StatefulSet {name} successful (its revision "
                           f"{revision_of(pod) or '?'} is not Ready; the set was reverted)"))
            if monotonic:
                blocked = True
                break
            continue
        if monotonic and not is_ready(pod):
            blocked = True
            break

    # 2. Surplus pods go, highest ordinal first.
    if not blocked:
        others_healthy = all(healthy(p) for p in by_ordinal.values()) and \
            len(by_ordinal) == replicas
        for i, (_, pod) in enumerate(condemned):
            if is_terminating(pod):
                if monotonic:
                    blocked = True
                    break
                continue
            if monotonic and not (others_healthy and
                                  all(healthy(p) for _, p in condemned[i + 1:])):
                blocked = True
                break
            delete.append(pod)
            events.append((NORMAL, "SuccessfulDelete",
                           f"delete Pod {pod.metadata.name} in StatefulSet {name} successful"))
            if monotonic:
                blocked = True
                break

    # 3. RollingUpdate: stale pods from the highest ordinal down to the partition.
    if not blocked and rolling and not delete and not create:
        in_range = [o for o in want if o >= part]
        unavailable = sum(1 for o in in_range
                          if o not in by_ordinal or not healthy(by_ordinal[o]))
        budget = _max_unavailable(sts, replicas) - unavailable
        for o in sorted(in_range, reverse=True):
            pod = by_ordinal.get(o)
            if pod is None or is_terminating(pod) or revision_of(pod) == update_rev:
                continue
            if healthy(pod):
                if budget <= 0:
                    break
                budget -= 1
            delete.append(pod)
            events.append((NORMAL, "SuccessfulDelete",
                           f"delete Pod {pod.metadata.name} in StatefulSet {name} successful"))

    # 4. Claims: grown templates raise existing claims' requests; a policy of Delete removes
    # the claims of ordinals no pod holds any more.
    resize: list[pb.PersistentVolumeClaim] = []
    delete_claims: list[pb.PersistentVolumeClaim] = []
    # A claim goes only once no object holds its pod's name (a deleted pod still runs until
    # its agent confirms it stopped).
    live_names = {p.metadata.name for p in pods} | {p.metadata.name for p in create}
    scaled_delete = sts_model.when_scaled(sts) == DELETE
    for tmpl in sts.spec.volume_claim_templates:
        prefix = f"{tmpl.metadata.name}-"
        wanted = _storage(tmpl)
        for claim in claims:
            cname = claim.metadata.name
            if not cname.startswith(prefix) or is_terminating(claim):
                continue
            o = sts_model.ordinal_of(name, cname[len(prefix):])
            if o is None:
                continue
            have = _storage(claim)
            if wanted is not None and have is not None and wanted > have:
                grown = pb.PersistentVolumeClaim()
                grown.CopyFrom(claim)
                grown.spec.resources.requests[STORAGE] = tmpl.spec.resources.requests[STORAGE]
                resize.append(grown)
            if scaled_delete and o not in want and \
                    sts_model.pod_name(sts, o) not in live_names:
                delete_claims.append(claim)
                events.append((NORMAL, "SuccessfulDelete", f"delete Claim {cname} in "
                               f"StatefulSet {name} successful (whenScaled: Delete)"))

    status = _status(sts, by_ordinal, condemned, create, delete, update_rev, current_rev, now)
    completed = {upd_hash} if status.current_revision == update_rev and \
        status.updated_replicas == replicas and status.ready_replicas == replicas else ()
    annotations = next_history(sts, upd_hash, completed)
    return Plan(tuple(create_claims), tuple(create), tuple(delete), tuple(resize),
                tuple(delete_claims), status, annotations, tuple(events))


def _status(sts, by_ordinal, condemned, create, delete, update_rev, current_rev,
            now) -> pb.StatefulSetStatus:
    gone = {p.metadata.name for p in delete}
    live = [p for p in list(by_ordinal.values()) + [p for _, p in condemned]
            if not is_terminating(p) and p.metadata.name not in gone] + list(create)
    replicas = sts_model.desired_replicas(sts)
    status = pb.StatefulSetStatus(
        observed_generation=sts.metadata.generation, replicas=len(live),
        ready_replicas=sum(1 for p in live if is_ready(p)),
        available_replicas=sum(1 for p in live
                               if is_available(p, sts.spec.min_ready_seconds, now)),
        current_replicas=sum(1 for p in live if revision_of(p) == current_rev),
        updated_replicas=sum(1 for p in live if revision_of(p) == update_rev),
        current_revision=current_rev, update_revision=update_rev,
        collision_count=sts.status.collision_count)
    if status.updated_replicas == replicas == status.replicas and \
            status.ready_replicas == replicas and current_rev != update_rev:
        # The rollout is complete: the update revision becomes the current one.
        status.current_revision = update_rev
        status.current_replicas = status.updated_replicas
    status.conditions.extend(sts.status.conditions)
    return status
