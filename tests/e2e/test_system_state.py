"""System-state points (`backup --system-state`): this machine's /etc and generated pieces,
restored to a folder with its RESTORE.md; `system-state apply --dry-run`; tools that are
missing, fail or hang are warnings, not failures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import assert_clean_failure, saying
from treeutil import assert_trees_equal


def test_system_state_round_trip(registered, tmp_path):
    res = registered.run("backup", "--system-state", "--json", check=False)
    assert res.returncode in (0, 3), res.stderr  # 3: a tool could not capture its piece here (a warning)
    made = json.loads(res.stdout)
    assert made["kind"] == "system-state" and "/etc" in made["sources"]
    assert made["system_state"]["dir"] == "/system-state" and made["stats"]["pieces"] >= 5
    assert [p["kind"] for p in registered.points()] == ["system-state"]

    listed = {r["path"] for r in registered.json("ls", "latest", "/system-state")}
    assert {"/system-state/system-state.json", "/system-state/kernel/cmdline",
            "/system-state/users/passwd.txt", "/system-state/disks/findmnt.json"} <= listed
    if shutil.which("dpkg"):
        assert "/system-state/packages/dpkg-selections.txt" in listed

    again = json.loads(registered.run("backup", "--system-state", "--json", check=False).stdout)["stats"]
    assert again["files_unchanged"] >= made["stats"]["files_new"] - 40  # /etc carried over from its parent

    out = tmp_path / "state"
    restored = registered.restore("latest", target=out)
    assert restored["kind"] == "system-state" and restored["errors"] == []
    assert restored["restore_md"] == str(out / "RESTORE.md")
    assert (out / "etc" / "passwd").read_bytes() == Path("/etc/passwd").read_bytes()
    assert_trees_equal(Path("/etc/apt"), out / "etc" / "apt")
    index = json.loads((out / "system-state" / "system-state.json").read_text())
    assert index["strongroom_system_state"] == 1 and index["host"] == os.uname().nodename
    assert (out / "system-state" / "kernel" / "cmdline").read_bytes() == Path("/proc/cmdline").read_bytes()
    assert json.loads((out / "system-state" / "disks" / "findmnt.json").read_text())["filesystems"]
    guide = (out / "RESTORE.md").read_text()
    assert f"# Restoring the system state of {os.uname().nodename}" in guide
    assert f"strongroom system-state apply {out} --dry-run" in guide or not shutil.which("dpkg")
    assert restored["kind"] == "system-state"

    if shutil.which("dpkg"):
        plan = registered.json("system-state", "apply", out, "--dry-run")
        argvs = [c["argv"] for c in plan["commands"]]
        assert ["dpkg", "--set-selections"] in argvs and plan["ran"] == []
        text = registered.run("system-state", "apply", out, "--dry-run").stdout
        assert text.splitlines()[0] == f"dpkg --set-selections < {out}/system-state/packages/dpkg-selections.txt"


def test_missing_failing_and_hanging_tools_are_warnings(registered, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for real in ("cat", "uname", "getent"):
        (tools / real).symlink_to(shutil.which(real))
    # hangs, and leaves a child holding its output open
    (tools / "blkid").write_text("#!/bin/sh\n/bin/sleep 30 &\nexec /bin/sleep 30\n")
    (tools / "lsblk").write_text("#!/bin/sh\necho 'lsblk: broken' >&2\nexit 2\n")
    for f in ("blkid", "lsblk"):
        (tools / f).chmod(0o755)
    res = registered.run("backup", "--system-state", "--json", check=False,
                         env_extra={"PATH": str(tools), "STRONGROOM_TOOL_TIMEOUT": "1"})
    assert res.returncode == 3, res.stderr
    warnings = {w["path"]: w["error"] for w in json.loads(res.stdout)["warnings"]}
    assert warnings["/system-state/disks/blkid.txt"] == \
        "filesystem and partition identifiers not captured: blkid took more than 1 s"
    assert warnings["/system-state/disks/lsblk.json"] == "block devices not captured: lsblk exited 2"
    assert warnings["/system-state/disks/findmnt.json"] == "mounted filesystems skipped: findmnt is not installed"
    assert "/system-state/kernel/cmdline" not in warnings
    out = tmp_path / "state"
    registered.restore("latest", target=out)
    index = json.loads((out / "system-state" / "system-state.json").read_text())
    status = {p["file"]: (p["status"], p.get("reason")) for p in index["pieces"]}
    assert status["disks/blkid.txt"] == ("failed", "took more than 1 s")
    assert status["disks/lsblk.json"] == ("failed", "exit 2: lsblk: broken")
    assert status["kernel/cmdline"] == ("ok", None)
    assert "- block devices (disks/lsblk.json): failed, exit 2: lsblk: broken" in (out / "RESTORE.md").read_text()
    assert (out / "etc" / "passwd").exists()  # the real files do not depend on any tool


def test_apply_refusals(registered, tmp_path):
    assert_clean_failure(registered.run("system-state", "apply", tmp_path, "--dry-run", check=False), 2,
                         saying(str(tmp_path), "holds no restored system state"))
    state = tmp_path / "state" / "system-state"
    (state / "systemd").mkdir(parents=True)
    (state / "system-state.json").write_text("not json")
    assert_clean_failure(registered.run("system-state", "apply", tmp_path / "state", "--dry-run", check=False), 2,
                         saying("system-state.json is damaged"))
    (state / "system-state.json").write_text(json.dumps({"strongroom_system_state": 1, "pieces": []}))
    (state / "systemd" / "enabled-units.txt").write_text("ssh.service enabled\n--root=/tmp/x.service enabled\n")
    assert_clean_failure(registered.run("system-state", "apply", tmp_path / "state", check=False), 2,
                         saying("enabled-units.txt lists a name that is not one", "--root=/tmp/x.service"))
