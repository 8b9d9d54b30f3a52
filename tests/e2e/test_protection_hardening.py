"""Attacks on the vault's guards (issue 9), through the real CLI: a machine that stops its
protection or nulls its policy to shorten retention without a PIN; a local user reading the
vault folder; PINs guessed, or spent by another machine or for another act; plaintext paths
of failed files and policies reaching the vault."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from pathlib import Path

import blake3
import pytest
from conftest import PASSPHRASE, Strongroom, assert_clean_failure, saying, setup_registered

DAY_NS = 86400 * 10**9
NO_PASSPHRASE = {"STRONGROOM_PASSPHRASE": None}


def _pin(admin: Strongroom, vault: Path | str, machine: str, act: str, *extra: str) -> str:
    pin = admin.run("vault", "pin", vault, "--machine", machine, "--act", act, *extra).stdout.strip()
    assert len(pin) == 8 and pin.isdigit(), pin
    return pin


def _short(sr: Strongroom, *extra: str, check: bool = False):
    return sr.run("policy", "set", "--include", "/srv", "--keep-daily", "7", *extra, check=check)


def _refused(res, *words: str) -> None:
    assert_clean_failure(res, 1, saying(*words))


# -- retention: stop or null, then shorten ---------------------------------------------------


def test_stop_then_a_shorter_policy_needs_a_pin(registered):
    sr = registered
    sr.run("policy", "set", "--include", "/srv", "--keep-daily", "90")
    sr.run("protection", "stop", "--keep-data")
    _refused(_short(sr), "shortening retention needs a PIN")
    # A PIN for the other act does not do; one for shortening does, once.
    _refused(_short(sr, "--pin", _pin(sr, sr.vault, sr.machine, "delete-data")), "another machine or act")
    assert sr.json("policy", "set", "--include", "/srv", "--keep-daily", "7", "--pin",
                   _pin(sr, sr.vault, sr.machine, "shorten-retention"))["version"] == 3


def test_null_policy_then_a_shorter_policy_needs_a_pin_served(served, served_machine):
    web1 = served_machine("web-01")
    web1.run("policy", "set", "--include", "/srv", "--keep-daily", "90", "--keep-yearly", "5")
    with served.client((web1.home / "token").read_text()) as me:
        assert me.put("/api/v1/policy", json={"policy": None}).json() == {"version": 2}
    assert web1.json("policy", "show") == {"version": 2, "policy": None}
    _refused(_short(web1), "shortening retention needs a PIN")
    # Stopping through the API and then dropping only the yearly tier: still shortening.
    _refused(web1.run("policy", "set", "--include", "/srv", "--keep-daily", "90", check=False), "needs a PIN")
    pin = _pin(served.admin, served.url, "web-01", "shorten-retention",
               "--admin-token-file", served.folder / "admin.token", "--fingerprint", served.fingerprint)
    assert web1.json("policy", "set", "--include", "/srv", "--keep-daily", "90", "--pin", pin)["version"] == 3


def test_reenabling_with_equal_or_longer_retention_needs_no_pin(registered):
    sr = registered
    sr.run("vault", "settings", sr.vault, "--immutable")
    sr.run("policy", "set", "--include", "/srv", "--keep-daily", "30", "--keep-weekly", "8")
    sr.run("protection", "stop", "--keep-data")
    assert sr.json("policy", "set", "--include", "/srv", "--keep-daily", "30", "--keep-weekly", "8")["version"] == 3
    sr.run("protection", "stop", "--keep-data")
    longer = sr.json("policy", "set", "--include", "/srv", "--keep-daily", "60", "--keep-weekly", "8",
                     "--keep-monthly", "6")
    assert longer["version"] == 5 and longer["policy"]["retention"]["monthly"] == 6


def _immutable_with_policy(sr: Strongroom, vault: Path) -> None:
    sr.run("policy", "set", "--include", "/srv", "--keep-daily", "30")
    sr.run("vault", "settings", vault, "--immutable")


def test_immutable_vault_refuses_every_shortening_path(registered):
    sr, vault = registered, registered.vault
    _immutable_with_policy(sr, vault)
    pin = lambda: _pin(sr, vault, sr.machine, "shorten-retention")  # noqa: E731
    _refused(_short(sr, "--pin", pin()), "immutable")
    sr.run("protection", "stop", "--keep-data")
    _refused(_short(sr, "--pin", pin()), "immutable")
    _refused(sr.run("protection", "stop", "--delete-data", "--pin", _pin(sr, vault, sr.machine, "delete-data"),
                    check=False), "immutable")
    assert sr.json("policy", "show")["policy"] is None  # still stopped, nothing shortened


def test_immutable_served_vault_refuses_a_null_policy_then_a_shorter_one(served, served_machine):
    web1 = served_machine("web-01")
    _immutable_with_policy(web1, served.folder)
    with served.client((web1.home / "token").read_text()) as me:
        me.put("/api/v1/policy", json={"policy": None}).raise_for_status()
    pin = _pin(served.admin, served.folder, "web-01", "shorten-retention")
    _refused(_short(web1, "--pin", pin), "immutable")
    assert web1.json("policy", "show")["policy"] is None


def test_retain_until_outlives_a_stop_and_a_shorter_policy(registered, tmp_path):
    sr, vault = registered, registered.vault
    (tmp_path / "src").mkdir()
    sr.run("policy", "set", "--include", tmp_path / "src", "--keep-daily", "90")
    ids = [sr.backup(tmp_path / "src", *extra)["id"] for extra in (["--retain-until", "2099-12-31"], [], [])]
    sr.run("protection", "stop", "--keep-data")
    _refused(sr.run("policy", "set", "--include", tmp_path / "src", "--keep-daily", "7", check=False), "needs a PIN")
    sr.run("policy", "set", "--include", tmp_path / "src", "--keep-daily", "7", "--pin",
           _pin(sr, vault, sr.machine, "shorten-retention"))
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        db.execute("UPDATE points SET created_ns = created_ns - ? WHERE id IN (?, ?)", (30 * DAY_NS, *ids[:2]))
    assert sr.json("vault", "prune", vault)["points_expired"] == [ids[1]]
    assert sorted(p["id"] for p in sr.points()) == sorted([ids[0], ids[2]])


# -- PINs: keyed, counted, bound -------------------------------------------------------------


def test_wrong_pins_are_counted_and_lock_pin_use_for_that_machine(registered, second_machine):
    sr, vault = registered, registered.vault
    other = second_machine()
    for who in (sr, other):
        who.run("policy", "set", "--include", "/srv", "--keep-daily", "30")
    for attempt in range(1, 5):
        _refused(_short(sr, "--pin", "12345678"), "that PIN is wrong", f"({attempt} of 5 wrong PINs")
    _refused(_short(sr, "--pin", "12345678"), "(5 of 5 wrong PINs", "now locked for 15 minutes")
    # Locked: even the right PIN is refused, and not used up by the refusal.
    _refused(_short(sr, "--pin", _pin(sr, vault, sr.machine, "shorten-retention")),
             "PINs for this machine are locked until")
    # Another machine is not locked.
    assert other.json("policy", "set", "--include", "/srv", "--keep-daily", "7", "--pin",
                      _pin(sr, vault, other.machine, "shorten-retention"))["version"] == 2


def test_a_pin_is_for_one_machine_and_one_act(registered, second_machine, tmp_path):
    sr, vault = registered, registered.vault
    other = second_machine()
    (tmp_path / "src").mkdir()
    other.backup(tmp_path / "src")
    sr.run("policy", "set", "--include", "/srv", "--keep-daily", "30")
    for_sr = _pin(sr, vault, sr.machine, "delete-data")
    _refused(other.run("protection", "stop", "--delete-data", "--pin", for_sr, check=False),
             "made for another machine or act")
    assert len(other.points()) == 1
    _refused(_short(sr, "--pin", for_sr), "made for another machine or act")  # right machine, wrong act
    res = sr.run("vault", "pin", vault, "--machine", "nobody", "--act", "delete-data", check=False)
    assert_clean_failure(res, 2, "no machine named 'nobody'")
    sr.run("protection", "stop", "--delete-data", "--pin", for_sr)  # still good for what it was made for


def test_pin_hashes_are_keyed_with_the_vaults_secret(registered):
    sr, vault = registered, registered.vault
    pin = _pin(sr, vault, sr.machine, "delete-data")
    with sqlite3.connect(vault / "catalog.sqlite") as db:
        stored = {r[0] for r in db.execute("SELECT hash FROM pins")}
        mid = db.execute("SELECT id FROM machines WHERE name = ?", (sr.machine,)).fetchone()[0]
    unkeyed = {blake3.blake3(text.encode()).hexdigest() for text in (pin, f"{mid}\0delete-data\0{pin}")}
    assert len(stored) == 1 and not stored & unkeyed
    secret = vault / "pin.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32


# -- the vault folder is its owner's alone ---------------------------------------------------


def _assert_private(root: Path) -> None:
    assert stat.S_IMODE(root.stat().st_mode) == 0o700, oct(root.stat().st_mode)
    files = [Path(d) / f for d, _dirs, names in os.walk(root) for f in names]
    assert any(f.name == "catalog.sqlite" for f in files)
    loose = {str(f.relative_to(root)): oct(stat.S_IMODE(f.lstat().st_mode)) for f in files
             if stat.S_IMODE(f.lstat().st_mode) & 0o077}
    assert not loose, loose


@pytest.fixture
def open_umask():
    """Commands run as a user with the usual umask 022 would."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_vault_folder_and_files_are_private_after_create_serve_and_backup(open_umask, served, served_machine,
                                                                          tmp_path):
    _assert_private(served.folder)  # created, then served (tls/, serve.json)
    embedded = setup_registered(tmp_path / "embedded")
    _assert_private(embedded.vault)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100_000))
    embedded.backup(src)  # the agent writes packs and the catalog itself
    served_machine("web-01").backup(src)
    for root in (embedded.vault, served.folder):
        _assert_private(root)


def test_opening_a_vault_made_before_takes_other_users_access_away(registered, open_umask):
    vault = registered.vault
    os.chmod(vault, 0o755)
    os.chmod(vault / "catalog.sqlite", 0o644)
    os.chmod(vault / "vault.json", 0o644)
    registered.run("vault", "settings", vault)
    _assert_private(vault)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_local_user_cannot_read_the_vault(open_umask):
    base = Path(tempfile.mkdtemp(prefix="sr-other-user-"))
    try:
        os.chmod(base, 0o755)  # a place every user can reach, as /srv is
        sr = setup_registered(base)
        src = base / "src"
        src.mkdir()
        (src / "f").write_text("secret")
        sr.backup(src)
        pack = next(p for p in (sr.vault / "packs").rglob("*") if p.is_file())
        for target in (sr.vault / "catalog.sqlite", pack, sr.vault / "pin.key"):
            res = subprocess.run(["head", "-c", "1", str(target)], user=65534, capture_output=True, text=True)
            assert res.returncode != 0 and "Permission denied" in res.stderr, (target, res.stderr)
    finally:
        shutil.rmtree(base)


# -- the agent home and the cache folder are the user's alone ----------------------------------


def test_a_home_or_cache_folder_others_can_write_is_refused_before_registering(tmp_path):
    """Another user who can write there could swap the registration or the blob index, or plant
    links where the agent makes files (SQLite follows them): a root agent would write into any file."""
    sr = setup_registered(tmp_path / "setup")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # as /tmp is
    other = Strongroom(tmp_path / "home2")
    res = other.run("register", "--credentials", sr.cred, "--machine", "m2", "--cache", shared, check=False)
    assert_clean_failure(res, 1, rf"the cache folder {shared} can be written by other users \(mode 1777\), who could "
                         r"change what the agent finds there: make it private \(chmod 700\) or give another with --cache")
    res = Strongroom(shared).run("register", "--credentials", sr.cred, "--machine", "m2", check=False)
    assert_clean_failure(res, 1, rf"the agent home {shared} can be written by other users \(mode 1777\)")
    assert not (other.home / "config.json").exists() and not (shared / "config.json").exists()
    assert [m["name"] for m in sr.json("machines")] == ["test-01"]  # the vault heard of neither


def test_a_home_or_cache_folder_opened_to_others_later_stops_every_command_in_one_line(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    os.chmod(registered.home, 0o777)
    res = registered.run("backup", src, check=False)
    assert_clean_failure(res, 1, rf"the agent home {registered.home} can be written by other users \(mode 0777\)")
    os.chmod(registered.home, 0o700)
    os.chmod(registered.home / "cache", 0o775)
    res = registered.run("backup", src, check=False)
    assert_clean_failure(res, 1, rf"the cache folder {registered.home / 'cache'} can be written by other users "
                         r"\(mode 0775\).*or choose another place with `strongroom agent cache move DIR`")
    assert registered.points() == []
    os.chmod(registered.home / "cache", 0o755)  # readable is not the danger: what it holds is sealed or IDs
    registered.backup(src)
    assert len(registered.points()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_of_another_user_is_refused(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    os.chown(registered.home / "cache", 65534, 65534)
    res = registered.run("backup", src, check=False)
    assert_clean_failure(res, 1, rf"the cache folder {registered.home / 'cache'} belongs to uid 65534, not to this user "
                         r"\(uid 0\)")
    registered.run("agent", "cache", "move", tmp_path / "cache2")  # the way out
    registered.backup(src)


# -- paths reach the vault sealed ------------------------------------------------------------


def _vault_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and "packs" not in p.parts)


def test_policy_paths_are_sealed_in_the_vault_and_shown_with_the_key(registered):
    sr = registered
    sr.run("policy", "set", "--include", "/srv/project-kestrel", "--exclude", "*.kestrel-draft", "--daily", "09:00")
    assert b"kestrel" not in _vault_bytes(sr.vault)
    shown = sr.json("policy", "show")["policy"]
    assert shown["includes"] == ["/srv/project-kestrel"] and shown["excludes"] == ["*.kestrel-draft"]
    assert shown["include_count"] == 1 and shown["exclude_count"] == 1
    keyless = sr.json("policy", "show", env_extra=NO_PASSPHRASE)["policy"]
    assert keyless["includes"] is None and keyless["excludes"] is None
    assert (keyless["include_count"], keyless["exclude_count"]) == (1, 1)
    assert keyless["schedule"]["times"] == ["09:00"] and keyless["retention"]["daily"] == 30
    text = sr.run("policy", "show", env_extra=NO_PASSPHRASE).stdout
    assert "1 path(s), 1 exclusion(s) (sealed" in text and "kestrel" not in text


def test_failed_paths_are_sealed_in_the_vault_and_shown_with_the_key(registered, tmp_path):
    sr = registered
    src = tmp_path / "src-kestrel"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file.txt").write_text("data\n")
    sr.backup(src)
    lead = tmp_path / "target" / str(src).lstrip("/")
    lead.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (lead / "dir").symlink_to(tmp_path / "outside")
    res = sr.run("restore", "latest", "--target", tmp_path / "target", "--conflict", "skip", check=False)
    assert res.returncode == 3, res.stderr
    assert b"kestrel" not in _vault_bytes(sr.vault)
    job = sr.json("jobs")[0]
    assert job["kind"] == "restore" and job["failed_count"] >= 1
    assert any("src-kestrel/dir" in f["path"] for f in job["failed"]), job["failed"]
    keyless = sr.json("jobs", env_extra=NO_PASSPHRASE)[0]
    assert keyless["failed"] is None and keyless["failed_count"] == job["failed_count"]
    assert set(keyless) == set(job)
    text = sr.run("jobs", env_extra=NO_PASSPHRASE).stdout
    assert f"({job['failed_count']} failed)" in text and "kestrel" not in text


def test_a_machine_sees_only_its_own_jobs_and_policy(served, served_machine, tmp_path):
    web1, web2 = served_machine("web-01"), served_machine("web-02", passphrase="another passphrase, web-02")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    web1.run("policy", "set", "--include", src)
    web1.backup(src)
    web2.backup(src)
    with served.client((web2.home / "token").read_text()) as them:
        res = them.get("/api/v1/machines/web-01/policy")
        assert res.status_code == 409 and "only its own policy" in res.json()["detail"]
        assert {j["machine"] for j in them.get("/api/v1/jobs").json()} == {"web-02"}
        assert them.get("/api/v1/jobs", params={"machine": "web-01"}).json() == []
    # web-02 restores web-01's data with web-01's passphrase: web-01 sees that restore too.
    web2.restore("latest", "--from-machine", "web-01", target=tmp_path / "r",
                 env_extra={"STRONGROOM_PASSPHRASE": PASSPHRASE})
    seen = [(j["machine"], j["kind"], j["source_machine"]) for j in web1.json("jobs")]
    assert seen == [("web-02", "restore", "web-01"), ("web-01", "backup", None)]
    assert [j["machine"] for j in web2.json("jobs")] == ["web-02", "web-02"]
    # The admin sees every job.
    with served.client((served.folder / "admin.token").read_text().strip()) as admin:
        assert {j["machine"] for j in admin.get("/api/v1/jobs").json()} == {"web-01", "web-02"}
