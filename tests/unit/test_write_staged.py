"""fsutil.write_staged: a stream of pieces gathered in page-aligned memory and written past the
page cache (O_DIRECT), the unaligned tail the ordinary way; whatever the pieces' sizes (empty,
larger than the stage, ending on a stage's edge), the file reads back byte for byte."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from strongroom import fsutil
from strongroom.fsutil import DIRECT_ALIGN, write_staged

STAGE = 4 * DIRECT_ALIGN


def _write(path: Path, pieces: list[bytes]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return write_staged(fd, iter(pieces), STAGE)
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [
    [], [0], [10], [STAGE], [STAGE, 0, STAGE], [STAGE - 1, 1], [3 * STAGE + 5],
    [DIRECT_ALIGN + 1, STAGE, 7, 0, 2 * STAGE - 3], [1] * 100,
])
def test_pieces_read_back_exactly(tmp_path: Path, sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    assert _write(tmp_path / "f", pieces) == sum(sizes)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


def test_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform or filesystem without O_DIRECT gets every stage the ordinary way."""
    monkeypatch.setattr(fsutil, "_O_DIRECT", 0)
    pieces = [os.urandom(STAGE + 100), os.urandom(3)]
    assert _write(tmp_path / "f", pieces) == STAGE + 103
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")
def test_stages_bypass_the_page_cache(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (STAGE + 17, 2 * STAGE, 1000)]
    _write(tmp_path / "f", pieces)
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES", str(tmp_path / "f")],
                         capture_output=True, text=True, check=True).stdout
    assert int(out.split()[0]) <= 1  # the unaligned tail's page
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
