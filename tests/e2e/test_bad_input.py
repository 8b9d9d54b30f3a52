"""Refused commands: non-zero exit, one line on stderr, no traceback, nothing written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import treeutil as tu

WRONG_PASSPHRASE = "this is not the right passphrase"
UNKNOWN_POINT = "ffffffffffffffffffffffff"


def assert_unchanged(before: dict, path: Path, what: str) -> None:
    after = tu.snapshot(path)
    assert after == before, f"{what} was modified:\n{tu.describe_snapshot_diff(before, after)}"


def assert_no_files(home: Path) -> None:
    files = tu.regular_files(home)
    assert files == [], f"refused command left files in the agent home {home}: {files}"


@pytest.fixture
def src(tmp_path) -> Path:
    s = tmp_path / "src"
    s.mkdir()
    (s / "a.txt").write_text("hello\n")
    (s / "sub").mkdir()
    (s / "sub" / "b.txt").write_text("world\n")
    return s


@pytest.fixture
def vault(sr, tmp_path) -> Path:
    v = tmp_path / "vault"
    sr.run("vault", "create", v)
    return v


# --- passphrase ------------------------------------------------------------------------------


def test_wrong_passphrase_on_backup(registered, src, clean_failure):
    registered.backup(src)
    (src / "a.txt").write_text("changed\n")
    vault_before, home_before = tu.snapshot(registered.vault), tu.snapshot(registered.home)
    res = registered.run("backup", src, check=False, env_extra={"STRONGROOM_PASSPHRASE": WRONG_PASSPHRASE})
    clean_failure(res, 1, "wrong passphrase: it does not unlock")
    assert_unchanged(vault_before, registered.vault, "vault")
    assert_unchanged(home_before, registered.home, "agent home")
    assert len(registered.points()) == 1


def test_wrong_passphrase_on_restore(registered, src, tmp_path, clean_failure):
    point = registered.backup(src)["id"]
    target = tmp_path / "target"
    res = registered.run("restore", point, "--target", target, "--conflict", "overwrite", check=False,
                         env_extra={"STRONGROOM_PASSPHRASE": WRONG_PASSPHRASE})
    clean_failure(res, 1, "wrong passphrase: it does not unlock")
    assert not target.exists()


@pytest.mark.parametrize("how", ["env", "file"])
def test_short_passphrase_refused_at_register(sr, vault, tmp_path, how, clean_failure):
    cred = sr.make_credentials(vault, tmp_path / "cred")
    short = "fifteen chars!!"
    assert len(short) == 15
    vault_before = tu.snapshot(vault)
    if how == "env":
        res = sr.run("register", "--credentials", cred, "--machine", "test-01", check=False,
                     env_extra={"STRONGROOM_PASSPHRASE": short})
    else:
        pf = tmp_path / "passphrase"
        pf.write_text(short + "\n")
        res = sr.run("register", "--credentials", cred, "--machine", "test-01", "--passphrase-file", pf,
                     check=False, env_extra={"STRONGROOM_PASSPHRASE": None})
    clean_failure(res, 2, "the passphrase must be at least 16 characters long")
    assert_no_files(sr.home)
    assert_unchanged(vault_before, vault, "vault")

    # 16 characters is enough
    sr.run("register", "--credentials", cred, "--machine", "test-01",
           env_extra={"STRONGROOM_PASSPHRASE": "sixteen chars!!!"})


def test_no_passphrase_and_no_terminal(sr, vault, tmp_path, clean_failure):
    cred = sr.make_credentials(vault, tmp_path / "cred")
    res = sr.run("register", "--credentials", cred, "--machine", "test-01", check=False,
                 env_extra={"STRONGROOM_PASSPHRASE": None})
    clean_failure(res, 2, "no passphrase: use --passphrase-file")
    assert_no_files(sr.home)


def test_key_file_asking_for_absurd_kdf_work_is_refused_at_once(registered, src, clean_failure):
    # A key file with time cost 10^7 held an agent for ten minutes, deaf to SIGTERM.
    import json
    import time

    registered.backup(src)
    keyfile = registered.home / "key.json"
    doc = json.loads(keyfile.read_text())
    doc["time_cost"] = 10**7
    keyfile.write_text(json.dumps(doc))
    started = time.monotonic()
    res = registered.run("points", check=False)
    clean_failure(res, 1, r"asks for Argon2id parameters this version does not use \(time_cost 10000000")
    assert time.monotonic() - started < 30


# --- credentials and registration ---------------------------------------------------------------


def test_superseded_credentials_refused(sr, vault, tmp_path, clean_failure):
    old = sr.make_credentials(vault, tmp_path / "cred-old")
    new = sr.make_credentials(vault, tmp_path / "cred-new")
    vault_before = tu.snapshot(vault)
    res = sr.run("register", "--credentials", old, "--machine", "test-01", check=False)
    clean_failure(res, 1, "superseded by newer ones; use the newest file")
    assert_no_files(sr.home)
    assert_unchanged(vault_before, vault, "vault")
    sr.register(new, "test-01", vault)  # the newest one works


def test_zero_day_credentials_are_refused(sr, vault, tmp_path, clean_failure):
    cred = tmp_path / "cred"
    res = sr.run("vault", "credentials", vault, "--out", cred, "--valid-days", "0", check=False)
    clean_failure(res, 2, "Invalid value for '--valid-days': 0 is not in the range 1<=x<=365")
    assert not cred.exists()


def test_credentials_file_missing_or_garbage(sr, vault, tmp_path, clean_failure):
    res = sr.run("register", "--credentials", tmp_path / "no-such-cred", "--machine", "test-01", check=False)
    clean_failure(res, 2, "credentials file .*no-such-cred does not exist")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00not json at all\xff")
    res = sr.run("register", "--credentials", garbage, "--machine", "test-01", check=False)
    clean_failure(res, 1, "garbage is not a Strongroom credentials file")
    assert_no_files(sr.home)


def test_same_machine_name_twice_refused(registered, make_home, tmp_path, clean_failure):
    other = make_home("home2")
    cred = registered.make_credentials(registered.vault, tmp_path / "cred2")
    vault_before = tu.snapshot(registered.vault)
    res = other.run("register", "--credentials", cred, "--machine", registered.machine, check=False)
    clean_failure(res, 1, "a machine named 'test-01' is already registered")
    assert_no_files(other.home)
    assert_unchanged(vault_before, registered.vault, "vault")
    other.register(cred, "test-02", registered.vault)  # another name is fine


def test_register_twice_in_same_home_refused(registered, tmp_path, clean_failure):
    cred = registered.make_credentials(registered.vault, tmp_path / "cred2")
    home_before = tu.snapshot(registered.home)
    res = registered.run("register", "--credentials", cred, "--machine", "test-03", check=False)
    clean_failure(res, 2, "is already registered; use another --home")
    assert_unchanged(home_before, registered.home, "agent home")


def test_unregistered_home(sr, src, clean_failure):
    res = sr.run("backup", src, check=False)
    clean_failure(res, 2, "this machine is not registered")
    assert_no_files(sr.home)


@pytest.mark.parametrize("damage", ["x", '{"vault": 1}', "[]"], ids=["garbage", "wrong-field", "not-an-object"])
def test_a_damaged_registration_says_how_to_take_the_name_back(registered, src, tmp_path, damage, clean_failure):
    """A disk that failed under the agent home: a damaged config.json was "internal error:
    JSONDecodeError" (or KeyError, TypeError). The key is safe in the vault: move the file away
    and `register --replace` takes the machine's name back, with its points."""
    registered.backup(src)
    config = registered.home / "config.json"
    config.write_text(damage)
    res = registered.run("backup", src, check=False)
    clean_failure(res, 1, f"this agent home's registration {config} is damaged; move it away and take the "
                          "machine's name back with `strongroom register --credentials FILE --replace NAME`")
    config.rename(tmp_path / "config.json.damaged")
    cred = registered.make_credentials(registered.vault, tmp_path / "cred-again")
    registered.run("register", "--credentials", cred, "--replace", "test-01")
    assert registered.backup(src)["stats"]["files_unchanged"] == 2  # incremental from the point before


@pytest.mark.parametrize("damage", ["{", "[]", '{"test-01": 5}'])
def test_a_damaged_record_of_newest_points_is_one_line(registered, src, damage, clean_failure):
    registered.backup(src)
    (registered.home / "newest-points.json").write_text(damage)
    clean_failure(registered.run("points", check=False), 2, "newest-points.json is damaged; remove it")


# --- points and paths --------------------------------------------------------------------------


def test_unknown_point_for_ls(registered, src, clean_failure):
    registered.backup(src)
    res = registered.run("ls", UNKNOWN_POINT, check=False)
    clean_failure(res, 2, f"no recovery point '{UNKNOWN_POINT}'")
    assert res.stdout.strip() == ""


def test_unknown_point_for_restore(registered, src, tmp_path, clean_failure):
    registered.backup(src)
    target = tmp_path / "target"
    res = registered.run("restore", UNKNOWN_POINT, "--target", target, "--conflict", "skip", check=False)
    clean_failure(res, 2, f"no recovery point '{UNKNOWN_POINT}'")
    assert not target.exists()


def test_latest_without_points(registered, tmp_path, clean_failure):
    res = registered.run("ls", "latest", check=False)
    clean_failure(res, 2, "there are no recovery points yet")
    target = tmp_path / "target"
    res = registered.run("restore", "latest", "--target", target, "--conflict", "skip", check=False)
    clean_failure(res, 2, "there are no recovery points yet")
    assert not target.exists()


def test_restore_path_not_in_point(registered, src, tmp_path, clean_failure):
    point = registered.backup(src)["id"]
    target = tmp_path / "target"
    res = registered.run("restore", point, src / "not-there", "--target", target, "--conflict", "skip",
                         check=False)
    clean_failure(res, 2, "not-there is not in this recovery point")
    assert not target.exists() or tu.regular_files(target) == []


def test_backup_missing_source(registered, tmp_path, clean_failure):
    vault_before = tu.snapshot(registered.vault)
    res = registered.run("backup", tmp_path / "does-not-exist", check=False)
    clean_failure(res, 2, "path does not exist: .*does-not-exist")
    assert registered.points() == []
    assert_unchanged(vault_before, registered.vault, "vault")


# --- the vault folder --------------------------------------------------------------------------


def test_credentials_for_missing_vault(sr, tmp_path, clean_failure):
    cred = tmp_path / "cred"
    res = sr.run("vault", "credentials", tmp_path / "no-vault", "--out", cred, check=False)
    clean_failure(res, 1, "no Strongroom vault at .*no-vault")
    assert not cred.exists()
    assert not (tmp_path / "no-vault").exists()


def test_credentials_for_folder_that_is_not_a_vault(sr, tmp_path, clean_failure):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("not a vault")
    for bogus, message in ((empty, "no Strongroom vault at"), (afile, "cannot read the vault at .*: Not a directory")):
        cred = tmp_path / f"cred-{bogus.name}"
        res = sr.run("vault", "credentials", bogus, "--out", cred, check=False)
        clean_failure(res, 1, message)
        assert not cred.exists()
    assert os.listdir(empty) == []


def test_register_when_vault_is_gone(sr, vault, tmp_path, clean_failure):
    cred = sr.make_credentials(vault, tmp_path / "cred")
    vault.rename(tmp_path / "moved-away")
    res = sr.run("register", "--credentials", cred, "--machine", "test-01", check=False)
    clean_failure(res, 1, "no Strongroom vault at")
    assert_no_files(sr.home)
    assert not vault.exists()


def test_backup_when_vault_is_gone(registered, src, tmp_path, clean_failure):
    registered.backup(src)
    moved = tmp_path / "moved-away"
    registered.vault.rename(moved)
    home_before = tu.snapshot(registered.home)
    res = registered.run("backup", src, check=False)
    clean_failure(res, 1, "no Strongroom vault at")
    assert not registered.vault.exists(), "backup re-created the missing vault"
    assert_unchanged(home_before, registered.home, "agent home")
    moved.rename(registered.vault)
    assert len(registered.points()) == 1


def test_backup_when_vault_is_unreadable(registered, src, clean_failure):
    if tu.is_root():
        pytest.skip("root reads a mode-000 directory anyway")
    registered.backup(src)
    os.chmod(registered.vault, 0)
    try:
        res = registered.run("backup", src, check=False)
    finally:
        os.chmod(registered.vault, 0o755)
    clean_failure(res, 1, "cannot read the vault at .*: Permission denied")
    assert len(registered.points()) == 1


def test_backup_when_vault_is_replaced_by_a_file(registered, src, tmp_path, clean_failure):
    registered.backup(src)
    registered.vault.rename(tmp_path / "moved-away")
    registered.vault.write_text("not a vault")
    res = registered.run("backup", src, check=False)
    clean_failure(res, 1, "cannot read the vault at .*: Not a directory")
    assert registered.vault.read_text() == "not a vault"


@pytest.mark.parametrize("damage", ["x{", "[]", "{}"])
def test_a_garbled_vault_description_is_named(registered, src, damage, clean_failure):
    registered.backup(src)
    (registered.vault / "vault.json").write_text(damage)
    for args in (("backup", src), ("vault", "prune", registered.vault)):
        clean_failure(registered.run(*args, check=False), 1, "the vault's .*vault.json is damaged")


@pytest.mark.parametrize("garbled", ["cert.pem", "key.pem"])
def test_a_garbled_certificate_of_a_served_vault_is_named_before_it_serves(served, garbled, clean_failure):
    """It was "internal error: ValueError: Invalid PEM encoding" (a damaged key: an SSL error)."""
    served.stop()
    (served.folder / "tls" / garbled).write_text("garbage\n")
    res = served.admin.run("vault", "serve", served.folder, "--port", served.port, check=False)
    clean_failure(res, 2, "the certificate .*cert.pem or its key .*key.pem is damaged or they do not match: "
                          "restore them, or, for the vault's own, move its tls folder away to make a new one")


def test_a_garbled_record_of_how_the_vault_was_served_is_named(served, tmp_path, clean_failure):
    served.stop()
    (served.folder / "serve.json").write_text("garbage{")
    res = served.admin.run("vault", "credentials", served.folder, "--out", tmp_path / "cred", check=False)
    clean_failure(res, 1, "serve.json is damaged: `vault serve` writes it again, or give --url")
    assert not (tmp_path / "cred").exists()


# --- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (("restore", "latest", "--conflict", "skip"), "Missing option '--target'"),
    (("restore", "latest", "--conflict", "skip", "--target"), "Option '--target' requires an argument"),
    (("restore", "latest", "--target", "{target}", "--conflict", "bogus"), "Invalid value for '--conflict'"),
    (("backup",), "give PATHS to back up (or --files-from FILE, or --stdin NAME)"),
    (("ls",), "Missing argument 'POINT'"),
    (("no-such-command",), "No such command 'no-such-command'"),
    (("points", "--no-such-option"), "No such option '--no-such-option'"),
], ids=["restore-no-target", "restore-target-no-value", "restore-bad-conflict", "backup-no-path",
        "ls-no-point", "unknown-command", "unknown-option"])
def test_usage_error_exit_code_2(registered, src, tmp_path, args, message, clean_failure):
    registered.backup(src)
    target = tmp_path / "target"
    argv = [a.format(target=target) for a in args]
    res = registered.run(*argv, check=False)
    clean_failure(res, 2, re.escape(message))
    assert not target.exists()


# --- a hostile machine or client against the vault ------------------------------------------------


def _valid_pack() -> tuple[str, bytes]:
    from strongroom import blobs
    from strongroom.crypto import MasterKey
    from strongroom.packs import KIND_DATA, PackBuilder

    key, builder = MasterKey.generate(), PackBuilder()
    builder.add(key.blob_id(b"x"), KIND_DATA, blobs.encode(key, key.blob_id(b"x"), b"x"))
    name, data, _refs = builder.finish()
    return name, bytes(data)


def test_the_vault_refuses_a_pack_under_a_name_that_is_not_its_hash(registered):
    from strongroom.agent.home import AgentHome
    from strongroom.errors import IntegrityError

    name, data = _valid_pack()
    wrong = "0" * 64
    vault = AgentHome(registered.home).vault()
    before = tu.snapshot(registered.vault / "packs")
    with pytest.raises(IntegrityError, match="pack content does not match its name"):
        vault.store_pack(wrong, data)
    assert_unchanged(before, registered.vault / "packs", "the vault's packs")
    assert wrong not in vault.pack_names()
    vault.store_pack(name, data)  # under its own name it is welcome
    assert name in vault.pack_names()


def test_the_served_vault_refuses_a_pack_under_a_wrong_name(served, served_machine):
    web1 = served_machine("web-01")
    name, data = _valid_pack()
    wrong = "0" * 64
    with served.client((web1.home / "token").read_text()) as c:
        refused = c.put(f"/api/v1/packs/{wrong}", content=data)
        assert refused.status_code in (400, 422), refused.text
        assert "does not match its name" in refused.text
        assert c.get("/api/v1/packs").json() == []
        assert c.put(f"/api/v1/packs/{name}", content=data).status_code == 201
        assert c.get("/api/v1/packs").json() == [name]


def test_pack_download_and_blob_reads_need_a_token(served, served_machine, tmp_path):
    import msgpack

    web1 = served_machine("web-01")
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret.bin").write_bytes(os.urandom(2000))
    web1.backup(src)
    token = (web1.home / "token").read_text()
    with served.client(token) as c:
        (pack, *_rest) = c.get("/api/v1/packs").json()
    body = msgpack.packb([[pack, 0, 8]])
    for what, wrong in (("no token", None), ("a wrong token", "x" * 43), ("another form", token[:-1])):
        with served.client(wrong) as c:
            for res in (c.get(f"/api/v1/packs/{pack}"), c.get(f"/api/v1/packs/{pack}", headers={"Range": "bytes=0-7"}),
                        c.post("/api/v1/blobs/read", content=body)):
                assert res.status_code == 401, f"{res.request.method} {res.request.url.path} with {what}: " \
                                               f"{res.status_code} {res.content[:80]!r}"
    with served.client(token) as c:  # the same requests with the machine's token are served
        assert c.get(f"/api/v1/packs/{pack}").content[:8] == b"SRPACK01"
        assert c.post("/api/v1/blobs/read", content=body).content == b"SRPACK01"
