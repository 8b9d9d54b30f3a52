#!/usr/bin/env python3
"""Restore timings right after a big deletion, the state that made Strongroom slower than restic.

ext4 without a journal (this machine's root filesystem) skips recently freed inodes one by
one at each inode allocation (fs/ext4/ialloc.c: find_inode_bit -> recently_deleted), so a
restore that starts right after another tree of tens of thousands of files was deleted pays
for that in kernel time. bench/run.py sees it by position in a round; this script makes the
state on purpose and times Strongroom's and restic's restores in it, alternating, with the
tools from bench/run.py (same commands, same environment). Standard library only.

    python bench/restore_after_delete.py [--workdir bench/work/after-delete] [--small 50000]
        [--scale 0.05] [--rounds 3] [--baseline-bin OTHER/strongroom] [--verify]
        [--fs here|nojournal|journal] [--state deleted|calm] [--tools strongroom,restic]

--fs: where the restores go: `here` (a folder under --workdir, on its filesystem), or a
fresh ext4 made in a loop device (`nojournal`: mkfs.ext4 -O ^has_journal, like this
machine's root; `journal`: the default, like most users' filesystems), mounted under the
workdir. --state deleted: before each timed restore, the tree of the restore before it
(the first time: a copy of the corpus) is deleted with `rm -rf`; calm: each restore goes
to a freshly made loop filesystem (needs --fs nojournal or journal). Prints one line per
restore (wall, user, sys) and the medians, and writes results-after-delete.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: the tools and the measured runner)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class LoopFs:
    """An ext4 in a loop device (sparse image under the workdir), made again on demand."""

    def __init__(self, workdir: str, journal: bool, size_gib: int) -> None:
        self.image = os.path.join(workdir, f"ext4-{'j' if journal else 'nj'}.img")
        self.mnt = os.path.join(workdir, f"mnt-{'j' if journal else 'nj'}")
        self.journal, self.size, self.dev = journal, size_gib, None

    def make(self) -> str:
        self.drop()
        with open(self.image, "wb") as f:
            f.truncate(self.size << 30)
        opts = [] if self.journal else ["-O", "^has_journal"]
        sh("mkfs.ext4", "-q", "-F", *opts, self.image)
        self.dev = sh("losetup", "-f", "--show", self.image)
        os.makedirs(self.mnt, exist_ok=True)
        sh("mount", self.dev, self.mnt)
        return self.mnt

    def drop(self) -> None:
        if self.dev:
            subprocess.run(["umount", self.mnt], check=False)
            subprocess.run(["losetup", "-d", self.dev], check=False)
            self.dev = None
        if os.path.exists(self.image):
            os.unlink(self.image)


class Baseline(bench.Strongroom):
    """Another strongroom executable on strongroom's vault and agent home (restores only)."""

    name = "baseline"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.repo, self.state = self.repo.replace("baseline", "strongroom"), self.state.replace("baseline", "strongroom")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=os.path.join(bench.HERE, "work", "after-delete"))
    ap.add_argument("--small", type=int, default=50000)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fs", choices=("here", "nojournal", "journal"), default="here")
    ap.add_argument("--state", choices=("deleted", "calm"), default="deleted")
    ap.add_argument("--tools", default="strongroom,restic", help="strongroom and/or restic")
    ap.add_argument("--verify", action="store_true", help="check every restored tree (as bench/run.py)")
    ap.add_argument("--strongroom-bin")
    ap.add_argument("--baseline-bin", help="adds the tool `baseline`: this strongroom executable (e.g. "
                    "another checkout's), restoring from the same vault as `strongroom`")
    ap.add_argument("--loop-gib", type=int, default=8)
    args = ap.parse_args()
    if args.state == "calm" and args.fs == "here":
        ap.error("--state calm needs a fresh filesystem: --fs nojournal or --fs journal")
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    bench.Strongroom.bin = bench.find_strongroom(args.strongroom_bin)
    names = args.tools.split(",")
    if args.baseline_bin:
        if "strongroom" not in names:
            ap.error("--baseline-bin needs strongroom in --tools (they share its vault)")
        names.append("baseline")
    corpus, _state = bench.prepare_corpus(workdir, args.small, args.scale, reuse=False)
    tools = {}
    for n in names:  # one repository per tool, backed up once and kept between runs
        if n == "baseline":
            tools[n] = Baseline(workdir, 0, corpus, 3600)
            tools[n].bin = args.baseline_bin
            continue
        t = bench.TOOL_CLASSES[n](workdir, 0, corpus, 3600)
        marker = os.path.join(t.state, "backed-up")
        if not os.path.exists(marker):
            t.fresh()
            t.setup()
            t.backup("initial")
            open(marker, "w").close()
        tools[n] = t
    want = os.path.join(workdir, "want.pickle")
    if args.verify:
        bench.in_child(bench.hash_source, corpus, want)
    bench.warm_cache(corpus)
    loop = LoopFs(workdir, args.fs == "journal", args.loop_gib) if args.fs != "here" else None
    root = loop.make() if loop else os.path.join(workdir, "restores")
    os.makedirs(root, exist_ok=True)
    for leftover in os.listdir(root):  # an interrupted run's trees
        if leftover.startswith(("r", "previous")) and not os.path.ismount(os.path.join(root, leftover)):
            shutil.rmtree(os.path.join(root, leftover))
    previous = os.path.join(root, "previous")
    if args.state == "deleted":  # the first restore too comes after a deletion
        subprocess.run(["cp", "-a", corpus, previous], check=True)
    rows = []
    try:
        for rnd in range(args.rounds):
            for k, n in enumerate(names[rnd % len(names):] + names[:rnd % len(names)]):
                if args.state == "calm":
                    root = loop.make()
                else:
                    os.sync()
                    shutil.rmtree(previous)
                target = os.path.join(root, f"r{rnd}-{n}")
                os.makedirs(target)
                res = tools[n].restore(target)
                row = {"round": rnd, "position": k + 1, "tool": n, "wall": round(res["seconds"], 2),
                       "user": round(res["user_s"], 2), "sys": round(res["sys_s"], 2), "rc": res["rc"]}
                if args.verify:
                    v = bench.in_child(bench.verify_against, os.path.join(target, corpus.lstrip(os.sep)), want,
                                       tools[n].mtime_precision_ns)
                    row["verify_ok"] = v["ok"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                previous = target
    finally:
        if loop:
            loop.drop()
    summary = {}
    for n in names:
        mine = [r for r in rows if r["tool"] == n]
        summary[n] = {k: statistics.median(r[k] for r in mine) for k in ("wall", "user", "sys")}
        print(f"{n:18s} median wall {summary[n]['wall']:6.2f} s  user {summary[n]['user']:6.2f}  "
              f"sys {summary[n]['sys']:6.2f}  over {len(mine)}", flush=True)
    with open(os.path.join(workdir, "results-after-delete.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
