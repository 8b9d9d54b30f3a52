"""The bench's own logic (bench/run.py): the restore check, the exit-code rule, the rotation of
the tools over rounds and the summary's CPU accounting. Nothing here times anything."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run.py"
_spec = importlib.util.spec_from_file_location("bench_run", BENCH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench  # NamedTuple needs its module registered
_spec.loader.exec_module(bench)


def _tree(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"alpha" * 100)
    (root / "d" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    (root / "exec.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o755)
    os.symlink("d/a.txt", root / "link")
    os.utime(root / "d" / "a.txt", ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)  # copy2: content, mode and ns mtimes
    os.utime(dst, ns=(os.lstat(src).st_atime_ns, os.lstat(src).st_mtime_ns))
    for sub in ("d", "d/sub"):
        st = os.lstat(src / sub)
        os.utime(dst / sub, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _tree(src)
    _copy(src, dst)
    return src, dst


def _problems(src: Path, dst: Path, precision: int = 1) -> list[str]:
    return bench.compare_trees(bench.tree_entries(str(src)), bench.tree_entries(str(dst)), precision)


def test_an_exact_copy_has_no_problems(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    entries = bench.tree_entries(str(src))
    assert set(entries) == {".", "d", "d/sub", "d/a.txt", "d/sub/b.bin", "exec.sh", "link"}
    assert entries["link"].kind == "l" and entries["link"].target == "d/a.txt"
    assert entries["d/a.txt"].sha256 == bench.sha256_file(str(src / "d" / "a.txt"))
    assert _problems(src, dst) == []


def _keep_mtime(path: Path):
    st = os.lstat(path)
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


@pytest.mark.parametrize("change, what", [
    ("content", "content (sha256)"), ("mode", "mode"), ("mtime", "mtime"), ("target", "symlink target"),
    ("missing", "missing"), ("extra", "unexpected"), ("type", "type"), ("size", "size"),
])
def test_every_kind_of_difference_is_named(pair: tuple[Path, Path], change: str, what: str) -> None:
    src, dst = pair
    f = dst / "d" / "a.txt"
    restore = _keep_mtime(f)
    restore_dir = _keep_mtime(dst / "d")
    if change == "content":  # same size, same mtime: only the hash can tell
        f.write_bytes(b"alphX" + b"alpha" * 99)
        restore()
    elif change == "mode":
        os.chmod(f, 0o600)
    elif change == "mtime":
        os.utime(f, ns=(1, 1_000_000_000_123_456_788))
    elif change == "target":
        (dst / "link").unlink()
        os.symlink("exec.sh", dst / "link")
        os.utime(dst / "link", ns=(1, os.lstat(src / "link").st_mtime_ns), follow_symlinks=False)
    elif change == "missing":
        (dst / "d" / "sub" / "b.bin").unlink()
    elif change == "extra":
        (dst / "d" / "new").write_bytes(b"")
    elif change == "type":
        f.unlink()
        f.mkdir()
        restore()
    elif change == "size":
        with open(f, "ab") as out:
            out.write(b"!")
        restore()
    restore_dir()
    problems = _problems(src, dst)
    assert problems, change
    assert any(p.split(", e.g.")[0].endswith(what) or what in p.split(", e.g.")[0] for p in problems), problems


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_changed_owner_is_named(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    os.chown(dst / "exec.sh", 1234, 5678)
    assert [p.split(", e.g.")[0] for p in _problems(src, dst)] == ["1 differ in owner uid:gid"]


def test_mtime_is_compared_at_the_tools_precision(pair: tuple[Path, Path]) -> None:
    src, dst = pair
    os.utime(dst / "d" / "a.txt", ns=(1, 1_000_000_000_123_456_000))  # microseconds kept, ns lost
    assert _problems(src, dst, precision=1)
    assert _problems(src, dst, precision=1000) == []


def test_proc_stat_parsing_survives_names_with_spaces_and_parentheses() -> None:
    fields = ["S", "77"] + ["0"] * 9 + ["100", "50", "20", "10"] + ["0"] * 30
    ppid, cpu = bench.parse_proc_stat("1234 (a) (b c) " + " ".join(fields))
    assert ppid == 77
    assert cpu == pytest.approx(180 / bench.CLK_TCK)
    with open(f"/proc/{os.getpid()}/stat") as f:
        assert bench.parse_proc_stat(f.read())[0] == os.getppid()


def test_server_probe_reads_a_live_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        probe = bench.ServerProbe(child.pid)
        probe.start()
        got = probe.stop()
    finally:
        child.kill()
        child.wait()
    assert got["processes"] == 1 and got["maxrss_mib"] > 0 and got["cpu_s"] >= 0
    assert got["peak_since_step_start"] is True


def test_four_tools_over_four_rounds_take_every_position_once() -> None:
    tools = list(bench.ALL_TOOLS)
    orders = [bench.round_order(tools, r) for r in range(1, 5)]
    for position in range(4):
        assert sorted(o[position] for o in orders) == sorted(tools)
    assert bench.never_first(tools, 4) == []
    assert bench.never_first(tools, 3) == ["borg"]  # why the default is one round per tool


class _Echo(bench.Tool):
    name = "echo-tool"
    warning_codes = {"backup": (3,), "restore": ()}


@pytest.mark.parametrize("code, kind, outcome", [
    (0, "backup", "ok"), (3, "backup", "warning"), (1, "backup", "failed"),
    (3, "restore", "failed"), (3, None, "failed"),
])
def test_only_a_documented_warning_code_is_a_flagged_success(tmp_path: Path, code: int, kind: str | None,
                                                             outcome: str) -> None:
    tool = _Echo(str(tmp_path), 1, str(tmp_path), timeout=60)
    tool.fresh()
    cmd = ["sh", "-c", f"echo 'could not read x' >&2; exit {code}"]
    if outcome == "failed":
        with pytest.raises(bench.CommandFailed):
            tool.run("step", cmd, timed=False, kind=kind)
        return
    res = tool.run("step", cmd, timed=False, kind=kind)
    assert res["warning"] is (outcome == "warning")
    assert ("could not read x" in res.get("warning_text", "")) is (outcome == "warning")


def _step(seconds: float, cpu: float, **extra):
    return {"seconds": seconds, "maxrss_mib": 100.0, "user_s": cpu, "sys_s": 0.0, **extra}


def _rounds() -> list[dict]:
    gib = 1024 * bench.MiB
    server = {"cpu_s": 1.0, "maxrss_mib": 50.0}
    rounds = [
        {"round": 1, "order": ["a"], "corpus_bytes": {st: 2 * gib for st in bench.STEPS},
         "tools": {"a": {"steps": {
             "initial": _step(10, 4, server=server, warning=True),
             "nochange": _step(1, 1, server=server),
             "mutated": _step(2, 2, server=server),
             "restore": _step(5, 3, server=server, position=1, verify={"ok": True})}}}},
        {"round": 2, "order": ["a"], "corpus_bytes": {st: 2 * gib for st in bench.STEPS},
         "tools": {"a": {"steps": {
             "initial": _step(12, 6, server=server),
             "restore": _step(1, 1, server=server, position=1, verify={"ok": False})},
             "error": "restore verification: 1 missing"}}},
    ]
    rounds[0]["tools"]["a"]["steps"]["initial"]["warning_text"] = "some files\nfile x: permission denied\n"
    rounds[0]["tools"]["a"]["steps"]["initial"]["rc"] = 3
    return rounds


def test_summary_counts_server_cpu_flags_warnings_and_drops_failed_restores() -> None:
    s = bench.summarize(_rounds(), ["a"], 1024 * bench.MiB)["a"]
    assert s["initial"]["median"] == 11 and s["initial"]["warnings"] == 1
    assert "warnings" not in s["nochange"]
    assert s["restore"]["n"] == 1 and s["restore"]["median"] == 5  # the failed check is left out
    assert s["cpu_by_step"]["initial"]["median"] == 6  # (4+1, 6+1): agent plus server
    assert s["agent_cpu_by_step"]["initial"]["median"] == 5
    assert s["cpu_per_gib_by_step"]["initial"]["median"] == 3  # 6 CPU s over 2 GiB
    assert s["server_rss_mib"]["median"] == 50
    assert bench.fmt_cell(s["initial"], 1) == "11.0 (10.0–12.0) ⚠1"


def test_the_tables_show_warnings_failures_and_who_started_each_round() -> None:
    rounds = _rounds()
    summ = bench.summarize(rounds, ["a"], 1024 * bench.MiB)
    meta = {"corpus": {"small": 10, "scale": 0.1, "files": 20, "bytes": 1024}, "rounds": 2,
            "machine": {"cpus": 2, "platform": "test"}}
    md = bench.markdown(summ, ["a"], rounds, meta)
    assert "| initial backup (s) | 11.00 (10.00–12.00) ⚠1 |" in md
    assert "| initial (CPU s/GiB) | 3.00 (2.50–3.50) |" in md
    assert "- round 1, a, initial: exit 3: `file x: permission denied`" in md
    assert "- round 2, a: `restore verification: 1 missing`" in md
    assert "- round 1: a" in md and "- round 2: a" in md
