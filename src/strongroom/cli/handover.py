"""The `strongroom` command's entry point, which first hands `strongroom backup` to the running
agent daemon of its home (agent/handover.py) and otherwise runs the CLI in this process.

Checked with the standard library only, before cli/main.py and the backup's imports load and
before any passphrase is asked or key derived: that start-up is what the hand-over saves.
The daemon's worker writes the backup's output to this process's own stdout and stderr
(passed as descriptors), so this process only waits for its exit code and passes Ctrl-C on.

`VIA` says how the backup ran, for `strongroom backup --json` ("via", "via_reason").
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import stat
import sys
from pathlib import Path
TYPE_CHECKING = False  # typing is not imported: start-up is what this module saves
if TYPE_CHECKING:
    from typing import NoReturn

from strongroom.agent import handover as wire
from strongroom.agent.homepath import command_start, home_path

VIA: tuple[str, str | None] = ("in-process", None)
NO_DAEMON_ENV = "STRONGROOM_NO_DAEMON"
# Options the daemon does not carry out: a passphrase given for this run is to be checked;
# the other kinds of points and a command run for --stdin need this process's environment.
_OWN_PROCESS_OPTIONS = ("--passphrase-file", "--volume", "--system-state", "--image", "--stdin-from-command",
                        "--help", "-h")


# Start-up allocates a few hundred thousand objects that all live on (modules, classes): at
# the default threshold (700) the collector ran ~130 times over them, 0.05 CPU-s a command.
# Only while the modules load (`startup_done`): left that high, the cycles a served vault's
# HTTP responses form were collected so late that a served restore peaked at 445 MiB.
_STARTUP_GC_THRESHOLD = 50_000
_usual_gc: tuple[int, int, int] | None = None


def startup_done() -> None:
    """The command's modules are loaded (cli/main.py): the collector back to its usual pace."""
    global _usual_gc
    if _usual_gc is not None:
        gc.set_threshold(*_usual_gc)
        _usual_gc = None


def main() -> None:
    global VIA, _usual_gc
    _usual_gc = gc.get_threshold()
    gc.set_threshold(_STARTUP_GC_THRESHOLD, *_usual_gc[1:])
    reason = hand_over(sys.argv[1:])
    if reason is not None:
        VIA = ("in-process", reason)
    from strongroom.cli.earlykey import derive_early  # noqa: PLC0415
    derive_early(sys.argv[1:])  # before the heavy part: Argon2's 64 MiB on top of less
    from strongroom.cli.main import main as run_here  # noqa: PLC0415 - the heavy part, only now
    from strongroom.cli import quickexit  # noqa: PLC0415
    quickexit.run(run_here)  # and no teardown of the interpreter afterwards


def _backup_args(argv: list[str]) -> tuple[Path | None, list[str]] | None:
    """(--home, the backup's arguments) when argv is a `backup` command, else None."""
    home, i = command_start(argv)
    if i >= len(argv) or argv[i] != "backup":
        return None
    return home, argv[i + 1:]


def hand_over(argv: list[str]) -> str | None:
    """Exits with the daemon's exit code when the home's daemon carried out the backup; else
    why not (None: not a backup command)."""
    parsed = _backup_args(argv)
    if parsed is None:
        return None
    given_home, args = parsed
    if os.environ.get(NO_DAEMON_ENV):
        return f"${NO_DAEMON_ENV} is set"
    for a in args:
        if a == "--":
            break
        if a.split("=", 1)[0] in _OWN_PROCESS_OPTIONS:
            return f"{a.split('=', 1)[0]} runs in the command's own process"
    home = home_path(given_home)
    path = wire.socket_path(home)
    try:
        st = os.lstat(path)
        home_st = os.stat(home)
    except FileNotFoundError:
        return "no agent daemon runs for this home"
    except OSError as exc:
        return f"cannot look for the agent daemon's socket ({exc.strerror})"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket"
    if st.st_uid != os.geteuid():
        return "the agent daemon's socket belongs to another user"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    signals = _PassedOn(sock)
    try:
        sock.settimeout(wire.REQUEST_TIMEOUT_S)
        sock.connect(wire.connectable(path))
        if wire.peer_uid(sock) != os.geteuid():  # a socket swapped in between: give it nothing
            return "the agent daemon's socket is served by another user"
        signals.install()  # from here a Ctrl-C cancels what the daemon may have begun
        return _request(sock, home_st, args)
    except ConnectionRefusedError:
        return "the agent daemon's socket is stale (its daemon is gone)"
    except (socket.timeout, TimeoutError):
        return f"the agent daemon did not answer within {wire.REQUEST_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return f"cannot reach the agent daemon ({exc.strerror or exc})"
    finally:
        signals.restore()
        sock.close()
        if signals.cancelled:  # interrupted before the daemon took the backup: nothing runs here either
            _fail("interrupted", 130)


def _request(sock: socket.socket, home_st: os.stat_result, args: list[str]) -> str | None:
    fds = [os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # closed: the worker gets /dev/null there, as Python would have nothing
            fds.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    streams = (sys.stdin, sys.stdout, sys.stderr)
    umask = os.umask(0o077)
    os.umask(umask)
    doc = wire.Request((home_st.st_dev, home_st.st_ino), umask,
                       [(getattr(s, "encoding", None) or "utf-8", getattr(s, "errors", None) or "strict") for s in streams],
                       args, wire.passed_env(os.environ))
    try:
        data = doc.encode()
        sent = socket.send_fds(sock, [data[:65536]], fds)
        sock.sendall(data[sent:])
    except ValueError:
        return "the arguments are too long to hand over"
    finally:
        for fd in fds:
            if fd > 2:
                os.close(fd)
    reader = _Lines(sock)
    word, text = reader.next()
    if word is None:
        return "the agent daemon closed the connection without taking the backup"
    if word == "declined":
        return text
    if word == "refused":
        _fail(text)
    if word != "accepted":
        return "the agent daemon sent an answer this client does not understand"
    if reader.fds:
        signal.signal(signal.SIGTSTP, _Stopped(reader.fds[0]).with_this_process)
    sock.settimeout(None)  # a backup takes as long as it takes
    word, text = reader.next()
    if word == "refused":
        _fail(text)
    if word != "exit" or not text.isdigit():
        _fail("the agent daemon stopped before the backup ended (run the backup again; "
              "the vault records the interrupted job as failed)")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(int(text))


class _Lines:
    """The daemon's answer lines (word, text), each at most MAX_REPLY bytes; (None, "") at the end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.fds = sock, b"", []

    def next(self) -> tuple[str | None, str]:
        while b"\n" not in self.buf:
            if len(self.buf) > wire.MAX_REPLY:
                return None, ""
            chunk, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, 1)
            for fd in fds:  # the worker's pidfd comes with "accepted"; one is all there is to keep
                if self.fds:
                    os.close(fd)
                else:
                    self.fds.append(fd)
            if not chunk:
                return None, ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        word, _sep, text = os.fsdecode(line).partition(" ")
        return word, text


class _PassedOn:
    """Ctrl-C, SIGTERM and a closed terminal cancel the backup in the daemon, as they would here
    (the worker prints "interrupted" and ends with 130); `restore` before running in-process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.cancelled, self.before = sock, False, {}

    def install(self) -> None:
        self.before = {sig: signal.signal(sig, self._cancel) for sig in self.SIGNALS}

    def _cancel(self, _signum: int, _frame: object) -> None:
        self.cancelled = True
        try:
            self.sock.send(wire.CANCEL)
        except OSError:
            pass

    def restore(self) -> None:
        for sig, handler in self.before.items():
            signal.signal(sig, handler)
        self.before = {}


class _Stopped:
    """Ctrl-Z (SIGTSTP) stops the daemon's worker with this process, and fg or bg (SIGCONT)
    continues both, as they would an in-process backup. The worker is in the daemon's session,
    not this terminal's, so only this process can pass the stop on."""

    def __init__(self, worker: int) -> None:
        self.worker = worker  # its pidfd: never another process, even after the worker ended

    def with_this_process(self, _signum: int, _frame: object) -> None:
        self._signal(signal.SIGSTOP)
        handler = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # this process stops here until fg or bg
        signal.signal(signal.SIGTSTP, handler)
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.worker, sig)
        except OSError:  # ended already (its exit line is on its way)
            pass


def _fail(message: str, code: int = 1) -> NoReturn:
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in message)
    sys.stderr.write(f"strongroom: error: {shown}\n")
    sys.stderr.flush()
    os._exit(code)
