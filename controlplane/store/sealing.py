"""Secrets encrypted at rest: AES-256-GCM under keys kept in a file outside etcd.

A sealed value is `moorage:enc:aesgcm:v1:<key id>:` + a 12-byte nonce + the ciphertext of the
object's protobuf bytes, with the object's etcd key as associated data (so a value copied to
another key does not open). The key file holds one key a line, `<id> <base64 of 32 bytes>`; the
first seals, all open. Every replica of the control plane needs the same file: a replica that
meets a key it does not hold reads the file again (an operator may just have copied it), and
if the key is still missing refuses to serve the Secret, saying which key and which file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controlplane.store.errors import StoreError
from moorage.fsutil import write_atomic

log = logging.getLogger(__name__)

MAGIC = b"moorage:enc:aesgcm:v1:"
NONCE_BYTES = 12
KEY_BYTES = 32
KEY_FILE = "secrets.key"


class SealError(StoreError):
    """A sealed value cannot be opened here (a missing key, or bytes that do not verify)."""


def key_id(key: bytes) -> str:
    """A key's name: the start of its SHA-256, which says nothing about the key itself."""
    return hashlib.sha256(b"moorage secrets key\0" + key).hexdigest()[:8]


def parse_keys(text: str, source: str) -> list[tuple[str, bytes]]:
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            key = base64.b64decode(parts[-1], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise SealError(f"{source} line {n}: want `<id> <base64 of {KEY_BYTES} bytes>`")
        if len(parts) > 1 and parts[0] != key_id(key):
            raise SealError(f"{source} line {n}: the id {parts[0]} does not match its key "
                            f"(it is {key_id(key)})")
        keys.append((key_id(key), key))
    if not keys:
        raise SealError(f"{source}: no key in it")
    return keys


def format_keys(keys: list[tuple[str, bytes]]) -> str:
    return "".join(f"{kid} {base64.b64encode(key).decode()}\n" for kid, key in keys)


class Sealer:
    def __init__(self, path: str, keys: list[tuple[str, bytes]]):
        self.path = path
        self._keys = keys
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    @classmethod
    def load(cls, path: str, create: bool = False) -> Sealer:
        """The keys in `path`; with `create`, a new file with one fresh key if there is none."""
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            if not create:
                raise SealError(f"secrets key file {path} does not exist") from None
            key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
            write_atomic(path, format_keys([(key_id(key), key)]), mode=0o600)
            log.info("created the secrets key %s in %s (copy this file to every other "
                     "control-plane replica)", key_id(key), path)
            return cls(path, [(key_id(key), key)])
        except OSError as err:
            raise SealError(f"cannot read secrets key file {path}: {err.strerror}") from None
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warning("secrets key file %s is readable by others (mode %o); chmod 600 it",
                        path, mode)
        return cls(path, parse_keys(text, path))

    @property
    def primary(self) -> str:
        return self._keys[0][0]

    def key_ids(self) -> list[str]:
        return [kid for kid, _ in self._keys]

    def seal(self, etcd_key: bytes, plaintext: bytes) -> bytes:
        kid, key = self._keys[0]
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + kid.encode() + b":" + nonce + AESGCM(key).encrypt(nonce, plaintext,
                                                                         etcd_key)

    @staticmethod
    def sealed(value: bytes) -> bool:
        return value.startswith(MAGIC)

    @staticmethod
    def sealed_with(value: bytes) -> str:
        return value[len(MAGIC):].split(b":", 1)[0].decode(errors="replace")

    def open(self, etcd_key: bytes, value: bytes) -> bytes:
        """The plaintext of a sealed value (an unsealed one, written before sealing, as is)."""
        if not self.sealed(value):
            return value
        kid, _, rest = value[len(MAGIC):].partition(b":")
        kid_s = kid.decode(errors="replace")
        key = self._key(kid_s)
        nonce, ciphertext = rest[:NONCE_BYTES], rest[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, etcd_key)
        except InvalidTag:
            raise SealError(f"the Secret at {etcd_key.decode(errors='replace')} does not "
                            f"verify under key {kid_s}: it was altered or copied from another "
                            "key; refusing to serve it") from None

    def _key(self, kid: str) -> bytes:
        with self._lock:
            found = dict(self._keys).get(kid)
            if found is None:
                # An operator may have just copied a rotated file here.
                try:
                    with open(self.path) as f:
                        self._keys = parse_keys(f.read(), self.path)
                except (OSError, SealError):
                    pass
                found = dict(self._keys).get(kid)
        if found is None:
            message = (f"cannot decrypt Secrets sealed with key {kid}: it is not in {self.path} "
                       "(copy the key file from the replica that made or rotated the key)")
            if kid not in self._reported:
                self._reported.add(kid)
                log.error("%s", message)
            raise SealError(message)
        return found

    def rotate(self) -> str:
        """A new key first in the file (the old ones stay, for what they sealed); its id."""
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        with self._lock:
            keys = [(key_id(key), key), *self._keys]
            write_atomic(self.path, format_keys(keys), mode=0o600)
            self._keys = keys
        return key_id(key)

    def retire(self, keep: set[str]) -> list[str]:
        """Drops every key but the primary and those in `keep`; the ids dropped."""
        with self._lock:
            kept = [k for i, k in enumerate(self._keys) if i == 0 or k[0] in keep]
            dropped = [kid for kid, _ in self._keys if kid not in {k for k, _ in kept}]
            if dropped:
                write_atomic(self.path, format_keys(kept), mode=0o600)
                self._keys = kept
        return dropped


async def reseal(store, prefix: bytes) -> int:
    """Seals every value under `prefix` (the Secrets) again with the primary key, each in a
    Txn on its revision (a value changed meanwhile is read again); how many were resealed."""
    from controlplane.store.txn import Op

    sealer: Sealer = store.sealer
    done = 0
    for rec in await store.raw.list(prefix):
        value, revision = rec.value, rec.mod_revision
        while True:
            if Sealer.sealed(value) and Sealer.sealed_with(value) == sealer.primary:
                break
            fresh = sealer.seal(rec.key, sealer.open(rec.key, value))
            ok, _, current = await store.commit([Op(rec.key, fresh, revision)])
            if ok:
                done += 1
                break
            kv = current.get(rec.key)
            if kv is None:
                break   # deleted meanwhile
            value, revision = kv.value, kv.mod_revision
    return done
