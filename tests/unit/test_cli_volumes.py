"""`moor volume ls|inspect|rm`: the printers, docker's wording, and the commands against a fake
client (no server involved)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from moorage.cli import main, printers, volumes
from moorage.cli.commands import not_found
from moorage.cli.errors import CliError
from moorage.model import kinds
from moorage.v1 import objects_pb2 as pb

CREATED = "2024-05-01T11:55:00Z"


def claim(name: str, ns: str = "shop", phase: str = "Bound", size: str = "1Gi",
          used: int = 0, pv: str = "", labels=None, annotations=None) -> pb.PersistentVolumeClaim:
    c = pb.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
    c.metadata.name, c.metadata.namespace = name, ns
    c.metadata.creation_timestamp = CREATED
    c.metadata.labels.update(labels or {})
    c.metadata.annotations.update(annotations or {})
    c.spec.access_modes.append("ReadWriteOnce")
    c.spec.resources.requests["storage"] = size
    c.spec.volume_name = pv
    c.status.phase = phase
    if phase == "Bound":
        c.status.capacity["storage"] = size
        c.status.used_bytes = used
    return c


def volume(name: str, node: str, path: str, policy: str = "Delete") -> pb.PersistentVolume:
    v = pb.PersistentVolume(api_version="v1", kind="PersistentVolume")
    v.metadata.name = name
    v.spec.local.path = path
    v.spec.storage_class_name = "local"
    v.spec.persistent_volume_reclaim_policy = policy
    term = v.spec.node_affinity.required.node_selector_terms.add()
    term.match_expressions.add(key=volumes.HOSTNAME_LABEL, operator="In", values=[node])
    return v


def pod(name: str, claims: list[str], phase: str = "Running", ns: str = "shop") -> pb.Pod:
    p = pb.Pod(api_version="v1", kind="Pod")
    p.metadata.name, p.metadata.namespace = name, ns
    for i, c in enumerate(claims):
        p.spec.volumes.add(name=f"v{i}").persistent_volume_claim.claim_name = c
    p.spec.volumes.add(name="scratch").empty_dir.medium = ""
    p.status.phase = phase
    return p


@pytest.mark.parametrize("n, want", [
    (0, "0B"), (1023, "1023B"), (1024, "1K"), (1536, "1.5K"), (12 * 2**20, "12M"),
    (int(1.25 * 2**30), "1.2G"), (3 * 2**40, "3T"),
])
def test_human_bytes(n, want):
    assert volumes.human_bytes(n) == want


def test_ls_rows_read_like_docker_volume_ls_plus_size_used_and_node():
    pvs = {"pvc-1": volume("pvc-1", "node-2", "/var/lib/moorage/volumes/pvc-1")}
    rows = volumes.ls_rows([claim("web", phase="Pending", size="2Gi"),
                            claim("data", used=5 * 2**20, pv="pvc-1")], pvs)
    assert printers.render_table(rows) == [
        "DRIVER   VOLUME NAME   SIZE   USED   NODE",
        "local    data          1Gi    5M     node-2",
        "local    web           2Gi    -      -",
    ]


def test_ls_rows_all_namespaces_and_the_selected_node_annotation():
    c = claim("data", ns="b", phase="Pending",
              annotations={volumes.SELECTED_NODE: "node-3"})
    rows = volumes.ls_rows([c, claim("data", ns="a")], {}, all_namespaces=True)
    assert rows == [("NAMESPACE", "DRIVER", "VOLUME NAME", "SIZE", "USED", "NODE"),
                    ("a", "local", "data", "1Gi", "0B", "-"),
                    ("b", "local", "data", "1Gi", "-", "node-3")]


def test_inspect_dict_has_dockers_fields_and_the_claims_state():
    c = claim("data", used=4096, pv="pvc-1", labels={"moorage.io/stack": "shop"})
    got = volumes.inspect_dict(c, volume("pvc-1", "node-1", "/v/pvc-1", "Retain"))
    assert got == {
        "CreatedAt": CREATED, "Driver": "local", "Labels": {"moorage.io/stack": "shop"},
        "Mountpoint": "/v/pvc-1", "Name": "data", "Options": {"size": "1Gi"},
        "Scope": "local",
        "Status": {"Namespace": "shop", "Phase": "Bound", "Node": "node-1", "Capacity": "1Gi",
                   "UsedBytes": 4096, "AccessModes": ["ReadWriteOnce"],
                   "StorageClass": "local", "PersistentVolume": "pvc-1",
                   "ReclaimPolicy": "Retain"}}


def test_inspect_dict_of_a_pending_claim():
    got = volumes.inspect_dict(claim("data", phase="Pending"), None)
    assert got["Mountpoint"] == "" and got["Labels"] is None
    assert got["Status"]["Phase"] == "Pending" and got["Status"]["Node"] == ""
    assert got["Status"]["Capacity"] == ""


def test_users_are_the_unfinished_pods_naming_the_claim():
    pods = [pod("db-0", ["data"]), pod("old", ["data"], phase="Succeeded"),
            pod("backup-0", ["logs", "data"]), pod("web", ["logs"])]
    assert volumes.users("data", pods) == ["backup-0", "db-0"]
    assert volumes.users("none", pods) == []


def test_dockers_wording():
    assert volumes.in_use_message("data", ["db-0", "backup-0"]) == (
        "Error response from daemon: remove data: volume is in use - [pod db-0, pod backup-0]")
    assert volumes.no_such_volume("x") == "Error: No such volume: x"


class FakeClient:
    """The three calls the commands make, over objects held in memory."""

    def __init__(self, objects):
        self.objects = {(kinds.kind_of(o).name, o.metadata.namespace, o.metadata.name): o
                        for o in objects}
        self.deleted: list[tuple[str, str]] = []

    def get(self, kind, namespace, name):
        obj = self.objects.get((kind.name, namespace, name))
        if obj is None:
            raise not_found(kind, name)
        return obj

    def list(self, kind, namespace="", all_namespaces=False, *rest):
        items = [kinds.wrap(o) for (k, ns, _), o in sorted(self.objects.items())
                 if k == kind.name and (all_namespaces or not kind.namespaced
                                        or ns == namespace)]
        return SimpleNamespace(items=items, resource_version="1")

    def delete(self, kind, namespace, name, grace=None):
        self.get(kind, namespace, name)
        self.deleted.append((kind.name, name))
        del self.objects[(kind.name, namespace, name)]


def run(argv: list[str], client: FakeClient, capsys) -> tuple[int, str, str]:
    args = main.build_parser().parse_args(argv)
    ctx = SimpleNamespace(args=args, client=lambda: client)
    try:
        code = volumes.volume(ctx)
    except CliError as err:
        code = err.code
        print(err.message, file=__import__("sys").stderr)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def client():
    return FakeClient([claim("data", pv="pvc-1", used=2048), claim("logs", phase="Pending"),
                       volume("pvc-1", "node-1", "/v/pvc-1"), pod("db-0", ["data"])])


def test_ls_command(client, capsys):
    code, stdout, _ = run(["volume", "ls", "-n", "shop"], client, capsys)
    assert code == 0
    assert stdout.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME", "SIZE", "USED", "NODE"]
    assert stdout.splitlines()[1].split() == ["local", "data", "1Gi", "2K", "node-1"]
    assert run(["volume", "ls", "-q", "-n", "shop"], client, capsys)[1] == "data\nlogs\n"
    assert run(["volume", "ls"], client, capsys)[1].splitlines() == [
        "DRIVER   VOLUME NAME   SIZE   USED   NODE"]


def test_inspect_command_prints_found_ones_and_fails_for_the_missing(client, capsys):
    code, stdout, stderr = run(["volume", "inspect", "-n", "shop", "data", "nope"], client,
                               capsys)
    assert code == 1 and stderr == "Error: No such volume: nope\n"
    (got,) = json.loads(stdout)
    assert got["Name"] == "data" and got["Mountpoint"] == "/v/pvc-1"
    assert got["Status"]["Node"] == "node-1"


def test_rm_refuses_a_volume_in_use_and_removes_the_others(client, capsys):
    code, stdout, stderr = run(["volume", "rm", "-n", "shop", "data", "logs", "nope"], client,
                               capsys)
    assert code == 1
    assert stdout == "logs\n"
    assert stderr.splitlines() == [
        "Error response from daemon: remove data: volume is in use - [pod db-0]",
        "Error: No such volume: nope"]
    assert client.deleted == [("PersistentVolumeClaim", "logs")]


def test_rm_force_removes_in_use_and_ignores_missing(client, capsys):
    code, stdout, stderr = run(["volume", "rm", "-f", "-n", "shop", "data", "nope"], client,
                               capsys)
    assert code == 0 and stderr == ""
    assert stdout == "data (in use by pod db-0: it goes once it is gone)\n"
    assert client.deleted == [("PersistentVolumeClaim", "data")]
