"""`strongroom agent run`: the daemon that carries out this machine's schedule."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from strongroom.agent import handover
from strongroom.agent.daemon import Daemon
from strongroom.agent.passphrase import read_passphrase
from strongroom.cli.common import PrintableFormatter, home, passphrase_option


@click.group("agent")
def agent_group() -> None:
    """The agent daemon."""


@agent_group.command("run")
@passphrase_option
@click.pass_context
def run(ctx: click.Context, passphrase_file: Path | None) -> None:
    """Run scheduled backups until stopped (SIGTERM or Ctrl-C); see contrib/strongroom-agent.service.

    The key is unwrapped once at start, from --passphrase-file (a systemd credential) or
    $STRONGROOM_PASSPHRASE: a daemon has nobody to ask."""
    log_output = logging.StreamHandler()
    log_output.setFormatter(PrintableFormatter("strongroom agent: %(levelname)s %(message)s"))
    logging.basicConfig(handlers=[log_output], level=logging.INFO)
    agent = home(ctx)
    key = agent.master_key(read_passphrase(passphrase_file))
    server = handover.start(agent.path, key)  # before the daemon's threads: it forks
    try:
        Daemon(agent, key).run_forever()
    except KeyboardInterrupt:
        logging.getLogger("strongroom.agent").info("stopped")
    finally:
        if server is not None:
            server.stop()


def add_to(cli: click.Group) -> None:
    cli.add_command(agent_group)
