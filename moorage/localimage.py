"""Builds a busybox image offline from the host's busybox-static, as a `docker save` tarball.

Air-gapped labs and demos use it: `moor-agent import` loads it, so pods naming `busybox:1.36`
run without a registry. The image is one layer (/bin/busybox plus its applets as symlinks, a
minimal /etc) and a config with PATH and `sh` as its command.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

BUSYBOX = "/bin/busybox"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPLETS = ("sh", "ash", "cat", "echo", "env", "hostname", "httpd", "id", "ip", "kill", "ls",
           "mkdir", "nc", "nslookup", "ping", "ps", "rm", "sleep", "sort", "tail", "head",
           "true", "false", "wc", "wget", "grep", "sed", "seq", "date", "uname", "touch", "test")
# Fixed times: the same busybox gives the same layer digest, so images built twice are one.
MTIME = 1_700_000_000


def _add(tf: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
         link: str = "", directory: bool = False) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, mode
    elif link:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
    else:
        info.size, info.mode = len(data or b""), mode
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_layer(busybox: str = BUSYBOX) -> bytes:
    """An uncompressed layer tar with busybox, its applets and a minimal /etc."""
    if not os.path.exists(busybox):
        raise FileNotFoundError(f"{busybox} not found (Debian: apt-get install busybox-static)")
    with open(busybox, "rb") as f:
        binary = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "dev", "proc", "sys", "root", "var", "usr", "usr/bin"):
            _add(tf, d, directory=True, mode=0o755)
        _add(tf, "tmp", directory=True, mode=0o1777)
        _add(tf, "bin/busybox", data=binary, mode=0o755)
        for applet in APPLETS:
            _add(tf, f"bin/{applet}", link="busybox")
        _add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
                                    b"nobody:x:65534:65534:nobody:/:/bin/false\n")
        _add(tf, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def write_docker_save(path: str, tags: list[str], busybox: str = BUSYBOX) -> None:
    """Writes a `docker save`-format tarball of the busybox image, tagged with `tags`."""
    layer = busybox_layer(busybox)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                     os.uname().machine),
        "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [f"PATH={PATH}"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": tags,
                            "Layers": [layer_name]}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in ((config_name, config), (layer_name, layer),
                           ("manifest.json", manifest)):
            _add(tf, name, data=data)
