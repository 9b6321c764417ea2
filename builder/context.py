"""The build context: a directory seen through its .dockerignore. Resolves COPY/ADD sources
as Docker does (paths relative to the context root, Go filepath.Match wildcards, nothing outside
the context, a named symlink resolved inside it) and checksums what a step copies (paths, types,
modes, contents, link targets; never mtimes or owners) for the build cache.

Invariant: no path this module hands out lies outside the context root.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from builder.errors import BuildError
from moorage.fsutil import write_atomic

_CHUNK = 1 << 20
_WILDCARD = re.compile(r"[*?\[\\]")


class PatternError(ValueError):
    """A wildcard pattern Go's filepath.Match would reject (ErrBadPattern)."""


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern:
    """Go's filepath.Match syntax as a regex: * and ? never match '/', [...] classes with
    ranges and ^ negation, backslash escapes."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise PatternError(f"syntax error in pattern {pattern!r}")
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            items, first = [], True
            while True:
                if i >= n:
                    raise PatternError(f"syntax error in pattern {pattern!r}")
                if pattern[i] == "]" and not first:
                    break
                first = False
                lo, i = _class_char(pattern, i)
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                    if hi < lo:
                        raise PatternError(f"syntax error in pattern {pattern!r}")
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                else:
                    items.append(re.escape(lo))
            out.append(f"[^/{''.join(items)}]" if negate else f"[{''.join(items)}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise PatternError(f"syntax error in pattern {pattern!r}")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise PatternError(f"syntax error in pattern {pattern!r}")
    return pattern[i], i + 1


def match(pattern: str, name: str) -> bool:
    """Go's filepath.Match(pattern, name) on '/'-separated paths."""
    return _compile(pattern).match(name) is not None


def has_wildcard(text: str) -> bool:
    return bool(_WILDCARD.search(text))


class IgnoreAll:
    """No .dockerignore: nothing is excluded."""

    def excluded(self, relpath: str) -> bool:
        return False

    def may_descend(self, reldir: str) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Source:
    """One matched source: its path relative to the context root and on the host."""

    rel: str
    host: str
    is_dir: bool


class Context:
    """A context directory and its ignore rules (dockerignore.Matcher or IgnoreAll: anything
    with excluded(relpath) and may_descend(reldir))."""

    def __init__(self, root: str, matcher=None, sums: SumCache | None = None):
        self.root = os.path.realpath(root)
        self.matcher = matcher or IgnoreAll()
        self.sums = sums if sums is not None else SumCache(None)
        self._walks: dict[str, list[Entry]] = {}

    @classmethod
    def open(cls, root: str, dockerfile: str | None = None,
             sums: SumCache | None = None) -> Context:
        """The context at root with its ignore file: `<Dockerfile>.dockerignore` beside the
        Dockerfile when there is one, else root/.dockerignore, as Docker looks them up."""
        from builder import dockerignore

        candidates = [os.path.join(root, dockerignore.IGNORE_FILE)]
        if dockerfile:
            candidates.insert(0, dockerfile + dockerignore.IGNORE_FILE)
        for path in candidates:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, UnicodeDecodeError) as e:
                raise BuildError(f"reading {path}: {e}") from None
            return cls(root, dockerignore.Matcher.from_text(text, os.path.basename(path)), sums)
        return cls(root, sums=sums)

    # ---- sources ----

    def sources(self, pattern: str, what: str = "COPY",
                where: str = "build context or excluded by .dockerignore") -> list[Source]:
        """What one COPY/ADD source names: a path or a wildcard pattern, relative to the
        context root; refuses paths leading outside it and names matching nothing."""
        clean = _clean(pattern, what)
        if has_wildcard(clean):
            try:
                found = [self._source(rel) for rel in self._glob(clean)]
            except PatternError as e:
                raise BuildError(f"{what} failed: {e}") from None
        else:
            found = [self._named(clean)] if self._named(clean) else []
        if not found:
            raise BuildError(f"{what} failed: file not found in {where}: stat {pattern}: file "
                             "does not exist")
        return found

    def _named(self, rel: str) -> Source | None:
        if rel and self._excluded(rel):
            return None
        host = self._resolve(rel)
        if host is None:
            return None
        try:
            st = os.stat(host) if not os.path.islink(host) else os.lstat(host)
        except OSError:
            return None
        return Source(rel, host, stat.S_ISDIR(st.st_mode))

    def _source(self, rel: str) -> Source:
        host = os.path.join(self.root, rel)
        return Source(rel, host, stat.S_ISDIR(os.lstat(host).st_mode))

    def _resolve(self, rel: str) -> str | None:
        """rel's host path with any symlink on the way resolved as if the context were /."""
        parts = [p for p in rel.split("/") if p]
        done: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            here = os.path.join(self.root, *done, part)
            if os.path.islink(here):
                links += 1
                if links > 40:
                    return None
                target = os.readlink(here)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            if not os.path.lexists(here):
                return None
            done.append(part)
        return os.path.join(self.root, *done)

    def _excluded(self, rel: str) -> bool:
        """Whether a named source is out of the context (an excluded directory from which an
        exception brings something back still counts as there)."""
        if not self.matcher.excluded(rel):
            return False
        return not (os.path.isdir(os.path.join(self.root, rel)) and
                    self.matcher.may_descend(rel))

    def _glob(self, pattern: str) -> list[str]:
        """Paths (relative to the root, sorted) that the pattern matches component by
        component, never descending into ignored directories."""
        level = [""]
        for comp in pattern.split("/"):
            nxt = []
            for base in level:
                bdir = os.path.join(self.root, base)
                if not has_wildcard(comp):
                    rel = posixpath.join(base, comp) if base else comp
                    if os.path.lexists(os.path.join(self.root, rel)):
                        nxt.append(rel)
                    continue
                try:
                    names = sorted(os.listdir(bdir))
                except (NotADirectoryError, FileNotFoundError):
                    continue
                nxt += [posixpath.join(base, n) if base else n for n in names if match(comp, n)]
            level = nxt
        return [rel for rel in level if not self._excluded(rel)]

    # ---- walking and checksums ----

    def walk(self, src: Source) -> Iterator[tuple[str, str, os.stat_result]]:
        """(path below the source, host path, lstat) of the source and everything in it that
        .dockerignore keeps, parents before children, names sorted; "" is the source itself."""
        # Walked once per build: the checksum and the copy see the same entries, and a
        # stat costs a syscall per file.
        found = self._walks.get(src.host)
        if found is None:
            st = os.lstat(src.host)
            found = [("", src.host, st)]
            if stat.S_ISDIR(st.st_mode):
                rel_root = os.path.relpath(src.host, self.root)
                rel_root = "" if rel_root == "." else rel_root
                found += _walk_dir(src.host, "", rel_root, self.matcher)
            self._walks[src.host] = found
        return iter(found)

    def checksum(self, sources: list[Source]) -> str:
        """A digest of everything these sources copy, for the cache key."""
        return checksum_tree(((s.rel, self.walk(s)) for s in sources), self.sums.digest)


Entry = tuple[str, str, os.stat_result]


def _walk_dir(host: str, below: str, rel: str, matcher) -> Iterator[Entry]:
    try:
        entries = sorted(os.scandir(host), key=lambda e: e.name)
    except OSError as e:
        raise BuildError(f"reading the build context: {e}") from None
    for entry in entries:
        crel = posixpath.join(rel, entry.name) if rel else entry.name
        cbelow = posixpath.join(below, entry.name) if below else entry.name
        st = entry.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        if matcher.excluded(crel):
            if is_dir and matcher.may_descend(crel):
                # Excluded itself, but an exception (!pattern) may keep something inside.
                kept = list(_walk_dir(entry.path, cbelow, crel, matcher))
                if kept:
                    yield cbelow, entry.path, st
                    yield from kept
            continue
        yield cbelow, entry.path, st
        if is_dir:
            yield from _walk_dir(entry.path, cbelow, crel, matcher)


def walk_tree(host: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Like Context.walk for a tree with no ignore rules (another stage's or image's files)."""
    st = os.lstat(host)
    yield "", host, st
    if stat.S_ISDIR(st.st_mode):
        yield from _walk_dir(host, "", "", IgnoreAll())


def _content_digest(path: str, st: os.stat_result | None = None) -> str:
    """sha256 of the file; a file no bigger than one chunk costs one read (raw fds: Python's
    file objects add syscalls of their own)."""
    sha = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = st.st_size if st is not None else -1
        while True:
            chunk = os.read(fd, _CHUNK)
            sha.update(chunk)
            if not chunk or len(chunk) == size:
                break
            size -= len(chunk)
    finally:
        os.close(fd)
    return sha.hexdigest()


def checksum_tree(trees, content: Callable[[str, os.stat_result], str] = _content_digest) -> str:
    """sha256 over (name, walk) pairs: each entry's path, type, permission bits, and its
    content digest or link target."""
    sha = hashlib.sha256()
    for name, entries in trees:
        sha.update(f"source {name}\0".encode())
        for below, host, st in entries:
            mode = st.st_mode
            if stat.S_ISREG(mode):
                body = "f " + content(host, st)
            elif stat.S_ISLNK(mode):
                body = "l " + os.readlink(host)
            elif stat.S_ISDIR(mode):
                body = "d"
            else:
                body = f"o {stat.S_IFMT(mode)} {st.st_rdev}"
            sha.update(f"{below}\0{stat.S_IMODE(mode):o}\0{body}\0".encode())
    return "sha256:" + sha.hexdigest()


class SumCache:
    """Content digests of context files by (inode, size, mtime, ctime), kept between builds
    in one JSON file, so an unchanged context is not read again (a write to a file changes
    its ctime, so a stale digest is never used). Losing the file only costs a re-read."""

    MAX_ENTRIES = 200_000

    def __init__(self, path: str | None):
        self.path = path
        self._old: dict[str, list] = {}
        self._seen: dict[str, list] = {}
        self._dirty = False
        if path is None:
            return  # in memory only
        try:
            with open(path) as f:
                doc = json.load(f)
            if isinstance(doc, dict) and doc.get("version") == 1:
                self._old = doc.get("files") or {}
        except (OSError, ValueError):
            pass

    def digest(self, path: str, st: os.stat_result) -> str:
        key = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        old = self._seen.get(path) or self._old.get(path)
        if old is not None and old[:4] == key:
            self._seen[path] = old
            return old[4]
        hexdigest = _content_digest(path, st)
        self._seen[path] = [*key, hexdigest]
        self._dirty = True
        return hexdigest

    def record(self, path: str, st: os.stat_result, hexdigest: str) -> None:
        """A digest computed elsewhere (while the file was copied)."""
        self._seen[path] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, hexdigest]
        self._dirty = True

    def save(self) -> None:
        """Writes what this build saw, plus older entries up to the size limit (nothing
        when every digest was reused)."""
        if not self._dirty or self.path is None:
            return
        files = dict(self._seen)
        for path, entry in self._old.items():
            if len(files) >= self.MAX_ENTRIES:
                break
            files.setdefault(path, entry)
        try:
            write_atomic(self.path, json.dumps({"version": 1, "files": files}), sync=False)
        except OSError:
            pass


def _clean(pattern: str, what: str) -> str:
    """The source relative to the context root; '..' may not lead out of it."""
    cleaned = posixpath.normpath(pattern) if pattern else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise BuildError(f"{what} failed: forbidden path outside the build context: {pattern}")
    cleaned = cleaned.lstrip("/")
    return "" if cleaned == "." else cleaned
