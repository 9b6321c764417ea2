"""The build context and COPY/ADD rules: Go filepath.Match, source resolution (nothing outside
the context, .dockerignore, symlinks never followed out), content checksums, the copier's
destination rules, --chown/--chmod, ADD's archives, and lookups through layer dirs."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile

import pytest

from builder import rootview
from builder.context import Context, PatternError, match
from builder.copier import (
    Copier,
    CopyOptions,
    CopySource,
    Owner,
    is_archive,
    parse_chmod,
    parse_chown,
    tree_entries,
    unpacked_archive,
)
from builder.dockerignore import Matcher
from builder.errors import BuildError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown, whiteouts and "
                                "trusted.* xattrs need root")


def write(root, rel: str, data: str = "x", mode: int = 0o644) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("pattern, name, want", [
    pytest.param("*.py", "a.py", True, id="star"),
    pytest.param("*.py", "a/b.py", False, id="star-stops-at-slash"),
    pytest.param("*", ".hidden", True, id="star-matches-dot"),
    pytest.param("a?c", "abc", True, id="question"),
    pytest.param("[a-c]x", "bx", True, id="range"),
    pytest.param("[^a-c]x", "bx", False, id="negated-range"),
    pytest.param("[^a-c]x", "dx", True, id="negated-other"),
    pytest.param("\\*", "*", True, id="escape"),
    pytest.param("src/*/main.go", "src/app/main.go", True, id="middle"),
])
def test_go_match(pattern, name, want):
    assert match(pattern, name) is want


@pytest.mark.parametrize("pattern", ["a[", "[]a]", "x\\", "[z-a]"])
def test_go_match_bad_patterns(pattern):
    with pytest.raises(PatternError):
        match(pattern, "a")


@pytest.fixture
def ctx_dir(tmp_path):
    root = tmp_path / "ctx"
    write(root, "a.txt", "alpha")
    write(root, "b.txt", "beta")
    write(root, "src/main.py", "print(1)")
    write(root, "src/util.py", "u")
    write(root, "src/notes.log", "log")
    write(root, "logs/today.log", "t")
    write(root, "logs/keep.log", "k")
    os.symlink("/etc/passwd", root / "outside-link")
    os.symlink("a.txt", root / "inside-link")
    return str(root)


def rels(sources) -> list[str]:
    return [s.rel for s in sources]


def test_sources_plain_dir_wildcard_and_root_slash(ctx_dir):
    ctx = Context(ctx_dir)
    assert rels(ctx.sources("a.txt")) == ["a.txt"]
    assert rels(ctx.sources("/a.txt")) == ["a.txt"]
    assert ctx.sources("src")[0].is_dir
    assert rels(ctx.sources("*.txt")) == ["a.txt", "b.txt"]
    assert rels(ctx.sources("src/*.py")) == ["src/main.py", "src/util.py"]
    assert rels(ctx.sources(".")) == [""]


@pytest.mark.parametrize("pattern", ["../x", "..", "src/../../x"])
def test_sources_outside_the_context_refused(ctx_dir, pattern):
    with pytest.raises(BuildError, match="forbidden path outside the build context: "):
        Context(ctx_dir).sources(pattern)


def test_source_not_found_names_it(ctx_dir):
    with pytest.raises(BuildError, match="file not found in build context or excluded by "
                       r"\.dockerignore: stat nope\.txt"):
        Context(ctx_dir).sources("nope.txt")


def test_dockerignore_hides_sources_and_walked_entries(ctx_dir):
    ctx = Context(ctx_dir, Matcher.from_text("*.txt\n**/*.log\n!logs/keep.log\n"))
    with pytest.raises(BuildError, match="excluded by .dockerignore"):
        ctx.sources("a.txt")
    walked = [below for below, _, _ in ctx.walk(ctx.sources(".")[0])]
    assert "a.txt" not in walked and "src/notes.log" not in walked
    assert "src/main.py" in walked and "logs/keep.log" in walked
    assert "logs/today.log" not in walked


def test_wildcard_matching_only_ignored_files_fails(ctx_dir):
    ctx = Context(ctx_dir, Matcher.from_text("*.txt\n"))
    with pytest.raises(BuildError, match="file not found"):
        ctx.sources("*.txt")


def test_named_symlink_resolves_inside_the_context_only(ctx_dir):
    ctx = Context(ctx_dir)
    inside = ctx.sources("inside-link")[0]
    assert inside.host == os.path.join(ctx.root, "a.txt")
    # /etc/passwd seen from the context is ctx/etc/passwd, which does not exist.
    with pytest.raises(BuildError, match="file not found"):
        ctx.sources("outside-link")


def test_walk_keeps_symlinks_as_symlinks(ctx_dir):
    ctx = Context(ctx_dir)
    kinds = {below: stat.S_ISLNK(st.st_mode) for below, _, st in ctx.walk(ctx.sources(".")[0])}
    assert kinds["outside-link"] is True and kinds["inside-link"] is True


def checksum(ctx_dir: str, pattern: str, matcher=None) -> str:
    ctx = Context(ctx_dir, matcher)  # one Context per build: it walks each source once
    return ctx.checksum(ctx.sources(pattern))


def test_checksum_ignores_mtimes_but_not_content_or_mode(ctx_dir):
    first = checksum(ctx_dir, "src")
    os.utime(os.path.join(ctx_dir, "src/main.py"), (1, 1))
    assert checksum(ctx_dir, "src") == first
    os.chmod(os.path.join(ctx_dir, "src/main.py"), 0o755)
    moded = checksum(ctx_dir, "src")
    assert moded != first
    write(ctx_dir, "src/main.py", "print(2)", 0o755)
    assert checksum(ctx_dir, "src") not in (first, moded)


def test_checksum_does_not_see_ignored_files(ctx_dir):
    first = checksum(ctx_dir, ".", Matcher.from_text("**/*.log\n"))
    write(ctx_dir, "src/notes.log", "changed")
    assert checksum(ctx_dir, ".", Matcher.from_text("**/*.log\n")) == first


# ---- the copier ----

def context_sources(ctx: Context, *patterns: str) -> list[CopySource]:
    out = []
    for p in patterns:
        for s in ctx.sources(p):
            out.append(CopySource(os.path.basename(s.rel) or ".", s.is_dir, ctx.walk(s), s.host))
    return out


@needs_root
@pytest.mark.parametrize("patterns, dest, want", [
    pytest.param(("a.txt",), "/x/y", ["x/y"], id="file-to-file"),
    pytest.param(("a.txt",), "/x/", ["x/a.txt"], id="file-into-dir"),
    pytest.param(("a.txt", "b.txt"), "/x", ["x/a.txt", "x/b.txt"], id="many-into-dir"),
    pytest.param(("src",), "/app", ["app/main.py", "app/notes.log", "app/util.py"],
                 id="dir-contents"),
    pytest.param(("a.txt",), "/existing", ["existing/a.txt"], id="into-existing-dir"),
])
def test_copy_destination_rules(ctx_dir, tmp_path, patterns, dest, want):
    root = tmp_path / "root"
    (root / "existing").mkdir(parents=True)
    Copier(str(root), CopyOptions()).copy(context_sources(Context(ctx_dir), *patterns), dest)
    files = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, fs in os.walk(root) for f in fs)
    assert files == want


@needs_root
def test_copy_owner_mode_mtime_and_parents(ctx_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.chown(os.path.join(ctx_dir, "a.txt"), 1234, 1234)
    os.utime(os.path.join(ctx_dir, "a.txt"), (1_600_000_000, 1_600_000_000))
    Copier(str(root), CopyOptions(Owner(7, 8), 0o640, Owner(7, 8))).copy(
        context_sources(Context(ctx_dir), "a.txt"), "/deep/er/")
    st = os.lstat(root / "deep/er/a.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o640)
    assert st.st_mtime == 1_600_000_000
    parent = os.lstat(root / "deep")
    assert (parent.st_uid, parent.st_gid, stat.S_IMODE(parent.st_mode)) == (7, 8, 0o755)
    Copier(str(root), CopyOptions()).copy(context_sources(Context(ctx_dir), "b.txt"), "/b")
    assert (os.lstat(root / "b").st_uid, os.lstat(root / "b").st_gid) == (0, 0)


@needs_root
def test_copy_keeps_owners_for_from(tmp_path):
    src, root = tmp_path / "src", tmp_path / "root"
    write(src, "f", "x")
    os.chown(src / "f", 55, 66)
    root.mkdir()
    Copier(str(root), CopyOptions(owner=None)).copy(
        [CopySource("src", True, tree_entries(str(src)))], "/out")
    assert (os.lstat(root / "out/f").st_uid, os.lstat(root / "out/f").st_gid) == (55, 66)


@needs_root
def test_copied_symlinks_stay_symlinks_and_image_links_stay_inside(ctx_dir, tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    # An image whose /var/run leads "outside": it is resolved inside root.
    (root / "var").mkdir()
    os.symlink("../../../../../../" + str(outside).lstrip("/"), root / "var/run")
    Copier(str(root), CopyOptions()).copy(context_sources(Context(ctx_dir), "."), "/var/run/")
    assert os.listdir(outside) == []
    landed = rootview.lookup([str(root)], "/var/run/outside-link", follow_last=False)
    assert landed is not None and os.readlink(landed[0]) == "/etc/passwd"


@pytest.mark.parametrize("text, want", [
    pytest.param("10", Owner(10, 10), id="uid-only-gid-same"),
    pytest.param("10:20", Owner(10, 20), id="numeric"),
    pytest.param("app", Owner(1000, 1000), id="name-only"),
    pytest.param("app:staff", Owner(1000, 50), id="names"),
    pytest.param("app:7", Owner(1000, 7), id="mixed"),
])
def test_parse_chown(text, want):
    passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    group = "root:x:0:\nstaff:x:50:\n"
    assert parse_chown(text, passwd, group) == want


def test_parse_chown_unknown_user():
    with pytest.raises(BuildError, match="can't find uid for 'ghost'"):
        parse_chown("ghost", "root:x:0:0::/:/bin/sh\n", "")


@pytest.mark.parametrize("text, want", [("755", 0o755), ("0644", 0o644), ("4755", 0o4755)])
def test_parse_chmod(text, want):
    assert parse_chmod(text) == want


def test_parse_chmod_refuses_symbolic():
    with pytest.raises(BuildError, match="invalid chmod parameter"):
        parse_chmod("u+x")


def _tar(members: dict[str, bytes], compress: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid = len(data), 42, 43
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if compress else raw


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_is_archive(tmp_path, compress):
    archive = tmp_path / "a.bin"
    archive.write_bytes(_tar({"x": b"1"}, compress))
    fake = tmp_path / "fake.tar"
    fake.write_text("not a tar\n")
    assert is_archive(str(archive)) and not is_archive(str(fake))


@needs_root
def test_add_archive_unpacks_keeping_its_owners(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(_tar({"dir/f": b"hello"}, True))
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    os.chmod(root / "opt", 0o700)
    unpacked = unpacked_archive(str(archive), str(tmp_path))
    Copier(str(root), CopyOptions(owner=None)).extract(tree_entries(unpacked), "/opt")
    assert (root / "opt/dir/f").read_bytes() == b"hello"
    assert os.lstat(root / "opt/dir/f").st_uid == 42
    assert stat.S_IMODE(os.lstat(root / "opt").st_mode) == 0o700  # unpacking into it


# ---- lookups through layer dirs ----

@needs_root
def test_lookup_through_whiteouts_opaque_dirs_and_links(tmp_path):
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    write(low, "etc/motd", "base")
    write(low, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(low, "var/www/old.html", "old")
    write(low, "usr/lib/libc.so", "c")
    os.symlink("usr/lib", low / "lib")
    (mid / "etc").mkdir(parents=True)
    os.mknod(mid / "etc/motd", stat.S_IFCHR, 0)  # a whiteout
    (top / "var/www").mkdir(parents=True)
    os.setxattr(top / "var/www", rootview.OPAQUE_XATTR, b"y")
    write(top, "var/www/new.html", "new")
    lowers = [str(top), str(mid), str(low)]
    assert not rootview.exists(lowers, "/etc/motd")
    assert rootview.read_file(lowers, "/etc/passwd").startswith("root:")
    assert not rootview.exists(lowers, "/var/www/old.html")
    assert rootview.exists(lowers, "/var/www/new.html")
    assert rootview.lookup(lowers, "/lib/libc.so")[0] == str(low / "usr/lib/libc.so")
    assert rootview.lookup(lowers, "/../../lib/libc.so") is not None


@needs_root
def test_existing_dirs_keep_their_metadata_new_ones_take_the_source(ctx_dir, tmp_path):
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    os.chmod(root / "app", 0o711)
    os.chmod(ctx_dir, 0o700)
    os.chmod(os.path.join(ctx_dir, "src"), 0o750)
    ctx = Context(ctx_dir)
    srcs = [CopySource(".", True, ctx.walk(s), s.host) for s in ctx.sources(".")]
    Copier(str(root), CopyOptions()).copy(srcs, "/app")
    assert stat.S_IMODE(os.lstat(root / "app").st_mode) == 0o711       # existed: kept
    assert stat.S_IMODE(os.lstat(root / "app/src").st_mode) == 0o750   # made: the source's
    srcs = [CopySource(".", True, ctx.walk(s), s.host) for s in ctx.sources(".")]
    Copier(str(root), CopyOptions()).copy(srcs, "/fresh")
    assert stat.S_IMODE(os.lstat(root / "fresh").st_mode) == 0o755     # not the context's 0700


@needs_root
def test_a_directory_source_copies_its_contents_not_its_own_mode(ctx_dir, tmp_path):
    # As both of Docker's builders do: `COPY src/ /made/` makes /made 0755 (even under
    # --chmod, which the files and subdirectories get), owned as --chown says.
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(os.path.join(ctx_dir, "src"), 0o700)
    ctx = Context(ctx_dir)
    Copier(str(root), CopyOptions()).copy(context_sources(ctx, "src"), "/made/")
    assert stat.S_IMODE(os.lstat(root / "made").st_mode) == 0o755
    Copier(str(root), CopyOptions(Owner(7, 8), 0o750, Owner(7, 8))).copy(
        context_sources(ctx, "src"), "/chmod/")
    made = os.lstat(root / "chmod")
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (7, 8, 0o755)
    assert stat.S_IMODE(os.lstat(root / "chmod/main.py").st_mode) == 0o750

def test_sum_cache_reuses_digests_until_a_file_changes(ctx_dir, tmp_path, monkeypatch):
    from builder import context as ctxmod

    reads = []
    real = ctxmod._content_digest
    monkeypatch.setattr(ctxmod, "_content_digest", lambda p, st=None: reads.append(p) or real(p))
    path = str(tmp_path / "sums.json")
    first = Context(ctx_dir, sums=ctxmod.SumCache(path))
    want = first.checksum(first.sources("src"))
    first.sums.save()
    assert len(reads) == 3
    reads.clear()
    again = Context(ctx_dir, sums=ctxmod.SumCache(path))
    assert again.checksum(again.sources("src")) == want and reads == []
    write(ctx_dir, "src/main.py", "print(9)")                  # same size, new content
    changed = Context(ctx_dir, sums=ctxmod.SumCache(path))
    assert changed.checksum(changed.sources("src")) != want
    assert reads == [os.path.join(changed.root, "src/main.py")]


@needs_root
def test_checksum_while_copying_equals_checksum_before(ctx_dir, tmp_path):
    from builder.context import SumCache

    before = checksum(ctx_dir, ".")
    ctx = Context(ctx_dir, sums=SumCache(None))
    root = tmp_path / "root"
    root.mkdir()
    srcs = [CopySource(".", True, ctx.walk(s), s.host) for s in ctx.sources(".")]
    seen = []

    def record(path, st, digest):
        seen.append(path)
        ctx.sums.record(path, st, digest)

    Copier(str(root), CopyOptions(), on_digest=record).copy(srcs, "/app")
    assert len(seen) == 7 and (root / "app/src/main.py").read_text() == "print(1)"
    assert ctx.checksum(ctx.sources(".")) == before


@needs_root
def test_direct_writes_only_when_every_written_name_is_new(ctx_dir, tmp_path):
    from builder.steps import direct_dest

    low = tmp_path / "low"
    write(low, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(low, "app/main.py", "old")
    (low / "srv").mkdir()
    os.chmod(low / "srv", 0o710)
    os.symlink("srv", low / "link")
    lowers = [str(low)]
    ctx = Context(ctx_dir)

    def sources(pattern):
        return [CopySource(os.path.basename(s.rel) or ".", s.is_dir, list(ctx.walk(s)), s.host)
                for s in ctx.sources(pattern)]

    assert direct_dest(lowers, "/new/deep/", sources("src")) == "/new/deep/"   # all new
    assert direct_dest(lowers, "/link/", sources("src")) == "/srv/"            # link followed
    assert direct_dest(lowers, "/app/", sources("a.txt")) == "/app/"           # a new name
    assert direct_dest(lowers, "/app/", sources("src")) is None                # main.py exists
    assert direct_dest(lowers, "/etc/passwd", sources("a.txt")) is None        # replaces a file
    assert direct_dest([], "/x", sources("a.txt")) is None                     # scratch: upper
    upper = tmp_path / "upper"
    upper.mkdir()
    rootview.copy_up(str(upper), lowers, "/srv/new/x")
    assert sorted(os.listdir(upper)) == ["srv"] and os.listdir(upper / "srv") == []
    assert stat.S_IMODE(os.lstat(upper / "srv").st_mode) == 0o710
