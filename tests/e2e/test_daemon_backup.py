"""`strongroom backup` carried out by the running agent daemon (agent/handover.py): the same
output, exit codes and points as in-process, the journal seen up to the client's start,
cancelling from either side, and the socket against a hostile local user."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from test_journal import Daemon, _make_tree, _restored, watched
from treeutil import assert_trees_equal, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="the daemon's journal (fanotify) and a second uid need root")

NOBODY = 65534


@pytest.fixture
def setup(registered, tmp_path):
    with watched(registered, tmp_path) as (src, start_daemon):
        def start() -> Daemon:
            daemon = start_daemon()
            assert (registered.home / "agent.sock").is_socket()
            return daemon
        yield registered, src, start


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _zygote(daemon: Daemon) -> int:
    """The daemon's zygote: the only child of the supervisor, the daemon's only child."""
    (supervisor,) = _children(daemon.proc.pid)
    (zygote,) = _children(supervisor)
    return zygote


def _jobs(sr) -> list[dict]:
    return sr.json("jobs")


def test_the_daemon_runs_the_backup_with_the_same_output_and_sees_every_change_before_it(setup, tmp_path):
    sr, src, start = setup
    first = sr.backup(src)
    assert first["via"] == "in-process" and first["via_reason"] == "no agent daemon runs for this home"
    daemon = start()
    b = sr.backup(src)
    assert (b["via"], "via_reason" in b) == ("daemon", False)
    # A change made just before `strongroom backup` starts is in the point, each time.
    for i in range(5):
        (src / "a" / "file0.txt").write_bytes(b"changed %d\n" % i)
        b = sr.backup(src)
        assert (b["via"], b["mode"]) == ("daemon", "optimized"), b
        assert b["stats"]["files_changed"] == 1, b
    b = sr.backup(src, "--unoptimized", "--tag", "by-daemon", "--exclude", "*.nothing")
    assert (b["via"], b["mode"], b["mode_reason"], b["tags"]) == ("daemon", "unoptimized", "asked for (--unoptimized)",
                                                                  ["by-daemon"])
    # Relative paths resolve in the client's working directory; the text summary says who ran it.
    proc = subprocess.run(sr.cmd + ["backup", src.name], cwd=src.parent, env=sr.env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("(run by the agent daemon)."), proc.stdout
    assert proc.stderr == ""
    point = sr.points()[0]
    assert point["sources"] == [str(src)]
    assert_trees_equal(src, _restored(sr, point["id"], src, tmp_path / "r1"))
    # Standard input is the client's: a stream backed up through the daemon.
    data = os.urandom(300_000)
    proc = subprocess.run(sr.cmd + ["backup", "--stdin", "dump.bin", "--json"], input=data, env=sr.env(),
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    b = json.loads(proc.stdout)
    assert b["via"] == "daemon"
    assert sr.run("dump", b["id"], "/dump.bin").stdout.encode("utf-8", "surrogateescape") == data
    # What stays in-process, and says why.
    assert sr.backup(src, env_extra={"STRONGROOM_NO_DAEMON": "1"})["via_reason"] == "$STRONGROOM_NO_DAEMON is set"
    pf = tmp_path / "pass"
    pf.write_text(sr.passphrase)
    b = sr.backup(src, "--passphrase-file", pf)
    assert (b["via"], b["via_reason"]) == ("in-process", "--passphrase-file runs in the command's own process")
    # The home's key file replaced (registered again, a new passphrase): the daemon's key may be stale.
    keyfile = sr.home / "key.json"
    original = keyfile.read_text()
    keyfile.write_text(json.dumps(json.loads(original)))
    b = sr.backup(src)
    assert (b["via"], b["via_reason"]) == ("in-process", "the home's key file changed since the agent daemon "
                                                         "started (restart the daemon)")
    keyfile.write_text(original)
    log = Path(daemon.log.name).read_text()
    assert log.count("`strongroom backup` worker") == 10, log  # the one that declined too


@pytest.mark.parametrize("args", [["--retain-until", "2000-01-01"], ["/does/not/exist"], ["--no-such-option"], []])
def test_errors_are_the_same_as_in_process(setup, args):
    sr, src, start = setup
    start()
    here = sr.run("backup", *args, check=False, env_extra={"STRONGROOM_NO_DAEMON": "1"})
    there = sr.run("backup", *args, check=False)
    assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout, here.stderr)
    assert here.returncode in (1, 2, 3) and here.stderr, here


def _held_backup(sr, src: Path, go: Path) -> subprocess.Popen:
    """A backup through the daemon that waits at its first new file until `go` exists. The
    command leads a process group of its own, whose parent (this test) is in the same session,
    as a shell's job: the kernel ignores stop signals (Ctrl-Z) in an orphaned group, which this
    test's own group may be (under `setsid`, or a CI runner's)."""
    (src / f"new-{go.name}.txt").write_text("new\n")
    proc = subprocess.Popen(sr.cmd + ["backup", str(src), "--json"],
                            env=sr.env({"STRONGROOM_TEST_HOOK": f"backup-file-stat=wait:{go}"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0)
    _wait_for(Path(f"{go}.reached"), proc)
    return proc


def _state(pid: int) -> str:
    """R, S, D, T (stopped), Z...: the third field of /proc/PID/stat (the name may hold spaces);
    "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@contextlib.contextmanager
def _held_in_worker(setup, tmp_path):
    """A backup held in the daemon's worker: (command, worker, daemon). A worker the test leaves
    stopped is killed after it, or the daemon's teardown would wait on it for ever."""
    sr, src, start = setup
    sr.backup(src)
    daemon = start()
    proc = _held_backup(sr, src, tmp_path / "go")
    (worker,) = _children(_zygote(daemon))
    try:
        yield proc, worker, daemon
    finally:
        if _state(worker) == "T":
            os.kill(worker, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_on_the_client_cancels_the_backup(setup, tmp_path, sig):
    sr, src, start = setup
    sr.backup(src)
    start()
    proc = _held_backup(sr, src, tmp_path / "go")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "strongroom: error: interrupted\n")
    assert _jobs(sr)[0]["status"] == "cancelled"
    b = sr.backup(src)
    assert b["via"] == "daemon" and b["mode"] == "unoptimized"  # after a cancelled one: scanned whole
    assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))


def test_a_client_killed_cancels_the_backup(setup, tmp_path):
    sr, src, start = setup
    sr.backup(src)
    start()
    proc = _held_backup(sr, src, tmp_path / "go")
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 60
    while _jobs(sr)[0]["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _jobs(sr)[0]["status"] == "cancelled"
    assert sr.backup(src)["via"] == "daemon"


def test_a_worker_or_daemon_killed_mid_backup_is_one_line_and_the_vault_stays_usable(setup, tmp_path):
    sr, src, start = setup
    with _held_in_worker(setup, tmp_path) as (proc, worker, daemon):
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == ("strongroom: error: the agent daemon stopped before the backup ended (run the backup again; "
                   "the vault records the interrupted job as failed)\n")
    assert sr.backup(src)["via"] == "daemon"
    # The daemon itself killed: its zygote and worker follow it (the job cancelled), the socket goes stale.
    proc = _held_backup(sr, src, tmp_path / "go2")
    daemon.kill()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and out == "" and err.count("\n") == 1 and err.startswith("strongroom: error: ")
    assert (sr.home / "agent.sock").is_socket()
    b = sr.backup(src)
    assert (b["via"], b["via_reason"]) == ("in-process", "the agent daemon's socket is stale (its daemon is gone)")
    assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))
    start()  # a new daemon replaces the stale socket
    assert sr.backup(src)["via"] == "daemon"


def test_a_killed_zygote_is_forked_again(setup, tmp_path):
    sr, src, start = setup
    daemon = start()
    first = _zygote(daemon)
    os.kill(first, signal.SIGKILL)
    _until(lambda: _children(_children(daemon.proc.pid)[0]) not in ([], [first]), "a new zygote is forked")
    b = sr.backup(src)
    assert (b["via"], b.get("via_reason")) == ("daemon", None)
    assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))
    daemon.stop()
    assert "the zygote for `strongroom backup` ended (exit -9); forking a new one" in Path(daemon.log.name).read_text()


def _as_nobody(fn, cwd: Path) -> object:
    """Runs `fn` in a child process as uid/gid 65534 in `cwd` (entered as root: the folders above
    it are root's) and returns what it returned (or raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the parent
            result = f"{type(exc).__name__}: {exc}"
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _ask(path: Path, payload: bytes, fds: list[int] | None = None) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        if fds:
            socket.send_fds(s, [payload], fds)
        elif payload:
            s.sendall(payload)
        got = b""
        while not got.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got.decode()


def test_a_hostile_local_user_gets_nothing(setup, tmp_path):
    sr, src, start = setup
    sr.backup(src)
    bait = tmp_path / "bait"
    bait.write_text("not a socket\n")
    (sr.home / "agent.sock").symlink_to(bait)  # planted before the daemon starts: replaced, not followed
    daemon = start()
    assert bait.read_text() == "not a socket\n" and not (sr.home / "agent.sock").is_symlink()
    sock = sr.home / "agent.sock"
    assert oct(sock.lstat().st_mode & 0o777) == "0o600"
    # Another uid: the home (0700) and the socket (0600) keep it out...
    assert _as_nobody(lambda: _ask(Path(sock.name), b""), sr.home).startswith("PermissionError")
    # ...and, were they opened up by mistake, the daemon checks who connects.
    os.chmod(sr.home, 0o755)
    os.chmod(sock, 0o666)
    answer = _as_nobody(lambda: _ask(Path(sock.name), b""), sr.home)
    assert answer == f"refused the agent daemon of {sr.home} serves only its own user (uid 0)\n"
    os.chmod(sr.home, 0o700)
    # Garbage, a huge length, no descriptors, a silent client: refused, and the daemon goes on.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(sock))
    assert _ask(sock, b"GET / HTTP/1.0\r\n\r\n" * 10, [0]) == \
        "refused bad request: not a request of this version of strongroom\n"
    assert _ask(sock, struct.pack(">8sI", b"SRHANDv1", 1 << 31), [0]).startswith(
        "refused bad request: the request is 2147483648 bytes")
    for body, why in [(b'{"args": []}', "the request lacks its fields"),
                      (b"1\x002\x0018\0a\0b\0c\0d\0e\0f\x005\0x", "the request has fewer arguments than it says"),
                      (b"1\x002\x0018\0a\0b\0c\0d\0e\0f\x000\0NOEQUALS", "the request's environment is not NAME=VALUE"),
                      (b"1\x002\x0018\0a\0b\0c\0d\0e\0f\x000", "the request carries 0 descriptors instead of 4")]:
        assert _ask(sock, struct.pack(">8sI", b"SRHANDv1", len(body)) + body) == f"refused bad request: {why}\n"
    b = sr.backup(src)
    assert b["via"] == "daemon"
    silent.close()
    # A socket of this daemon linked into another home: that home's backup runs in-process.
    other = sr.home.parent / "home-other"
    subprocess.run(["cp", "-a", str(sr.home), str(other)], check=True)
    (other / "agent.sock").unlink()
    os.link(sock, other / "agent.sock")
    b = sr.backup(src, env_extra={"STRONGROOM_HOME": str(other)})
    assert (b["via"], b["via_reason"]) == ("in-process", f"the agent daemon answering there serves another home ({sr.home})")
    # After the daemon stops, its socket is gone; a symlink planted then is not followed by the client.
    daemon.stop()
    assert not sock.exists()
    trap = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    trap.bind(str(tmp_path / "trap.sock"))
    trap.listen(1)
    trap.setblocking(False)
    sock.symlink_to(tmp_path / "trap.sock")
    b = sr.backup(src)
    assert (b["via"], b["via_reason"]) == ("in-process", f"{sock} is not a socket")
    with pytest.raises(BlockingIOError):
        trap.accept()
    trap.close()


def _on_a_terminal(sr, args: list[str], env_extra: dict[str, str] | None = None) -> str:
    """What `strongroom ARGS` shows on a terminal (stdout and stderr on one pseudo-terminal)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(sr.cmd + args, env=sr.env({"TERM": "xterm", "COLUMNS": "200", **(env_extra or {})}),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command and every copy of the terminal's other end are gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, out
    return out.decode("utf-8", "replace")


def test_progress_shows_on_the_clients_terminal(setup):
    sr, src, start = setup
    sr.backup(src)
    start()
    (src / "big.bin").write_bytes(os.urandom(20 << 20))
    shown = _on_a_terminal(sr, ["backup", str(src)])
    assert "Backing up: " in shown and "\x1b[" in shown, shown  # rich's live status, in colour
    assert "(run by the agent daemon)." in shown
    here = _on_a_terminal(sr, ["backup", str(src)], {"STRONGROOM_NO_DAEMON": "1"})
    assert "Backing up: " in here and "(run by the agent daemon)" not in here


def test_a_served_vault_through_the_daemon(served, served_machine, tmp_path):
    sr = served_machine("web-01")
    src = tmp_path / "src"
    _make_tree(src)
    sr.run("policy", "set", "--include", src, "--daily", "03:00", "--keep-daily", "7")
    sr.backup(src)
    daemon = Daemon(sr)
    try:
        (src / "a" / "file0.txt").write_bytes(b"changed over HTTPS\n")
        b = sr.backup(src)
        assert (b["via"], b["stats"]["files_changed"]) == ("daemon", 1), b
        assert_trees_equal(src, _restored(sr, b["id"], src, tmp_path / "r"))
    finally:
        daemon.stop()



def test_ctrl_z_stops_the_worker_with_the_command_and_fg_continues_both(setup, tmp_path):
    sr = setup[0]
    with _held_in_worker(setup, tmp_path) as (proc, worker, _daemon):
        proc.send_signal(signal.SIGTSTP)  # Ctrl-Z
        _until(lambda: _state(proc.pid) == "T" and _state(worker) == "T", "Ctrl-Z stops the command and its worker")
        (tmp_path / "go").touch()
        time.sleep(0.5)
        assert _state(worker) == "T"  # still stopped: the file it waits for is not seen
        proc.send_signal(signal.SIGCONT)  # fg
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["via"] == "daemon" and _jobs(sr)[0]["status"] == "completed"


def test_a_command_killed_while_stopped_does_not_leave_its_worker_stopped(setup, tmp_path):
    sr = setup[0]
    with _held_in_worker(setup, tmp_path) as (proc, worker, _daemon):
        proc.send_signal(signal.SIGTSTP)
        _until(lambda: _state(worker) == "T", "Ctrl-Z stops the worker")
        proc.kill()
        proc.wait()  # its output pipes stay open in the worker until it ends
        _until(lambda: _state(worker) != "T", "the worker is continued once its command is gone")
    _until(lambda: _jobs(sr)[0]["status"] != "running", "the worker sees its command gone and cancels")
    assert _jobs(sr)[0]["status"] == "cancelled"
    assert sr.backup(setup[1])["via"] == "daemon"
