"""One cluster CA for every control-plane replica: kept in etcd, mirrored into each state dir.

The first replica to start with an empty etcd creates the CA (or takes the one already in its
state dir) and stores it with a create-if-absent Txn; every other replica, and every restart,
loads the CA from etcd, so certificates issued by one replica are trusted by all. The state-dir
copy (`pki/ca.key`, `pki/ca.crt`) is what an operator backs up; when it disagrees with etcd the
replica refuses to start rather than pick one silently.
"""

from __future__ import annotations

import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.identity.ca import CAError, ClusterCA, _key_pem
from moorage.fsutil import write_atomic


def _key(store) -> bytes:
    return f"{store.prefix}/pki/ca".encode()


def _from_record(state_dir: str, raw: bytes) -> ClusterCA:
    try:
        rec = json.loads(raw)
        key = serialization.load_pem_private_key(rec["key"].encode(), password=None)
        cert = x509.load_pem_x509_certificate(rec["cert"].encode())
    except (ValueError, KeyError, TypeError) as err:
        raise CAError(f"the cluster CA stored in etcd is unreadable: {err}") from None
    return ClusterCA(state_dir, key, cert)


def _local_files(state_dir: str) -> tuple[str, str]:
    pki = os.path.join(state_dir, "pki")
    return os.path.join(pki, "ca.key"), os.path.join(pki, "ca.crt")


async def load_cluster_ca(store, state_dir: str) -> ClusterCA:
    key = _key(store)
    stored = await store.raw.get(key)
    if stored is None:
        local = ClusterCA.load_or_create(state_dir)
        record = json.dumps({"key": _key_pem(local.key).decode(),
                             "cert": local.cert_pem.decode()}).encode()
        stored = await store.raw.create(key, record)
        if stored is None:
            return local
    ca = _from_record(state_dir, stored.value)
    key_path, cert_path = _local_files(state_dir)
    if os.path.exists(cert_path):
        with open(cert_path, "rb") as f:
            if f.read() != ca.cert_pem:
                raise CAError(f"{cert_path} is not the cluster CA stored in etcd (another "
                              f"cluster's state dir?); remove {os.path.dirname(cert_path)} to "
                              "use the cluster's CA")
    else:
        os.makedirs(os.path.dirname(key_path), mode=0o700, exist_ok=True)
        write_atomic(key_path, _key_pem(ca.key), 0o600)
        write_atomic(cert_path, ca.cert_pem, 0o644)
    return ca
