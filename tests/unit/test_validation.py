from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.model.images import image_reference, parse_image_reference
from moorage.model.names import (
    dns1123_label,
    dns1123_subdomain,
    label_key,
    label_value,
    port_name,
    port_number,
)
from moorage.model.quantities import (
    QuantityError,
    cpu_millicores,
    format_bytes,
    format_cpu,
    memory_bytes,
    parse_quantity,
    parse_resource,
)
from moorage.model.selectors import (
    Requirement,
    SelectorError,
    format_selector,
    matches,
    parse_selector,
    requirements_from_label_selector,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


# --- quantities -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("500m", Fraction(1, 2)),
    (".5", Fraction(1, 2)),
    ("5.", Fraction(5)),
    ("+1Ki", Fraction(1024)),
    ("-.5e-2", Fraction(-1, 200)),
    ("1E", Fraction(10**18)),
    ("1E3", Fraction(1000)),
    ("100n", Fraction(1, 10**7)),
    (0.1, Fraction(1, 10)),
    (3, Fraction(3)),
], ids=["milli", "leading-dot", "trailing-dot", "plus-sign", "neg-exponent", "exa-suffix",
        "upper-e-exponent", "nano", "float-is-exact", "int"])
def test_parse_quantity(value, expected):
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value, message", [
    ("12XB", '"12XB" is not a quantity'),
    ("", '"" is not a quantity'),
    ("1Mi ", '"1Mi " is not a quantity'),
    (" 1", '" 1" is not a quantity'),
    ("1e", '"1e" is not a quantity'),
    ("1..2", '"1..2" is not a quantity'),
    ("ー1", '"ー1" is not a quantity'),
    ("١", '"١" is not a quantity'),
    ("1e31", '"1e31" is not a quantity (exponent out of range)'),
    ("1" * 65, "is not a quantity (longer than 64 characters)"),
    (True, 'true is not a quantity (expected a string like "500m" or "128Mi")'),
    (None, "null is not a quantity (expected"),
    ([1], "[1] is not a quantity (expected"),
    (float("inf"), "inf is not a quantity"),
], ids=["unknown-suffix", "empty", "trailing-space", "leading-space", "bare-e", "two-dots",
        "non-ascii", "arabic-digit", "huge-exponent", "too-long", "bool", "null", "list", "inf"])
def test_parse_quantity_rejects(value, message):
    with pytest.raises(QuantityError) as exc:
        parse_quantity(value)
    assert message in str(exc.value)


@pytest.mark.parametrize("value, millis", [
    ("500m", 500), (0.5, 500), ("0.5", 500), ("1", 1000), (1, 1000), ("2.5", 2500),
    ("1e3", 1_000_000), (0.1, 100), ("0", 0), ("1000000", 10**9),
], ids=["500m", "float-half", "str-half", "one", "int-one", "two-and-half", "exponent",
        "float-tenth", "zero", "at-limit"])
def test_cpu_millicores(value, millis):
    assert cpu_millicores(value) == millis


@pytest.mark.parametrize("value, message", [
    ("-1", '"-1" must not be negative'),
    ("0.0001", '"0.0001" is finer than 1m (one millicore)'),
    ("2000000", '"2000000" is more than 1000000 cpus'),
    ("1u", '"1u" is finer than 1m'),
], ids=["negative", "too-fine", "too-many", "micro"])
def test_cpu_millicores_rejects(value, message):
    with pytest.raises(QuantityError) as exc:
        cpu_millicores(value)
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("value, size", [
    ("128Mi", 134217728), ("1G", 10**9), ("1.5Gi", 3 * 2**29), ("1e9", 10**9), ("5k", 5000),
    ("1Ki", 1024), (1024, 1024), ("0", 0), ("8Ei", None), (2**63 - 1, 2**63 - 1),
], ids=["128Mi", "1G", "1.5Gi", "1e9", "5k", "1Ki", "int", "zero", "8Ei-is-over", "max"])
def test_memory_bytes(value, size):
    if size is None:
        with pytest.raises(QuantityError, match="larger than 8Ei"):
            memory_bytes(value)
    else:
        assert memory_bytes(value) == size


@pytest.mark.parametrize("value, message", [
    ("12XB", '"12XB" is not a quantity'),
    ("1Mi ", '"1Mi " is not a quantity'),
    ("-1", '"-1" must not be negative'),
    ("0.5", '"0.5" is not a whole number of bytes'),
    ("500m", '"500m" is not a whole number of bytes'),
    ("9Ei", '"9Ei" is larger than 8Ei'),
], ids=["bad-suffix", "trailing-space", "negative", "half-byte", "milli-bytes", "over-bound"])
def test_memory_bytes_rejects(value, message):
    with pytest.raises(QuantityError) as exc:
        memory_bytes(value)
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("name, value, expected", [
    ("cpu", "250m", 250), ("memory", "64Mi", 64 * 2**20), ("ephemeral-storage", "1Gi", 2**30),
    ("pods", "110", 110), ("pods", "1k", 1000),
], ids=["cpu", "memory", "ephemeral-storage", "pods", "pods-k"])
def test_parse_resource(name, value, expected):
    assert parse_resource(name, value) == expected


@pytest.mark.parametrize("name, value, message", [
    ("nvidia.com/gpu", "1", ('unsupported resource "nvidia.com/gpu" (supported: cpu, memory, '
                             'ephemeral-storage, pods)')),
    ("pods", "1.5", '"1.5" is not a whole number of pods'),
    ("pods", "2M", '"2M" is more than 1000000 pods'),
    ("pods", -1, "-1 must not be negative"),
    ("memory", "0.5", "not a whole number of bytes"),
], ids=["unknown", "fractional-pods", "too-many-pods", "negative-pods", "half-byte"])
def test_parse_resource_rejects(name, value, message):
    with pytest.raises(QuantityError) as exc:
        parse_resource(name, value)
    assert message in str(exc.value)


@pytest.mark.parametrize("millis, text", [
    (500, "500m"), (2000, "2"), (1500, "1500m"), (0, "0"),
], ids=["half", "whole", "mixed", "zero"])
def test_format_cpu(millis, text):
    assert format_cpu(millis) == text


@pytest.mark.parametrize("n, text", [
    (128 * 2**20, "128Mi"), (2**30, "1Gi"), (1500, "1500"), (0, "0"), (1024, "1Ki"),
    (3 * 2**29, "1536Mi"), (7 * 2**60, "7Ei"),
], ids=["128Mi", "1Gi", "not-multiple", "zero", "1Ki", "1.5Gi", "exa"])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


_byte_counts = st.one_of(
    st.integers(0, 2**63 - 1),
    st.builds(lambda n, p: n * 1024**p, st.integers(0, 2**13), st.integers(0, 6))
    .filter(lambda n: n < 2**63),
)


@given(_byte_counts)
def test_format_bytes_round_trips(n):
    assert memory_bytes(format_bytes(n)) == n


@given(st.integers(0, 10**9))
def test_format_cpu_round_trips(m):
    assert cpu_millicores(format_cpu(m)) == m


@given(st.text(max_size=80))
def test_parse_quantity_fails_only_with_quantity_error(text):
    try:
        parse_quantity(text)
    except QuantityError:
        pass


# --- names and labels -------------------------------------------------------------------------

@pytest.mark.parametrize("name, ok", [
    ("web", True), ("web-1", True), ("1web", True), ("a" * 63, True),
    ("a" * 64, False), ("Web_1", False), ("-web", False), ("web-", False), ("a.b", False),
    ("web\n", False), (5, False),
], ids=["plain", "dash", "leading-digit", "63", "64", "upper-underscore", "leading-dash",
        "trailing-dash", "dot", "trailing-newline", "int"])
def test_dns1123_label(name, ok):
    assert (dns1123_label(name) is None) == ok


def test_dns1123_label_messages():
    assert dns1123_label("") == "name must not be empty"
    assert dns1123_label("Web_1") == (
        '"Web_1" is not a valid name: lowercase letters, digits and \'-\' only, starting and '
        "ending with a letter or digit, at most 63 characters")


@pytest.mark.parametrize("name, ok", [
    ("example.com", True), ("a", True), ("a-1.b-2.c", True), (".a", False), ("a..b", False),
    ("a.", False), ("A.com", False), (("a" * 63 + ".") * 4 + "a", False), ("a" * 64 + ".b", False),
], ids=["domain", "single", "dashes", "leading-dot", "empty-part", "trailing-dot", "upper",
        "over-253", "part-over-63"])
def test_dns1123_subdomain(name, ok):
    assert (dns1123_subdomain(name) is None) == ok


@pytest.mark.parametrize("key, ok", [
    ("app", True), ("app.kubernetes.io/name", True), ("A_b.c-D", True), ("x/y", True),
    ("-bad", False), ("bad-", False), ("", False), ("/name", False), ("Foo.com/name", False),
    ("a/b/c", False), ("example.com/", False), ("a" * 64, False), (1, False), ("a b", False),
], ids=["plain", "prefixed", "mixed-chars", "short-prefix", "leading-dash", "trailing-dash",
        "empty", "empty-prefix", "upper-prefix", "two-slashes", "empty-name", "long-name",
        "int", "space"])
def test_label_key(key, ok):
    assert (label_key(key) is None) == ok


def test_label_key_message():
    assert label_key("-bad").startswith('label key "-bad" is invalid: ')
    assert label_key("") == "label key must not be empty"


@pytest.mark.parametrize("value, reason", [
    ("", None), ("web", None), ("v1.2_3-x", None), ("a" * 63, None),
    ("a" * 64, 'is invalid'), ("-x", "is invalid"), ("a b", "is invalid"),
    (1, 'label value 1 must be a string (quote it: "1")'),
    (True, 'label value true must be a string (quote it: "true")'),
    (None, "label value null must be a string"),
], ids=["empty", "plain", "mixed", "63", "64", "leading-dash", "space", "int", "bool", "null"])
def test_label_value(value, reason):
    got = label_value(value)
    assert got is None if reason is None else reason in got


# --- images -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", [
    "nginx", "nginx:1.14.2", "library/nginx:latest", "ghcr.io/a/b@" + DIGEST,
    "ghcr.io/a/b:v1@" + DIGEST, "localhost:5000/app", "localhost/app", "registry:5000/a/b:c",
    "my-reg.example.com/team/app_x.y__z--w:TAG_1.0-rc", "[::1]:5000/app", "localhost:5000",
], ids=["bare", "tag", "library", "digest", "tag-and-digest", "localhost-port", "localhost",
        "host-port", "separators", "ipv6", "localhost-tag"])
def test_image_reference_valid(ref):
    assert image_reference(ref) is None


@pytest.mark.parametrize("ref, reason", [
    ("Nginx:latest", ('"Nginx:latest" is not a valid image reference: repository names must be '
                      'lowercase')),
    ("", '"" is not a valid image reference'),
    ("nginx:", '"nginx:" is not a valid image reference: tag after'),
    ("nginx:-x", "tag must be"),
    ("nginx:" + "a" * 129, "tag must be"),
    ("nginx@sha256:abc", "digest must be"),
    ("nginx@md5:" + "0" * 32, "digest must be"),
    ("nginx@" + DIGEST.upper(), "digest must be"),
    ("a//b", "must be '/'-separated"),
    ("-a", "must be '/'-separated"),
    ("a-", "must be '/'-separated"),
    ("a___b", "must be '/'-separated"),
    ("bad_host.com:port/app", "registry"),
    (":tag", "repository name is missing"),
    ("nginx latest", "whitespace"),
    ("a" * 256, "longer than 255"),
    (7, "must be a string"),
], ids=["upper", "empty", "empty-tag", "tag-leading-dash", "long-tag", "short-digest",
        "other-algorithm", "upper-hex", "empty-component", "leading-dash", "trailing-dash",
        "triple-underscore", "bad-registry", "no-name", "space", "too-long", "int"])
def test_image_reference_invalid(ref, reason):
    got = image_reference(ref)
    assert got is not None and reason in got


@pytest.mark.parametrize("ref, parts", [
    ("nginx:1.14.2", ("docker.io", "library/nginx", "1.14.2", None)),
    ("nginx", ("docker.io", "library/nginx", "latest", None)),
    ("bitnami/redis", ("docker.io", "bitnami/redis", "latest", None)),
    ("docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("index.docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("localhost:5000/app", ("localhost:5000", "app", "latest", None)),
    ("ghcr.io/a/b@" + DIGEST, ("ghcr.io", "a/b", None, DIGEST)),
    ("ghcr.io/a/b:v2@" + DIGEST, ("ghcr.io", "a/b", "v2", DIGEST)),
], ids=["tagged", "default-tag", "hub-user", "explicit-hub", "index-hub", "local-registry",
        "digest", "tag-and-digest"])
def test_parse_image_reference(ref, parts):
    assert parse_image_reference(ref) == parts


def test_parse_image_reference_raises_value_error():
    with pytest.raises(ValueError, match="must be lowercase"):
        parse_image_reference("Nginx")


@given(st.text(max_size=300))
def test_image_reference_never_crashes(ref):
    assert image_reference(ref) is None or isinstance(image_reference(ref), str)


def test_image_reference_is_fast_on_pathological_input():
    # A regex with nested quantifiers would take forever here.
    assert image_reference("a" * 200 + "!") is not None


# --- ports ------------------------------------------------------------------------------------

@pytest.mark.parametrize("port, reason", [
    (1, None), (80, None), (65535, None),
    (0, "0 is not a valid port (1-65535)"), (70000, "70000 is not a valid port (1-65535)"),
    (-1, "-1 is not a valid port"), (True, "true is not a valid port"),
    ("80", '"80" is not a valid port'), (80.0, "80.0 is not a valid port"),
], ids=["min", "http", "max", "zero", "too-big", "negative", "bool", "string", "float"])
def test_port_number(port, reason):
    assert port_number(port) == reason if reason is None else reason in port_number(port)


@pytest.mark.parametrize("name, reason", [
    ("http", None), ("web-8080", None), ("a", None), ("x" * 15, None),
    ("", "port name must not be empty"), ("x" * 16, "at most 15 characters"),
    ("HTTP", "lowercase"), ("http_alt", "lowercase"), ("8080", "at least one letter"),
    ("-http", "'-'"), ("http-", "'-'"), ("a--b", "'--'"), (80, "must be a string"),
], ids=["http", "dash", "one-letter", "15", "empty", "16", "upper", "underscore", "digits",
        "leading-dash", "trailing-dash", "double-dash", "int"])
def test_port_name(name, reason):
    got = port_name(name)
    assert got is None if reason is None else reason in got


# --- selectors --------------------------------------------------------------------------------

def req(key, operator, *values):
    return Requirement(key, operator, values)


@pytest.mark.parametrize("text, expected", [
    ("", ()),
    ("   ", ()),
    ("app=web", (req("app", "In", "web"),)),
    ("app==web", (req("app", "In", "web"),)),
    ("app!=web", (req("app", "NotIn", "web"),)),
    ("app=", (req("app", "In", ""),)),
    ("tier in (a,b)", (req("tier", "In", "a", "b"),)),
    (" tier  notin ( a , b ) ", (req("tier", "NotIn", "a", "b"),)),
    ("k in (a,)", (req("k", "In", "a", ""),)),
    ("canary", (req("canary", "Exists"),)),
    ("!canary", (req("canary", "DoesNotExist"),)),
    ("in in (in),notin", (req("in", "In", "in"), req("notin", "Exists"))),
    ("a=b , example.com/c != d,!e,f", (req("a", "In", "b"), req("example.com/c", "NotIn", "d"),
                                       req("e", "DoesNotExist"), req("f", "Exists"))),
], ids=["empty", "blank", "eq", "double-eq", "not-eq", "empty-value", "in", "notin-spaced",
        "in-empty-item", "exists", "not-exists", "keywords-as-names", "mixed"])
def test_parse_selector(text, expected):
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("a=,", "expected a label key at column 4, found end of input"),
    ("a in ()", "'in' needs at least one value"),
    ("a in (b", "expected ',' or ')'"),
    ("a in b", "expected '('"),
    ("a b", "expected '=', '==', '!=', 'in' or 'notin' after \"a\""),
    ("k>1", 'found ">"'),
    ("!", "expected a label key"),
    ("!a=b", "expected ',' or end of input"),
    (",a", "expected a label key at column 1"),
    ("a=b c", "expected ',' or end of input"),
    ("-bad=x", 'label key "-bad" is invalid'),
    ("a=-x", 'label value "-x" is invalid'),
    ("a==", None),
], ids=["trailing-comma", "empty-list", "unclosed", "no-parens", "two-words", "gt", "bang-only",
        "bang-with-op", "leading-comma", "value-space", "bad-key", "bad-value", "eq-eq-empty"])
def test_parse_selector_rejects(text, reason):
    if reason is None:  # "a==" is "a equals the empty value", not an error
        assert parse_selector(text) == (req("a", "In", ""),)
        return
    with pytest.raises(SelectorError) as exc:
        parse_selector(text)
    assert str(exc.value).startswith(f'invalid label selector "{text}": ')
    assert reason in str(exc.value)


@pytest.mark.parametrize("labels, exprs, expected", [
    ({"app": "web"}, None, (req("app", "In", "web"),)),
    (None, [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
     (req("tier", "In", "a", "b"),)),
    ({"a": "1"}, [{"key": "b", "operator": "Exists"}, {"key": "c", "operator": "DoesNotExist",
                                                      "values": []}],
     (req("a", "In", "1"), req("b", "Exists"), req("c", "DoesNotExist"))),
    (None, None, ()),
], ids=["labels", "expression", "both", "empty"])
def test_requirements_from_label_selector(labels, exprs, expected):
    assert requirements_from_label_selector(labels, exprs) == expected


@pytest.mark.parametrize("labels, exprs, reason", [
    ({"app": 1}, None, 'matchLabels["app"]: label value 1 must be a string'),
    ({"-a": "x"}, None, 'matchLabels["-a"]: label key "-a" is invalid'),
    (["app"], None, "matchLabels must be a mapping"),
    (None, {"key": "a"}, "matchExpressions must be a list"),
    (None, ["a"], "matchExpressions[0]: must be a mapping"),
    (None, [{"key": "a", "operator": "In", "values": []}], "In needs at least one value"),
    (None, [{"key": "a", "operator": "NotIn"}], "NotIn needs at least one value"),
    (None, [{"key": "a", "operator": "Exists", "values": ["x"]}], "Exists takes no values"),
    (None, [{"key": "a", "operator": "in", "values": ["x"]}], 'operator "in" is not one of'),
    (None, [{"key": "a", "operator": "In", "value": ["x"]}], 'unknown field "value"'),
    (None, [{"operator": "Exists"}], 'missing "key"'),
    (None, [{"key": "a", "operator": "In", "values": "x"}], "values must be a list"),
    (None, [{"key": "a", "operator": "In", "values": [1]}], "label value 1 must be a string"),
], ids=["int-value", "bad-key", "labels-list", "exprs-mapping", "expr-string", "in-empty",
        "notin-missing", "exists-values", "lowercase-op", "typo-field", "missing-key",
        "values-string", "int-in-values"])
def test_requirements_from_label_selector_rejects(labels, exprs, reason):
    with pytest.raises(SelectorError) as exc:
        requirements_from_label_selector(labels, exprs)
    assert reason in str(exc.value)


@pytest.mark.parametrize("selector, labels, expected", [
    ("", {}, True),
    ("", {"a": "b"}, True),
    ("app=web", {"app": "web", "x": "y"}, True),
    ("app=web", {"app": "db"}, False),
    ("app=web", {}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("tier in (a,b)", {"tier": "b"}, True),
    ("tier notin (a,b)", {"tier": "c"}, True),
    ("tier notin (a,b)", {}, True),
    ("canary", {"canary": ""}, True),
    ("canary", {}, False),
    ("!canary", {}, True),
    ("!canary", {"canary": "1"}, False),
    ("app=", {"app": ""}, True),
    ("app=web,!canary", {"app": "web", "canary": "x"}, False),
], ids=["empty-empty", "empty-any", "in-hit", "in-miss", "in-absent", "notin-absent",
        "notin-hit", "set-in", "set-notin", "set-notin-absent", "exists", "exists-absent",
        "not-exists", "not-exists-present", "empty-value", "all-must-hold"])
def test_matches(selector, labels, expected):
    assert matches(parse_selector(selector), labels) is expected


@pytest.mark.parametrize("reqs, text", [
    ((), ""),
    ((req("a", "In", "b"),), "a=b"),
    ((req("a", "NotIn", "b"),), "a!=b"),
    ((req("a", "In", "b", "c"), req("d", "NotIn", "e", "f")), "a in (b,c),d notin (e,f)"),
    ((req("a", "Exists"), req("b", "DoesNotExist")), "a,!b"),
], ids=["empty", "eq", "neq", "sets", "existence"])
def test_format_selector(reqs, text):
    assert format_selector(reqs) == text


_label_names = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?", fullmatch=True)
_prefixes = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}/",
                          fullmatch=True)
_keys = st.builds(lambda p, n: p + n, st.one_of(st.just(""), _prefixes), _label_names)
_values = st.one_of(st.just(""), _label_names)
_requirements = st.one_of(
    st.builds(Requirement, _keys, st.sampled_from(["In", "NotIn"]),
              st.lists(_values, min_size=1, max_size=3).map(tuple)),
    st.builds(Requirement, _keys, st.sampled_from(["Exists", "DoesNotExist"])),
)
_requirement_lists = st.lists(_requirements, max_size=4).map(tuple)
_label_sets = st.dictionaries(_keys, _values, max_size=4)


@given(_requirement_lists)
def test_selector_round_trips(reqs):
    assert parse_selector(format_selector(reqs)) == reqs


@given(_requirements, _label_sets)
def test_in_and_notin_are_complements(r, labels):
    if r.operator in ("In", "NotIn"):
        opposite = Requirement(r.key, "NotIn" if r.operator == "In" else "In", r.values)
    else:
        opposite = Requirement(r.key, "DoesNotExist" if r.operator == "Exists" else "Exists")
    assert matches([r], labels) != matches([opposite], labels)


@given(_requirement_lists, _label_sets)
def test_matches_is_conjunction(reqs, labels):
    assert matches(reqs, labels) == all(matches([r], labels) for r in reqs)


@given(st.text(alphabet="ab=!(),in ot", max_size=30))
def test_parse_selector_fails_only_with_selector_error(text):
    try:
        reqs = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(format_selector(reqs)) == reqs
