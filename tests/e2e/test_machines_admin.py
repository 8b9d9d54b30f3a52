"""machines remove / rename and register --replace, embedded and served: what each changes,
that a removed or replaced machine's next request is refused in one line, and that no
machine can do any of it to another without the admin (a PIN, the admin token, or the
vault's newest credentials plus the machine's key)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PASSPHRASE, Strongroom, assert_clean_failure, saying
from treeutil import snapshot

OTHER_PASSPHRASE = "the other machine's own passphrase"


@pytest.fixture(params=["embedded", "served"])
def vault(request, tmp_path, make_home):
    """victim (test-01, one backup) and other (other-01) in one vault; `admin_args` act as
    the vault's admin; `creds()` issues fresh credentials."""
    server = None
    if request.param == "embedded":
        admin = Strongroom(tmp_path / "admin-home")
        folder = admin.create_vault(tmp_path / "vault")
        n = iter(range(100))
        creds = lambda: admin.make_credentials(folder, tmp_path / f"cred{next(n)}")  # noqa: E731
        admin_args = ["--vault", str(folder)]
        pin_target = [str(folder)]
    else:
        from served import VaultServer
        admin = Strongroom(tmp_path / "admin-home")
        folder = admin.create_vault(tmp_path / "vault")
        server = VaultServer(admin, folder).start()
        n = iter(range(100))
        creds = lambda: server.credentials(tmp_path / f"cred{next(n)}")  # noqa: E731
        admin_args = ["--vault", server.url, "--admin-token-file", str(folder / "admin.token"),
                      "--fingerprint", server.fingerprint]
        pin_target = [server.url, "--admin-token-file", str(folder / "admin.token"),
                      "--fingerprint", server.fingerprint]
    victim = Strongroom(tmp_path / "home").register(creds(), "test-01")
    other = make_home("other", OTHER_PASSPHRASE).register(creds(), "other-01")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "b.bin").write_bytes(b"b" * 300_000)
    first = victim.backup(src)

    def pin(machine: str, act: str) -> str:
        return admin.run("vault", "pin", *pin_target, "--machine", machine, "--act", act).stdout.strip()

    yield SimpleNamespace(admin=admin, folder=folder, server=server, creds=creds, admin_args=admin_args,
                          victim=victim, other=other, src=src, first=first, pin=pin, base=tmp_path)
    if server:
        server.stop()


def record(folder: Path, name: str) -> dict:
    (doc,) = [d for d in (json.loads(p.read_text()) for p in (folder / "machines").glob("*.json"))
              if d["name"] == name]
    return doc


def events(folder: Path, uid: str, kind: str) -> list[dict]:
    found = [json.loads(p.read_text()) for p in (folder / "jobs" / uid).glob("*.json")]
    return [e for e in found if e["kind"] == kind]


# -- remove -----------------------------------------------------------------------------------


def test_remove_with_a_pin_revokes_the_token_and_soft_deletes_the_points(vault):
    pin = vault.pin("test-01", "remove-machine")
    doc = vault.other.json("machines", "remove", "test-01", "--pin", pin)
    assert doc == {"machine": "test-01", "removed": True, "points_deleted": 1}
    res = vault.victim.run("points", check=False)
    assert_clean_failure(res, 1, saying("revoked", "test-01", "removed"))
    assert [m["name"] for m in vault.other.json("machines")] == ["other-01"]
    uid = record(vault.folder, "test-01")["uid"]
    assert (vault.folder / "deleted" / uid / vault.first["id"]).exists()
    assert record(vault.folder, "test-01")["removed_ns"] > 0
    (event,) = events(vault.folder, uid, "remove")
    assert event["mode"] == "critical" and "removed" in event["message"]
    # the name stays taken; the rebuilt machine takes it back with its passphrase, and its
    # soft-deleted points can be brought back
    res = Strongroom(vault.base / "h3").run("register", "--credentials", vault.creds(), "--machine", "test-01",
                                            check=False)
    assert_clean_failure(res, 1, saying("already registered", "--replace"))
    back = Strongroom(vault.base / "h4").register_replace(vault.creds(), "test-01")
    assert back.json("points", "--deleted")[0]["id"] == vault.first["id"]
    back.run("points", "undelete", vault.first["id"])
    assert back.json("points")[0]["id"] == vault.first["id"]


def test_remove_as_the_admin_needs_no_pin(vault):
    doc = vault.admin.json("machines", "remove", "test-01", *vault.admin_args)
    assert doc["points_deleted"] == 1
    assert_clean_failure(vault.victim.run("backup", vault.src, check=False), 1, saying("revoked"))


def test_no_machine_removes_or_renames_another_without_the_admin(vault):
    before = snapshot(vault.folder / "machines")
    for args, words in [
        (["remove", "test-01"], ("needs a PIN", "remove-machine")),
        (["remove", "test-01", "--pin", "12345678"], ("PIN is wrong",)),
        (["rename", "test-01", "stolen"], ("needs a PIN", "rename-machine")),
    ]:
        assert_clean_failure(vault.other.run("machines", *args, check=False), 1, saying(*words))
    # a PIN is for one machine and one act: one made for other-01, or for another act, does nothing
    for pin in (vault.pin("other-01", "remove-machine"), vault.pin("test-01", "delete-data")):
        res = vault.other.run("machines", "remove", "test-01", "--pin", pin, check=False)
        assert_clean_failure(res, 1, saying("PIN is wrong"))
    # a wrong admin token is refused too (served: over the API)
    if vault.server:
        bad = vault.base / "bad.token"
        bad.write_text("not the admin token\n")
        args = ["--vault", vault.server.url, "--admin-token-file", bad, "--fingerprint", vault.server.fingerprint]
        res = vault.other.run("machines", "remove", "test-01", *args, check=False)
        assert_clean_failure(res, 1, saying("admin token"))
    assert snapshot(vault.folder / "machines") == before
    assert vault.victim.json("points")[0]["id"] == vault.first["id"]


def test_an_unknown_machine_is_refused(vault):
    res = vault.admin.run("machines", "remove", "nobody", *vault.admin_args, check=False)
    assert_clean_failure(res, 2, saying("no machine named", "nobody"))


# -- rename -----------------------------------------------------------------------------------


def test_rename_keeps_the_points_readable_everywhere(vault):
    pin = vault.pin("test-01", "rename-machine")
    assert vault.other.json("machines", "rename", "test-01", "web-02", "--pin", pin) == \
        {"machine": "web-02", "former_name": "test-01"}
    assert sorted(m["name"] for m in vault.other.json("machines")) == ["other-01", "web-02"]
    # other machines find it by its new name; its points (sealed under the old one) open
    res = vault.other.json("points", "--from-machine", "web-02", env_extra={"STRONGROOM_PASSPHRASE": PASSPHRASE})
    assert [p["id"] for p in res] == [vault.first["id"]]
    res = vault.other.run("points", "--from-machine", "test-01", check=False,
                          env_extra={"STRONGROOM_PASSPHRASE": PASSPHRASE})
    assert_clean_failure(res, 2, saying("no machine named", "test-01"))
    # the machine itself goes on: backs up and restores old and new points
    (vault.src / "c.txt").write_text("after the rename\n")
    second = vault.victim.backup(vault.src)
    assert second["stats"]["files_unchanged"] == 2
    target = vault.base / "r"
    vault.victim.json("restore", vault.first["id"], "--target", target)
    assert [p["id"] for p in vault.victim.json("points")] == [second["id"], vault.first["id"]]
    uid = record(vault.folder, "web-02")["uid"]
    assert record(vault.folder, "web-02")["former_names"] == ["test-01"]
    assert len(events(vault.folder, uid, "rename")) == 1
    # renamed to a taken or invalid name: refused
    for new, code, words in (("other-01", 2, ("already registered",)), ("bad/name", 2, ("invalid machine name",))):
        res = vault.admin.run("machines", "rename", "web-02", new, *vault.admin_args, check=False)
        assert_clean_failure(res, code, saying(*words))


# -- register --replace -----------------------------------------------------------------------


def _register_replace(self: Strongroom, cred: Path, name: str, check: bool = True):
    res = self.run("register", "--credentials", cred, "--replace", name, check=check)
    if not check:
        return res
    self.cred, self.machine = cred, name
    return self


Strongroom.register_replace = _register_replace  # type: ignore[attr-defined]


def test_a_rebuilt_machine_takes_its_name_and_history_back(vault):
    rebuilt = Strongroom(vault.base / "rebuilt").register_replace(vault.creds(), "test-01")
    assert_clean_failure(vault.victim.run("points", check=False), 1, saying("revoked", "register --replace"))
    assert [p["id"] for p in rebuilt.json("points")] == [vault.first["id"]]
    nxt = rebuilt.backup(vault.src)  # incremental against its last point: nothing new to send
    assert nxt["stats"]["files_new"] == 0 and nxt["stats"]["files_unchanged"] == 2
    assert nxt["stats"]["bytes_added"] < 10_000
    (event,) = events(vault.folder, record(vault.folder, "test-01")["uid"], "replace")
    assert event["mode"] == "critical"


def test_replace_with_a_wrong_passphrase_changes_nothing(vault):
    before = snapshot(vault.folder / "machines")
    impostor = Strongroom(vault.base / "impostor", OTHER_PASSPHRASE)
    res = impostor.register_replace(vault.creds(), "test-01", check=False)
    assert_clean_failure(res, 1, saying("wrong passphrase"))
    assert snapshot(vault.folder / "machines") == before
    assert not (vault.base / "impostor" / "config.json").exists()
    assert vault.victim.json("points")[0]["id"] == vault.first["id"]


def test_replace_needs_the_newest_credentials(vault):
    old = vault.creds()
    vault.creds()  # supersedes it
    res = Strongroom(vault.base / "h5").register_replace(old, "test-01", check=False)
    assert_clean_failure(res, 1, saying("superseded"))
    res = Strongroom(vault.base / "h6").register_replace(vault.creds(), "nobody", check=False)
    assert_clean_failure(res, 2, saying("no machine named"))


def test_the_vault_wants_the_machines_key_not_only_credentials(vault):
    """A hostile client with valid credentials but without the key: the vault refuses the
    name even when the client skips the agent's own passphrase check."""
    if vault.server is None:
        pytest.skip("the proof is checked by the vault; a client of the HTTP API can skip the agent")
    cred = json.loads(vault.creds().read_text())
    body = {k: cred[k] for k in ("vault_id", "credential_id", "secret", "issued", "expires")}
    with vault.server.client() as c:
        for proof in ("00" * 32, None):
            r = c.post("/api/v1/register/replace", json={**body, "machine": "test-01", "proof": proof})
            assert r.status_code == 403 and "not machine test-01's" in r.json()["detail"], r.text
    # nor can its own token alone swap the key file others restore with (a stolen token)
    foreign = (vault.other.home / "key.json").read_text()  # well formed, another machine's key
    token = (vault.victim.home / "token").read_text().strip()
    with vault.server.client(token) as c:
        r = c.put("/api/v1/keyfile", json={"keyfile": foreign, "proof": "11" * 32})
        assert r.status_code == 403 and "not machine test-01's" in r.json()["detail"], r.text
    assert record(vault.folder, "test-01")["keyfile"] == (vault.victim.home / "key.json").read_text()
    assert vault.victim.json("points")[0]["id"] == vault.first["id"]


def test_removal_renaming_and_revoked_tokens_survive_a_catalog_rebuild(vault):
    if vault.server is not None:
        pytest.skip("rebuild-catalog runs on the vault's folder")
    vault.admin.json("machines", "remove", "test-01", *vault.admin_args)
    vault.admin.json("machines", "rename", "other-01", "other-02", *vault.admin_args)
    vault.admin.json("vault", "rebuild-catalog", vault.folder)
    assert [m["name"] for m in vault.other.json("machines")] == ["other-02"]
    assert_clean_failure(vault.victim.run("points", check=False), 1, saying("revoked", "removed"))
    back = Strongroom(vault.base / "again").register_replace(vault.creds(), "test-01")
    assert back.json("points", "--deleted")[0]["id"] == vault.first["id"]
