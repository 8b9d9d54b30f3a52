"""`strongroom completion bash|zsh|fish` and `strongroom man`: made from the definitions
`--help` prints, checked against `--help` and driven through a real bash."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess

import pytest
from conftest import Strongroom


@pytest.fixture
def on_path(sr: Strongroom, tmp_path) -> dict[str, str]:
    """An environment where `strongroom` is on PATH (as an installed command would be)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "strongroom"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{c}'" for c in sr.cmd) + ' "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    env = sr.env()
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def bash_complete(env: dict[str, str], script: str, *words: str) -> list[str]:
    array = " ".join(f"'{w}'" for w in words)
    run = subprocess.run(["bash", "-c", f'source "$1"; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; '
                          '_strongroom_completion strongroom; printf "%s\\n" "${COMPREPLY[@]}"', "bash", script],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_bash_completes_commands_options_and_choices(sr, on_path, tmp_path):
    script = tmp_path / "strongroom.bash"
    script.write_text(sr.run("completion", "bash").stdout)
    assert bash_complete(on_path, str(script), "strongroom", "di") == ["diff"]
    assert {"dump", "diff"} <= set(bash_complete(on_path, str(script), "strongroom", "d"))
    assert bash_complete(on_path, str(script), "strongroom", "dump", "latest", "/etc", "--ar") == ["--archive"]
    assert bash_complete(on_path, str(script), "strongroom", "dump", "latest", "/etc", "--archive", "") == ["tar"]
    assert bash_complete(on_path, str(script), "strongroom", "completion", "") == ["bash", "zsh", "fish"]
    assert bash_complete(on_path, str(script), "strongroom", "find", "x", "--ig") == ["--ignore-case"]


@pytest.mark.parametrize("shell,marker", [("zsh", "#compdef strongroom"), ("fish", "complete --no-files --command strongroom")])
def test_zsh_and_fish_scripts_and_their_answers(sr, on_path, shell, marker):
    script = sr.run("completion", shell).stdout
    assert marker in script and f"_STRONGROOM_COMPLETE={shell}_complete" in script
    # The answers the script asks the command for, by the protocol it uses.
    env = {**on_path, "_STRONGROOM_COMPLETE": f"{shell}_complete", "COMP_WORDS": "strongroom st",
           "COMP_CWORD": "1" if shell == "zsh" else "st"}
    answer = subprocess.run(["strongroom"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "stats" in answer and "status" not in answer
    if shutil.which(shell):
        check = subprocess.run([shell, "-n" if shell == "zsh" else "--no-execute", "-c", script],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_an_unknown_shell_is_refused(sr):
    res = sr.run("completion", "tcsh", check=False)
    assert res.returncode == 2 and "tcsh" in res.stderr and "Traceback" not in res.stderr


def _commands(sr: Strongroom, *prefix: str) -> list[tuple[str, ...]]:
    """Every command path, from the "Commands:" sections of --help."""
    out = []
    text = sr.run(*prefix, "--help").stdout
    if "Commands:" not in text:
        return out
    for line in text.split("Commands:", 1)[1].splitlines():
        m = re.match(r"^  (\S+)", line)
        if m:
            path = (*prefix, m.group(1))
            out.append(path)
            out += _commands(sr, *path)
    return out


def _options(help_text: str) -> set[str]:
    section = help_text.split("Options:", 1)[1] if "Options:" in help_text else ""
    return {o for o in re.findall(r"(?m)^\s+((?:-\w, )?--[\w-]+)", section)}


def test_the_man_page_holds_every_command_and_option_of_help(sr, tmp_path):
    page = sr.run("man").stdout
    assert page.startswith(".TH STRONGROOM 1 ")
    commands = _commands(sr)
    assert {("diff",), ("find",), ("dump",), ("stats",), ("forget",), ("completion",), ("man",),
            ("points", "undelete")} <= set(commands)
    sections = re.split(r'(?m)^\.SS "', page)
    for path in commands:
        title = "strongroom " + " ".join(path)
        assert any(s.replace("\\-", "-").startswith(title + " ") for s in sections), f"{title} is not in the man page"
    # Options compared with --help for a sample (one process per command: slow on a shared machine).
    for path in [("diff",), ("find",), ("dump",), ("stats",), ("forget",), ("backup",), ("restore",),
                 ("policy", "set"), ("vault", "pin"), ("points",)]:
        title = "strongroom " + " ".join(path)
        section = next((s for s in sections if s.replace("\\-", "-").startswith(title + " ")), None)
        assert section is not None, f"{title} is not in the man page"
        shown = section.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
        for option in _options(sr.run(*path, "--help").stdout) - {"-h, --help"}:
            assert option in shown, f"{title}: {option} is in --help but not in the man page"
    if shutil.which("groff"):
        (tmp_path / "strongroom.1").write_text(page)
        rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(tmp_path / "strongroom.1")],
                                  capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
        assert "strongroom dump [OPTIONS] POINT PATH" in re.sub(r".\x08", "", rendered.stdout)
