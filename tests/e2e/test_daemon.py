"""The agent daemon carries out a schedule a few seconds apart, records jobs, stops cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from treeutil import assert_trees_equal

from strongroom.agent.daemon import STATE_FILE

# A zone that is neither UTC nor, surely, the machine's (UTC+12:45 or +13:45): a daemon that
# read the times in another zone would run hours off, not within the test.
ZONE = "Pacific/Chatham"
# A point is recorded after its backup ran: a few seconds late, a minute under heavy load
# (two test workers on two busy cores). Early, never.
LATE_S = 60


def test_daemon_runs_the_schedule_and_records_its_jobs(registered, tmp_path):
    sr = registered
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first")
    now = datetime.now(ZoneInfo(ZONE)).replace(microsecond=0)
    runs = [now + timedelta(seconds=s) for s in (15, 45)]
    if runs[1].date() != runs[0].date():  # the two runs would straddle midnight: keep the test simple
        runs = [now + timedelta(seconds=s) for s in (105, 135)]
    # As if the daemon had been running until now: a daemon slow to start under load then runs
    # the first time late, as a missed backup, instead of skipping it as a first start does.
    (sr.home / STATE_FILE).write_text(json.dumps({"last_run": now.timestamp()}))
    sr.run("policy", "set", "--include", src, "--daily", ",".join(t.strftime("%H:%M:%S") for t in runs),
           "--keep-daily", "7", "--timezone", ZONE)
    daemon = subprocess.Popen(sr.cmd + ["agent", "run"], env=sr.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        seen = 0
        while seen < 2 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
            points = sr.points()
            if len(points) == 1 and seen == 0:
                seen = 1
                (src / "a.txt").write_text("second, changed between the scheduled runs")
            seen = max(seen, len(points))
        assert seen == 2, f"the daemon made {seen} points"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err.decode()
    assert "scheduled backup: point" in err.decode()
    made = sorted(datetime.fromisoformat(p["created"]) for p in sr.points())
    for run, created in zip(runs, made, strict=True):
        assert run <= created < run + timedelta(seconds=LATE_S), f"scheduled at {run}, made at {created}"
    jobs = sr.json("jobs")
    assert [(j["kind"], j["status"]) for j in jobs] == [("backup", "completed")] * 2
    target = tmp_path / "r"
    sr.restore("latest", target=target)
    assert_trees_equal(src, target / str(src).lstrip("/"))


def test_daemon_with_a_file_in_place_of_its_cache_folder_says_so_and_keeps_running(registered, tmp_path):
    sr = registered
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    sr.run("policy", "set", "--include", src, "--daily", "03:00", "--keep-daily", "7")
    shutil.rmtree(sr.home / "cache")
    (sr.home / "cache").write_text("not a folder")
    daemon = subprocess.Popen(sr.cmd + ["agent", "run"], env=sr.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(daemon.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("change journal: the cache folder" in line for line in lines) and time.monotonic() < deadline:
            assert daemon.poll() is None, "".join(lines)
            time.sleep(0.1)
        time.sleep(0.5)
        assert daemon.poll() is None, "".join(lines)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        reader.join(timeout=10)
    assert daemon.returncode == 0, "".join(lines)
    assert any(f"the cache folder {sr.home / 'cache'} is not a folder" in line and "backups run unoptimized" in line
               for line in lines), "".join(lines)
    assert not any("Traceback" in line for line in lines)
