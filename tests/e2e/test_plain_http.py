"""Plain HTTP only on loopback, or when both sides ask for it by name: registration secrets,
tokens and wrapped keys must not cross a network unencrypted by accident. The refusals
happen before any traffic (198.18.0.1 is a benchmarking address this machine does not have)."""

from __future__ import annotations

import json

from conftest import Strongroom, assert_clean_failure, saying

OFF_LOOPBACK = "http://198.18.0.1:8443"
NO_RETRY = {"STRONGROOM_VAULT_RETRY_SECONDS": "0"}  # were the check missing: fail at once, not in 120 s


def test_serving_plain_http_off_loopback_is_refused(sr, tmp_path):
    vault = sr.create_vault(tmp_path / "vault")
    res = sr.run("vault", "serve", vault, "--no-tls", "--host", "198.18.0.1", check=False)
    assert_clean_failure(res, 2, saying("refusing to serve plain HTTP on 198.18.0.1"))
    assert ("strongroom: error: refusing to serve plain HTTP on 198.18.0.1: registration secrets, machine tokens "
            "and wrapped keys would cross the network unencrypted") in res.stderr
    assert "--insecure-http" in res.stderr
    res = sr.run("vault", "serve", vault, "--no-tls", "--host", "0.0.0.0", check=False)
    assert_clean_failure(res, 2, saying("refusing to serve plain HTTP on 0.0.0.0"))
    assert "refusing to serve plain HTTP on 0.0.0.0" in res.stderr
    res = sr.run("vault", "serve", vault, "--insecure-http", check=False)
    assert_clean_failure(res, 2, saying("--insecure-http goes with --no-tls"))
    assert "--insecure-http goes with --no-tls" in res.stderr


def test_registering_with_a_plain_http_url_off_loopback_is_refused(sr, tmp_path):
    vault = sr.create_vault(tmp_path / "vault")
    cred = sr.make_credentials(vault, tmp_path / "cred", "--url", OFF_LOOPBACK)
    res = sr.run("register", "--credentials", cred, "--machine", "web-01", check=False, env_extra=NO_RETRY)
    assert_clean_failure(res, 2, saying("refusing plain http:// to 198.18.0.1"))
    assert ("strongroom: error: refusing plain http:// to 198.18.0.1: tokens, the registration secret and the "
            "wrapped key would cross the network unencrypted") in res.stderr
    assert not (sr.home / "config.json").exists()


def test_every_agent_command_refuses_a_plain_http_vault_off_loopback(registered):
    config = json.loads((registered.home / "config.json").read_text())
    (registered.home / "config.json").write_text(json.dumps({**config, "vault": OFF_LOOPBACK}))
    for command in (["points"], ["jobs"], ["backup", registered.home]):
        res = registered.run(*command, check=False, env_extra=NO_RETRY)
        assert_clean_failure(res, 2, saying("refusing plain http:// to 198.18.0.1"))
        assert "strongroom: error: refusing plain http:// to 198.18.0.1" in res.stderr, command


def test_admin_commands_refuse_a_plain_http_url_off_loopback(sr, tmp_path):
    token = tmp_path / "admin.token"
    token.write_text("x" * 43)
    for command in (["vault", "pin", OFF_LOOPBACK, "--machine", "m1", "--act", "delete-data"], ["vault", "credentials", OFF_LOOPBACK, "--out", tmp_path / "c"]):
        res = sr.run(*command, "--admin-token-file", token, check=False, env_extra=NO_RETRY)
        assert_clean_failure(res, 2, saying("refusing plain http:// to 198.18.0.1"))
        assert "strongroom: error: refusing plain http:// to 198.18.0.1" in res.stderr


def test_plain_http_on_loopback_works_end_to_end(tmp_path):
    from served import VaultServer

    admin = Strongroom(tmp_path / "admin")
    server = VaultServer(admin, admin.create_vault(tmp_path / "vault"), None, "--no-tls").start()
    try:
        assert json.loads((server.folder / "serve.json").read_text())["url"] == server.url
        machine = Strongroom(tmp_path / "home").register(server.credentials(tmp_path / "cred"), "web-01")
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.txt").write_text("over loopback")
        machine.backup(src)
        assert len(machine.points()) == 1
    finally:
        server.stop()
