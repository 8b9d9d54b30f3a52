"""A served vault: many machines over HTTPS, restores across machines, jobs, and the refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import time

import msgpack
import pytest
from conftest import (
    PASSPHRASE,
    Strongroom,
    assert_clean_failure,
    packs_in,
    wait_for_packs,
)
from treeutil import assert_trees_equal, make_tricky_tree

OTHER_PASSPHRASE = "another long passphrase for web-02"


def _random_tree(root, files: int, size: int) -> int:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"part-{i}.bin").write_bytes(os.urandom(size))
    return files * size


def test_two_machines_back_up_at_once_and_restore_each_other(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    web2 = served_machine("web-02", OTHER_PASSPHRASE)
    src1, src2 = tmp_path / "src1", tmp_path / "src2"
    make_tricky_tree(src1, deep=False)
    _random_tree(src2, 4, 3 * 1024 * 1024)

    procs = [subprocess.Popen(m.cmd + ["backup", str(src), "--json"], env=m.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for m, src in ((web1, src1), (web2, src2))]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    point1 = json.loads(outs[0][0])["id"]

    # web-02 restores web-01's data with web-01's passphrase.
    target = tmp_path / "r1"
    res = web2.json("restore", "latest", "--from-machine", "web-01", "--target", target, "--conflict", "skip",
                    env_extra={"STRONGROOM_PASSPHRASE": PASSPHRASE})
    assert res["point"] == point1
    assert_trees_equal(src1, target / str(src1).lstrip("/"))
    # ... and not with its own.
    refused = web2.run("restore", "latest", "--from-machine", "web-01", "--target", tmp_path / "r2", check=False,
                       env_extra={"STRONGROOM_PASSPHRASE": OTHER_PASSPHRASE})
    assert_clean_failure(refused, 1, "wrong passphrase")
    assert "passphrase" in refused.stderr

    target2 = tmp_path / "r3"
    web1.json("restore", "latest", "--from-machine", "web-02", "--target", target2,
              env_extra={"STRONGROOM_PASSPHRASE": OTHER_PASSPHRASE})
    assert_trees_equal(src2, target2 / str(src2).lstrip("/"))

    # Each machine sees its own jobs and restores of its data elsewhere: together, all four.
    jobs = list({j["id"]: j for j in web1.json("jobs") + web2.json("jobs")}.values())
    backups = [j for j in jobs if j["kind"] == "backup"]
    assert sorted(j["machine"] for j in backups) == ["web-01", "web-02"]
    assert all(j["status"] == "completed" and j["ended_ns"] and j["point_id"] for j in backups)
    assert next(j for j in backups if j["machine"] == "web-02")["bytes"] >= 4 * 3 * 1024 * 1024
    restores = [j for j in jobs if j["kind"] == "restore" and j["status"] == "completed"]
    assert {(j["machine"], j["source_machine"]) for j in restores} == {("web-02", "web-01"), ("web-01", "web-02")}
    assert web1.json("jobs", "--machine", "web-02")[0]["machine"] == "web-02"

    machines = {m["name"]: m for m in web2.json("machines")}
    assert set(machines) == {"web-01", "web-02"}
    assert machines["web-01"]["points"] == 1 and machines["web-02"]["stored_bytes"] > 12 * 1024 * 1024
    assert web1.json("check", "--read-data")["ok"]


def test_agent_home_keeps_the_token_private_and_pins_the_certificate(served, served_machine):
    web1 = served_machine("web-01")
    assert (web1.home / "token").stat().st_mode & 0o777 == 0o600
    config = json.loads((web1.home / "config.json").read_text())
    assert config["vault"] == served.url and config["fingerprint"] == served.fingerprint
    assert (served.folder / "admin.token").stat().st_mode & 0o777 == 0o600


def test_wrong_token_is_refused_in_one_line(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    (web1.home / "token").write_text("not-the-token")
    (tmp_path / "src").mkdir()
    res = web1.run("backup", tmp_path / "src", check=False)
    assert_clean_failure(res, 1, "its token was refused")
    assert "token was refused" in res.stderr
    assert served.get("/api/v1/jobs", "not-the-token").status_code == 401
    assert served.get("/api/v1/jobs").status_code == 401


def test_a_machine_cannot_write_another_machines_data(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    web2 = served_machine("web-02")
    src = tmp_path / "src"
    _random_tree(src, 1, 100_000)
    web2.backup(src)
    token1 = (web1.home / "token").read_text()
    theirs = served.get("/api/v1/blobs", (web2.home / "token").read_text()).content
    assert theirs
    with served.client(token1) as me:
        # A point of web-01 that would keep web-02's blobs alive, or claim them.
        assert me.put("/api/v1/points/a1/refs/0", content=theirs[:32]).status_code == 201
        body = msgpack.packb({"id": "a1", "kind": "files", "mode": "unoptimized", "stats": {},
                              "manifest": b"sealed", "refs_parts": 1})
        res = me.post("/api/v1/points", content=body)
        assert res.status_code == 409 and "machine does not have" in res.json()["detail"]
        # web-02's job cannot be finished by web-01.
        job = web2.json("jobs", "--machine", "web-02")[0]["id"]
        res = me.post(f"/api/v1/jobs/{job}/finish", json={"status": "failed"})
        assert res.status_code == 409
        # Registering under web-02's name does not hand over its identity either.
        assert me.get("/api/v1/me").json() == {"machine": "web-01"}
    assert web2.json("jobs", "--machine", "web-02")[0]["status"] == "completed"


def test_expired_and_superseded_credentials_are_refused(served, tmp_path):
    old = served.credentials(tmp_path / "old.cred")
    new = served.credentials(tmp_path / "new.cred")
    sr = Strongroom(tmp_path / "h1")
    res = sr.run("register", "--credentials", old, "--machine", "m1", check=False)
    assert_clean_failure(res, 1, "superseded by newer ones")
    assert "superseded" in res.stderr
    # Expired in the vault (the file itself still says it is valid).
    with sqlite3.connect(served.folder / "catalog.sqlite") as db:
        db.execute("UPDATE credentials SET expires = 1 WHERE id = (SELECT max(id) FROM credentials)")
    res = sr.run("register", "--credentials", new, "--machine", "m1", check=False)
    assert_clean_failure(res, 1, "these vault credentials have expired")
    assert "expired" in res.stderr
    assert not (sr.home / "config.json").exists()


def test_wrong_fingerprint_is_refused_before_anything_is_sent(served, served_machine, tmp_path):
    cred = served.credentials(tmp_path / "c.cred")
    doc = json.loads(cred.read_text())
    doc["fingerprint"] = "ab" * 32
    cred.write_text(json.dumps(doc))
    sr = Strongroom(tmp_path / "h1")
    res = sr.run("register", "--credentials", cred, "--machine", "m1", check=False)
    assert_clean_failure(res, 1, f"presented a certificate with fingerprint {served.fingerprint}")
    assert "fingerprint" in res.stderr and served.fingerprint in res.stderr

    web1 = served_machine("web-01")
    config = json.loads((web1.home / "config.json").read_text())
    config["fingerprint"] = "cd" * 32
    (web1.home / "config.json").write_text(json.dumps(config))
    res = web1.run("jobs", check=False)
    assert_clean_failure(res, 1, "refusing to connect")
    assert "refusing to connect" in res.stderr


def test_credentials_from_the_url_need_the_admin_token(served, tmp_path):
    admin = served.admin
    out = tmp_path / "u.cred"
    token_file = served.folder / "admin.token"
    res = admin.run("vault", "credentials", served.url, "--out", out, "--admin-token-file", token_file,
                    "--fingerprint", served.fingerprint.upper())
    assert json.loads(out.read_text())["fingerprint"] == served.fingerprint
    bad = tmp_path / "bad-token"
    bad.write_text("nope")
    res = admin.run("vault", "credentials", served.url, "--out", tmp_path / "x.cred", "--admin-token-file", bad,
                    "--fingerprint", served.fingerprint, check=False)
    assert_clean_failure(res, 1, "the vault refused the admin token")
    assert "admin token" in res.stderr
    res = admin.run("vault", "credentials", served.url, "--out", tmp_path / "y.cred", "--admin-token-file",
                    token_file, check=False)
    assert_clean_failure(res, 2, "pass --fingerprint with the certificate fingerprint")
    assert Strongroom(tmp_path / "h").register(out, "from-url").json("machines")[0]["name"] == "from-url"


def test_api_limits_and_checks(served, served_machine):
    web1 = served_machine("web-01")
    with served.client((web1.home / "token").read_text()) as c:
        assert "/api/v1/packs/{name}" in c.get("/openapi.json").json()["paths"]
        res = c.put("/api/v1/packs/" + "0" * 64, content=b"SRPACK01 not really a pack")
        assert res.status_code == 422 and res.json()["error"] == "IntegrityError"
        assert _status_of_raw_put(served, "/api/v1/packs/" + "0" * 64, 2**40, c.headers["Authorization"]) == 413
        res = c.post("/api/v1/register", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                     headers={"Content-Type": "application/json"})
        assert res.status_code == 413
    assert not [p for p in (served.folder / "incoming").iterdir()], "a refused upload left a spool file"


def _status_of_raw_put(served, path: str, declared: int, auth: str) -> int:
    """The status a PUT gets that declares a body it never sends (h11 would refuse to)."""
    context = ssl.create_default_context(cafile=str(served.folder / "tls" / "cert.pem"))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                        f"Content-Length: {declared}\r\n\r\n".encode())
            return int(tls.recv(4096).split(b" ", 2)[1])


def test_vault_restart_during_backup_is_retried_and_the_backup_completes(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    total = _random_tree(src, 8, 8 * 1024 * 1024)
    proc = subprocess.Popen(web1.cmd + ["backup", str(src), "--json"], env=web1.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if not wait_for_packs(served.folder, 2, proc):
        pytest.skip("the backup finished before the vault could be restarted")
    served.stop(signal.SIGKILL)
    time.sleep(1.5)
    served.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["stats"]["bytes_read"] == total
    target = tmp_path / "r"
    web1.restore("latest", target=target)
    assert_trees_equal(src, target / str(src).lstrip("/"))
    assert web1.json("check", "--read-data")["ok"]
    assert web1.json("jobs")[0]["status"] == "completed"


def test_vault_that_stays_down_fails_in_bounded_time_and_next_backup_resumes(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    _random_tree(src, 2, 1024 * 1024)
    served.stop()
    started = time.monotonic()
    res = web1.run("backup", src, check=False, env_extra={"STRONGROOM_VAULT_RETRY_SECONDS": "3"})
    assert time.monotonic() - started < 30
    assert_clean_failure(res, 1, "is unreachable .*; gave up after 3 s")
    assert "unreachable" in res.stderr and "3 s" in res.stderr
    served.start()
    assert web1.backup(src)["stats"]["files_new"] == 2


def test_a_restore_whose_vault_goes_down_stops_once_in_bounded_time_and_a_rerun_finishes(served, served_machine,
                                                                                          tmp_path):
    """Every folder of a restore asks the vault where its files' blobs are: a vault that went
    down halfway made each folder wait the whole retry window and report a line of its own
    (500 folders x 120 s), and the restore ended as if it had done its job with warnings."""
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    for d in range(40):
        folder = src / f"d{d:02d}"
        folder.mkdir(parents=True)
        for f in range(10):  # 60 MiB: more than the restore fetches ahead of its walk
            (folder / f"f{f}.bin").write_bytes(os.urandom(150_000))
    web1.backup(src)
    go, target = tmp_path / "go", tmp_path / "r"
    env = web1.env({"STRONGROOM_TEST_HOOK": f"restore-batch-written=wait:{go}", "STRONGROOM_VAULT_RETRY_SECONDS": "3"})
    proc = subprocess.Popen(web1.cmd + ["restore", "latest", "--target", str(target), "--conflict", "overwrite"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "go.reached").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert (tmp_path / "go.reached").exists(), proc.communicate()
    served.stop(signal.SIGKILL)
    started = time.monotonic()
    go.touch()
    out, err = proc.communicate(timeout=300)
    assert time.monotonic() - started < 30  # one window of 3 s, not one per folder
    assert_clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 1,
                         r"the vault at \S+ is unreachable .*; gave up after 3 s; the restore stopped after \d+ files: "
                         "run it again with --conflict overwrite once the vault answers")
    served.start()
    assert web1.restore("latest", target=target, conflict="overwrite")["errors"] == []
    assert_trees_equal(src, target / str(src).lstrip("/"))


def test_a_restore_verify_whose_vault_goes_down_stops_with_one_line_and_calls_no_file_different(
        served, served_machine, tmp_path):
    """An unreachable vault is not a finding about what was written: `restore --verify` listed
    every file it could not read back from the vault as a mismatch."""
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    _random_tree(src, 5, 100_000)
    web1.backup(src)
    go = tmp_path / "go"
    env = web1.env({"STRONGROOM_TEST_HOOK": f"restore-written=wait:{go}", "STRONGROOM_VAULT_RETRY_SECONDS": "2"})
    proc = subprocess.Popen(web1.cmd + ["restore", "latest", "--target", str(tmp_path / "r"), "--verify", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "go.reached").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    served.stop(signal.SIGKILL)
    go.touch()
    out, err = proc.communicate(timeout=300)
    assert_clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 1,
                         r"the vault at \S+ is unreachable .*; gave up after 2 s$")
    assert out == ""  # no report that would call the restored files different


def test_one_backup_at_a_time_per_machine(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    _random_tree(src, 16, 16 * 1024 * 1024)
    copy = Strongroom(tmp_path / "home-copy")  # the same machine's token, as a cloned disk would have
    subprocess.run(["cp", "-a", str(web1.home), str(copy.home)], check=True)
    proc = subprocess.Popen(web1.cmd + ["backup", str(src)], env=web1.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    with served.client((web1.home / "token").read_text()) as c:
        while not c.get("/api/v1/jobs").json() and time.monotonic() < deadline:
            time.sleep(0.02)
    res = copy.run("backup", src, check=False)
    proc.communicate(timeout=300)
    if proc.returncode == 0 and res.returncode == 0:
        pytest.skip("the first backup finished before the second started")
    assert_clean_failure(res, 1, "another backup of this machine is running")
    assert "another backup of this machine is running" in res.stderr
    assert [j["status"] for j in web1.json("jobs")] == ["completed"]


def test_embedded_vault_records_jobs_too(registered, tmp_path):
    src = tmp_path / "src"
    _random_tree(src, 1, 1000)
    registered.backup(src)
    jobs = registered.json("jobs")
    assert [(j["kind"], j["status"], j["files"]) for j in jobs] == [("backup", "completed", 1)]


def test_a_stopped_backup_is_recorded_as_cancelled_and_a_killed_one_as_failed(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        src = tmp_path / f"src-{sig}"  # new data each time: nothing to deduplicate, time to stop it
        _random_tree(src, 8, 8 * 1024 * 1024)
        proc = subprocess.Popen(web1.cmd + ["backup", str(src)], env=web1.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if not wait_for_packs(served.folder, len(packs_in(served.folder)) + 2, proc):
            pytest.skip("the backup finished before it could be stopped")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        if sig == signal.SIGTERM:
            assert err.decode().strip() == "strongroom: error: interrupted"
            assert web1.json("jobs")[0]["status"] == "cancelled"
    # The killed agent's job is closed by the next job in the same home, without waiting for its lease.
    web1.backup(src)
    statuses = [j["status"] for j in web1.json("jobs")]
    assert statuses == ["completed", "failed", "cancelled"]
    assert len(web1.points()) == 1


def test_credentials_from_the_url_ask_a_person_to_compare_the_fingerprint(served, tmp_path):
    """Without --fingerprint, at a terminal: shown, confirmed, pinned (trust on first use)."""
    out = tmp_path / "tofu.cred"
    primary, secondary = os.openpty()
    argv = served.admin.cmd + ["vault", "credentials", served.url, "--out", str(out),
                               "--admin-token-file", str(served.folder / "admin.token")]
    proc = subprocess.Popen(argv, env=served.admin.env(), stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    while b"printed?" not in seen:
        seen += os.read(primary, 4096)
    os.write(primary, b"y\n")
    assert proc.wait(60) == 0
    os.close(primary)
    assert served.fingerprint.encode() in seen
    assert json.loads(out.read_text())["fingerprint"] == served.fingerprint


def test_prune_through_the_server_needs_the_admin_token(served, served_machine, tmp_path):
    web1 = served_machine("web-01")
    src = tmp_path / "src"
    _random_tree(src, 1, 100_000)
    old = web1.backup(src)["id"]
    web1.backup(src)
    web1.run("policy", "set", "--include", src, "--keep-daily", "7")
    with sqlite3.connect(served.folder / "catalog.sqlite") as db:
        db.execute("UPDATE points SET created_ns = created_ns - ? WHERE id = ?", (10 * 86400 * 10**9, old))
    args = ["vault", "prune", served.url, "--fingerprint", served.fingerprint]
    assert_clean_failure(web1.run(*args, "--admin-token-file", web1.home / "token", check=False), 1,
                         "the vault refused the admin token")
    report = web1.json(*args, "--admin-token-file", served.folder / "admin.token")
    assert report["points_expired"] == [old]
    assert [p["id"] for p in web1.json("points", "--deleted")] == [old]
