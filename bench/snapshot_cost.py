"""What a btrfs snapshot costs a backup: a no-change backup of the same tree on btrfs, read from a
snapshot and read live, alternating, in one run (root only: a btrfs in a loop device).

    sudo .venv/bin/python bench/snapshot_cost.py [--files 20000] [--rounds 3]

Reading live is forced by running the backup in-process with the snapshot step answering
"not btrfs" (bench only: the product has no switch for it). Prints medians in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from strongroom.agent import snapshot
from strongroom.agent.home import AgentHome
from strongroom.agent.jobrun import prepare_backup, run_backup_job

PASSPHRASE = "correct horse battery staple"


def sh(*args: Any) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def backup(agent: AgentHome, src: Path, live: bool) -> float:
    original = snapshot._why_live
    if live:
        snapshot._why_live = lambda _src: ""  # type: ignore[assignment]
    try:
        vault = agent.vault()
        key = agent.master_key(PASSPHRASE)
        started = time.perf_counter()
        run = prepare_backup(agent, vault, key, [os.fsencode(src)], [])
        result, _warnings, _notes = run_backup_job(agent, vault, run)
        took = time.perf_counter() - started
        assert result.stats["files_changed"] == 0 and (run.view.kind is None) == live  # type: ignore[union-attr]
        return took
    finally:
        snapshot._why_live = original  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        image, mnt = base / "img", base / "mnt"
        with open(image, "wb") as f:
            f.truncate(1 << 30)
        sh("mkfs.btrfs", "-q", image)
        mnt.mkdir()
        dev = sh("losetup", "-f", "--show", image).strip()
        sh("mount", dev, mnt)
        try:
            sh("btrfs", "subvolume", "create", mnt / "sub")
            src = mnt / "sub" / "tree"
            for i in range(args.files):
                d = src / f"d{i // 200:04d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:06d}").write_bytes(os.urandom(512))
            os.environ["STRONGROOM_PASSPHRASE"] = PASSPHRASE
            env = {**os.environ, "STRONGROOM_HOME": str(base / "home")}
            exe = [str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "strongroom")]
            subprocess.run(exe + ["vault", "create", str(base / "vault")], check=True, env=env, capture_output=True)
            subprocess.run(exe + ["vault", "credentials", str(base / "vault"), "--out", str(base / "cred")],
                           check=True, env=env, capture_output=True)
            subprocess.run(exe + ["register", "--credentials", str(base / "cred"), "--machine", "bench"],
                           check=True, env=env, capture_output=True)
            agent = AgentHome(base / "home")
            backup(agent, src, live=True)  # the first, full backup
            times: dict[str, list[float]] = {"snapshot": [], "live": []}
            for _ in range(args.rounds):
                for way in ("snapshot", "live"):
                    times[way].append(backup(agent, src, live=way == "live"))
            snap, live = statistics.median(times["snapshot"]), statistics.median(times["live"])
            print(f"no-change backup of {args.files} files on btrfs, median of {args.rounds}: "
                  f"from a snapshot {snap:.2f} s, live {live:.2f} s ({snap / live:.2f}x)")
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


if __name__ == "__main__":
    main()
