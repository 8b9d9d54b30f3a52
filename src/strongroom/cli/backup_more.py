"""`strongroom backup`'s everyday options: --dry-run, --verbose, --tag, --stdin.

Kept apart from cli/backup_cmd.py, which registers them (`more_options`) and hands over:
`Extras` checks how they combine, `dry_run` runs a walk that writes nothing, and
`prepare_stdin` makes the backup of a stream (agent/stdin.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from strongroom.agent.backup import Backup
from strongroom.agent.dryrun import DryRun
from strongroom.agent.home import AgentHome
from strongroom.agent.jobrun import own_folders
from strongroom.agent.pointbook import PointBook
from strongroom.agent.selection import Selection
from strongroom.agent.stdin import StdinBackup, stdin_name
from strongroom.cli.common import (
    echo,
    emit_json,
    exit_if_incomplete,
    human_bytes,
    live_status,
    progress_line,
)
from strongroom.cli.selection_opts import Chosen
from strongroom.crypto import MasterKey
from strongroom.errors import UsageError
from strongroom.model import display_path
from strongroom.vault.interface import Vault

MAX_TAGS = 32
_TAG = re.compile(r"^[^\x00-\x1f\x7f-\x9f,]{1,64}$")

_OPTIONS = [
    click.option("--dry-run", "-n", "dry_run", is_flag=True,
                 help="Show what would be new or changed and how much would be read; write nothing."),
    click.option("--verbose", "-v", is_flag=True,
                 help="List each new or changed file (on stderr; with --dry-run, the result itself)."),
    click.option("--tag", "tags", multiple=True, metavar="TAG",
                 help="Label the point (sealed: the vault never sees it). Repeatable; a,b gives two."),
    click.option("--stdin", "stdin_name", metavar="NAME",
                 help="Back up standard input as the file /NAME (a dump: `pg_dump db | strongroom backup "
                 "--stdin db.sql`).", default=None),
    click.option("--stdin-from-command", is_flag=True,
                 help="With --stdin: run the command given after `--` and keep its output only if it exits 0."),
]


def more_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def parse_tags(values: tuple[str, ...] | list[str]) -> list[str]:
    """`--tag` values (each may be a comma list) -> sorted distinct tags; one line if bad."""
    tags = sorted({t.strip() for v in values for t in v.split(",")})
    for t in tags:
        if not _TAG.match(t):
            raise UsageError(f"{t!r} is not a tag (1 to 64 characters, no commas or control characters)")
    if len(tags) > MAX_TAGS:
        raise UsageError(f"a point carries at most {MAX_TAGS} tags")
    return tags


def point_filter(tag_groups: tuple[str, ...], host: str | None) -> Callable[[dict[str, Any]], bool]:
    """For `points --tag T --host H`: whether a point's (sealed) manifest is to be listed.
    As restic: each --tag value is a comma list of tags a point must all carry, and a point
    is listed when any one --tag value fits it."""
    groups = [set(parse_tags([g])) for g in tag_groups]

    def keep(manifest: dict[str, Any]) -> bool:
        tags = set(manifest.get("tags", ()))
        return (not groups or any(g <= tags for g in groups)) and (host is None or manifest.get("host") == host)
    return keep


@dataclass
class Extras:
    dry_run: bool = False
    verbose: bool = False
    tags: list[str] = field(default_factory=list)
    stdin_name: bytes | None = None
    stdin_command: bool = False

    @classmethod
    def from_options(cls, more: dict[str, Any], paths: tuple[Path, ...], picked: Chosen,
                     offline_seed: Path | None) -> "Extras":
        """The options, checked against each other and against what the command was given."""
        extra = cls(more["dry_run"], more["verbose"], parse_tags(more["tags"]),
                    stdin_name(more["stdin_name"]) if more["stdin_name"] is not None else None,
                    more["stdin_from_command"])
        if extra.stdin_command and extra.stdin_name is None:
            raise click.UsageError("--stdin-from-command needs --stdin NAME")
        if extra.stdin_name is not None:
            if extra.dry_run or offline_seed is not None or picked.rules or picked.listed or picked.missing \
                    or picked.excludes:
                raise click.UsageError("--stdin backs up one stream: no --dry-run, --offline-seed or selection options")
            if extra.stdin_command and not paths:
                raise click.UsageError("--stdin-from-command needs the command after `--` "
                                       "(backup --stdin db.sql --stdin-from-command -- pg_dump db)")
            if not extra.stdin_command and paths:
                raise click.UsageError("--stdin takes no PATHS (to run a command, add --stdin-from-command)")
            if not extra.stdin_command and sys.stdin.isatty():
                raise click.UsageError("--stdin reads a pipe or a file, and standard input is a terminal")
            return extra
        if not paths and not picked.listed:
            if picked.missing:
                raise UsageError(f"none of the {len(picked.missing)} path(s) listed in --files-from exists")
            raise click.UsageError("give PATHS to back up (or --files-from FILE, or --stdin NAME)")
        if extra.dry_run and offline_seed is not None:
            raise click.UsageError("--dry-run writes nothing, an offline seed included: leave out --offline-seed")
        return extra

    def apply(self, run: Backup, picked: Chosen, as_json: bool) -> None:
        """Gives the prepared backup its tags, warnings and --verbose listing."""
        if self.tags:
            run.manifest_extra["tags"] = self.tags
        run.warnings.extend(picked.missing)
        if self.verbose:
            run.on_file = _print_on_stderr


def _line(status: str, path: bytes, size: int) -> str:
    return f"{status:<8} {display_path(path)} ({human_bytes(size)})"


def _print_on_stderr(status: str, path: bytes, size: int) -> None:
    progress_line(_line(status, path, size))


def prepare_stdin(agent: AgentHome, vault: Vault, key: MasterKey, extra: Extras, command: list[str]) -> Backup:
    """A backup of standard input, or of the output of `command`, as the file /NAME."""
    return StdinBackup(vault, key, [], [], [], agent.cache, book=PointBook(agent, vault, key),
                       name=extra.stdin_name, stream=None if extra.stdin_command else sys.stdin.buffer,
                       command=command if extra.stdin_command else None)


def dry_run(ctx: click.Context, agent: AgentHome, vault: Vault, key: MasterKey, sources: list[bytes],
            picked: Chosen, extra: Extras, as_json: bool) -> None:
    """Walks as the backup would and reports; nothing is read or written."""
    run = DryRun(vault, key, sources, picked.excludes, own_folders(agent, vault), agent.cache,
                 book=PointBook(agent, vault, key), selection=Selection(picked.rules))
    run.warnings.extend(picked.missing)
    files: list[dict[str, Any]] = []
    if extra.verbose:
        def listed(status: str, path: bytes, size: int) -> None:
            if as_json:
                files.append({"status": status, "path": display_path(path), "size": size})
            else:
                echo(_line(status, path, size))
        run.on_file = listed
    c = run.counters
    with live_status(not as_json, lambda: f"Looking: {c.files_new + c.files_changed + c.files_unchanged} files"):
        result = run.run()
    s = result.stats
    warnings = [{"path": display_path(p), "error": m} for p, m in result.warnings]
    if as_json:
        emit_json({"dry_run": True, "sources": [display_path(p) for p in run.sources], "stats": s,
                   **({"files": files} if extra.verbose else {}), "warnings": warnings})
    else:
        echo(f"Dry run (nothing read or written): {s['files_new']} new, {s['files_changed']} changed, "
             f"{s['files_unchanged']} unchanged files; {s['dirs']} directories.")
        echo(f"A backup now would read {human_bytes(s['bytes_to_read'])} of {human_bytes(s['bytes_total'])}.")
    exit_if_incomplete(ctx, warnings, as_json, "could not be looked at")

