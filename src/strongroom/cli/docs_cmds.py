"""`strongroom completion` and `strongroom man`: shell completion scripts and a man page, both
made from the same click definitions that `--help` prints, so the three never disagree."""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timezone

import click
from click.shell_completion import get_completion_class

from strongroom import __version__
from strongroom.errors import UsageError

SHELLS = ("bash", "zsh", "fish")
_INSTALL = {
    "bash": "strongroom completion bash > /etc/bash_completion.d/strongroom   (or: eval \"$(strongroom completion bash)\" in ~/.bashrc)",
    "zsh": "strongroom completion zsh > \"${fpath[1]}/_strongroom\"   (or: eval \"$(strongroom completion zsh)\" in ~/.zshrc)",
    "fish": "strongroom completion fish > ~/.config/fish/completions/strongroom.fish",
}


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    bash: strongroom completion bash > /etc/bash_completion.d/strongroom
    zsh:  strongroom completion zsh > "${fpath[1]}/_strongroom"
    fish: strongroom completion fish > ~/.config/fish/completions/strongroom.fish
    Commands, options and choices complete; the script asks `strongroom` itself each time,
    so it stays right after an upgrade."""
    root = ctx.find_root()
    shell_class = get_completion_class(shell)
    if shell_class is None:  # pragma: no cover - click knows all three
        raise UsageError(f"no completion for {shell}")
    click.echo(shell_class(root.command, {}, "strongroom", "_STRONGROOM_COMPLETE").source())


# -- the man page (roff, man(7) macros) -------------------------------------------------------------


def roff(text: str) -> str:
    """Text as roff shows it literally: backslashes escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _paragraphs(help_text: str) -> str:
    """click's help text (paragraphs separated by blank lines; \b keeps a paragraph's lines)."""
    out = []
    for para in re.split(r"\n\s*\n", help_text.strip()):
        if para.startswith("\b"):
            out.append(".nf\n" + roff(para[1:].strip("\n")) + "\n.fi")
        else:
            out.append(roff(" ".join(line.strip() for line in para.splitlines())))
    return "\n.PP\n".join(out)


def _options(ctx: click.Context, command: click.Command, with_help: bool = False) -> list[str]:
    lines = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if isinstance(param, click.Argument) or record is None or (param.name == "help" and not with_help):
            # arguments are in the usage line (as --help shows them); --help is said once, at the top
            continue
        names, text = record
        lines += [".TP", f"\\fB{roff(names)}\\fR", roff(text) if text else ""]
    return lines


def _commands(ctx: click.Context, group: click.Group, prefix: str) -> list[str]:
    lines = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        usage = " ".join(command.collect_usage_pieces(sub))
        lines += [f'.SS "{roff(prefix + " " + name)} {roff(usage)}"', _paragraphs(command.help or "")]
        lines += _options(sub, command)
        if isinstance(command, click.Group):
            lines += _commands(sub, command, f"{prefix} {name}")
    return lines


def man_page(root: click.Command) -> str:
    ctx = click.Context(root, info_name="strongroom", **root.context_settings)
    # SOURCE_DATE_EPOCH (reproducible builds) fixes the date a packaged page carries.
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    day = datetime.fromtimestamp(int(epoch), timezone.utc).date() if epoch.isdigit() else date.today()
    lines = [f'.TH STRONGROOM 1 "{day:%Y-%m-%d}" "strongroom {__version__}" "User Commands"',
             ".SH NAME", f"strongroom \\- {roff(root.get_short_help_str(200))}",
             ".SH SYNOPSIS", ".B strongroom", roff(" ".join(root.collect_usage_pieces(ctx))),
             ".SH DESCRIPTION", _paragraphs(root.help or ""),
             ".SH OPTIONS", *_options(ctx, root, with_help=True)]
    if isinstance(root, click.Group):
        lines += [".SH COMMANDS", *_commands(ctx, root, "strongroom")]
    lines += [".SH EXIT STATUS", ".TP", "0", "success", ".TP", "1", "failure (one line on standard error)",
              ".TP", "2", "bad usage: the command line asked for something that cannot be done as written",
              ".TP", "3", "done with warnings: some items could not be handled (listed on standard error)",
              ".SH ENVIRONMENT", ".TP", "STRONGROOM_HOME", "the agent home, unless \\fB\\-\\-home\\fR is given",
              ".TP", "STRONGROOM_PASSPHRASE", "the encryption passphrase, unless \\fB\\-\\-passphrase\\-file\\fR is given",
              ".TP", "STRONGROOM_DEBUG", "set to 1 to show a traceback instead of an internal error's one line",
              ".SH SEE ALSO", "tar(1), and the README and docs/format.md of the Strongroom sources"]
    return "\n".join(line for line in lines if line != "") + "\n"


@click.command("man")
@click.pass_context
def man(ctx: click.Context) -> None:
    """Print the manual page (roff), made from the same definitions as --help.

    Read it with: strongroom man | man -l -
    Install it with: strongroom man > /usr/local/share/man/man1/strongroom.1"""
    click.echo(man_page(ctx.find_root().command), nl=False)


def add_to(cli: click.Group) -> None:
    cli.add_command(completion)
    cli.add_command(man)
