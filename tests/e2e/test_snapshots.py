"""Consistent snapshots on btrfs (a real file system in a loop device): a backup reads a
read-only snapshot of the source's subvolume, records the original paths, deletes the snapshot,
and the next backup deletes one a killed backup left; where no snapshot can be taken it reads
live and says so. Root only (loop devices, mount); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from treeutil import assert_trees_equal, make_tricky_tree, under

MiB = 1024 * 1024
SNAPSHOT_DIR = ".strongroom-snapshots"


def _why_no_btrfs() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices and mount)"
    for tool in ("mkfs.btrfs", "btrfs", "losetup", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/system-packages.sh installs btrfs-progs)"
    return None


pytestmark = pytest.mark.skipif(_why_no_btrfs() is not None, reason=_why_no_btrfs() or "")


def _sh(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


class Btrfs:
    """A btrfs file system in a loop device, mounted at `mnt`, with a subvolume `sub`."""

    def __init__(self, base: Path) -> None:
        self.image, self.mnt = base / "btrfs.img", base / "mnt"
        with open(self.image, "wb") as f:
            f.truncate(320 * MiB)
        _sh("mkfs.btrfs", "-q", self.image)
        self.mnt.mkdir()
        self.dev = _sh("losetup", "-f", "--show", self.image).strip()
        self.mounts: list[Path] = []
        try:
            _sh("mount", self.dev, self.mnt)
        except subprocess.CalledProcessError:
            _sh("losetup", "-d", self.dev)
            raise
        self.mounts.append(self.mnt)
        self.sub = self.mnt / "sub"
        _sh("btrfs", "subvolume", "create", self.sub)

    def mount(self, *args: str | Path) -> None:
        _sh("mount", *args)
        self.mounts.append(Path(args[-1]))

    def subvolumes(self) -> list[str]:
        return [line.split(" path ", 1)[1] for line in _sh("btrfs", "subvolume", "list", self.mnt).splitlines()]

    def close(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


@pytest.fixture
def fs(tmp_path):
    fs = Btrfs(tmp_path)
    try:
        yield fs
    finally:
        fs.close()


def _snapshots_left(fs: Btrfs) -> list[str]:
    return [s for s in fs.subvolumes() if SNAPSHOT_DIR in s]


def test_a_btrfs_source_is_read_from_a_snapshot_deleted_after(registered, fs, tmp_path):
    src = fs.sub / "data"
    make_tricky_tree(src, deep=False)
    root_before = os.stat(fs.sub)
    out = registered.backup(src)
    assert out["snapshot"] == "btrfs" and out["warnings"] == []
    assert out["sources"] == [str(src)]  # the original path is recorded, not the snapshot's
    assert registered.points()[0]["snapshot"] == "btrfs"
    assert "Snapshot" in (table := registered.run("points").stdout) and "btrfs" in table
    assert _snapshots_left(fs) == [] and not (fs.sub / SNAPSHOT_DIR).exists()
    assert os.stat(fs.sub).st_mtime_ns == root_before.st_mtime_ns, "the subvolume's root shows our folder"
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))
    # A second one carries unchanged files over: a snapshot keeps inode numbers and times.
    out = registered.backup(src)
    assert out["stats"]["files_new"] == out["stats"]["files_changed"] == 0 and out["stats"]["bytes_read"] == 0


def test_points_of_a_live_read_say_no_snapshot(registered, tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    (src / "f").write_text("x")
    out = registered.backup(src)
    assert out["snapshot"] is None and out["warnings"] == []
    assert registered.points()[0]["snapshot"] is None


def _rewriter(path: Path, size: int) -> subprocess.Popen:
    """A process rewriting `path` in place without pause, each version one repeated byte."""
    code = (f"import os,sys\nfd=os.open({str(path)!r}, os.O_WRONLY)\nk=0\nprint('go',flush=True)\n"
            f"while True:\n k=(k+1)%256\n os.pwrite(fd, bytes([k])*{size}, 0)\n")
    proc = subprocess.Popen(["python3", "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
    return proc


def test_a_file_rewritten_during_the_backup_is_one_version_from_the_snapshot(registered, fs, tmp_path):
    src = fs.sub / "busy"
    src.mkdir()
    size = 8 * MiB
    (src / "hot.bin").write_bytes(b"\0" * size)
    (src / "calm.txt").write_text("calm")
    writer = _rewriter(src / "hot.bin", size)
    try:
        out = registered.backup(src)
    finally:
        writer.kill()
        writer.wait()
    assert out["snapshot"] == "btrfs" and out["warnings"] == []  # the snapshot held still
    registered.restore("latest", target=tmp_path / "r")
    data = under(tmp_path / "r", src / "hot.bin").read_bytes()
    # One moment's state: a write in progress may be caught halfway (as by a crash), but not
    # the many versions that a live read of this file would mix.
    assert len(data) == size and len(set(data)) <= 2, "versions mixed: not read from one snapshot"


def test_nested_subvolume_and_mount_inside_a_source_are_backed_up(registered, fs, tmp_path):
    (fs.sub / "top.txt").write_text("top")
    _sh("btrfs", "subvolume", "create", fs.sub / "nested")
    (fs.sub / "nested" / "inner.txt").write_text("in a nested subvolume")
    (fs.sub / "mp").mkdir()
    fs.mount("-t", "tmpfs", "-o", "size=4m", "none", fs.sub / "mp")
    (fs.sub / "mp" / "m.txt").write_text("on another file system")
    _sh("btrfs", "subvolume", "create", fs.sub / "nested" / "deeper")  # a snapshot of its own, too
    (fs.sub / "nested" / "deeper" / "d.txt").write_text("two levels down")
    size = 8 * MiB
    (fs.sub / "nested" / "hot.bin").write_bytes(b"\0" * size)
    writer = _rewriter(fs.sub / "nested" / "hot.bin", size)
    try:
        out = registered.backup(fs.sub)
    finally:
        writer.kill()
        writer.wait()
    assert out["snapshot"] == "btrfs" and out["warnings"] == []  # the nested subvolume: a snapshot too
    restored = under(tmp_path / "r", fs.sub)
    registered.restore("latest", target=tmp_path / "r")
    assert (restored / "nested" / "inner.txt").read_text() == "in a nested subvolume"
    assert (restored / "mp" / "m.txt").read_text() == "on another file system"
    assert (restored / "nested" / "deeper" / "d.txt").read_text() == "two levels down"
    assert len(set((restored / "nested" / "hot.bin").read_bytes())) <= 2
    assert not (restored / SNAPSHOT_DIR).exists() and not (restored / "nested" / SNAPSHOT_DIR).exists()
    os.remove(fs.sub / "nested" / "hot.bin")  # it went on changing after the snapshot
    os.remove(restored / "nested" / "hot.bin")
    os.utime(restored / "nested", ns=(0, os.stat(fs.sub / "nested").st_mtime_ns))
    assert_trees_equal(fs.sub, restored)
    assert _snapshots_left(fs) == []


def test_a_snapshot_that_cannot_be_taken_falls_back_to_live_with_a_warning(registered, fs, tmp_path):
    (fs.sub / "f.txt").write_text("read live")
    ro = tmp_path / "ro"
    ro.mkdir()
    fs.mount("--bind", fs.sub, ro)
    fs.mount("-o", "remount,ro,bind", ro)  # no folder for the snapshot can be made there
    res = registered.run("backup", ro, "--json", check=False)
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["snapshot"] is None
    [warning] = out["warnings"]
    assert warning["path"] == str(ro) and "read live, not from a snapshot" in warning["error"]
    assert "Read-only file system" in warning["error"]
    res = registered.run("backup", ro, check=False)  # and in words
    assert res.returncode == 3 and "read live, not from a snapshot" in res.stderr and "Traceback" not in res.stderr
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(ro, under(tmp_path / "r", ro))
    assert _snapshots_left(fs) == []


def test_a_source_whose_subvolume_root_is_out_of_reach_is_read_live_with_a_warning(registered, fs, tmp_path):
    (fs.sub / "inner").mkdir()
    (fs.sub / "inner" / "f.txt").write_text("x")
    bound = tmp_path / "bound"
    bound.mkdir()
    fs.mount("--bind", fs.sub / "inner", bound)  # the subvolume's root is not under any mount here
    res = registered.run("backup", bound, "--json", check=False)
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["snapshot"] is None
    assert out["warnings"] == [{"path": str(bound), "error": "read live, not from a snapshot: its subvolume's "
                                "root is not reachable here (a bind mount of a subdirectory?)"}]
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(bound, under(tmp_path / "r", bound))


def test_a_snapshot_left_by_a_killed_backup_is_deleted_by_the_next(registered, fs, tmp_path):
    src = fs.sub / "big"
    src.mkdir()
    for i in range(48):
        (src / f"f{i:02d}").write_bytes(os.urandom(2 * MiB))
    argv = registered.cmd + ["backup", str(src)]

    def stopped_mid_backup(signum: int) -> None:
        proc = subprocess.Popen(argv, env=registered.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not _snapshots_left(fs) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signum)
        proc.wait()

    stopped_mid_backup(signal.SIGTERM)  # a stopped service: cancelled, and its snapshot deleted
    assert _snapshots_left(fs) == [] and not (fs.sub / SNAPSHOT_DIR).exists()
    stopped_mid_backup(signal.SIGKILL)
    left = _snapshots_left(fs)
    assert len(left) == 1 and "strongroom-" in left[0], "the kill came too late to leave a snapshot"
    (src / "f00").write_bytes(b"changed after the kill")
    out = registered.backup(src)
    assert out["snapshot"] == "btrfs"
    assert _snapshots_left(fs) == [] and not (fs.sub / SNAPSHOT_DIR).exists()
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))


def test_a_killed_backups_snapshot_is_found_without_the_cache_folder(registered, fs, tmp_path):
    """The cache folder's record lost too: the snapshot folder of the source's subvolume is searched."""
    src = fs.sub / "d"
    src.mkdir()
    (src / "a").write_text("a")
    registered.backup(src)
    folder = fs.sub / SNAPSHOT_DIR
    folder.mkdir()
    tag = json.loads(registered.run("agent", "cache", "show", "--json").stdout)["snapshot_tag"]
    _sh("btrfs", "subvolume", "snapshot", "-r", fs.sub, folder / f"strongroom-{tag}-1-deadbeef")
    other = folder / "strongroom-0000ffff-1-cafecafe"  # another agent home's: not ours to delete
    _sh("btrfs", "subvolume", "snapshot", "-r", fs.sub, other)
    shutil.rmtree(registered.home / "cache")
    out = registered.backup(src)
    assert out["snapshot"] == "btrfs"
    assert _snapshots_left(fs) == [f"sub/{SNAPSHOT_DIR}/strongroom-0000ffff-1-cafecafe"]
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(src, under(tmp_path / "r", src))


def test_one_file_system_from_a_snapshot_keeps_the_source_and_leaves_mounts_empty(registered, fs, tmp_path):
    src = fs.sub / "data"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "f.txt").write_text("on the source's file system")
    (src / "mp").mkdir()
    fs.mount("-t", "tmpfs", "-o", "size=4m", "none", src / "mp")
    (src / "mp" / "m.txt").write_text("on another")
    out = registered.backup(src, "--one-file-system")
    assert out["snapshot"] == "btrfs" and out["warnings"] == []
    registered.restore("latest", target=tmp_path / "r")
    restored = under(tmp_path / "r", src)
    assert (restored / "dir" / "f.txt").read_text() == "on the source's file system"
    assert (restored / "mp").is_dir() and list((restored / "mp").iterdir()) == []


def test_a_planted_snapshot_folder_is_not_used(registered, fs, tmp_path):
    """Someone who can write the subvolume's root makes `.strongroom-snapshots` a symbolic link
    to a folder of theirs, or a folder others can write: no snapshot goes there."""
    (fs.sub / "f.txt").write_text("x")
    theirs = fs.mnt / "theirs"
    theirs.mkdir()
    (fs.sub / SNAPSHOT_DIR).symlink_to(theirs)
    res = registered.run("backup", fs.sub, "--json", check=False)
    assert res.returncode == 3, res.stderr
    [warning] = json.loads(res.stdout)["warnings"]
    assert "read live, not from a snapshot" in warning["error"]
    assert "not a folder of this user's alone" in warning["error"]
    assert list(theirs.iterdir()) == [] and _snapshots_left(fs) == []
    (fs.sub / SNAPSHOT_DIR).unlink()
    (fs.sub / SNAPSHOT_DIR).mkdir(mode=0o777)
    os.chmod(fs.sub / SNAPSHOT_DIR, 0o777)
    res = registered.run("backup", fs.sub, "--json", check=False)
    assert res.returncode == 3 and "not a folder of this user's alone" in res.stdout
    assert _snapshots_left(fs) == []


def test_sources_on_btrfs_and_elsewhere_make_a_partly_snapshotted_point(registered, fs, tmp_path):
    on_btrfs, elsewhere = fs.sub / "b", tmp_path / "plain"
    on_btrfs.mkdir()
    elsewhere.mkdir()
    (on_btrfs / "1").write_text("one")
    (elsewhere / "2").write_text("two")
    out = registered.backup(on_btrfs, elsewhere)
    assert out["snapshot"] == "btrfs-partial" and out["warnings"] == []  # ext4 has no snapshots: no warning
    assert registered.points()[0]["snapshot"] == "btrfs-partial"
    registered.restore("latest", target=tmp_path / "r")
    assert_trees_equal(on_btrfs, under(tmp_path / "r", on_btrfs))
    assert_trees_equal(elsewhere, under(tmp_path / "r", elsewhere))
