"""Back up a tree with every kind of entry and get exactly the same tree back."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import treeutil as tu
from treeutil import assert_trees_equal, copy_tree, make_tricky_tree, under

STAT_KEYS = {"files_new", "files_changed", "files_unchanged", "dirs", "bytes_read", "bytes_added",
             "blobs_added", "duration_s", "warnings"}
POINT_KEYS = {"id", "created", "kind", "mode", "sources", "stats"}
LS_KEYS = {"path", "type", "mode", "size", "mtime", "uid", "gid", "user", "group"}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def tricky(tmp_path_factory, registered_factory):
    """One registered machine that has backed up the tricky tree once."""
    base = tmp_path_factory.mktemp("tricky")
    sr = registered_factory(base)
    src = base / "src"
    make_tricky_tree(src)
    backup = sr.backup(src)
    return SimpleNamespace(sr=sr, src=src, backup=backup, point=backup["id"])


# ---------------------------------------------------------------------------------------------


def test_backup_json_describes_the_point(tricky):
    b = tricky.backup
    assert isinstance(b["id"], str) and b["id"]
    parse_time(b["created"])
    assert b["mode"] == "unoptimized"
    assert b["sources"] == [str(tricky.src)]
    assert STAT_KEYS <= set(b["stats"]), f"missing stats: {STAT_KEYS - set(b['stats'])}"
    assert b["stats"]["warnings"] == 0, b["warnings"]
    assert b["warnings"] == []
    assert b["stats"]["files_new"] > 0
    assert b["stats"]["files_changed"] == 0 and b["stats"]["files_unchanged"] == 0
    assert b["stats"]["bytes_read"] >= 3 * tu.MiB
    assert b["stats"]["bytes_added"] > 0 and b["stats"]["blobs_added"] > 0


def test_full_roundtrip_is_identical(tricky, tmp_path):
    target = tmp_path / "restore"
    res = tricky.sr.restore(tricky.point, target=target, conflict="overwrite")
    assert res["errors"] == []
    assert res["files_restored"] > 0
    assert res["files_skipped"] == 0 and res["files_copied"] == 0
    assert_trees_equal(tricky.src, under(target, tricky.src))


def test_restore_by_latest_and_id_prefix(tricky, tmp_path):
    for name, ref in (("latest", "latest"), ("prefix", tricky.point[:8])):
        target = tmp_path / name
        tricky.sr.restore(ref, tricky.src / tu.SMALL, target=target, conflict="overwrite")
        assert (under(target, tricky.src) / tu.SMALL).read_bytes() == tu.SMALL_CONTENT


def test_restore_single_directory(tricky, tmp_path):
    target = tmp_path / "restore"
    res = tricky.sr.restore(tricky.point, tricky.src / "dir_a", target=target, conflict="overwrite")
    assert res["errors"] == []
    restored_src = under(target, tricky.src)
    assert_trees_equal(tricky.src / "dir_a", restored_src / "dir_a")
    assert sorted(os.listdir(restored_src)) == ["dir_a"], "restored more than the selected path"


def test_restore_hardlink_directory_keeps_links(tricky, tmp_path):
    target = tmp_path / "restore"
    tricky.sr.restore(tricky.point, tricky.src / "hardlinks", target=target, conflict="overwrite")
    assert_trees_equal(tricky.src / "hardlinks", under(target, tricky.src) / "hardlinks")


def test_restore_single_files(tricky, tmp_path):
    target = tmp_path / "restore"
    paths = [tricky.src / tu.SMALL, tricky.src / tu.SPARSE, tricky.src / "links" / "relative"]
    res = tricky.sr.restore(tricky.point, *paths, target=target, conflict="overwrite")
    assert res["errors"] == []
    assert res["files_restored"] == 3
    for p in paths:
        assert_trees_equal(p, under(target, p))
    assert sorted(os.listdir(under(target, tricky.src))) == sorted(["links", tu.SMALL, tu.SPARSE])


def test_restore_path_deeper_than_path_max(tricky, tmp_path):
    target = tmp_path / "restore"
    tricky.sr.restore(tricky.point, tricky.src / tu.DEEP_TOP, target=target, conflict="overwrite")
    assert_trees_equal(tricky.src / tu.DEEP_TOP, under(target, tricky.src) / tu.DEEP_TOP)


def _perm_bits(mode) -> int | str:
    """Normalise an ls 'mode' field (int, octal string or ls-style string)."""
    if isinstance(mode, int):
        return mode & 0o7777
    s = str(mode)
    if s.startswith("0o"):
        return int(s[2:], 8) & 0o7777
    if s.isdigit():
        return int(s, 8) & 0o7777
    return s[-9:]  # symbolic, compare against stat.filemode


def _assert_mode(entry, st_mode):
    got = _perm_bits(entry["mode"])
    if isinstance(got, int):
        assert got == stat.S_IMODE(st_mode), f"{entry['path']}: mode {entry['mode']!r} != {oct(st_mode)}"
    else:
        assert got == stat.filemode(st_mode)[-9:], f"{entry['path']}: mode {entry['mode']!r} != {stat.filemode(st_mode)}"


def test_ls_json_lists_entries(tricky):
    src = tricky.src
    entries = tricky.sr.json("ls", tricky.point, src)
    assert isinstance(entries, list) and entries
    by_path = {e["path"]: e for e in entries}
    for e in entries:
        assert LS_KEYS <= set(e), f"ls entry misses {LS_KEYS - set(e)}: {e}"
        assert e["path"] == str(src) or e["path"].startswith(str(src) + "/"), f"outside {src}: {e['path']}"
    expected = set()
    for name in os.listdir(src):
        try:
            os.fsencode(name).decode("utf-8")
        except UnicodeDecodeError:
            continue
        expected.add(str(src / name))
    missing = expected - set(by_path)
    assert not missing, f"ls does not list: {sorted(missing)}"

    small = by_path[str(src / tu.SMALL)]
    assert small["size"] == len(tu.SMALL_CONTENT)
    assert by_path[str(src / tu.SPARSE)]["size"] == tu.SPARSE_SIZE
    link = by_path[str(src / "links")]
    d = by_path[str(src / "dir_a")]
    assert d["type"] != small["type"]
    assert by_path[str(src / "empty-dir")]["type"] == d["type"] == link["type"]
    assert by_path[str(src / tu.EMPTY)]["type"] == small["type"]
    for name in (tu.SMALL, "dir_a", "private", "private-dir", "modes", "no-permissions"):
        _assert_mode(by_path[str(src / name)], os.lstat(src / name).st_mode)
    st = os.lstat(src / tu.SMALL)
    assert (small["uid"], small["gid"]) == (st.st_uid, st.st_gid)


def test_ls_json_symlinks_and_owners(tricky):
    src = tricky.src
    entries = tricky.sr.json("ls", tricky.point, src / "links")
    by_path = {e["path"]: e for e in entries}
    for name in ("dangling", "absolute", "relative", "to-dir"):
        e = by_path.get(str(src / "links" / name))
        assert e is not None, f"ls does not list links/{name}: {sorted(by_path)}"
        assert e.get("target") == os.readlink(src / "links" / name), e
    types = {by_path[str(src / "links" / n)]["type"] for n in ("dangling", "relative", "to-dir")}
    assert len(types) == 1, f"symlinks listed with different types: {types}"

    entries = tricky.sr.json("ls", tricky.point, src / "modes")
    by_path = {e["path"]: e for e in entries}
    for name in ("setuid", "setgid-file", "setgid-dir", "sticky-dir"):
        _assert_mode(by_path[str(src / "modes" / name)], os.lstat(src / "modes" / name).st_mode)
    if tu.is_root():
        e = by_path[str(src / "modes" / "setuid")]
        assert (e["uid"], e["gid"]) == (tu.OTHER_UID, tu.OTHER_GID)


def test_ls_text_lists_names(tricky):
    out = tricky.sr.run("ls", tricky.point, tricky.src).stdout
    for name in os.listdir(tricky.src):
        if not name.isprintable():
            continue
        try:
            os.fsencode(name).decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert name in out, f"{name!r} not in plain ls output"


def test_ls_by_latest_and_prefix_match_id(tricky):
    full = tricky.sr.json("ls", tricky.point, tricky.src / "dir_a")
    assert tricky.sr.json("ls", "latest", tricky.src / "dir_a") == full
    assert tricky.sr.json("ls", tricky.point[:8], tricky.src / "dir_a") == full


def test_points_json_fields_and_order(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    first = registered.backup(src)
    (src / "b.txt").write_text("two\n")
    second = registered.backup(src)
    assert first["id"] != second["id"]

    points = registered.points()
    assert [p["id"] for p in points] == [second["id"], first["id"]], "points are not newest first"
    for p, b in zip(points, (second, first)):
        assert POINT_KEYS <= set(p), f"point misses {POINT_KEYS - set(p)}: {p}"
        assert p["mode"] == "unoptimized"
        assert p["sources"] == [str(src)]
        assert isinstance(p["kind"], str) and p["kind"]
        assert parse_time(p["created"]) == parse_time(b["created"])
        assert STAT_KEYS <= set(p["stats"])
        for k in ("files_new", "files_changed", "files_unchanged", "bytes_read", "bytes_added"):
            assert p["stats"][k] == b["stats"][k], f"points stats {k} differs from the backup's"
    assert parse_time(points[0]["created"]) >= parse_time(points[1]["created"])

    text = registered.run("points").stdout
    for p in points:
        assert p["id"][:6] in text, f"point {p['id']} not in plain `points` output"


def test_restore_original_after_deleting_source(registered, tmp_path):
    src = tmp_path / "src"
    make_tricky_tree(src)
    point = registered.backup(src)["id"]
    reference = tmp_path / "reference"
    copy_tree(src, reference)  # cp -a cannot copy the part deeper than PATH_MAX
    shutil.rmtree(src)

    res = registered.restore(point, target="original", conflict="overwrite")
    assert res["errors"] == []
    assert_trees_equal(reference, src)


def test_restore_original_with_cp_a_reference(registered, tmp_path):
    """Same as above with a reference made by `cp -a` (tree without the >PATH_MAX chain)."""
    src = tmp_path / "src"
    make_tricky_tree(src, deep=False)
    point = registered.backup(src)["id"]
    reference = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(src), str(reference)], check=True)
    shutil.rmtree(src)
    registered.restore(point, target="original", conflict="overwrite")
    assert_trees_equal(reference, src)


def _mutate(src: Path) -> None:
    (src / tu.SMALL).write_bytes(b"changed content\n")
    os.setxattr(src / tu.SMALL, "user.comment", b"changed comment")
    os.unlink(src / tu.EMPTY)
    (src / "new-file.txt").write_text("added after the first backup\n")
    (src / "new-dir").mkdir()
    (src / "new-dir" / "inner.txt").write_text("inner\n")
    os.chmod(src / "dir_a" / "notes.md", 0o600)
    os.rename(src / "dir_a" / "sub", src / "dir_a" / "sub-renamed")
    os.unlink(src / "links" / "relative")
    os.symlink("../dir_a/notes.md", src / "links" / "relative")
    os.unlink(src / "hardlink-third")  # the other two names stay linked
    (src / "hardlink-third").write_text("no longer a hardlink\n")
    with open(src / tu.RANDOM, "ab") as f:
        f.write(b"appended tail" * 1000)
    fd = tu.deep_dir_fd(src)
    try:
        leaf = os.open(tu.DEEP_LEAF, os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        os.write(leaf, b"changed at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    if tu.is_root():
        os.chown(src / "owned" / "uid-only", 4343, 7)


def test_every_point_restores_as_full_picture(registered, tmp_path):
    src = tmp_path / "src"
    make_tricky_tree(src)
    first = registered.backup(src)["id"]
    copy1 = tmp_path / "copy1"
    copy_tree(src, copy1)

    _mutate(src)
    second = registered.backup(src)
    assert second["stats"]["files_changed"] + second["stats"]["files_new"] >= 4
    copy2 = tmp_path / "copy2"
    copy_tree(src, copy2)

    for point, reference, name in ((first, copy1, "r1"), (second["id"], copy2, "r2")):
        target = tmp_path / name
        res = registered.restore(point, target=target, conflict="overwrite")
        assert res["errors"] == []
        assert_trees_equal(reference, under(target, src))


# ---------------------------------------------------------------------------------------------
# self-check of the comparator (no strongroom involved)


@pytest.fixture(scope="module")
def plain_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("selfcheck")
    make_tricky_tree(base / "tree")
    return base / "tree"


def test_treeutil_accepts_cp_a_copy(tmp_path):
    src = tmp_path / "tree"
    make_tricky_tree(src, deep=False)
    subprocess.run(["cp", "-a", str(src), str(tmp_path / "copy")], check=True)
    assert_trees_equal(src, tmp_path / "copy")


def test_treeutil_accepts_copy_tree_copy(plain_tree, tmp_path):
    copy_tree(plain_tree, tmp_path / "copy")
    assert_trees_equal(plain_tree, tmp_path / "copy")


def _keep_times(path: Path, change):
    st = os.lstat(path)
    change()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _flip_byte(root):
    def flip():
        fd = os.open(root / tu.RANDOM, os.O_RDWR)
        b = os.pread(fd, 1, 2 * tu.MiB)
        os.pwrite(fd, bytes([b[0] ^ 1]), 2 * tu.MiB)
        os.close(fd)

    _keep_times(root / tu.RANDOM, flip)


def _replace_symlink(root):
    p = root / "links" / "relative"
    st = os.lstat(p)
    os.unlink(p)
    os.symlink("../small.txT", p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _break_hardlink(root):
    p = root / "hardlink-third"
    st = os.lstat(p)
    data = p.read_bytes()
    os.unlink(p)
    p.write_bytes(data)
    os.chmod(p, stat.S_IMODE(st.st_mode))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rewrite_sparse_dense(root):
    p = root / tu.SPARSE
    st = os.lstat(p)
    fd = os.open(p, os.O_WRONLY)
    zeros = bytes(tu.MiB)
    for off in range(0, st.st_size, tu.MiB):
        os.pwrite(fd, zeros, off)
    for off, data in tu.SPARSE_REGIONS:
        os.pwrite(fd, data, off)
    os.fsync(fd)
    os.close(fd)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _write_into_hole(root):
    p = root / tu.SPARSE
    st = os.lstat(p)
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, b"x", 10 * tu.MiB)
    os.close(fd)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _remove_deep_leaf(root):
    fd = tu.deep_dir_fd(root)
    try:
        st = os.stat(".", dir_fd=fd)
        os.unlink(tu.DEEP_LEAF, dir_fd=fd)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def _fifo_to_file(root):
    p = root / "special" / "fifo"
    st = os.lstat(p)
    os.unlink(p)
    p.write_bytes(b"")
    os.chmod(p, 0o640)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rename_non_utf8(root):
    rb = os.fsencode(root)
    os.rename(rb + b"/" + tu.NON_UTF8_FILE, rb + b"/caf\xc3\xa9")


def _change_rdev(root):
    p = root / "special" / "char-dev"
    st = os.lstat(p)
    os.unlink(p)
    os.mknod(p, st.st_mode, os.makedev(250, 18))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


MUTATIONS = {
    "content": (_flip_byte, "random-3MiB.bin: contents differ at byte 2097152", False),
    "mode": (lambda r: _keep_times(r / "modes" / "setuid", lambda: os.chmod(r / "modes" / "setuid", 0o755)),
             "modes/setuid: st_mode 0o104755 != 0o100755", False),
    "dir-mtime": (lambda r: os.utime(r / "dir_a", ns=(0, os.lstat(r / "dir_a").st_mtime_ns + 1)),
                  "dir_a: mtime_ns", False),
    "symlink-mtime": (lambda r: os.utime(r / "links" / "dangling", ns=(0, 1), follow_symlinks=False),
                      "links/dangling: mtime_ns", False),
    "prehistoric-mtime": (lambda r: os.utime(r / tu.PREHISTORIC, ns=(0, 0)), "prehistoric.txt: mtime_ns", False),
    "symlink-target": (_replace_symlink, "links/relative: symlink target", False),
    "xattr": (lambda r: _keep_times(r / tu.SMALL, lambda: os.setxattr(r / tu.SMALL, "user.comment", b"other")),
              "small.txt: xattr user.comment value", False),
    "acl": (lambda r: os.removexattr(r / "acl" / "file-acl", "system.posix_acl_access"),
            "acl/file-acl: xattr system.posix_acl_access missing", False),
    "owner": (lambda r: os.chown(r / "owned" / "by-1234-5678", 1235, tu.OTHER_GID),
              "owned/by-1234-5678: uid 1234 != 1235", True),
    "rdev": (_change_rdev, "special/char-dev: st_rdev 250,17 != 250,18", True),
    "hardlink": (_break_hardlink, "hardlinks: [", False),
    "extra-entry": (lambda r: (r / "empty-dir" / "extra").write_text("x"), "empty-dir/extra: unexpected entry", False),
    "deep-missing": (_remove_deep_leaf, "bottom.txt: missing in restored tree", False),
    "densified": (_rewrite_sparse_dense, "sparse.img: not sparse", False),
    "hole-content": (_write_into_hole, "sparse.img: contents differ at byte 10485760", False),
    "type": (_fifo_to_file, "special/fifo: type fifo != file", False),
    "non-utf8-name": (_rename_non_utf8, "caf\\xe9: missing in restored tree", False),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_treeutil_detects_difference(plain_tree, tmp_path, mutation):
    change, expected, needs_root = MUTATIONS[mutation]
    if needs_root and not tu.is_root():
        pytest.skip("needs root")
    copy = tmp_path / "copy"
    copy_tree(plain_tree, copy)
    change(copy)
    with pytest.raises(AssertionError) as exc:
        assert_trees_equal(plain_tree, copy)
    assert expected in str(exc.value)


def test_points_are_per_machine(registered, second_machine, tmp_path, clean_failure):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("machine one\n")
    point = registered.backup(src)["id"]
    other = second_machine("test-02")
    assert other.points() == []
    res = other.run("ls", point, check=False)
    clean_failure(res, 2, f"no recovery point '{point}'")
    other_point = other.backup(src)["id"]
    assert [p["id"] for p in registered.points()] == [point]
    assert [p["id"] for p in other.points()] == [other_point]
    target = tmp_path / "target"
    other.restore(other_point, target=target, conflict="overwrite")
    assert_trees_equal(src, under(target, src))
