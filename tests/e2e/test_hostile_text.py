"""Text from others reaches the terminal as text: machine names are restricted at registration,
and names, paths and messages that hold control characters or rich markup are printed
escaped (an OSC 52 sequence in a name once wrote to the clipboard of whoever listed jobs)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from conftest import assert_clean_failure
from test_safety import _entry, _plant_point

from strongroom.agent.home import AgentHome

# An OSC 52 clipboard write (ended by BEL), a colour change, a carriage return that would
# overwrite the line, a right-to-left override, and markup that rich would obey.
# (No slash: it also names files.)
HOSTILE = "[bold]x[red]y\x1b]52;c;SGk=\x07\x1b[31m\r\u202e"
SHOWN = r"[bold]x[red]y\x1b]52;c;SGk=\x07\x1b[31m\x0d\u202e"


def assert_escaped(output: str) -> None:
    """The hostile text appears, escaped and with its markup as typed; nothing a terminal obeys."""
    assert SHOWN in output, output
    for obeyed in ("\x1b", "\x07", "\r", "\u202e"):
        assert obeyed not in output, f"{obeyed!r} reached the terminal:\n{output!r}"


def test_machine_name_outside_the_documented_characters_is_refused(sr, tmp_path):
    vault = sr.create_vault(tmp_path / "vault")
    cred = sr.make_credentials(vault, tmp_path / "cred")
    for name in ("web\x1b]52;c;SGk=\x07", "a\nb", "[bold]x", "-starts-with-dash", "x" * 65, "caf\u00e9"):
        res = sr.run("register", "--credentials", cred, "--machine", name, check=False)
        assert_clean_failure(res, 2, r"invalid machine name .*: use 1 to 64 ASCII letters, digits")
        assert "\x1b" not in res.stderr and "\x07" not in res.stderr
        assert not (sr.home / "config.json").exists()
    sr.run("register", "--credentials", cred, "--machine", "web-01.example_1")


def test_a_job_message_is_printed_escaped(registered):
    # A hostile machine (its own agent) records a job whose message carries escapes; every
    # machine of the vault lists it.
    vault = AgentHome(registered.home).vault()
    vault.start_job("0123456789abcdef", "backup")
    vault.finish_job("0123456789abcdef", "failed", message="failed: " + HOSTILE)
    res = registered.run("jobs")
    assert_escaped(res.stdout)
    assert f"0123456789abcdef: failed: {SHOWN}\n" in res.stdout


def test_file_names_are_printed_escaped_by_points_and_ls(registered):
    # Under /tmp with a short name: the points table folds a long Sources cell across lines.
    src = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))
    try:
        folder = src / ("d" + HOSTILE)
        folder.mkdir()
        (folder / ("f" + HOSTILE)).write_text("x\n")
        registered.backup(folder)
        listing = registered.run("ls", "latest", folder)
        table = registered.run("points")
    finally:
        shutil.rmtree(src)
    assert_escaped(listing.stdout)
    assert listing.stdout.count(SHOWN) == 3  # the folder, and the file's path (folder + name)
    assert_escaped(table.stdout)


def test_refused_names_of_a_hostile_point_are_reported_escaped(registered, tmp_path):
    _plant_point(registered.home, lambda blob, tree: [
        _entry(os.fsencode("../" + HOSTILE), s=2, c=[blob(b"x\n")]),
    ])
    res = registered.run("restore", "latest", "--target", tmp_path / "target", check=False)
    assert res.returncode == 3
    assert_escaped(res.stderr)
    assert "refused: the name would leave its directory" in res.stderr

