"""Schemathesis over the whole OpenAPI of a real `vault serve`: no input may give a 5xx.

Bad input must get a 4xx with a one-line JSON error; a 500 means a field the API forgot to
validate. The run is bounded (examples per operation, a time budget) so that it fits the CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HOOKS = Path(__file__).with_name("fuzz_hooks.py")
MAX_EXAMPLES = int(os.environ.get("STRONGROOM_FUZZ_EXAMPLES", "25"))


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(exe).exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return [exe]


def test_fuzzing_the_whole_api_finds_no_server_error(served, served_machine, tmp_path):
    machine = served_machine("web-01")
    report = tmp_path / "fuzz.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS.stem, "PYTHONPATH": str(HOOKS.parent),
           "FUZZ_MACHINE_TOKEN": (machine.home / "token").read_text().strip(),
           "FUZZ_ADMIN_TOKEN": (served.folder / "admin.token").read_text().strip()}
    started = time.monotonic()
    res = subprocess.run(_schemathesis() + [
        "run", f"{served.url}/openapi.json", "--checks", "not_a_server_error",
        "--max-examples", str(MAX_EXAMPLES), "--workers", "2", "--seed", "1",
        "--tls-verify", str(served.folder / "tls" / "cert.pem"), "--request-timeout", "60",
        "--report", "ndjson", "--report-ndjson-path", str(report), "--no-color"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    elapsed = time.monotonic() - started
    print(f"schemathesis: {elapsed:.0f} s, exit {res.returncode}\n{res.stdout[-3000:]}")
    problems = res.stdout[min(i for i in (res.stdout.find("= ERRORS ="), res.stdout.find("= FAILURES ="), len(res.stdout))
                              if i >= 0):]
    assert res.returncode == 0, f"schemathesis found problems:\n{problems[:20000]}\n{res.stderr[-3000:]}"
