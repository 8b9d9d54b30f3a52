"""`strongroom backup` carried out by the running agent daemon: the socket, its wire format, the
zygote that forks one worker per request, and the worker.

Why: a backup run in its own process pays Python's start-up, the imports and the key
derivation (Argon2id, 64 MiB) every time, ten times what a no-change optimized backup itself
costs. The daemon (`strongroom agent run`) has all three done already.

How: the daemon binds a Unix stream socket `agent.sock` in the agent home (mode 0600 in the
0700 home; bound under a temporary name, chmod'ed, then renamed into place, so it is never
reachable with looser rights) and forks a *zygote* at once: a single-threaded copy holding
the key and the imported modules, made before the daemon starts any thread or opens any
connection (forking a process with threads copies locks other threads held). It is forked
through a supervisor, forked the same way, which only forks it again if it dies. The zygote
accepts connections, checks the peer's uid (SO_PEERCRED: this user only) and forks one
worker per request. The worker reads the request (the backup's arguments, the client's
cwd and stdin/stdout/stderr as descriptors, a few environment variables), takes them as its
own, and runs the same click command the CLI runs in-process, with the key it holds: output,
progress, `--json` and exit codes are those of an in-process backup, written by the same
code to the same descriptors. It answers with the exit code.

Wire format (docs/format.md, "The agent home"): client to daemon, MAGIC, a 4-byte big-endian
length, then that many bytes of NUL-separated fields (no JSON: its import alone costs the
client a tenth of its start-up; argv and environment strings cannot hold a NUL): the home's
st_dev and st_ino, the client's umask, the encoding and errors of stdin, stdout and stderr, the number of
arguments, the arguments, then NAME=VALUE environment entries. The first sendmsg carries four
descriptors (SCM_RIGHTS): cwd, stdin, stdout, stderr. Afterwards the client sends one byte
b"C" to cancel (Ctrl-C, SIGTERM, SIGHUP); a closed connection cancels too. Daemon to client:
text lines, "accepted" once the request is taken (with the worker's pidfd, SCM_RIGHTS: Ctrl-Z
on the client stops the worker, fg or bg continues it), then "exit N"; or "refused MESSAGE" (the
client fails with it) or "declined MESSAGE" (the client runs the backup in-process instead).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
TYPE_CHECKING = False  # typing itself is not imported: the client starts faster without it
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from strongroom.crypto import MasterKey

# Imported here: only what the client needs too (cli/handover.py runs before anything else is
# loaded); the daemon's and the worker's other imports are in their functions.

SOCKET_NAME = "agent.sock"
MAGIC = b"SRHANDv1"
_HEADER = struct.Struct(">8sI")
MAX_REQUEST = 4 << 20  # argv and environment together are at most a few MiB on Linux
MAX_REPLY = 64 << 10
REQUEST_TIMEOUT_S = 10.0  # a client that connects and says nothing is dropped after this
MAX_WORKERS = 8  # one backup runs at a time (the home's lock); the rest are refusals in waiting
CANCEL = b"C"
# The client's environment the worker takes over (else the daemon's stays): the terminal,
# the locale and time zone the output is shown in, and the project's own switches.
ENV_PASSED = ("TERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "LANG", "LANGUAGE", "TZ",
              "STRONGROOM_DEBUG", "STRONGROOM_TEST_HOOK", "STRONGROOM_VAULT_RETRY_SECONDS")
_PR_SET_PDEATHSIG = 1


def passed_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in ENV_PASSED or k.startswith("LC_")}


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def connectable(path: Path) -> str:
    """A name of `path` short enough for sockaddr_un (108 bytes): /proc/self/fd/N/NAME of its
    folder when the path is longer. The caller closes nothing: the folder's descriptor is kept
    open for the life of the process (one per process, cached)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) < 100:
        return text
    fd = _dir_fds.get(str(path.parent))
    if fd is None:
        fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _dir_fds[str(path.parent)] = fd
    return f"/proc/self/fd/{fd}/{path.name}"


_dir_fds: dict[str, int] = {}


class Request:
    """What the client asks: the backup's arguments, in its home, with its terminal's settings."""

    def __init__(self, home: tuple[int, int], umask: int, stdio: list[tuple[str, str]], args: list[str],
                 env: dict[str, str]) -> None:
        self.home, self.umask, self.stdio, self.args, self.env = home, umask, stdio, args, env

    def encode(self) -> bytes:
        fields = [str(self.home[0]), str(self.home[1]), str(self.umask), *(x for pair in self.stdio for x in pair),
                  str(len(self.args)), *self.args, *(f"{k}={v}" for k, v in self.env.items())]
        body = b"\0".join(os.fsencode(f) for f in fields)
        if len(body) > MAX_REQUEST:
            raise ValueError("the request is too long")
        return _HEADER.pack(MAGIC, len(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> Request:
        """BadRequest unless `body` is what `encode` makes."""
        if b"\0" not in body:
            raise BadRequest("the request lacks its fields")
        fields = [os.fsdecode(f) for f in body.split(b"\0")]
        if len(fields) < 10 or not all(f.isdigit() for f in (fields[0], fields[1], fields[2], fields[9])):
            raise BadRequest("the request lacks its fields")
        nargs = int(fields[9])
        if len(fields) < 10 + nargs:
            raise BadRequest("the request has fewer arguments than it says")
        env = [f.partition("=") for f in fields[10 + nargs:]]
        if any(not sep for _k, sep, _v in env):
            raise BadRequest("the request's environment is not NAME=VALUE")
        return cls((int(fields[0]), int(fields[1])), int(fields[2]) & 0o777,
                   [(fields[3], fields[4]), (fields[5], fields[6]), (fields[7], fields[8])],
                   fields[10:10 + nargs], {k: v for k, _sep, v in env})


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
    return uid


def send_line(sock: socket.socket, word: str, text: str = "", fds: list[int] | None = None) -> None:
    """One answer line: accepted, exit N, refused MESSAGE or declined MESSAGE; `fds` go with it."""
    line = os.fsencode(f"{word} {text}".rstrip().replace("\n", " ")) + b"\n"
    sent = socket.send_fds(sock, [line], fds) if fds else 0
    sock.sendall(line[sent:])


class BadRequest(Exception):
    """A request the worker will not carry out (said to the client in one line)."""


def _set_pdeathsig() -> None:
    """This process gets SIGTERM when the thread that forked it ends (the daemon, the zygote):
    a backup whose daemon died is cancelled and recorded so, never left running unseen."""
    import ctypes  # noqa: PLC0415 - daemon side only

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


# -- the daemon side ----------------------------------------------------------------------------


class Server:
    """The socket and the process keeping its zygote; `stop` ends both and removes the socket."""

    def __init__(self, path: Path, inode: tuple[int, int], supervisor: int) -> None:
        self.path, self.inode, self.supervisor = path, inode, supervisor

    def stop(self) -> None:
        try:  # the zygote follows its supervisor, and the workers their zygote (_set_pdeathsig)
            os.kill(self.supervisor, signal.SIGTERM)
            os.waitpid(self.supervisor, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:  # not a newer daemon's socket
                self.path.unlink()
        except OSError:
            pass


def start(home: Path, key: MasterKey) -> Server | None:
    """Binds the socket and forks the zygote. Called before the daemon starts any thread.
    None (and a warning) when the socket cannot be made: backups then run in-process."""
    import threading  # noqa: PLC0415

    home = home.absolute()
    _preload(home)
    log = _log()
    if threading.active_count() != 1:  # a fork now could copy a lock another thread holds
        log.warning("threads run already; backups run in their own process")
        return None
    try:
        keyfile = _keyfile(home)
    except OSError as exc:
        log.warning("cannot read the key file (%s); backups run in their own process", exc)
        return None
    path = socket_path(home)
    temp = home / f".agent.sock.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        temp.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # never reachable by others, not even between bind and chmod
        try:
            listener.bind(connectable(temp))
        finally:
            os.umask(old_umask)
        os.chmod(temp, 0o600)
        os.rename(temp, path)  # replaces a stale socket, and a planted symlink without following it
        st = os.lstat(path)
        listener.listen(16)
    except OSError as exc:
        listener.close()
        temp.unlink(missing_ok=True)
        log.warning("cannot make the socket for `strongroom backup` (%s); backups run in their own process", exc)
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the children's copy of what is buffered could be written twice
    pid = _fork(lambda: _keep_zygote(listener, home, key, keyfile))
    listener.close()
    log.info("`strongroom backup` is carried out by this daemon (socket %s)", path)
    return Server(path, (st.st_dev, st.st_ino), pid)


def _fork(child: Callable[[], None]) -> int:
    """Forks a child that runs `child` and never returns into its parent's code; it gets
    SIGTERM when the forking thread ends. The child's pid (OSError if the fork is refused)."""
    parent = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:  # the parent, or a fork refused; the child unblocks once its handlers are set
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
    if pid == 0:
        code = 0
        try:
            _set_pdeathsig()
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(0)
            child()
        except BaseException:  # noqa: BLE001 - whatever happens, never back into the parent's code
            code = 1
        os._exit(code)
    return pid


# A zygote that dies at once is forked again at most this often.
_REFORK_S = 1.0


def _keep_zygote(listener: socket.socket, home: Path, key: MasterKey, keyfile: bytes) -> None:
    """Forks the zygote, and again whenever it dies (killed, out of memory): without one, the
    socket would refuse every client and backups would run in their own process until the
    daemon restarts. This process does nothing else, so it has nothing to fail on; it is
    single-threaded, as the daemon was when it forked it."""
    log = _log()

    def leave(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)  # its zygote gets SIGTERM from its own death signal, and its workers theirs

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the daemon's terminal: the daemon decides
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
    while True:
        began = time.monotonic()
        try:
            pid = _fork(lambda: _zygote(listener, home, key, keyfile))
        except OSError as exc:
            log.error("cannot fork the zygote for `strongroom backup` (%s); trying again", exc)
        else:
            _pid, status = os.waitpid(pid, 0)
            log.error("the zygote for `strongroom backup` ended (exit %s); forking a new one",
                      os.waitstatus_to_exitcode(status))
        time.sleep(max(0.0, began + _REFORK_S - time.monotonic()))


# Held across each fork: a handler that raises (SIGTERM's, SIGINT's) while os.fork runs the
# fork handlers of logging is swallowed there and leaves logging's lock held, so the next log
# call of that process hangs, and the signal is lost. Delivered once both sides are past it.
_FORK_BLOCKED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _log() -> Any:
    import logging  # noqa: PLC0415 - daemon side only

    return logging.getLogger("strongroom.agent")


def _preload(home: Path) -> None:
    """Imports what a backup imports, once, in the daemon: the workers find it all loaded
    (what the backup imports only when it runs, too: throttling, and the vault's side: the
    catalog with SQLAlchemy's SQLite dialect for a vault in a folder, the HTTP client for a
    served one)."""
    import importlib  # noqa: PLC0415

    import strongroom.agent.btrfs_changes  # noqa: F401, PLC0415
    import strongroom.agent.throttle  # noqa: F401, PLC0415
    import strongroom.cli.backup_cmd  # noqa: F401, PLC0415
    import strongroom.cli.main  # noqa: F401, PLC0415
    from strongroom.agent.home import AgentHome  # noqa: PLC0415
    from strongroom.errors import StrongroomError  # noqa: PLC0415
    try:
        url = str(AgentHome(home).config().get("vault", ""))
    except (StrongroomError, ValueError, OSError):
        return
    served = url.startswith(("https:", "http:"))
    for module in (("strongroom.vault.client",) if served else
                   ("strongroom.vault.embedded", "strongroom.vault.service", "sqlalchemy.dialects.sqlite.pysqlite")):
        try:
            importlib.import_module(module)
        except ImportError:  # the worker imports it (and says what is missing) as the CLI would
            pass


def _keyfile(home: Path) -> bytes:
    """The home's key file as it is now: the key the daemon holds is the one it wraps."""
    from strongroom.agent.homepath import KEYFILE  # noqa: PLC0415

    return (home / KEYFILE).read_bytes()


def _zygote(listener: socket.socket, home: Path, key: MasterKey, keyfile: bytes) -> None:
    """Accepts connections and forks a worker for each; single-threaded by design."""
    workers: dict[int, float] = {}
    log = _log()

    def reap(_signum: int = 0, _frame: Any = None) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                return
            if pid == 0:
                return
            began = workers.pop(pid, time.monotonic())
            log.info("`strongroom backup` worker %d: exit %s in %.3f s, %.3f s CPU, peak RSS %.1f MiB", pid,
                     os.waitstatus_to_exitcode(status), time.monotonic() - began, usage.ru_utime + usage.ru_stime,
                     usage.ru_maxrss / 1024)

    def leave(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)  # the workers get SIGTERM from their own death signal and cancel

    import gc  # noqa: PLC0415

    # What the zygote holds stays out of the workers' garbage collections: they would touch
    # every object's header and so copy every page they share with it.
    gc.freeze()
    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the daemon's terminal: the daemon decides
    signal.signal(signal.SIGCHLD, reap)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORK_BLOCKED)
    while True:
        try:
            conn, _addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
                continue
            raise
        try:
            conn.settimeout(1.0)
            if peer_uid(conn) != os.geteuid():
                send_line(conn, "refused", f"the agent daemon of {home} serves only its own user (uid {os.geteuid()})")
                continue
            if len(workers) >= MAX_WORKERS:
                send_line(conn, "declined", "the agent daemon is busy with other requests")
                continue
            # SIGCHLD held until the worker is in `workers`: one that ends at once is reaped after.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *_FORK_BLOCKED})
            try:
                pid = os.fork()
                if pid == 0:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *_FORK_BLOCKED})
                    listener.close()
                    code = 1
                    try:  # whatever happens, a worker never returns into the zygote's loop
                        code = _worker(conn, home, key, keyfile)
                    finally:
                        os._exit(code)
                workers[pid] = time.monotonic()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *_FORK_BLOCKED})
        except OSError:
            pass  # a client gone already, or a fork refused: that client sees the connection close
        finally:
            conn.close()


# -- the worker --------------------------------------------------------------------------------


def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
    """The request and its four descriptors; BadRequest if it is not one, within the timeout."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    fds: list[int] = []
    data = b""
    try:
        msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
        data = msg
        if len(data) < _HEADER.size:
            data += _recv_exactly(conn, _HEADER.size - len(data), deadline)
        magic, length = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BadRequest("not a request of this version of strongroom")
        if length > MAX_REQUEST:
            raise BadRequest(f"the request is {length} bytes, over the {MAX_REQUEST} allowed")
        body = data[_HEADER.size:]
        if len(body) < length:
            body += _recv_exactly(conn, length - len(body), deadline)
        if len(body) != length:
            raise BadRequest("the request is longer than it says")
        doc = Request.decode(body)
        if len(fds) != 4:
            raise BadRequest(f"the request carries {len(fds)} descriptors instead of 4")
        return doc, fds
    except (socket.timeout, TimeoutError):
        raise BadRequest(f"no whole request within {REQUEST_TIMEOUT_S:.0f} s") from None
    except (ValueError, struct.error):
        raise BadRequest("the request is not one") from None
    except BadRequest:
        for fd in fds:
            os.close(fd)
        raise


def _recv_exactly(conn: socket.socket, n: int, deadline: float) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(min(n, 1 << 20))
        if not chunk:
            raise BadRequest("the request ended early")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _worker(conn: socket.socket, home: Path, key: MasterKey, keyfile: bytes) -> int:
    """Carries out one request; the exit code of this process."""
    _set_pdeathsig()
    try:
        doc, fds = _receive(conn)
        st = os.stat(home)
        if doc.home != (st.st_dev, st.st_ino):
            return _decline(conn, fds, f"the agent daemon answering there serves another home ({home})")
        if _keyfile(home) != keyfile:  # registered again, or a new passphrase: maybe not the key held
            return _decline(conn, fds, "the home's key file changed since the agent daemon started (restart the daemon)")
        conn.settimeout(None)
        me = os.pidfd_open(os.getpid())
        try:  # fails if the client gave up waiting: nothing runs then
            send_line(conn, "accepted", fds=[me])
        finally:
            os.close(me)
        _continued_when_the_client_speaks(conn)
    except BadRequest as exc:
        try:
            send_line(conn, "refused", f"bad request: {exc}")
        except OSError:
            pass
        return 2
    except OSError:
        return 2
    import atexit  # noqa: PLC0415

    atexit._clear()  # the daemon's exit handlers are not this backup's
    try:
        _take_over(doc, fds)
    except OSError as exc:
        send_line(conn, "refused", f"the agent daemon cannot take over this command's folder and output "
                                   f"({exc.strerror or exc})")
        return 1
    code = _run_backup(doc.args, home, key, conn)
    atexit._run_exitfuncs()  # the backup's: closing the catalog folds its write-ahead log in
    try:
        send_line(conn, "exit", str(code))
    except OSError:
        pass
    return code


def _continued_when_the_client_speaks(conn: socket.socket) -> None:
    """Ctrl-Z on the client stops this worker (SIGSTOP through the pidfd sent with "accepted"),
    and fg or bg continues it. A stopped process cannot watch its client: if the client were
    killed then, the backup would stay stopped, holding the home. So the kernel continues it
    (O_ASYNC, SIGCONT as the signal, this process as the owner) whenever the client's end has
    something to say: a cancel byte, or its close, which `watch_client` then reads."""
    import fcntl  # noqa: PLC0415

    fd = conn.fileno()
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGCONT)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)


def _decline(conn: socket.socket, fds: list[int], why: str) -> int:
    """The client runs the backup itself, and says why."""
    for fd in fds:
        os.close(fd)
    send_line(conn, "declined", why)
    return 2


def _take_over(doc: Request, fds: list[int]) -> None:
    """Becomes the client's process as far as the backup can tell: its cwd, its stdio, its
    terminal's environment; logging as an in-process command has it (warnings on stderr)."""
    import io  # noqa: PLC0415
    import logging  # noqa: PLC0415
    cwd, *stdio = fds
    os.fchdir(cwd)
    os.close(cwd)
    os.umask(doc.umask)  # what the backup creates (an offline seed) gets the client's rights
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    env = {k: v for k, v in os.environ.items() if k not in ENV_PASSED and not k.startswith("LC_")}
    env.pop("STRONGROOM_PASSPHRASE", None)  # the key is in hand; nothing here may ask for more
    env.update(passed_env(doc.env))
    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    (ienc, ierr), (oenc, oerr), (eenc, eerr) = doc.stdio
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), ienc, ierr)
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), oenc, oerr, line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), eenc, eerr, line_buffering=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    from strongroom import testhook  # noqa: PLC0415 - loaded already; its switch follows the client's
    testhook.ACTIVE = bool(os.environ.get(testhook.ENV_VAR))
    from strongroom.cli import common  # noqa: PLC0415
    common.new_consoles()


def _run_backup(args: list[str], home: Path, key: MasterKey, conn: socket.socket) -> int:
    """Runs `strongroom --home HOME backup ARGS` as the CLI does; cancelled (as by Ctrl-C) when
    the client asks or goes away."""
    import threading  # noqa: PLC0415

    from strongroom.cli import common, handover  # noqa: PLC0415
    from strongroom.cli.main import cli  # noqa: PLC0415
    common.HELD_KEY = key
    handover.VIA = ("daemon", None)
    running = threading.Event()
    running.set()

    def watch_client() -> None:
        while True:
            try:
                got = conn.recv(64)
            except OSError:
                got = b""
            if got and CANCEL not in got:
                continue
            if running.is_set():
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in-process: the job ends as cancelled
            return

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    threading.Thread(target=watch_client, name="client", daemon=True).start()
    try:
        try:
            cli.main(args=["--home", str(home), "backup", *args], prog_name="strongroom", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:  # between click's handling and here
            code = 130
        finally:
            running.clear()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ended: the answer goes out whatever comes
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
    except KeyboardInterrupt:
        code = 130
    return code


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["BadRequest", "CANCEL", "MAGIC", "Request", "Server", "connectable",
           "passed_env", "peer_uid", "send_line", "socket_path", "start"]
