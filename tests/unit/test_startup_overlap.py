"""Start-up of a keyed command: Argon2 on a thread of its own while the command's modules load
(cli/earlykey.py `derive_meanwhile`, cli/main.py `preload`), and what must not change with it:
the command gets the key without a second KDF run, a command without a key starts no thread,
and the vault's catalog (SQLAlchemy) still loads only after the key is derived."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from strongroom import crypto
from strongroom.agent.homepath import KEYFILE
from strongroom.cli import earlykey
from strongroom.crypto import MasterKey, unwrap_key, wrap_key

PASS = "correct horse battery staple"


def test_the_key_derived_meanwhile_is_the_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    real = crypto._kdf
    monkeypatch.setattr(crypto, "_kdf", lambda *a: runs.append(1) or real(*a))
    monkeypatch.setattr(crypto, "_last_unwrapped", None)
    key = MasterKey.generate()
    (tmp_path / KEYFILE).write_text(wrap_key(key, PASS))
    runs.clear()
    monkeypatch.setenv("STRONGROOM_PASSPHRASE", PASS)
    thread = earlykey.derive_meanwhile(["--home", str(tmp_path), "backup", "/src"])
    assert thread is not None and thread.daemon
    thread.join()
    assert unwrap_key((tmp_path / KEYFILE).read_text(), PASS).secret == key.secret
    assert runs == [1]


@pytest.mark.parametrize("argv", [["vault", "create", "/v"], ["jobs"], [], ["--home", "/h"]])
def test_commands_without_a_key_start_no_thread(argv: list[str]) -> None:
    assert earlykey.derive_meanwhile(argv) is None


def test_preload_loads_the_commands_modules_and_no_catalog() -> None:
    code = ("import sys, strongroom.cli.main as m\n"
            "m.preload(['--home', '/nowhere', 'backup', '/src'])\n"
            "print('strongroom.cli.backup_cmd' in sys.modules, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
