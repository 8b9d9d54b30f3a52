"""What the kernel holds of a file in its page cache, by util-linux fincore: the tests that
check a write bypassed the cache (O_DIRECT) ask it, and are skipped where fincore is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_fincore = pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")


def resident_pages(path: Path) -> int:
    """Pages of the file in the page cache, as the kernel reports them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])
