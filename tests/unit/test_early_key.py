"""Start-up key derivation (cli/earlykey.py) and the memo it leaves in keyfile.py.

The early derivation exists for peak memory only; what must hold is that it never changes
what a command does: it runs for this machine's key from $STRONGROOM_PASSPHRASE alone, the
command then gets exactly that key without a second Argon2 run, and anything else (another
passphrase, another key file, a wrong passphrase) still goes through the KDF and its refusals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom import crypto, keyfile
from strongroom.agent.homepath import KEYFILE, command_start
from strongroom.cli import earlykey
from strongroom.crypto import MasterKey, unwrap_key, wrap_key
from strongroom.errors import WrongPassphrase

PASS = "correct horse battery staple"


@pytest.fixture
def kdf_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    runs: list[int] = []
    real = keyfile.derive

    def counted(*args: object) -> bytes:
        runs.append(1)
        return real(*args)  # type: ignore[arg-type]
    monkeypatch.setattr(keyfile, "derive", counted)
    monkeypatch.setattr(crypto, "derive", counted)  # wrap_key's own, of a fresh salt
    monkeypatch.setattr(keyfile, "_last_kek", None)
    return runs


def test_the_same_key_file_and_passphrase_unwrap_once(kdf_runs: list[int]) -> None:
    key = MasterKey.generate()
    text = wrap_key(key, PASS)
    assert len(kdf_runs) == 1  # the wrapping
    assert unwrap_key(text, PASS).secret == key.secret
    assert unwrap_key(text, PASS).secret == key.secret
    assert len(kdf_runs) == 2


def test_another_passphrase_or_key_file_is_derived_and_checked_anew(kdf_runs: list[int]) -> None:
    key = MasterKey.generate()
    text = wrap_key(key, PASS)
    unwrap_key(text, PASS)
    with pytest.raises(WrongPassphrase):
        unwrap_key(text, PASS + "!")
    other = MasterKey.generate()
    assert unwrap_key(wrap_key(other, PASS), PASS).secret == other.secret
    with pytest.raises(WrongPassphrase):  # a derivation of a wrong passphrase opens nothing
        unwrap_key(text, PASS + "!")
    with pytest.raises(WrongPassphrase):  # not even from the memo
        unwrap_key(text, PASS + "!")


def test_command_start_skips_the_global_options() -> None:
    assert command_start(["--home", "/h", "points"]) == (Path("/h"), 2)
    assert command_start(["--home=/h", "ls", "latest"]) == (Path("/h"), 1)
    assert command_start(["backup", "--home", "x"]) == (None, 0)
    assert command_start([]) == (None, 0)


@pytest.mark.parametrize(("argv", "env", "early"), [
    (["points"], PASS, True),
    (["backup", "/src", "--json"], PASS, True),
    (["restore", "latest", "--target", "/t"], PASS, True),
    (["points"], None, False),  # a prompt would come: left to the command
    (["points"], "short", False),  # refused by the command with its own message
    (["points", "--passphrase-file", "/p"], PASS, False),  # the file wins over the environment
    (["points", "--passphrase-file=/p"], PASS, False),
    (["points", "--from-machine", "other"], PASS, False),  # another machine's key, from the vault
    (["restore", "--help"], PASS, False),
    (["vault", "create", "/v"], PASS, False),  # needs no key
    (["jobs"], PASS, False),
])
def test_which_commands_derive_the_key_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kdf_runs: list[int],
                                               argv: list[str], env: str | None, early: bool) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = MasterKey.generate()
    (home / KEYFILE).write_text(wrap_key(key, PASS))
    kdf_runs.clear()
    if env is None:
        monkeypatch.delenv("STRONGROOM_PASSPHRASE", raising=False)
    else:
        monkeypatch.setenv("STRONGROOM_PASSPHRASE", env)
    earlykey.derive_early(["--home", str(home), *argv])
    assert len(kdf_runs) == (1 if early else 0)
    assert (keyfile._last_kek is not None) == early
    if early:  # and the command's own unwrap is then free
        assert unwrap_key((home / KEYFILE).read_text(), PASS).secret == key.secret
        assert len(kdf_runs) == 1


def test_a_wrong_passphrase_or_missing_home_is_left_to_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   kdf_runs: list[int]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / KEYFILE).write_text("{not json")
    monkeypatch.setenv("STRONGROOM_PASSPHRASE", PASS + " but wrong")
    earlykey.derive_early(["--home", str(home), "points"])  # no exception: the command reports it
    earlykey.derive_early(["--home", str(tmp_path / "none"), "points"])
    assert kdf_runs == [] and keyfile._last_kek is None
    (home / KEYFILE).write_text(wrap_key(MasterKey.generate(), PASS))
    kdf_runs.clear()
    earlykey.derive_early(["--home", str(home), "points"])  # derived: whether it opens the key, the command says
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        unwrap_key((home / KEYFILE).read_text(), PASS + " but wrong")
    assert len(kdf_runs) == 1  # one Argon2 run before the refusal
