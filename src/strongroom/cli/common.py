"""What every command shares: the agent home, JSON output, one-line errors, progress, and
the one way text reaches the terminal (`echo`, `cells`): names, paths and messages come from
vaults, other machines and file systems, so control characters are shown as escapes and rich
never reads them as markup.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import textwrap
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from strongroom.agent.home import AgentHome
from strongroom.agent.passphrase import ENV_VAR as PASSPHRASE_ENV
from strongroom.agent.passphrase import read_passphrase
from strongroom.agent.reader import BlobReader
from strongroom.crypto import MasterKey, unwrap_key
from strongroom.errors import EXIT_WARNINGS
from strongroom.vault.interface import Vault

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# rich's consoles, made on first use: importing rich costs ~30 ms of CPU, which a command
# that shows no table nor live status (`backup --json`, a backup run from cron) need not pay.
_consoles: dict[str, Console] = {}


def err_console() -> Console:
    if "err" not in _consoles:
        from rich.console import Console  # noqa: PLC0415
        _consoles["err"] = Console(stderr=True)
    return _consoles["err"]


def out_console() -> Console:
    if "out" not in _consoles:
        from rich.console import Console  # noqa: PLC0415
        # Piped output is not cut to 80 columns: tables stay readable in a pager or a log.
        _consoles["out"] = Console(width=None if sys.stdout.isatty() else 200)
    return _consoles["out"]


def new_consoles() -> None:
    """rich's consoles decide colours and width when made: the next use makes them again (the
    daemon's worker, for its client's terminal)."""
    _consoles.clear()

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts.")
passphrase_option = click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
                                 help="Read the passphrase from this file "
                                 "(else $STRONGROOM_PASSPHRASE, else a prompt).")


# What a terminal obeys instead of showing: C0 and C1 controls (ESC starts colour changes,
# title changes and OSC 52 clipboard writes; CR and LF forge lines), Unicode line separators,
# and the bidirectional marks and overrides that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """`value` as text a terminal shows as it is: what it would obey appears as \\xNN or \\uNNNN."""
    return _UNPRINTABLE.sub(_escape, str(value))


def echo(message: object, err: bool = False) -> None:
    """Prints one line, through `printable`: every line the CLI prints goes through here."""
    click.echo(printable(message), err=err)


def cells(*values: object) -> list[Text]:
    """A rich table row whose text is shown as it is: `[bold]` in a name stays `[bold]`."""
    from rich.text import Text  # noqa: PLC0415
    return [Text(printable(v)) for v in values]


class PrintableFormatter(logging.Formatter):
    """Log lines through `printable` (the daemon logs vault messages and file names)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def home(ctx: click.Context) -> AgentHome:
    return ctx.find_root().obj["home"]


def emit_document(text: str) -> None:
    """Prints text the CLI made itself from its own definitions (a completion script, a man
    page) as it is: it holds no name or message from a machine or a vault, and its newlines
    and escapes are the point."""
    click.echo(text, nl=False)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


def emit_json_list(rows: Iterable[Any]) -> None:
    """A JSON array, printed as `emit_json` prints a list, but row by row: never held whole."""
    first = True
    click.echo("[", nl=False)
    for row in rows:
        click.echo(("\n" if first else ",\n") + textwrap.indent(json.dumps(row, indent=2), "  "), nl=False)
        first = False
    click.echo("]" if first else "\n]")


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


# This machine's key when the agent daemon carries out the command (agent/handover.py): it
# was unwrapped when the daemon started, so no passphrase is asked for.
HELD_KEY: MasterKey | None = None

from_machine_option = click.option("--from-machine", "machine", metavar="NAME",
                                   help="Another machine registered with the same vault; "
                                   "needs that machine's passphrase.")


def open_agent(ctx: click.Context, passphrase_file: Path | None,
               machine: str | None = None) -> tuple[AgentHome, Vault, MasterKey, BlobReader]:
    """The agent home, its bound vault, the unwrapped key and a blob reader.

    With `machine`, the key is that machine's, unwrapped from the copy the vault keeps
    with that machine's passphrase: how one machine restores another's data.
    """
    agent = home(ctx)
    # This machine's key before the vault is opened: Argon2id's 64 MiB then come on top of
    # the command's modules alone, not of SQLAlchemy and the catalog too (peak RSS).
    agent.config()  # "not registered" before any passphrase is asked for
    key = None if machine else HELD_KEY or agent.master_key(read_passphrase(passphrase_file))
    vault = agent.vault()
    if machine and machine != vault.machine:
        keyfile = vault.keyfile(machine)
        key = unwrap_key(keyfile, read_passphrase(passphrase_file, prompt=f"Encryption passphrase of {machine}: "))
    elif key is None:
        key = HELD_KEY or agent.master_key(read_passphrase(passphrase_file))
    return agent, vault, key, BlobReader(vault, key, machine)


def key_if_given(agent: AgentHome, passphrase_file: Path | None) -> MasterKey | None:
    """This machine's key when a passphrase is given (file or environment), else None: for
    commands that show more with the key but never ask for it (`jobs`, `policy show`)."""
    if passphrase_file is None and not os.environ.get(PASSPHRASE_ENV):
        return None
    return agent.master_key(read_passphrase(passphrase_file))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextmanager
def _refreshing(update: Callable[[], None]) -> Iterator[None]:
    """Calls `update` five times a second from a thread while the body runs."""
    finished = threading.Event()

    def loop() -> None:
        while not finished.wait(0.2):
            update()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()


@contextmanager
def live_status(enabled: bool, render: Callable[[], str]) -> Iterator[None]:
    """A status line refreshed from the running job's counters, on a terminal only."""
    if not enabled or not err_console().is_terminal:
        yield
        return
    from rich.text import Text  # noqa: PLC0415
    with (err_console().status(Text(printable(render()))) as status,
          _refreshing(lambda: status.update(Text(printable(render()))))):
        yield


@contextmanager
def progress_bar(enabled: bool, label: str, total: int, done: Callable[[], int]) -> Iterator[None]:
    """A bar of bytes done out of `total`, refreshed from the running job, on a terminal only."""
    if not enabled or not err_console().is_terminal:
        yield
        return
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        with _refreshing(lambda: bar.update(task, completed=done())):
            yield


def progress_line(message: str) -> None:
    """One line on stderr while a live status may be shown (`backup --verbose`): through rich's
    console, so that the status line is not torn, and through `printable`."""
    from rich.text import Text  # noqa: PLC0415
    err_console().print(Text(printable(message)), highlight=False, soft_wrap=True)


def fail_line(message: str) -> None:
    echo(f"strongroom: error: {message}", err=True)


def warn_line(message: str) -> None:
    echo(f"strongroom: warning: {message}", err=True)


def exit_if_incomplete(ctx: click.Context, problems: list[dict[str, str]], as_json: bool, what: str) -> None:
    """Lists the items a job could not handle (unless the output is JSON) and exits 3."""
    if not problems:
        return
    if not as_json:
        for p in problems:
            warn_line(f"{p['path']}: {p['error']}")
        warn_line(f"{len(problems)} item(s) {what}; see above")
    ctx.exit(EXIT_WARNINGS)
