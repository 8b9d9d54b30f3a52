"""The change journal and optimized backups: the daemon's journal (fanotify and inotify), what
makes a backup fall back to a full scan (said in `mode_reason`), and the key property: after
random changes, an optimized and an unoptimized backup of the same state restore alike."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from treeutil import assert_trees_equal, is_root

from strongroom.agent import journal as jr

pytestmark = pytest.mark.skipif(not is_root(), reason="fanotify, tmpfs mounts and SIGSTOP games need root")


class Daemon:
    """`strongroom agent run` in the background, watching the policy's sources."""

    def __init__(self, sr, backend: str | None = None) -> None:
        self.sr = sr
        env = {"STRONGROOM_JOURNAL_BACKEND": backend} if backend else {}
        self.log = open(sr.home.parent / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(sr.cmd + ["agent", "run"], env=sr.env(env), stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = self.journal()
            if doc and doc["pid"] == self.proc.pid and doc["stopped_ns"] is None:
                return
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            time.sleep(0.1)
        raise AssertionError("the daemon wrote no journal")

    def journal(self) -> dict | None:
        try:
            return jr.read_record(self.sr.home / "cache" / "journal" / "journal")
        except jr.Damaged:
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.log.close()


@contextmanager
def watched(sr, tmp_path: Path):
    """A tree under the policy, and a way to start daemons on it, all stopped at the end."""
    src = tmp_path / "src"
    _make_tree(src)
    sr.run("policy", "set", "--include", src, "--daily", "03:00", "--keep-daily", "7")
    daemons: list[Daemon] = []

    def start(backend: str | None = None) -> Daemon:
        daemons.append(Daemon(sr, backend))
        return daemons[-1]
    try:
        yield src, start
    finally:
        for d in daemons:
            d.stop()


@pytest.fixture
def setup(registered, tmp_path):
    with watched(registered, tmp_path) as (src, start):
        yield registered, src, start


def _make_tree(src: Path) -> None:
    for d in ("a/b/c", "a/d", "e", "f/g"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(("a", "a/b", "a/b/c", "a/d", "e", "f/g", ".")):
        for j in range(3):
            (src / d / f"file{j}.txt").write_bytes(f"{d} {j} {i}\n".encode() * (j + 1))


def _mode(result: dict) -> tuple[str, str]:
    return result["mode"], result["mode_reason"]


def _restored(sr, point: str, src: Path, target: Path) -> Path:
    sr.restore(point, target=target)
    return target / str(src).lstrip("/")


def _all_dirs(src: Path) -> list[Path]:
    return [Path(p) for p, _d, _f in os.walk(src)]


def _all_files(src: Path) -> list[Path]:
    return [Path(p) / f for p, _d, fs in os.walk(src) for f in fs if not (Path(p) / f).is_symlink()]


def mutate(src: Path, rng: random.Random, n: int, links: bool = False) -> None:
    """`n` random changes of every kind an optimized walk must not miss (hard links only
    with `links`: the daemon's journal sends a backup that meets one unoptimized)."""
    for _ in range(n):
        dirs = _all_dirs(src)
        files = _all_files(src)
        op = rng.choice(["new", "modify", "delete", "mkdir", "rmtree", "rename_file", "rename_dir",
                         "dir_to_symlink", "chmod_dir", "chmod_file", "xattr", "same_size_same_mtime"]
                        + ["hard_link", "write_linked"] * links)
        d = rng.choice(dirs)
        if op == "new":
            (d / f"n{rng.randrange(10**6)}").write_bytes(os.urandom(rng.randrange(1, 3000)))
        elif op == "modify" and files:
            with open(rng.choice(files), "ab") as f:
                f.write(b"more")
        elif op == "delete" and files:
            rng.choice(files).unlink()
        elif op == "mkdir":
            new = d / f"d{rng.randrange(10**6)}" / "inner"
            new.mkdir(parents=True)
            (new / "x").write_text("in a new subtree")
        elif op == "rmtree" and d != src:
            shutil.rmtree(d)
        elif op == "rename_file" and files:
            f = rng.choice(files)
            f.rename(rng.choice(dirs) / f"moved{rng.randrange(10**6)}")
        elif op == "rename_dir" and d != src:
            to = rng.choice([x for x in dirs if not (x == d or d in x.parents)])
            d.rename(to / f"mv{rng.randrange(10**6)}")
        elif op == "dir_to_symlink" and d != src:
            shutil.rmtree(d)
            d.symlink_to("elsewhere")
        elif op == "chmod_dir":
            d.chmod(rng.choice([0o700, 0o755, 0o750]))
        elif op == "chmod_file" and files:
            rng.choice(files).chmod(rng.choice([0o600, 0o644, 0o640]))
        elif op == "xattr" and files:
            os.setxattr(rng.choice(files), "user.note", os.urandom(8))
        elif op == "hard_link" and files:
            os.link(rng.choice(files), d / f"link{rng.randrange(10**6)}")
        elif op == "write_linked":
            linked = [f for f in files if f.stat().st_nlink > 1]
            if linked:
                with open(rng.choice(linked), "ab") as f:
                    f.write(b"through one of its names")
        elif op == "same_size_same_mtime" and files:
            f = rng.choice(files)
            st = f.stat()
            data = f.read_bytes()
            f.write_bytes(bytes(reversed(data)) if len(data) > 1 else b"Z")
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("backend", ["fanotify", "inotify"])
def test_optimized_and_unoptimized_backups_of_random_changes_restore_alike(setup, tmp_path, backend):
    sr, src, start = setup
    start(backend)
    first = sr.backup(src)
    assert _mode(first) == ("unoptimized", "the first backup")
    rng = random.Random(f"journal-{backend}")
    for round_ in range(4):
        mutate(src, rng, 12)
        fast = sr.backup(src)
        assert fast["mode"] == "optimized", fast["mode_reason"]
        assert fast["mode_reason"].startswith(f"{backend} journal: ")
        full = sr.backup(src, "--unoptimized")
        assert _mode(full) == ("unoptimized", "asked for (--unoptimized)")
        r_fast = _restored(sr, fast["id"], src, tmp_path / f"fast{round_}")
        r_full = _restored(sr, full["id"], src, tmp_path / f"full{round_}")
        assert_trees_equal(src, r_fast)
        assert_trees_equal(src, r_full)
        assert_trees_equal(r_full, r_fast)
    # No change at all: nothing listed, and still the whole tree.
    idle = sr.backup(src)
    assert _mode(idle) == ("optimized", f"{backend} journal: 0 changed directories")
    assert idle["stats"]["dirs"] == 0 and idle["stats"]["bytes_read"] == 0
    assert_trees_equal(src, _restored(sr, idle["id"], src, tmp_path / "idle"))


def test_a_chain_of_optimized_backups_names_every_blob_it_needs(setup, tmp_path):
    """Each optimized point's refs are the parent's updated by the change: after several in a
    row, the older points purged and every unneeded blob pruned, the last still restores."""
    sr, src, start = setup
    start()
    sr.backup(src)
    rng = random.Random("chain")
    ids = []
    for _ in range(4):
        mutate(src, rng, 12)
        b = sr.backup(src)
        assert b["mode"] == "optimized", b["mode_reason"]
        ids.append(b["id"])
    # Only the last point stays: the others and the first are purged as if long deleted.
    with sqlite3.connect(sr.vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET deleted_ns = 1 WHERE id != ?", (ids[-1],))
    report = sr.json("vault", "prune", sr.vault, "--repack-below", "1.0")
    assert len(report["points_purged"]) == 4
    assert report["packs_deleted"] + report["packs_repacked"] > 0  # blobs only the others named are gone
    assert sr.json("check", "--read-data")["ok"]
    assert_trees_equal(src, _restored(sr, ids[-1], src, tmp_path / "last"))


def _remove_while_rewritten(folder: Path) -> None:
    """Delete a folder the running daemon rewrites every second: a file it writes between
    rmtree's listing and its rmdir makes that attempt fail, so try again."""
    for attempt in range(20):
        try:
            shutil.rmtree(folder)
            return
        except OSError:
            if attempt == 19:
                raise
            time.sleep(0.05)


def test_every_fallback_is_said_and_shown_by_points_and_jobs(setup, tmp_path):
    sr, src, start = setup
    assert _mode(sr.backup(src)) == ("unoptimized", "the first backup")
    reason = sr.backup(src)["mode_reason"]
    assert reason == "no change journal is kept (`strongroom agent run` is not running)"
    daemon = start()
    # Started after the last point: it did not see what changed before it started.
    (src / "e" / "before-the-daemon").write_text("made while nobody watched")
    b = sr.backup(src)
    assert _mode(b) == ("unoptimized", "the change journal daemon was not watching for the whole interval since "
                        "the last point (it was started, restarted or rebooted since)")
    assert sr.backup(src)["mode_reason"].startswith("fanotify journal: ")
    # Killed between two backups: a change made meanwhile must not be missed.
    daemon.kill()
    (src / "a" / "b" / "while-dead").write_text("made while the daemon was dead")
    b = sr.backup(src)
    assert b["mode"] == "unoptimized"
    assert b["mode_reason"] == (f"the change journal daemon (pid {daemon.proc.pid}) is not running: "
                                "it was killed or crashed")
    start()
    (src / "a" / "b" / "after-restart").write_text("x")
    assert sr.backup(src)["mode"] == "unoptimized"  # not watching the whole interval, again
    assert sr.backup(src)["mode_reason"].startswith("fanotify journal: ")
    # Another set of sources than the last point's.
    other = sr.backup(src / "a")
    assert _mode(other) == ("unoptimized", "the sources or excludes differ from the last point's")
    assert sr.backup(src, "--exclude", "*.tmp")["mode_reason"] == \
        "the sources or excludes differ from the last point's"
    assert sr.backup(src)["mode_reason"] == "the sources or excludes differ from the last point's"
    # The cache folder deleted: costs speed only (the daemon writes its journal anew within a second).
    _remove_while_rewritten(sr.home / "cache")
    (src / "e" / "after-the-cache-went").write_text("x")
    time.sleep(2)
    assert sr.backup(src)["mode_reason"] == \
        "the cache folder holds no record of the last point (a new or emptied cache folder)"
    last = sr.backup(src)
    assert last["mode"] == "optimized"
    assert_trees_equal(src, _restored(sr, last["id"], src, tmp_path / "r"))
    # `points` and `jobs` tell the same.
    points = {p["id"]: p for p in sr.points()}
    assert _mode(points[last["id"]]) == _mode(last)
    assert _mode(points[other["id"]]) == _mode(other)
    jobs = {j["point_id"]: j for j in sr.json("jobs") if j["kind"] == "backup"}
    assert _mode(jobs[last["id"]]) == _mode(last)
    assert _mode(jobs[other["id"]]) == _mode(other)
    shown = sr.run("backup", src).stdout
    assert "optimized mode: fanotify journal: 0 changed directories)" in shown


def test_queue_overflow_makes_the_next_backup_scan_everything(setup, tmp_path):
    sr, src, start = setup
    daemon = start()
    sr.backup(src)
    # The keeper stopped from reading while more events queue than the kernel keeps (16,384).
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        flood = src / "flood"
        flood.mkdir()
        for i in range(17_000):
            (flood / str(i)).touch()
        (src / "a" / "b" / "c" / "lost-in-the-flood").write_text("x")
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    b = sr.backup(src)
    assert b["mode"] == "unoptimized"
    assert b["mode_reason"].startswith("the change journal's event queue overflowed on ")
    assert b["mode_reason"].endswith(": changes were lost")
    assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r1"))
    (src / "e" / "after").write_text("x")
    after = sr.backup(src)
    assert after["mode"] == "optimized"  # the overflow is behind: trusted again
    assert_trees_equal(src, _restored(sr, after["id"], src, tmp_path / "r2"))


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_journal_or_record_falls_back_and_heals(setup, tmp_path, damage):
    sr, src, start = setup
    start()
    sr.backup(src)
    sr.backup(src)
    folder = sr.home / "cache" / "journal"

    def spoil(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] if damage == "truncate" else data[:20] + b"X" + data[21:])

    spoil(folder / "journal")
    (src / "a" / "d" / "during-damage").write_text("x")
    b = sr.backup(src)
    assert b["mode"] == "unoptimized"
    assert b["mode_reason"] == "the change journal is damaged (journal is damaged (truncated or altered))"
    (src / "a" / "d" / "after-damage").write_text("x")
    healed = sr.backup(src)
    assert healed["mode"] == "optimized"  # the daemon wrote it anew at the damaged backup's cut
    spoil(folder / "last-good")
    b = sr.backup(src)
    assert _mode(b) == ("unoptimized", "the journal's record of the last backup is damaged "
                        "(last-good is damaged (truncated or altered))")
    assert sr.backup(src)["mode_reason"].startswith("fanotify journal: ")
    assert_trees_equal(src, _restored(sr, healed["id"], src, tmp_path / "r"))


def test_a_killed_backup_makes_the_next_one_scan_everything(setup, tmp_path):
    sr, src, start = setup
    start()
    sr.backup(src)
    (src / "big").write_bytes(os.urandom(64 << 20))
    proc = subprocess.Popen(sr.cmd + ["backup", str(src)], env=sr.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    attempt = sr.home / "cache" / "journal" / "attempt"
    deadline = time.monotonic() + 60
    while not attempt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert attempt.exists()
    # The backup ran in the daemon's worker (handed over): killing the command makes the worker
    # cancel it, which may take a moment under load; until then the home is rightly in use.
    _wait_until_home_is_free(sr.home)
    b = sr.backup(src)
    assert _mode(b) == ("unoptimized", "the previous backup failed, was cancelled, was killed or could not note its point in the cache folder")
    assert sr.backup(src)["mode_reason"].startswith("fanotify journal: ")
    assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))


def _wait_until_home_is_free(home: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with open(home / "lock", "wb") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed backup's worker still holds the home"
                time.sleep(0.05)


def test_moves_across_sources_symlinks_hard_links_and_mounts(registered, tmp_path):
    sr = registered
    one, two = tmp_path / "one", tmp_path / "two"
    _make_tree(one)
    _make_tree(two)
    sr.run("policy", "set", "--include", one, "--include", two, "--daily", "03:00", "--keep-daily", "7")
    daemon = Daemon(sr)
    try:
        sr.backup(one, two)
        # A directory moved from one source to the other, one renamed, one replaced by a symlink.
        (one / "a" / "b").rename(two / "e" / "from-one")
        (two / "f").rename(two / "f-renamed")
        shutil.rmtree(one / "e")
        (one / "e").symlink_to("a")
        # Two directories swapping names: only their parent sees events, their insides none.
        (two / "a" / "b").rename(two / "a" / "swap")
        (two / "a" / "d").rename(two / "a" / "b")
        (two / "a" / "swap").rename(two / "a" / "d")
        # A directory replaced by another of the same name holding other files.
        shutil.rmtree(two / "a" / "b")
        (two / "a" / "b").mkdir()
        (two / "a" / "b" / "file0.txt").write_text("not the old one")
        b = sr.backup(one, two)
        assert b["mode"] == "optimized", b["mode_reason"]
        target = tmp_path / "r1"
        sr.restore(b["id"], target=target)
        assert_trees_equal(one, target / str(one).lstrip("/"))
        assert_trees_equal(two, target / str(two).lstrip("/"))
        # A hard link made inside the sources: its other name lies in a directory nobody touched.
        os.link(two / "e" / "file1.txt", one / "a" / "linked")
        with open(one / "a" / "linked", "ab") as f:
            f.write(b"changed through the new name")
        b = sr.backup(one, two)
        assert _mode(b) == ("unoptimized", "a file with hard links changed: its other names are found only by "
                            "a full scan")
        target = tmp_path / "r2"
        sr.restore(b["id"], target=target)
        assert_trees_equal(one, target / str(one).lstrip("/"))
        assert_trees_equal(two, target / str(two).lstrip("/"))
        # Another filesystem mounted on a source: the journal watches the old one.
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(two / "e")], check=True)
        try:
            (two / "e" / "on-tmpfs").write_text("x")
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(one)], check=True)
            try:
                (one / "fresh").write_text("x")
                b = sr.backup(one, two)
                assert _mode(b) == ("unoptimized", "a source is on another filesystem than the one the change "
                                    "journal watches (something was mounted there, or it moved)")
            finally:
                subprocess.run(["umount", str(one)], check=True)
            # A mount inside a source: its events come from another filesystem, which the journal
            # does not watch... but a directory whose device differs is never carried over.
            b = sr.backup(one, two)
            target = tmp_path / "r3"
            sr.restore(b["id"], target=target)
            assert_trees_equal(two, target / str(two).lstrip("/"))
        finally:
            subprocess.run(["umount", str(two / "e")], check=True)
    finally:
        daemon.stop()


def test_a_change_inside_a_mount_below_unchanged_folders_is_in_the_point(registered, tmp_path):
    """The journal watches the sources' filesystem only: a filesystem mounted deeper inside a
    source reports nothing, so the folders on the way to it must be walked every time, not
    carried over from the last point."""
    sr = registered
    src = tmp_path / "src"
    _make_tree(src)
    deep = src / "a" / "b" / "c"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(deep)], check=True)
    try:
        (deep / "inside.txt").write_text("first")
        sr.run("policy", "set", "--include", src, "--daily", "03:00", "--keep-daily", "7")
        daemon = Daemon(sr)
        try:
            sr.backup(src)
            (deep / "inside.txt").write_text("second, longer")  # nothing changes on the watched filesystem
            b = sr.backup(src)
            assert b["mode"] == "optimized", b["mode_reason"]
            assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))
        finally:
            daemon.stop()
    finally:
        subprocess.run(["umount", str(deep)], check=True)
