"""Entry point: the command group, global options, and the rule that errors are one line."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import click

from strongroom import __version__
from strongroom.agent.home import AgentHome
from strongroom.cli import (
    admin_cmds,
    agent_cmds,
    backup_cmd,
    browse_cmds,
    cache_cmds,
    check_cmd,
    docs_cmds,
    forget_cmd,
    jobs_cmds,
    kinds_cmds,
    mount_cmd,
    policy_cmds,
    read_cmds,
    register_cmd,
    restore_cmd,
    seed_cmd,
    stats_cmd,
    vault_cmds,
)
from strongroom.cli.common import fail_line
from strongroom.errors import EXIT_FAILURE, EXIT_USAGE, StrongroomError


class StrongroomGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StrongroomError as exc:
            fail_line(str(exc))
            sys.exit(exc.exit_code)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            hint = " — the disk is full" if exc.errno == errno.ENOSPC else ""
            fail_line(f"{exc.strerror or exc}{where}{hint}")
            sys.exit(EXIT_FAILURE)
        except KeyboardInterrupt:
            fail_line("interrupted")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: say so in one line; the traceback on request
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


for module in (vault_cmds, seed_cmd, register_cmd, backup_cmd, browse_cmds, restore_cmd, check_cmd, jobs_cmds,
               policy_cmds, agent_cmds, read_cmds, forget_cmd,
               stats_cmd, docs_cmds, cache_cmds, mount_cmd, kinds_cmds, admin_cmds):
    module.add_to(cli)


def _raise_fd_limit() -> None:
    # Deep trees keep one descriptor per level open, and the pools a few hundred more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cancel_on_sigterm() -> None:
    # A stopped service (systemd, kill) cancels the running job cleanly, as Ctrl-C does:
    # the job is recorded as cancelled and no partial file is left behind.
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    _raise_fd_limit()
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
