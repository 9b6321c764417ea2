"""Names, label keys and values, and ports: the DNS-1123 and label rules Kubernetes enforces.
Each check returns None when the value is valid, else why not, in one line."""

from __future__ import annotations

import json
import re

from moorage.model.show import show as _show

_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_NAME_RULES = ("lowercase letters, digits and '-' only, starting and ending with a letter or "
               "digit, at most 63 characters")
_SUBDOMAIN_RULES = ("'.'-separated parts of lowercase letters, digits and '-', each starting and "
                    "ending with a letter or digit, at most 253 characters")
_LABEL_RULES = ("at most 63 characters of letters, digits, '-', '_' or '.', starting and ending "
                "with a letter or digit")


def _is_dns_label(s: str) -> bool:
    # Length first: it bounds the regex work on hostile input.
    return len(s) <= 63 and _DNS_LABEL_RE.fullmatch(s) is not None


def _is_subdomain(s: str) -> bool:
    return 0 < len(s) <= 253 and all(_is_dns_label(part) for part in s.split("."))


def dns1123_label(s: object) -> str | None:
    """None if s is a valid object name (RFC 1123 label), else why not."""
    if s == "":
        return "name must not be empty"
    ok = isinstance(s, str) and _is_dns_label(s)
    return None if ok else f"{_show(s)} is not a valid name: {_NAME_RULES}"


def dns1123_subdomain(s: object) -> str | None:
    """None if s is a valid RFC 1123 subdomain (e.g. "example.com"), else why not."""
    if s == "":
        return "name must not be empty"
    ok = isinstance(s, str) and _is_subdomain(s)
    return None if ok else f"{_show(s)} is not a valid DNS subdomain: {_SUBDOMAIN_RULES}"


def label_key(k: object) -> str | None:
    """None if k is a valid label key ("app", "example.com/tier"), else why not."""
    if not isinstance(k, str):
        return f"label key {_show(k)} must be a string"
    if k == "":
        return "label key must not be empty"
    prefix, slash, name = k.rpartition("/")
    if slash and not _is_subdomain(prefix):
        return f"label key {_show(k)} is invalid: the prefix before '/' must be a DNS subdomain " \
               f"({_SUBDOMAIN_RULES})"
    if not name or len(name) > 63 or _LABEL_NAME_RE.fullmatch(name) is None:
        part = "the name after '/' " if slash else ""
        return f"label key {_show(k)} is invalid: {part}must be 1-63 characters of letters, " \
               "digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


def label_value(v: object) -> str | None:
    """None if v is a valid label value (may be empty), else why not."""
    if v is None:
        return 'label value null must be a string (use "" for an empty value)'
    if isinstance(v, (bool, int, float)):
        # YAML turns unquoted 1, true, 1.5 into non-strings; tell the user the fix.
        return f"label value {_show(v)} must be a string (quote it: {json.dumps(_show(v))})"
    if not isinstance(v, str):
        return f"label value {_show(v)} must be a string"
    if v and (len(v) > 63 or _LABEL_NAME_RE.fullmatch(v) is None):
        return f"label value {_show(v)} is invalid: {_LABEL_RULES}"
    return None





_PORT_NAME_RE = re.compile(r"[a-z0-9-]+")


def port_number(p: object) -> str | None:
    """None if p is an integer port 1..65535, else why not."""
    if isinstance(p, bool) or not isinstance(p, int):
        return f"{_show(p)} is not a valid port (expected a number 1-65535)"
    if not 1 <= p <= 65535:
        return f"{p} is not a valid port (1-65535)"
    return None


def port_name(s: object) -> str | None:
    """None if s is a valid named port (IANA service name, e.g. "http"), else why not."""
    if s == "":
        return "port name must not be empty"
    if not isinstance(s, str):
        return f"{_show(s)} is not a valid port name: must be a string"
    checks = [
        (len(s) <= 15, "at most 15 characters"),
        (_PORT_NAME_RE.fullmatch(s) is not None, "lowercase letters, digits and '-' only"),
        (any("a" <= c <= "z" for c in s), "must contain at least one letter"),
        (not (s.startswith("-") or s.endswith("-") or "--" in s),
         "must not start or end with '-' or contain '--'"),
    ]
    reason = next((why for ok, why in checks if not ok), None)
    return reason and f"{_show(s)} is not a valid port name: {reason}"
