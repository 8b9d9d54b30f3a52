"""A policy protecting files, a volume and the system state together: `policy show` lists
them (sealed in the vault), and one scheduled run of the daemon makes a point of each kind."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from blockdev import devices, need  # noqa: F401 - devices is a fixture
from conftest import assert_clean_failure, saying

from strongroom.agent.daemon import STATE_FILE


def test_policy_protects_files_volumes_and_system_state_together(registered, devices, tmp_path):  # noqa: F811
    need("mkfs.ext4", "losetup")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    vol = devices.mount(devices.loop(devices.image(tmp_path / "v.img", 16, "ext4")), tmp_path / "vol")
    (vol / "on-the-volume.txt").write_text("v")
    zone = "UTC"
    now = datetime.now(ZoneInfo(zone)).replace(microsecond=0)
    at = now + timedelta(seconds=12)
    if at.date() != now.date():
        at = now + timedelta(seconds=80)
    (registered.home / STATE_FILE).write_text(json.dumps({"last_run": now.timestamp()}))
    registered.run("policy", "set", "--include", src, "--volume", vol, "--system-state",
                   "--daily", at.strftime("%H:%M:%S"), "--keep-daily", "7", "--timezone", zone)

    shown = registered.json("policy", "show")["policy"]
    assert shown["includes"] == [str(src)] and shown["volumes"] == [str(vol)] and shown["system_state"] is True
    text = registered.run("policy", "show").stdout
    assert f"protect:   {src}; volumes {vol}; system state" in text
    sealed = registered.run("policy", "show", env_extra={"STRONGROOM_PASSPHRASE": None}).stdout
    assert "1 path(s), 0 exclusion(s), 1 volume(s); system state (sealed" in sealed
    stored = "".join(p.read_text() for p in (registered.vault / "policies").rglob("*.json"))
    assert '"volume_count": 1' in stored and str(vol) not in stored and str(src) not in stored

    daemon = subprocess.Popen(registered.cmd + ["agent", "run"], env=registered.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        kinds: list[str] = []
        while len(kinds) < 3 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(1)
            kinds = [p["kind"] for p in registered.points()]
    finally:
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=120)
    assert sorted(kinds) == ["files", "system-state", "volume"], err.decode()[-3000:]
    volume_point = next(p for p in registered.points() if p["kind"] == "volume")
    assert volume_point["volume"]["mount"] == str(vol) and volume_point["stats"]["files_new"] == 1
    jobs = registered.json("jobs")
    assert sorted(j["point_kind"] for j in jobs) == ["files", "system-state", "volume"]


def test_policy_needs_something_to_protect(registered):
    assert_clean_failure(registered.run("policy", "set", "--daily", "12:00", check=False), 2,
                         saying("needs at least one --include, --volume or --system-state"))
    registered.run("policy", "set", "--system-state", "--daily", "12:00")
    assert registered.json("policy", "show")["policy"]["system_state"] is True
