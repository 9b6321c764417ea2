"""Regenerates the committed protobuf and gRPC modules from proto/ into moorage/v1/ (`make proto`).

`check()` regenerates into a temporary directory and reports files that differ, so a test can
fail when the committed code is stale.
"""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
# protoc names modules after the proto package, so moorage/v1/*.proto becomes moorage.v1.
OUT_DIR = ROOT
PROTOS = sorted(p.relative_to(PROTO_DIR) for p in (PROTO_DIR / "moorage" / "v1").glob("*.proto"))


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    from grpc_tools import protoc  # a build-time dependency only

    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *map(str, PROTOS)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out) for p in out.rglob("*.py*") if p.is_file())


def stale() -> list[str]:
    """Names of generated files that differ from what proto/ would generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        changed = []
        for rel in generate(fresh):
            committed = OUT_DIR / rel
            if not committed.exists() or not filecmp.cmp(fresh / rel, committed, shallow=False):
                changed.append(str(rel))
        return changed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        for rel in generate(fresh):
            dest = OUT_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / rel, dest)
            print(f"wrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
