"""`moor get|describe sts` and `moor rollout status` wording for StatefulSets (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from moorage.cli import describe, printers
from moorage.cli.errors import CliError
from moorage.cli.rollout import rollout_message
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def sts(replicas: int | None = 3) -> pb.StatefulSet:
    s = pb.StatefulSet(api_version="apps/v1", kind="StatefulSet")
    s.metadata.name, s.metadata.namespace = "db", "default"
    s.metadata.creation_timestamp = "2024-05-01T11:55:00Z"
    s.metadata.generation = 1
    if replicas is not None:
        s.spec.replicas = replicas
    s.spec.service_name = "db"
    s.spec.selector.match_labels["app"] = "db"
    s.spec.template.metadata.labels["app"] = "db"
    s.spec.template.spec.containers.add(name="db", image="busybox:1")
    t = s.spec.volume_claim_templates.add()
    t.metadata.name = "data"
    t.spec.access_modes.append("ReadWriteOnce")
    t.spec.resources.requests["storage"] = "1Gi"
    return s


def test_get_row_is_name_ready_age_and_wide_adds_containers():
    kind = kinds.lookup("sts")
    s = sts()
    s.status.ready_replicas = 2
    assert printers.table_header(kind) == ["NAME", "READY", "AGE"]
    assert printers.table_row(s, kind, now=NOW) == ["db", "2/3", "5m"]
    assert printers.table_row(s, kind, wide=True, now=NOW)[-2:] == ["db", "busybox:1"]
    assert printers.table_row(sts(None), kind, now=NOW)[1] == "0/1"


def test_describe_shows_service_policy_strategy_revisions_and_claims():
    s = sts()
    s.status.replicas, s.status.ready_replicas = 3, 3
    s.status.current_revision = s.status.update_revision = "db-abc"
    s.spec.update_strategy.type = "RollingUpdate"
    s.spec.update_strategy.rolling_update.partition = 1
    lines = describe.describe(s, [], now=NOW).splitlines()
    for want in ("Service Name:           db", "Replicas:               3 desired | 3 total",
                 "Pod Management Policy:  OrderedReady", "Update Strategy:        RollingUpdate",
                 "  Partition:            1", "Update Revision:        db-abc",
                 "Volume Claims:", "  Capacity:      1Gi",
                 "  Access Modes:  [ReadWriteOnce]"):
        assert want in lines, "\n".join(lines)


@pytest.mark.parametrize("edit, want, done", [
    pytest.param(lambda s: setattr(s.status, "observed_generation", 0),
                 "Waiting for statefulset spec update to be observed...", False, id="unseen"),
    pytest.param(lambda s: setattr(s.status, "ready_replicas", 1),
                 "Waiting for 2 pods to be ready...", False, id="not-ready"),
    pytest.param(lambda s: setattr(s.status, "update_revision", "db-new"),
                 "waiting for statefulset rolling update to complete 1 pods at revision "
                 "db-new...", False, id="rolling"),
    pytest.param(lambda s: None, "statefulset rolling update complete 3 pods at revision "
                 "db-old...", True, id="done"),
    pytest.param(lambda s: (s.spec.update_strategy.rolling_update.__setattr__("partition", 2),
                            s.status.__setattr__("updated_replicas", 0)),
                 "Waiting for partitioned roll out to finish: 0 out of 1 new pods have been "
                 "updated...", False, id="partition"),
])
def test_rollout_status_wording_is_kubectl(edit, want, done):
    s = sts()
    s.status.observed_generation = 1
    s.status.replicas = s.status.ready_replicas = s.status.current_replicas = 3
    s.status.updated_replicas = 1
    s.status.current_revision = s.status.update_revision = "db-old"
    edit(s)
    assert rollout_message(s) == (want, done)


def test_rollout_status_of_on_delete_is_refused():
    s = sts()
    s.spec.update_strategy.type = "OnDelete"
    with pytest.raises(CliError, match="only available for RollingUpdate"):
        rollout_message(s)
