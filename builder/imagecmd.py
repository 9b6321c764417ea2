"""`moor images`, `moor tag`, `moor rmi` on the build machine's image store, with Docker's
columns and messages (`Untagged: web:1`, `Deleted: sha256:...`, `No such image: x:latest`)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from builder import images as img
from builder.errors import BuildError
from builder.paths import BuildRoot
from nodeagent.runtime.images.reference import ReferenceError, parse_reference
from nodeagent.runtime.images.store import Image, Store, StoreError

NONE = "<none>"
DAEMON = "Error response from daemon: "
_MIN_WIDTH, _PAD = 10, 3  # docker's table writer: minimum cell width, padding
_FRACTION_RE = re.compile(r"(\.\d{1,6})\d*")


def _store(args) -> Store:
    root = BuildRoot.from_args(args.root)
    try:
        return Store(root.images)
    except OSError as e:
        raise BuildError(f"cannot open the image store {root.images}: {e.strerror}") from None


def familiar(reference: str) -> str:
    """docker.io/library/web:1 -> web:1, docker.io/me/web -> me/web, as Docker shows names."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if reference.startswith(prefix):
            rest = reference[len(prefix):]
            if prefix == "docker.io/" or "/" not in rest.split(":", 1)[0]:
                return rest
    return reference


def _shown(name: str) -> str:
    """A name as Docker echoes it in errors: normalised with its tag, else as typed."""
    try:
        return familiar(str(parse_reference(name)))
    except ReferenceError:
        return name


def _split(reference: str) -> tuple[str, str]:
    ref = parse_reference(reference)
    return familiar(ref.name), ref.tag or NONE


# ---- listing ----

@dataclass(frozen=True, slots=True)
class Listed:
    """One image (one ID) with every name it has."""

    id: str
    names: tuple[str, ...]  # normalised references, sorted
    manifest_digest: str
    created: float | None
    size: int
    parent: str | None


def listing(store: Store, sizes: bool = True) -> list[Listed]:
    """Every image once, with its names; sizes=False skips measuring never-measured layers."""
    by_id: dict[str, list[Image]] = {}
    for image in store.list():
        by_id.setdefault(img.image_id(image), []).append(image)
    found = []
    for ident, group in by_id.items():
        first = group[0]
        try:
            created = _created(img.config_doc(store, first).get("created"))
            size = sum(store.layer_size(d) for d in first.diff_ids) if sizes else 0
        except (BuildError, OSError):
            created, size = None, 0
        names = tuple(sorted(i.reference for i in group if not img.is_id_record(i)))
        parent = next((i.parent for i in group if i.parent), None)
        found.append(Listed(ident, names, first.manifest_digest, created, size, parent))
    return found


def _created(text) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(_FRACTION_RE.sub(r"\1", text.replace("Z", "+00:00"))
                                      ).timestamp()
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """Docker's wording for an age ("About a minute", "3 weeks")."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_size(size: float) -> str:
    """Docker's sizes: decimal units, three significant digits ("4.26MB", "512B")."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"


def _table(rows: list[list[str]]) -> Iterable[str]:
    widths = [max(_MIN_WIDTH, max(len(r[i]) for r in rows) + _PAD) for i in range(len(rows[0]))]
    for row in rows:
        yield "".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + row[-1]


def _matches(name: str, want: tuple[str, str | None]) -> bool:
    ref = parse_reference(name)
    return ref.name == want[0] and (want[1] is None or ref.tag == want[1])


def _glob(pattern: str) -> re.Pattern:
    """Go's path.Match, as Docker's reference filter uses it: `*` and `?` stop at '/'."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise BuildError(f"invalid reference filter {pattern!r}: unclosed '['")
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else re.escape(body)) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _reference_match(name: str, pattern: str) -> bool:
    """Docker's `reference=` filter: the pattern against name:tag, else against the name."""
    repo, tag_ = _split(name)
    rx = _glob(pattern)
    return bool(rx.match(f"{repo}:{tag_}") or rx.match(repo))


@dataclass
class _Filters:
    """`--filter` terms (`dangling=true|false`, `reference=PATTERN`, `label=KEY[=VALUE]`);
    Docker's rules: terms of one key are alternatives, different keys must all hold."""

    dangling: bool | None = None
    references: list[str] = field(default_factory=list)
    labels: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def parse(cls, terms: list[str]) -> _Filters:
        f = cls()
        for term in terms:
            key, sep, value = term.partition("=")
            if not sep:
                raise BuildError(f"bad format of filter (expected name=value): {term}")
            key = key.strip().lower()
            if key == "dangling":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise BuildError(f"invalid filter 'dangling={value}'")
                f.dangling = value.lower() in ("true", "1")
            elif key == "reference":
                _glob(value)
                f.references.append(value)
            elif key == "label":
                k, s, v = value.partition("=")
                f.labels.append((k, v if s else None))
            else:
                raise BuildError(f"invalid filter '{key}' (moor images knows dangling, "
                                 "reference and label)")
        return f

    def labelled(self, store: Store, image: Image) -> bool:
        if not self.labels:
            return True
        try:
            have = (img.config_doc(store, image).get("config") or {}).get("Labels") or {}
        except (BuildError, OSError):
            return False
        return all(k in have and (v is None or have[k] == v) for k, v in self.labels)


def images(args) -> int:
    store = _store(args)
    filters = _Filters.parse(getattr(args, "filter", None) or [])
    want = None
    if args.repository and any(c in args.repository for c in "*?["):
        filters.references.append(args.repository)  # docker: the argument is a reference=
    elif args.repository:
        try:
            ref = parse_reference(args.repository)
        except ReferenceError as e:
            raise BuildError(f"invalid reference {args.repository!r}: {e}") from None
        has_tag = ":" in args.repository.rsplit("/", 1)[-1]
        want = (ref.name, ref.tag if has_tag else None)
    listed = listing(store)
    parents = {item.parent for item in listed if item.parent}
    now = time.time()
    rows = []
    show_all = getattr(args, "all", False)
    for item in listed:
        names = [n for n in item.names if (want is None or _matches(n, want))
                 and (not filters.references
                      or any(_reference_match(n, p) for p in filters.references))]
        if not item.names and want is None and not filters.references \
                and (show_all or item.id not in parents):
            names = [""]  # dangling: untagged and no image was built on it (-a: any untagged)
        if filters.dangling is not None and filters.dangling != (names == [""]):
            continue
        if names and filters.labels and not filters.labelled(store, img.resolve(store, item.id)):
            continue
        for name in names:
            repo, tag_ = _split(name) if name else (NONE, NONE)
            age = "N/A" if item.created is None else \
                human_duration(max(0.0, now - item.created)) + " ago"
            rows.append((-(item.created or 0), repo, tag_, item, age))
    rows.sort(key=lambda r: r[:3])
    if args.quiet:
        for *_, item, _ in rows:
            print(img.short_id(item.id))
        return 0
    header = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID",
              "CREATED", "SIZE"]
    table = [header]
    for _, repo, tag_, item, age in rows:
        table.append([repo, tag_, *([item.manifest_digest] if args.digests else []),
                      img.short_id(item.id), age, human_size(item.size)])
    for line in _table(table):
        print(line.rstrip())
    return 0


# ---- tag ----

def tag(args) -> int:
    store = _store(args)
    image = img.resolve(store, args.source)
    if image is None:
        sys.stderr.write(f"{DAEMON}No such image: {_shown(args.source)}\n")
        return 1
    img.tag(store, image, args.target)
    return 0


# ---- rmi ----

def rmi(args) -> int:
    store = _store(args)
    failed = False
    for name in args.names:
        try:
            for line in remove(store, name, force=args.force):
                print(line)
        except _Conflict as e:
            sys.stderr.write(f"{DAEMON}{e}\n")
            failed = True
    try:
        # Docker frees a deleted image's layers at once; gc keeps whatever any record names,
        # including one a build commits meanwhile.
        store.gc(keep_refs=None)
    except StoreError as e:
        raise BuildError(f"freeing removed images' layers in {store.root}: {e}") from None
    return 1 if failed else 0


class _Conflict(Exception):
    pass


def remove(store: Store, name: str, *, force: bool = False) -> list[str]:
    """Untags name, and deletes its image once no name is left on it (and the untagged images
    it was built on that nothing else is built on); Docker's lines saying what happened."""
    image = img.resolve(store, name)
    if image is None:
        raise _Conflict(f"No such image: {_shown(name)}")
    ident = img.image_id(image)
    listed = {item.id: item for item in listing(store, sizes=False)}
    item = listed[ident]
    children = [i.id for i in listed.values() if i.parent == ident]
    lines = []
    by_name = not img.is_id_record(image) and _names_image(name, image)
    if by_name:
        store.remove(image.reference)
        lines.append(f"Untagged: {familiar(image.reference)}")
        if len(item.names) > 1 or children:
            return lines  # still named, or an intermediate image of another now
    else:
        if len(item.names) > 1 and not force:
            raise _Conflict(f"conflict: unable to delete {img.short_id(ident)} (must be forced) "
                            "- image is referenced in multiple repositories")
        if children:
            raise _Conflict(f"conflict: unable to delete {img.short_id(ident)} (cannot be "
                            "forced) - image has dependent child images")
        for ref in item.names:
            store.remove(ref)
            lines.append(f"Untagged: {familiar(ref)}")
    store.remove(ident)
    lines.append(f"Deleted: {ident}")
    # Walk up the untagged intermediate images only this one was built on.
    parent = item.parent
    gone = {ident}
    while parent and parent in listed:
        up = listed[parent]
        if up.names or any(i.parent == parent and i.id not in gone for i in listed.values()):
            break
        store.remove(parent)
        lines.append(f"Deleted: {parent}")
        gone.add(parent)
        parent = up.parent
    return lines


def _names_image(name: str, image: Image) -> bool:
    """Whether name was found as a reference (not as an ID prefix)."""
    try:
        return str(parse_reference(name)) == image.reference or "@" in name
    except ReferenceError:
        return False
