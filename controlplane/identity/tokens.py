"""Join tokens `MOOR1-<ca digest>-<secret>`, stored in etcd only as a hash with an expiry lease.

The digest half lets an agent pin the cluster CA before it trusts anything the control plane
says (like Swarm's SWMTKN); the secret half proves the agent was invited. etcd holds
`<prefix>/tokens/<id>` -> JSON {id, secret_sha256, created, expires}, where id is the first
8 hex chars of the secret's sha256, attached to a lease that outlives the token by
EXPIRED_KEPT_SECONDS, so an agent that comes late hears "expired" rather than "unknown", and
the record then vanishes by itself. The secret itself is never stored: an etcd dump cannot be
used to join.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import dataclass

from moorage.model.jointoken import (
    _DIGEST_LEN,
    _SECRET_BYTES,
    TOKEN_PREFIX,
    TokenError,
    _b32,
    format_token,
    parse_token,
)

_ID_CHARS = 8
EXPIRED_KEPT_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    created: float      # unix seconds
    expires: float      # unix seconds


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id(token_or_secret: str) -> str:
    """The public id of a token (or of its secret): safe to print, log and pass to revoke."""
    secret = token_or_secret
    if token_or_secret.upper().startswith(TOKEN_PREFIX + "-"):
        secret = parse_token(token_or_secret)[1]
    return _secret_hash(secret.lower())[:_ID_CHARS]


def _key(store, tid: str) -> bytes:
    return f"{store.prefix}/tokens/{tid}".encode()


async def create_token(store, ttl_seconds: float, ca_digest: bytes,
                       now: float | None = None,
                       kept_after_expiry: float = EXPIRED_KEPT_SECONDS) -> str:
    """A new token valid for `ttl_seconds`; only its hash reaches etcd."""
    if ttl_seconds <= 0:
        raise ValueError("token TTL must be positive")
    if len(ca_digest) != _DIGEST_LEN:
        raise ValueError("ca_digest must be a sha256 digest (32 bytes)")
    now = time.time() if now is None else now
    secret = _b32(secrets.token_bytes(_SECRET_BYTES))
    digest = _secret_hash(secret)
    tid = digest[:_ID_CHARS]
    record = {"id": tid, "secret_sha256": digest, "created": now, "expires": now + ttl_seconds}
    # The lease only garbage-collects; verify_token still checks `expires` itself, because a
    # lease can outlive its TTL by a little while etcd's leader changes.
    lease = await store.leases.grant(max(1, math.ceil(ttl_seconds + kept_after_expiry)))
    await store.raw.put(_key(store, tid), json.dumps(record).encode(), lease=lease)
    return format_token(ca_digest, secret)


async def _load(store, tid: str) -> dict | None:
    got = await store.raw.get(_key(store, tid))
    if got is None:
        return None
    try:
        return json.loads(got.value)
    except ValueError:
        return None


async def verify_token(store, token: str, ca_digest: bytes, now: float | None = None) -> None:
    """Returns if the token may join this cluster now; raises TokenError saying why not."""
    digest, secret = parse_token(token)
    if not hmac.compare_digest(digest, ca_digest):
        raise TokenError("join token is for another cluster (CA digest mismatch)")
    want = _secret_hash(secret)
    record = await _load(store, want[:_ID_CHARS])
    # The id is only 32 bits, so the full hash must match too; compare in constant time.
    if record is None or not hmac.compare_digest(str(record.get("secret_sha256", "")), want):
        raise TokenError("unknown join token")
    now = time.time() if now is None else now
    if now >= float(record.get("expires", 0)):
        raise TokenError("join token expired")


async def list_tokens(store, now: float | None = None) -> list[TokenInfo]:
    """Tokens that have not expired yet, soonest expiry first."""
    now = time.time() if now is None else now
    out = []
    for kv in await store.raw.list(store.raw.key("tokens", "")):
        try:
            rec = json.loads(kv.value)
            info = TokenInfo(str(rec["id"]), float(rec["created"]), float(rec["expires"]))
        except (ValueError, KeyError, TypeError):
            continue  # a corrupt record cannot be used to join either; don't break the listing
        if info.expires > now:
            out.append(info)
    return sorted(out, key=lambda t: (t.expires, t.id))


async def revoke_token(store, token_or_id: str) -> bool:
    """Deletes a token given the token itself or its id; False when there was none."""
    text = token_or_id.strip()
    tid = token_id(text) if text.upper().startswith(TOKEN_PREFIX + "-") else text.lower()
    if not re.fullmatch(rf"[0-9a-f]{{{_ID_CHARS}}}", tid):
        raise TokenError(f"malformed token id {token_or_id!r}")
    return await store.raw.delete(_key(store, tid))
