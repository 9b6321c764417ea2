"""Join tokens' format, `MOOR1-<CA digest>-<secret>`: shared by the control plane, which issues
them, and the agent, which pins the cluster CA with the digest before trusting the server."""

from __future__ import annotations

import base64
import binascii
import re

TOKEN_PREFIX = "MOOR1"
_DIGEST_LEN = 32          # sha256
_SECRET_BYTES = 16        # 128 bits -> 26 base32 chars
_SECRET_CHARS = 26
_B32 = re.compile(r"^[a-z2-7]+$")


class TokenError(Exception):
    """A join token that cannot be used; the message is safe to show to the joining agent."""


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    pad = "=" * (-len(text) % 8)
    return base64.b32decode(text.upper() + pad)


def format_token(ca_digest: bytes, secret: str) -> str:
    return f"{TOKEN_PREFIX}-{_b32(ca_digest)}-{secret}"


def parse_token(token: str) -> tuple[bytes, str]:
    """(CA digest, secret) of a token, or TokenError("malformed join token: ...")."""
    parts = (token or "").strip().split("-")
    if len(parts) != 3:
        raise TokenError(f"malformed join token: expected {TOKEN_PREFIX}-<ca digest>-<secret>")
    prefix, digest_text, secret = parts[0].upper(), parts[1].lower(), parts[2].lower()
    if prefix != TOKEN_PREFIX:
        raise TokenError(f"malformed join token: unknown version {parts[0]!r}")
    if not _B32.match(digest_text):
        raise TokenError("malformed join token: the CA digest is not base32")
    try:
        digest = _unb32(digest_text)
    except (binascii.Error, ValueError):
        raise TokenError("malformed join token: the CA digest is not base32") from None
    if len(digest) != _DIGEST_LEN:
        raise TokenError("malformed join token: the CA digest has the wrong length")
    if len(secret) != _SECRET_CHARS or not _B32.match(secret):
        raise TokenError(f"malformed join token: the secret must be {_SECRET_CHARS} base32 chars")
    return digest, secret
