"""The agent daemon carries out a schedule a few seconds apart, records jobs, stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

from treeutil import assert_trees_equal


def test_daemon_runs_the_schedule_and_records_its_jobs(registered, tmp_path):
    sr = registered
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first")
    now = datetime.now(timezone.utc)
    # Far enough ahead for `policy set` and the daemon to unwrap the key (Argon2id) first,
    # which takes seconds on a loaded machine: a daemon that starts late skips the first run.
    times = [(now + timedelta(seconds=s)).strftime("%H:%M:%S") for s in (25, 35)]
    if times[1] < times[0]:  # the two runs would straddle midnight (UTC): keep the test simple
        times = [(now + timedelta(seconds=s)).strftime("%H:%M:%S") for s in (80, 90)]
    sr.run("policy", "set", "--include", src, "--daily", ",".join(times), "--keep-daily", "7",
           "--timezone", "UTC")
    daemon = subprocess.Popen(sr.cmd + ["agent", "run"], env=sr.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
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
    jobs = sr.json("jobs")
    assert [(j["kind"], j["status"]) for j in jobs] == [("backup", "completed")] * 2
    target = tmp_path / "r"
    sr.restore("latest", target=target)
    assert_trees_equal(src, target / str(src).lstrip("/"))
