"""Check and parse manifest values: quantities, names, labels, images, ports and selectors."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction


def _show(value: object) -> str:
    """Render a value the way it would look in JSON, so messages read the same for any input."""
    if isinstance(value, float):
        return repr(value)  # json.dumps would print NaN/Infinity, which YAML users never typed
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# --- quantities -------------------------------------------------------------------------------

class QuantityError(ValueError):
    """A resource quantity is malformed or out of range."""


_QUANTITY_RE = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(.*)", re.DOTALL)
_EXPONENT_RE = re.compile(r"[eE]([+-]?[0-9]+)")
_BINARY_UNITS = [("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20),
                 ("Ki", 2**10)]
_SUFFIXES = {suffix: Fraction(size) for suffix, size in _BINARY_UNITS} | {
    suffix: Fraction(10) ** power
    for suffix, power in zip(["n", "u", "m", "", "k", "M", "G", "T", "P", "E"], range(-9, 19, 3))
}
# Both limits keep a hostile manifest from making us build enormous integers.
_MAX_QUANTITY_CHARS = 64
_MAX_EXPONENT = 30
_MAX_CPUS = 1_000_000
_MAX_PODS = 1_000_000
_MAX_BYTES = 2**63 - 1  # what a signed 64-bit field on the node agent can hold


def parse_quantity(value: object) -> Fraction:
    """Parse a Kubernetes quantity ("500m", "1.5Gi", "1e3", 2, 0.5) into an exact Fraction."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(
            f'{_show(value)} is not a quantity (expected a string like "500m" or "128Mi")')
    if isinstance(value, int):
        return Fraction(value)
    # repr() is the shortest string that round-trips, so YAML's 0.1 becomes exactly 1/10
    # instead of the binary float's 0.1000000000000000055...
    text = repr(value) if isinstance(value, float) else value
    bad = f"{_show(value)} is not a quantity"
    if len(text) > _MAX_QUANTITY_CHARS:
        raise QuantityError(f"{bad} (longer than {_MAX_QUANTITY_CHARS} characters)")
    m = _QUANTITY_RE.fullmatch(text)
    e = m and _EXPONENT_RE.fullmatch(m.group(3))
    if m is None or (m.group(3) not in _SUFFIXES and e is None):
        raise QuantityError(bad + (" (surrounding whitespace)" if text != text.strip() else ""))
    sign, number, suffix = m.groups()
    if e:
        if abs(int(e.group(1))) > _MAX_EXPONENT:
            raise QuantityError(f"{bad} (exponent out of range)")
        scale = Fraction(10) ** int(e.group(1))
    else:
        scale = _SUFFIXES[suffix]
    result = Fraction(number) * scale
    return -result if sign == "-" else result


def _whole(value: object, unit: int, limit: int, too_big: str, too_fine: str) -> int:
    """value counted in 1/unit steps, checked to be a whole count in 0..limit."""
    count = parse_quantity(value) * unit
    if count < 0:
        raise QuantityError(f"{_show(value)} must not be negative")
    if count > limit:
        raise QuantityError(f"{_show(value)} {too_big}")
    if count.denominator != 1:
        raise QuantityError(f"{_show(value)} {too_fine}")
    return int(count)


def cpu_millicores(value: object) -> int:
    """CPU quantity as whole millicores: "500m" and 0.5 are both 500."""
    return _whole(value, 1000, _MAX_CPUS * 1000, f"is more than {_MAX_CPUS} cpus",
                  "is finer than 1m (one millicore)")


def memory_bytes(value: object) -> int:
    """Memory or storage quantity as whole bytes: "128Mi" is 134217728."""
    return _whole(value, 1, _MAX_BYTES, "is larger than 8Ei minus one byte (the 64-bit limit)",
                  "is not a whole number of bytes")


def _pod_count(value: object) -> int:
    return _whole(value, 1, _MAX_PODS, f"is more than {_MAX_PODS} pods",
                  "is not a whole number of pods")


_RESOURCES = {"cpu": cpu_millicores, "memory": memory_bytes,
              "ephemeral-storage": memory_bytes, "pods": _pod_count}


def parse_resource(name: str, value: object) -> int:
    """Parse a resources.requests/limits entry into its integer unit (millicores, bytes, pods)."""
    if type(name) is str and type(value) is str:
        return _parse_resource_cached(name, value)
    return _parse_resource(name, value)


# Manifests repeat the same few quantities ("100m", "64Mi") endlessly; exact Fraction parsing is
# the costliest part of validating them, and the answer never changes.
@functools.lru_cache(maxsize=4096)
def _parse_resource_cached(name: str, value: str) -> int:
    return _parse_resource(name, value)


def _parse_resource(name: str, value: object) -> int:
    parser = _RESOURCES.get(name) if isinstance(name, str) else None
    if parser is None:
        raise QuantityError(f"unsupported resource {_show(name)} "
                            f"(supported: {', '.join(_RESOURCES)})")
    return parser(value)


def format_cpu(millis: int) -> str:
    """Shortest canonical CPU quantity: 2000 -> "2", 1500 -> "1500m"."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    """Byte count with the largest binary suffix that divides it exactly, else plain digits."""
    for suffix, size in _BINARY_UNITS:
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


# --- names and labels -------------------------------------------------------------------------

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


# --- image references -------------------------------------------------------------------------

_DOMAIN_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
# Docker's grammar writes the dash separator as [-]*; -+ accepts the same language without the
# nested-quantifier backtracking that makes a long non-matching string take exponential time.
_PATH_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                      r"[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_IMAGE_NAME = 255


def _split_image(ref: object) -> tuple[str | None, str, str | None, str | None]:
    return _split_image_cached(ref) if type(ref) is str else _split_image_uncached(ref)


@functools.lru_cache(maxsize=4096)
def _split_image_cached(ref: str) -> tuple[str | None, str, str | None, str | None]:
    return _split_image_uncached(ref)


def _split_image_uncached(ref: object) -> tuple[str | None, str, str | None, str | None]:
    """(domain or None, path, tag, digest) exactly as written; ValueError says why not."""
    if ref == "":
        raise ValueError('"" is not a valid image reference')

    def bad(reason: str) -> ValueError:
        return ValueError(f"{_show(ref)} is not a valid image reference: {reason}")

    if not isinstance(ref, str):
        raise bad("must be a string")
    if any(c.isspace() for c in ref):
        raise bad("must not contain whitespace")
    rest, at, digest = ref.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise bad("digest must be 'sha256:' followed by 64 lowercase hex digits")
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a ':' before the last '/' is a registry port, not a tag
        rest, tag = rest[:colon], rest[colon + 1:]
        if tag == "":
            raise bad("tag after ':' is empty")
        if not _TAG_RE.fullmatch(tag):
            raise bad("tag must be 1-128 letters, digits, '_', '.' or '-', "
                      "not starting with '.' or '-'")
    if rest == "":
        raise bad("repository name is missing")
    if len(rest) > _MAX_IMAGE_NAME:
        raise bad(f"repository name is longer than {_MAX_IMAGE_NAME} characters")
    domain, slash, path = rest.partition("/")
    if not slash or not ("." in domain or ":" in domain or domain == "localhost"):
        domain, path = None, rest
    elif not _DOMAIN_RE.fullmatch(domain):
        raise bad(f"registry {_show(domain)} is not a valid host[:port]")
    if not _PATH_RE.fullmatch(path):
        if _PATH_RE.fullmatch(path.lower()):
            raise bad("repository names must be lowercase")
        raise bad(f"repository {_show(path)} must be '/'-separated parts of lowercase letters "
                  "and digits, joined within a part by '.', '_', '__' or dashes")
    return domain, path, tag, digest if at else None


def image_reference(ref: object) -> str | None:
    """None if ref is a valid Docker image reference, else why not."""
    try:
        _split_image(ref)
    except ValueError as e:
        return str(e)
    return None


def parse_image_reference(ref: str) -> tuple[str, str, str | None, str | None]:
    """(domain, repository, tag, digest) with Docker Hub defaults; raises ValueError if invalid."""
    domain, path, tag, digest = _split_image(ref)
    if domain in (None, "index.docker.io"):
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    if tag is None and digest is None:
        tag = "latest"
    return domain, path, tag, digest


# --- ports ------------------------------------------------------------------------------------

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


# --- label selectors --------------------------------------------------------------------------

class SelectorError(ValueError):
    """A label selector is malformed."""


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One selector clause; validated on construction so every instance is well-formed."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.values, str):
            raise SelectorError("values must be a list of strings, not a single string")
        if not isinstance(self.values, tuple):
            object.__setattr__(self, "values", tuple(self.values))
        reason = label_key(self.key) or next(filter(None, map(label_value, self.values)), None)
        if reason is None and self.operator not in _OPERATORS:
            reason = f"operator {_show(self.operator)} is not one of {', '.join(_OPERATORS)}"
        elif reason is None and (self.operator in ("In", "NotIn")) != bool(self.values):
            reason = f"operator {self.operator} " + (
                "takes no values" if self.values else "needs at least one value")
        if reason:
            raise SelectorError(reason)


# Whitespace matches neither alternative, so finditer skips it; "<" and ">" are tokens only so
# that "k>1" gets a clear error instead of reading as a key named "k>1".
_TOKEN_RE = re.compile(r"(==|!=|[=!(),<>])|[^\s=!(),<>]+")


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse the CLI -l syntax ("app=web,tier in (a,b),!canary"); "" selects everything."""
    if not isinstance(text, str):
        raise SelectorError(f"invalid label selector {_show(text)}: must be a string")
    toks = [("op" if m.group(1) else "id", m.group(), m.start() + 1)
            for m in _TOKEN_RE.finditer(text)] + [("end", "", len(text) + 1)]
    pos = 0

    def fail(reason: str) -> SelectorError:
        return SelectorError(f"invalid label selector {_show(text)}: {reason}")

    def take(kind: str, what: str, *ops: str) -> str:
        nonlocal pos
        k, t, col = toks[pos]
        if k != kind or (ops and t not in ops):
            found = "end of input" if k == "end" else _show(t)
            raise fail(f"expected {what} at column {col}, found {found}")
        pos += 1
        return t

    def peek(*ops: str) -> bool:
        k, t, _ = toks[pos]
        return k == "op" and t in ops if ops else k == "end" or t == ","

    def make(key: str, operator: str, values: tuple[str, ...] = ()) -> Requirement:
        try:
            return Requirement(key, operator, values)
        except SelectorError as e:
            raise fail(str(e)) from None

    def requirement() -> Requirement:
        nonlocal pos
        if peek("!"):
            pos += 1
            return make(take("id", "a label key"), "DoesNotExist")
        key = take("id", "a label key")
        if peek():
            return make(key, "Exists")
        if peek("=", "==", "!="):
            op = "NotIn" if take("op", "") == "!=" else "In"
            # "k=" means "k has the empty value", as in Kubernetes.
            value = "" if peek() else take("id", "a label value")
            return make(key, op, (value,))
        keyword = take("id", f"'=', '==', '!=', 'in' or 'notin' after {_show(key)}", "in",
                       "notin")
        take("op", "'('", "(")
        if peek(")"):
            raise fail(f"'{keyword}' needs at least one value")
        values = []
        while True:
            values.append("" if peek(",", ")") else take("id", "a label value"))
            if take("op", "',' or ')'", ",", ")") == ")":
                break
        return make(key, "In" if keyword == "in" else "NotIn", tuple(values))

    result = [requirement()] if toks[0][0] != "end" else []
    while toks[pos][0] != "end":
        take("op", "',' or end of input", ",")
        result.append(requirement())
    return tuple(result)


def requirements_from_label_selector(
    match_labels: Mapping[str, str] | None,
    match_expressions: Iterable[Mapping[str, object]] | None,
) -> tuple[Requirement, ...]:
    """Requirements of a Kubernetes LabelSelector (matchLabels first, then matchExpressions)."""
    result: list[Requirement] = []
    if match_labels is not None and not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be a mapping of label keys to values")
    for key, value in (match_labels or {}).items():
        reason = label_key(key) or label_value(value)
        if reason:
            raise SelectorError(f"matchLabels[{_show(key)}]: {reason}")
        result.append(Requirement(key, "In", (value,)))
    if not isinstance(match_expressions, (list, tuple, type(None))):
        raise SelectorError("matchExpressions must be a list")
    for i, expr in enumerate(match_expressions or ()):
        where = f"matchExpressions[{i}]"
        if not isinstance(expr, Mapping):
            raise SelectorError(f"{where}: must be a mapping with key, operator and values")
        # A typo such as "value:" would otherwise silently mean "no values".
        unknown = [f for f in expr if f not in ("key", "operator", "values")]
        missing = [f for f in ("key", "operator") if f not in expr]
        values = () if expr.get("values") is None else expr["values"]
        if unknown or missing:
            what = (f"unknown field {_show(unknown[0])}" if unknown
                    else f"missing {_show(missing[0])}")
            raise SelectorError(f"{where}: {what} (expected key, operator, values)")
        if not isinstance(values, (list, tuple)):
            raise SelectorError(f"{where}: values must be a list of strings")
        try:
            result.append(Requirement(expr["key"], expr["operator"], tuple(values)))
        except SelectorError as e:
            raise SelectorError(f"{where}: {e}") from None
    return tuple(result)


def matches(requirements: Iterable[Requirement], labels: Mapping[str, str]) -> bool:
    """True if labels satisfy every requirement; no requirements match everything."""
    return all(_holds(r, labels) for r in requirements)


def _holds(r: Requirement, labels: Mapping[str, str]) -> bool:
    if r.operator in ("Exists", "DoesNotExist"):
        return (r.key in labels) == (r.operator == "Exists")
    # An absent key reads as None, which no value equals: In fails and NotIn passes, as in
    # Kubernetes.
    return (labels.get(r.key) in r.values) == (r.operator == "In")


def format_selector(requirements: Iterable[Requirement]) -> str:
    """The -l syntax for requirements; parse_selector(format_selector(rs)) == tuple(rs)."""
    return ",".join(map(_format_requirement, requirements))


def _format_requirement(r: Requirement) -> str:
    if r.operator in ("Exists", "DoesNotExist"):
        return r.key if r.operator == "Exists" else f"!{r.key}"
    if len(r.values) == 1:
        return f"{r.key}{'=' if r.operator == 'In' else '!='}{r.values[0]}"
    return f"{r.key} {'in' if r.operator == 'In' else 'notin'} ({','.join(r.values)})"
