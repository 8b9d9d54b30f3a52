"""The selection options that `backup` and `policy set` share, and what they add up to.

One definition, so that a scheduled backup selects exactly what the same flags select on
the command line (agent/selection.py holds the rules themselves).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from strongroom.agent.selection import (
    SelectionRules,
    existing_paths,
    parse_size,
    read_paths,
    read_patterns,
)

_FILE = click.Path(path_type=Path, dir_okay=False)
_OPTIONS = [
    click.option("--exclude-from", "exclude_from", multiple=True, type=_FILE, metavar="FILE",
                 help="Leave out paths matching the patterns in FILE (one a line; # comments). Repeatable."),
    click.option("--include-from", "include_from", multiple=True, type=_FILE, metavar="FILE",
                 help="Back up only paths matching the patterns in FILE (and the folders leading to them)."),
    click.option("--exclude-caches", is_flag=True,
                 help="Leave out the contents of folders marked by a valid CACHEDIR.TAG (the tag is kept)."),
    click.option("--exclude-if-present", "exclude_if_present", multiple=True, metavar="NAME",
                 help="Leave out the contents of folders holding a file NAME (NAME is kept). Repeatable."),
    click.option("--exclude-larger-than", metavar="SIZE",
                 help="Leave out files larger than SIZE (K, M, G, T: binary units)."),
    click.option("--one-file-system", "-x", "one_file_system", is_flag=True,
                 help="Stay on each source's file system (mount points are kept, empty)."),
    click.option("--files-from", "files_from", multiple=True, type=_FILE, metavar="FILE",
                 help="Back up the paths listed in FILE too (one a line; # comments). Repeatable."),
    click.option("-0", "--null", "files_from_nul", is_flag=True,
                 help="--files-from lists are NUL-separated, taken verbatim (find -print0)."),
]
NAMES = ("exclude_from", "include_from", "exclude_caches", "exclude_if_present", "exclude_larger_than",
         "one_file_system", "files_from", "files_from_nul")


def selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the selection options to a command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


@dataclass
class Chosen:
    """What the options select: patterns to leave out, rules, and the listed paths."""

    excludes: list[str]
    rules: SelectionRules
    listed: list[bytes]  # from --files-from, those that exist
    missing: list[tuple[bytes, str]]  # listed but absent: warnings, exit 3


def chosen(excludes: tuple[str, ...] | list[str], opts: dict[str, Any]) -> Chosen:
    """Reads the pattern and path files the options name (each refusal is one line)."""
    if opts["files_from_nul"] and not opts["files_from"]:
        raise click.UsageError("-0 applies to --files-from lists; give --files-from FILE")
    all_excludes = list(excludes) + [p for f in opts["exclude_from"] for p in read_patterns(f)]
    includes = tuple(p for f in opts["include_from"] for p in read_patterns(f))
    if opts["include_from"] and not includes:
        raise click.UsageError("the --include-from file(s) hold no pattern: nothing would be backed up")
    size = parse_size(opts["exclude_larger_than"]) if opts["exclude_larger_than"] is not None else None
    rules = SelectionRules(includes, opts["exclude_caches"], tuple(opts["exclude_if_present"]), size,
                           opts["one_file_system"])
    listed = [p for f in opts["files_from"] for p in read_paths(f, opts["files_from_nul"])]
    found, missing = existing_paths(listed)
    return Chosen(all_excludes, rules, [os.path.abspath(p) for p in found], missing)


def pop_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Takes the selection options out of a command's keyword arguments."""
    return {name: kwargs.pop(name) for name in NAMES}
