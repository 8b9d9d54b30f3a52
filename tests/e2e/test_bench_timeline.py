"""bench/timeline.py against a real backup: every phase it names is found, so that a renamed
function of the backup's path shows here rather than as a phase silently missing from a
measurement. Nothing here times anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TIMELINE = Path(__file__).resolve().parents[2] / "bench" / "timeline.py"


def test_timeline_finds_every_phase_of_a_first_backup(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"x%d" % i * (100 + i))
    res = subprocess.run([sys.executable, str(TIMELINE), "--out", str(tmp_path / "tl"), "--bin", "0.5", "--",
                          "backup", str(src), "--json"],
                         env=registered.env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    table = res.stdout[res.stdout.index("\nwall "):]
    assert "exit 0" in table.splitlines()[1]
    for phase in ("Argon2", "the command's imports", "vault open", "job start", "walk", "last packs",
                  "point recorded", "output, exit"):
        assert f"\n{phase}" in table, f"phase {phase!r} missing:\n{table}"
