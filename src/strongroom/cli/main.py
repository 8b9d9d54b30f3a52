"""Entry point: the command group, global options, and the rule that errors are one line."""

from __future__ import annotations

import errno
import importlib
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from strongroom import __version__
from strongroom.agent.home import AgentHome
from strongroom.cli.common import fail_line
from strongroom.cli.handover import startup_done
from strongroom.errors import EXIT_FAILURE, EXIT_USAGE, StrongroomError


# The modules that define each top-level command, in the order they must register (seed_cmd
# adds to the vault group, admin_cmds to machines, cache_cmds to agent). A command loads only
# its own modules: `backup` then skips the FUSE, trio and HTTP-server imports of the others,
# which cost more start-up time than a no-change optimized backup itself.
# tests/unit/test_cli_table.py checks this table against what the modules register.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "vault": ("vault_cmds", "seed_cmd"), "register": ("register_cmd",), "backup": ("backup_cmd",),
    "points": ("browse_cmds",), "ls": ("browse_cmds",), "restore": ("restore_cmd",), "check": ("check_cmd",),
    "jobs": ("jobs_cmds",), "machines": ("jobs_cmds", "admin_cmds"), "policy": ("policy_cmds",),
    "protection": ("policy_cmds",), "agent": ("agent_cmds", "cache_cmds"), "diff": ("read_cmds",),
    "find": ("read_cmds",), "dump": ("read_cmds",), "forget": ("forget_cmd",), "stats": ("stats_cmd",),
    "completion": ("docs_cmds",), "man": ("docs_cmds",), "mount": ("mount_cmd",), "unmount": ("mount_cmd",),
    "export": ("kinds_cmds",), "system-state": ("kinds_cmds",), "passphrase": ("jobs_cmds", "admin_cmds"),
}


def _shown(filename: str | bytes) -> str:
    """A file name of an OSError as people read it: a path given as bytes (the walk's and the
    restore's) showed as b'...'."""
    from strongroom.model import display_path

    return display_path(filename) if isinstance(filename, bytes) else filename


def _storage_failure(exc: Exception) -> StrongroomError | None:
    """An embedded vault's catalog on a full or failing disk (SQLAlchemy's errors) is one line
    too, as a served vault's is. Looked for only once SQLAlchemy is loaded: an embedded vault
    was opened."""
    if "sqlalchemy" not in sys.modules:
        return None
    from strongroom.vault.storage_errors import storage_failure

    return storage_failure(exc)


class StrongroomGroup(click.Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            if module not in self._loaded:
                self._loaded.add(module)
                importlib.import_module(f"strongroom.cli.{module}").add_to(self)
        startup_done()
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StrongroomError as exc:
            fail_line(str(exc))
            sys.exit(exc.exit_code)
        except OSError as exc:
            where = f" ({_shown(exc.filename)})" if getattr(exc, "filename", None) else ""
            hint = " — the disk is full" if exc.errno == errno.ENOSPC else ""
            fail_line(f"{exc.strerror or exc}{where}{hint}")
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            fail_line("interrupted")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except RecursionError:
            fail_line(f"a tree is nested deeper than this version can walk (about {sys.getrecursionlimit() // 3:,} "
                      "levels; a larger stack, `ulimit -s`, allows more)")
            sys.exit(EXIT_FAILURE)
        except Exception as exc:  # a bug: say so in one line; the traceback on request
            if (failure := _storage_failure(exc)) is not None:
                fail_line(str(failure))
                sys.exit(EXIT_FAILURE)
            if os.environ.get("STRONGROOM_DEBUG"):
                raise
            fail_line(f"internal error: {type(exc).__name__}: {exc} (set STRONGROOM_DEBUG=1 for details)")
            sys.exit(EXIT_FAILURE)


@click.group(cls=StrongroomGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path, file_okay=False),
              help="Agent home (registration, key, cache); else $STRONGROOM_HOME, else a per-user default.")
@click.version_option(__version__, prog_name="strongroom")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """Strongroom: encrypted, deduplicated, incremental backups to a vault you own."""
    ctx.obj = {"home": AgentHome(home)}


def _raise_fd_limit() -> None:
    # Deep trees keep one descriptor per level open, and the pools a few hundred more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Folders nest as deep as the filesystem lets them, and backup, restore and the read
# commands walk trees by recursion (two to three frames a level): Python's default limit of
# 1,000 frames stopped them at ~330 levels with a RecursionError. The limit also bounds C
# recursion that counts against it (json's decoder, ~160 bytes of stack a level); past the
# stack, Python would crash instead of raising. So: 256 bytes of stack a frame, threads given
# the main thread's stack, and never more than _MAX_FRAMES.
_FRAME_STACK_BYTES = 256
_MAX_FRAMES = 50_000
_MAX_THREAD_STACK = 64 << 20


def _allow_deep_trees() -> None:
    """Raises the recursion limit as far as the stack allows."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    stack = _MAX_THREAD_STACK if soft == resource.RLIM_INFINITY else min(soft, _MAX_THREAD_STACK)
    threading.stack_size(stack)
    frames = max(sys.getrecursionlimit(), min(_MAX_FRAMES, stack // _FRAME_STACK_BYTES))
    sys.setrecursionlimit(frames)


def _cancel_on_sigterm() -> None:
    # A stopped service (systemd, kill) cancels the running job cleanly, as Ctrl-C does:
    # the job is recorded as cancelled and no partial file is left behind.
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    _raise_fd_limit()
    _allow_deep_trees()
    _cancel_on_sigterm()
    try:
        cli.main(prog_name="strongroom")
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # pragma: no cover - click handles these in standalone mode
        fail_line(exc.format_message())
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
