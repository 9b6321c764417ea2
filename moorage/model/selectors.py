"""Label selectors: Kubernetes' text syntax (`app=web,tier in (a,b),!canary`), the structured
form, matching and formatting."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from moorage.model.names import label_key, label_value
from moorage.model.show import show as _show


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
