"""A root restore into a folder that a local user can write, raced by that user.

The user replaces each node the restore creates (FIFO, device, socket, symlink, folder, file)
with a symlink or a hardlink to a file outside the target, hoping the restore then chmods,
chowns, touches or sets attributes on that file, or links it into place. The restore must set
metadata only on the nodes it made itself: a replaced node is reported as an error and nothing
outside the target changes. Runs only as root (owners, device nodes, a second user).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root restore (owners, device "
                                "nodes) raced by another user")

ATTACKER = 54321  # the local user who can write the restore's target
OWNER, GROUP = 1234, 4321  # the owner the point gives every entry
MTIME = 1_000_000_000_123_456_789
FIFO_MODES = (0o666, 0o604, 0o2757, 0o1777)
LINK_DATA = b"one inode, two names\n"


def _make_source(src: Path, specials: int) -> dict[str, dict]:
    """A source of FIFOs, devices, sockets, symlinks and files with unusual modes, all owned by
    OWNER and carrying a trusted.* attribute, plus a hardlink pair hl-a and sub/hl-b; returns
    what each top-level entry must look like restored."""
    src.mkdir()
    want: dict[str, dict] = {}
    for i in range(specials):
        want[f"fifo-{i:03d}"] = {"kind": stat.S_IFIFO, "mode": FIFO_MODES[i % len(FIFO_MODES)]}
        os.mkfifo(src / f"fifo-{i:03d}")
    for i in range(specials // 2):
        want[f"chr-{i:03d}"] = {"kind": stat.S_IFCHR, "mode": (0o666, 0o620)[i % 2], "rdev": os.makedev(1, 3)}
        os.mknod(src / f"chr-{i:03d}", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    for i in range(specials // 4):
        want[f"sock-{i:03d}"] = {"kind": stat.S_IFSOCK, "mode": 0o777}
        os.mknod(src / f"sock-{i:03d}", stat.S_IFSOCK | 0o600)
    for i in range(specials // 2):
        want[f"link-{i:03d}"] = {"kind": stat.S_IFLNK, "target": f"nowhere-{i}"}
        os.symlink(f"nowhere-{i}", src / f"link-{i:03d}")
    for i in range(specials // 4):
        want[f"file-{i:03d}"] = {"kind": stat.S_IFREG, "mode": (0o4755, 0o2711, 0o707)[i % 3],
                                 "data": b"file %d\n" % i}
        (src / f"file-{i:03d}").write_bytes(b"file %d\n" % i)
    want["hl-a"] = {"kind": stat.S_IFREG, "mode": 0o640, "data": LINK_DATA}
    want["sub"] = {"kind": stat.S_IFDIR, "mode": 0o750}
    (src / "hl-a").write_bytes(LINK_DATA)
    (src / "sub").mkdir()
    os.link(src / "hl-a", src / "sub" / "hl-b")
    for name, w in want.items():
        path = src / name
        os.chown(path, OWNER, GROUP, follow_symlinks=False)
        if w["kind"] != stat.S_IFLNK:
            os.chmod(path, w["mode"])  # after chown, which clears setuid and setgid
        os.setxattr(path, b"trusted.tag", name.encode(), follow_symlinks=False)
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)
    os.utime(src / "sub", ns=(MTIME, MTIME))
    return want


@pytest.fixture(scope="module")
def point(registered_factory, tmp_path_factory) -> tuple:
    """(agent, source folder, what each entry must look like restored), backed up once."""
    base = tmp_path_factory.mktemp("race")
    sr = registered_factory(base)
    src = base / "src"
    want = _make_source(src, specials=80)
    sr.backup(src)
    return sr, src, want


def _victims(base: Path) -> dict[str, Path]:
    """Files outside the target, root's, one of each kind the attacker may point the restore at."""
    base.mkdir()
    victims = {"file": base / "shadow", "fifo": base / "fifo", "chr": base / "null", "sock": base / "sock",
               "link": base / "link", "dir": base / "dir"}
    victims["file"].write_bytes(b"root:secret\n")
    os.chmod(victims["file"], 0o600)
    os.mkfifo(victims["fifo"], 0o600)
    os.mknod(victims["chr"], stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(victims["sock"], stat.S_IFSOCK | 0o600)
    os.symlink("shadow", victims["link"])
    victims["dir"].mkdir(mode=0o700)
    for path in victims.values():
        os.setxattr(path, b"trusted.victim", b"untouched", follow_symlinks=False)
        os.utime(path, ns=(7_000_000_000, 7_000_000_000), follow_symlinks=False)
    return victims


def _fingerprints(victims: dict[str, Path], ctime: bool = True) -> dict[str, tuple]:
    """Everything a restore could change on each victim: mode, owner, times (ctime moves on any
    metadata change, and on the attacker's linking it), attributes."""
    out = {}
    for kind, path in victims.items():
        st = os.lstat(path)
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
        out[kind] = (oct(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                     st.st_ctime_ns if ctime else None, xattrs)
    return out


def _attacker_owned_lead(target: Path, src: Path) -> Path:
    """target/<src's path>, every folder of it owned by the attacker (a home restored in place)."""
    lead = target / str(src).lstrip("/")
    lead.mkdir(parents=True)
    rel = lead.relative_to(target)
    for folder in [target, *(target / p for p in rel.parents), lead]:
        os.chown(folder, ATTACKER, ATTACKER)
        os.chmod(folder, 0o755)
    return lead


def _restore(sr, target: Path, conflict: str, cmd: list[str] | None = None,
             env: dict[str, str] | None = None, paths: tuple[Path, ...] = ()) -> tuple[int, list[dict]]:
    """Runs a restore that may be raced: it ends with success or a list of errors, never a crash."""
    if cmd is not None:
        sr = copy.copy(sr)
        sr.cmd = cmd
    pythonpath = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    res = sr.run("restore", "latest", *paths, "--target", target, "--conflict", conflict, "--json", check=False,
                 env_extra={"PYTHONPATH": pythonpath, **(env or {})})
    assert res.returncode in (0, 3), f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)["errors"]


def _check_restored(lead: Path, src: Path, want: dict[str, dict], errors: list[dict]) -> None:
    """Each entry was restored right (where it is, or where the attacker moved it: NAME.taken),
    or its path is among the reported errors."""
    failed = {e["path"] for e in errors}
    for name, w in want.items():
        if str(src / name) in failed:
            continue
        path = lead / f"{name}.taken" if os.path.lexists(lead / f"{name}.taken") else lead / name
        st = os.lstat(path)
        assert stat.S_IFMT(st.st_mode) == w["kind"], f"{path}: a {oct(st.st_mode)}, and no error reported"
        if w["kind"] == stat.S_IFDIR:
            continue  # a folder's own metadata: checked by the tests that swap folders
        if w["kind"] != stat.S_IFLNK:
            assert stat.S_IMODE(st.st_mode) == w["mode"], f"{path}: mode {oct(st.st_mode)}, and no error reported"
        assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (OWNER, GROUP, MTIME), f"{path}: not restored, no error"
        assert os.getxattr(path, b"trusted.tag", follow_symlinks=False) == name.encode()
        if "target" in w:
            assert os.readlink(path) == w["target"]
        if "rdev" in w:
            assert st.st_rdev == w["rdev"]
        if "data" in w:
            assert path.read_bytes() == w["data"]
    second = lead / "sub" / "hl-b"
    if str(src / "sub" / "hl-b") not in failed and os.path.lexists(second):
        # the second name of a hardlink pair is the restored file, never what replaced the first
        assert not second.is_symlink() and second.read_bytes() == LINK_DATA, f"{second} is not the restored file"


# -- a real racing process ---------------------------------------------------------------------

# The attacker: an unprivileged process that watches the names the restore will create, in the
# order it creates them, and replaces each one the moment it appears with a symlink to a victim
# (the node itself is moved to NAME.taken). It works on the target through a descriptor passed
# at start, so it needs no access to the folders above it.
RACER = r"""
import json, os, signal, stat, sys
plan = json.loads(sys.argv[1])
lead, uid = plan["lead_fd"], plan["uid"]
names = [n.encode() for n in plan["names"]]
victim_file, victim_dir = plan["victim_file"].encode(), plan["victim_dir"].encode()
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
swaps, i, n = 0, 0, len(names)
print("ready", flush=True)

def mode_of(name):
    try:
        return os.lstat(name, dir_fd=lead).st_mode
    except FileNotFoundError:
        return None

while not stop:
    name = names[i]
    mode = mode_of(name)
    if mode is None or stat.S_ISLNK(mode):
        # not made yet, or already swapped: move on once the restore has gone past it, and
        # start over when a new restore begins with the first name
        first = mode_of(names[0]) if i else None
        if mode is None and first is not None and not stat.S_ISLNK(first):
            i = 0
        elif mode is not None or (i + 1 < n and mode_of(names[i + 1]) is not None):
            i = (i + 1) % n
        continue
    try:
        os.rename(name, name + b".taken", src_dir_fd=lead, dst_dir_fd=lead)
        os.symlink(victim_dir if stat.S_ISDIR(mode) else victim_file, name, dir_fd=lead)
        swaps += 1
    except OSError:
        pass
    i = (i + 1) % n
print(swaps, flush=True)
"""


def test_racing_user_cannot_turn_a_root_restore_on_files_outside_the_target(point, tmp_path):
    registered, src, want = point
    victims = _victims(tmp_path / "victims")
    before = _fingerprints(victims)
    target = tmp_path / "target"
    lead = _attacker_owned_lead(target, src)
    lead_fd = os.open(lead, os.O_RDONLY | os.O_DIRECTORY)
    plan = {"lead_fd": lead_fd, "uid": ATTACKER, "names": sorted(want),
            "victim_file": str(victims["file"]), "victim_dir": str(victims["dir"])}
    racer = subprocess.Popen([sys.executable, "-c", RACER, json.dumps(plan)], pass_fds=[lead_fd],
                             stdout=subprocess.PIPE, text=True, cwd="/")
    os.close(lead_fd)
    restores = 0
    try:
        assert racer.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, errors = _restore(registered, target, "copy")
            restores += 1
            assert _fingerprints(victims) == before, f"restore {restores} changed a file outside the target"
            _check_restored(lead, src, want, errors)
            _empty(lead)
    finally:
        racer.send_signal(signal.SIGTERM)
        out, _ = racer.communicate(timeout=30)
    # the attack really ran: nodes were taken from under the restores
    assert int(out.split()[-1]) > 0, f"the racer never swapped a node in {restores} restores"


def _empty(folder: Path) -> None:
    """Removes what a restore left (while the racer may still be moving things)."""
    for _ in range(10):
        names = os.listdir(folder)
        if not names:
            return
        for name in names:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    raise AssertionError(f"{folder} could not be emptied: {os.listdir(folder)}")


# -- the attacker winning every race ---------------------------------------------------------

# Runs the real CLI with the node-creating calls wrapped: right after the restore makes a node
# in the attacker's folder, the "attacker" moves it to NAME.taken and puts in its place a
# symlink to a victim, a hardlink to a root-owned victim of the same type (only its link count
# tells it apart), or, for the folder `sub`, a folder of its own; when the walk reaches `sub`
# (made before any file, see restore._premake), hl-a (the first name of a hardlink pair) is
# swapped for a symlink too. Nothing of the restore is
# replaced: this only fixes the instant of each swap at the worst one.
LAUNCHER = r"""
import json, os, runpy, stat, sys, time
plan = json.loads(os.environ["RACE_PLAN"])
lead = os.stat(plan["lead"])
victims = {k: v.encode() for k, v in plan["victims"].items()}
real = {f: getattr(os, f) for f in ("mkfifo", "mknod", "symlink", "mkdir")}

def swap(name, dir_fd, kind):
    os.rename(name, name + b".taken", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if kind == "dir" and plan["dir_to"] == "symlink":
        real["symlink"](victims["dir"], name, dir_fd=dir_fd)
    elif kind == "dir":
        real["mkdir"](name, 0o755, dir_fd=dir_fd)
        os.chown(name, plan["uid"], plan["uid"], dir_fd=dir_fd)
    elif plan["how"] == "hardlink" and kind != "file":
        os.link(victims[kind], name, dst_dir_fd=dir_fd, follow_symlinks=False)
    else:
        real["symlink"](victims["file"], name, dir_fd=dir_fd)
        os.chown(name, plan["uid"], plan["uid"], dir_fd=dir_fd, follow_symlinks=False)  # the attacker's
    with open(plan["log"], "a") as log:
        log.write(os.fsdecode(name) + "\n")

def in_lead(dir_fd):
    st = os.fstat(dir_fd) if dir_fd is not None else None
    return st is not None and (st.st_dev, st.st_ino) == (lead.st_dev, lead.st_ino)

def wrap(f, kind_of):
    def wrapped(*args, dir_fd=None, **kw):
        try:
            real[f](*args, dir_fd=dir_fd, **kw)
        except FileExistsError:
            # The restore makes every folder before any file, then the walk meets `sub` again
            # (mkdir: it exists): that is when it is about to fill `sub`, whose hl-b links to hl-a.
            if f == "mkdir" and args[0] == b"sub" and plan["first_link"] and in_lead(dir_fd):
                while True:  # hl-a is written by a pool thread (it has hardlinks): wait until it is there
                    try:
                        os.stat(b"hl-a", dir_fd=dir_fd, follow_symlinks=False)
                        break
                    except FileNotFoundError:
                        time.sleep(0.001)
                swap(b"hl-a", dir_fd, "file")
            raise
        if not in_lead(dir_fd):
            return
        name = os.fsencode(args[1] if f == "symlink" else args[0])
        kind = kind_of(name, *args)
        if kind:
            swap(name, dir_fd, kind)
    return wrapped

os.mkfifo = wrap("mkfifo", lambda name, *a: "fifo")
os.mknod = wrap("mknod", lambda name, path, mode, *a: "chr" if stat.S_ISCHR(mode) else "sock")
os.symlink = wrap("symlink", lambda name, *a: "link")
os.mkdir = wrap("mkdir", lambda name, *a: "dir" if name == b"sub" else None)
sys.argv = ["strongroom", *sys.argv[1:]]
runpy.run_module("strongroom", run_name="__main__")
"""


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
@pytest.mark.parametrize("conflict", ["copy", "overwrite"])
def test_node_replaced_right_after_creation_is_left_alone(point, tmp_path, conflict, how):
    registered, src, want = point
    victims = _victims(tmp_path / "victims")
    target = tmp_path / "target"
    lead = _attacker_owned_lead(target, src)
    if conflict == "overwrite":  # the entries are there: the restore goes through temporary names
        assert _restore(registered, target, "copy") == (0, [])
    before = _fingerprints(victims, ctime=how != "hardlink")
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    log = tmp_path / "swapped"
    plan = {"lead": str(lead), "victims": {k: str(v) for k, v in victims.items()}, "how": how,
            "uid": ATTACKER, "log": str(log), "dir_to": "own", "first_link": True}
    code, errors = _restore(registered, target, conflict, cmd=[sys.executable, str(launcher)],
                            env={"RACE_PLAN": json.dumps(plan)})

    assert _fingerprints(victims, ctime=how != "hardlink") == before
    swapped = log.read_text().split()
    specials = [n for n, w in want.items() if w["kind"] not in (stat.S_IFREG, stat.S_IFDIR)]
    assert len([n for n in swapped if n not in ("sub", "hl-a")]) == len(specials)  # every special node
    assert code == 3
    failed = {e["path"]: e["error"] for e in errors}
    for name in specials:  # each one reported, not restored through what replaced it
        assert "replaced" in failed.get(str(src / name), ""), (name, errors)
        if conflict == "overwrite":  # and what the first restore put there is left as it was
            st = os.lstat(lead / name)
            assert (st.st_uid, st.st_mtime_ns) == (OWNER, MTIME)
    _check_restored(lead, src, want, errors)
    if conflict == "copy":
        # the attacker's own folder put in place of `sub` is filled but not given the point's owner
        st = os.stat(lead / "sub")
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ATTACKER, 0o755)
        assert "replaced" in failed.get(str(src / "sub"), ""), errors
        assert (lead / "sub" / "hl-b").read_bytes() == LINK_DATA and not (lead / "sub" / "hl-b").is_symlink()


def test_metadata_goes_to_the_node_made_not_to_what_its_name_became(tmp_path):
    """Without the CLI or any wrapping: a FIFO and a symlink, each opened as made, then their names
    swapped for symlinks to a victim; metadata set through the descriptors lands on the nodes."""
    from strongroom.agent.fsmeta import apply_metadata, fd_path, open_made

    victims = _victims(tmp_path / "victims")
    before = _fingerprints(victims)
    folder = tmp_path / "folder"
    folder.mkdir()
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkfifo(b"fifo", 0o600, dir_fd=dir_fd)
        os.symlink(b"nowhere", b"link", dir_fd=dir_fd)
        entries = {b"fifo": {"n": b"fifo", "t": "p", "m": 0o2757}, b"link": {"n": b"link", "t": "l", "l": b"nowhere"}}
        for name, entry in entries.items():
            entry.update(u=OWNER, g=GROUP, mt=MTIME, at=MTIME, x={b"trusted.tag": name})
            fd = open_made(dir_fd, name, entry)
            os.rename(name, name + b".taken", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.symlink(os.fsencode(victims["file"]), name, dir_fd=dir_fd)
            try:
                assert apply_metadata(entry, fd_path(fd)) == []
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    assert _fingerprints(victims) == before
    fifo, link = os.lstat(folder / "fifo.taken"), os.lstat(folder / "link.taken")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o2757
    assert stat.S_ISLNK(link.st_mode) and os.readlink(folder / "link.taken") == "nowhere"
    for st in (fifo, link):
        assert (st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns) == (OWNER, GROUP, MTIME, MTIME)
    assert os.getxattr(folder / "link.taken", b"trusted.tag", follow_symlinks=False) == b"link"


def test_folder_replaced_again_after_the_restore_cleared_its_name_is_reported(point, tmp_path):
    """--conflict overwrite where the point has a folder and the target a symlink: the restore
    removes the symlink and makes the folder, which the attacker swaps for a symlink again. The
    folder (a parent of the restored path) is reported and the restore goes on: no crash."""
    registered, src, _ = point
    victims = _victims(tmp_path / "victims")
    target = tmp_path / "target"
    lead = _attacker_owned_lead(target, src)
    (lead / "sub").symlink_to(victims["dir"])
    before = _fingerprints(victims)
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    plan = {"lead": str(lead), "victims": {k: str(v) for k, v in victims.items()}, "how": "symlink",
            "uid": ATTACKER, "log": str(tmp_path / "swapped"), "dir_to": "symlink", "first_link": False}
    code, errors = _restore(registered, target, "overwrite", cmd=[sys.executable, str(launcher)],
                            env={"RACE_PLAN": json.dumps(plan)}, paths=(src / "sub" / "hl-b", src / "hl-a"))
    assert (tmp_path / "swapped").read_text().split() == ["sub"]
    assert code == 3 and [e["path"] for e in errors] == [str(src / "sub")], errors
    assert _fingerprints(victims) == before and list(victims["dir"].iterdir()) == []
    assert (lead / "hl-a").read_bytes() == LINK_DATA  # the other path given was restored
