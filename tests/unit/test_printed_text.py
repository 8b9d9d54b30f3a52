"""Text that reaches the terminal: machine-name rules, and escaping of what others wrote."""

import logging
import re
from pathlib import Path

import pytest

from strongroom.cli.common import PrintableFormatter, cells, printable
from strongroom.errors import UsageError
from strongroom.names import check_machine_name
from strongroom.vault.service import VaultService

CLI = Path(__file__).resolve().parents[2] / "src" / "strongroom" / "cli"


@pytest.mark.parametrize("text,shown", [
    ("plain name.txt", "plain name.txt"),
    ("café 日本", "café 日本"),                                 # letters of any script stay
    ("\x1b]52;c;SGk=\x07", r"\x1b]52;c;SGk=\x07"),              # OSC 52: a clipboard write
    ("\x1b[2J\x1b[31m", r"\x1b[2J\x1b[31m"),                    # clear screen, colour
    ("\x9b31m", r"\x9b31m"),                                    # the one-byte CSI (C1)
    ("a\rb\nc\td\x00\x7f", r"a\x0db\x0ac\x09d\x00\x7f"),        # forged lines, NUL, DEL
    ("abc\u202eexe.txt", r"abc\u202eexe.txt"),                  # right-to-left override
    ("x\u2028y\u2066z", r"x\u2028y\u2066z"),                    # line separator, bidi isolate
    ("[bold]x[/bold]", "[bold]x[/bold]"),                       # markup is text: see cells
])
def test_printable_escapes_what_a_terminal_would_obey(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_table_cells_are_not_markup() -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=80, record=True, color_system=None)
    table = Table()
    table.add_column("Name")
    table.add_row(*cells("[bold]x[/bold] [link=http://evil]y[/link]\x1b[31m"))
    console.print(table)
    out = console.export_text()
    assert "[bold]x[/bold] [link=http://evil]y[/link]\\x1b[31m" in out


def test_log_lines_are_escaped() -> None:
    record = logging.LogRecord("strongroom.agent", logging.WARNING, __file__, 1, "failed: %s", ("\x1b]52;c;SGk=\x07",),
                               None)
    assert PrintableFormatter("%(message)s").format(record) == r"failed: \x1b]52;c;SGk=\x07"


def test_the_cli_prints_only_through_the_escaping_helpers() -> None:
    # A new command that calls click.echo or print directly, or fills a rich table with plain
    # strings (which rich reads as markup), would bring the hole back.
    for module in CLI.glob("*.py"):
        source = module.read_text()
        if module.name != "common.py":
            assert not re.search(r"\bclick\.echo\(|(?<![.\w])print\(|\.print\((?!table\))", source), module.name
        for call in re.findall(r"add_row\((.{0,8})", source):
            assert call.startswith("*cells("), f"{module.name}: add_row({call}..."


@pytest.mark.parametrize("name", ["web-01", "db.example.com", "A", "x_1", "9" * 64])
def test_machine_names_that_are_accepted(name: str) -> None:
    assert check_machine_name(name) == name


@pytest.mark.parametrize("name", ["", "-web", ".hidden", "_x", "a b", "a/b", "a\x1b]52;c;SGk=\x07", "a\nb",
                                  "[bold]", "caf\u00e9", "x" * 65, "a\u202eb"])
def test_machine_names_that_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="invalid machine name") as refused:
        check_machine_name(name)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202e]", str(refused.value))


def test_the_vault_refuses_a_bad_machine_name_itself(tmp_path: Path) -> None:
    # Over HTTP the agent's own check is not there: the vault's register is the rule.
    service = VaultService.create(tmp_path / "vault")
    creds = service.issue_credentials(str(tmp_path / "vault"), 1)
    with pytest.raises(UsageError, match="invalid machine name"):
        service.register(creds, "evil\x1b]52;c;SGk=\x07", "{}")
    assert service.machines() == []
    assert service.register(creds, "good-01", "{}")
