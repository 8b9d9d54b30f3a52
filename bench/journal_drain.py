#!/usr/bin/env python3
"""The change journal's per-event cost: CPU of the keeper's `drain` per file written.

    python bench/journal_drain.py [--files 30000] [--names 5000] [--watch-module OLD/watch.py]

Root only (fanotify). Mounts a private tmpfs, so that no other activity on the machine reaches
the fanotify mark (`FAN_MARK_FILESYSTEM` on the root filesystem sees every engineer's files),
rewrites `--files` files among `--names` names in one folder, 1,000 at a time (the churn of
bench/journal.py), and times only `drain` (thread CPU). `--watch-module` loads another
version of agent/watch.py too (e.g. `git show 532e35e:src/strongroom/agent/watch.py >
/tmp/old_watch.py`), to compare both in one run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from strongroom.agent import watch  # noqa: E402


def load(path: str):  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location("watch_other", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["watch_other"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def per_file_us(module, folder: bytes, files: int, names: int) -> float:  # noqa: ANN001
    fa = module.Fanotify([folder])
    out = module.Drained()
    cpu = 0.0
    try:
        for start in range(0, files, 1000):
            for i in range(start, min(files, start + 1000)):
                with open(folder + b"/f%d" % (i % names), "w") as f:
                    f.write("x")
            began = time.thread_time()
            fa.drain(out)
            cpu += time.thread_time() - began
    finally:
        fa.close()
    return cpu / files * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=30_000)
    ap.add_argument("--names", type=int, default=5_000)
    ap.add_argument("--watch-module", help="another agent/watch.py to time beside this one")
    args = ap.parse_args()
    modules = [("this", watch)] + ([("other", load(args.watch_module))] if args.watch_module else [])
    mount = tempfile.mkdtemp(prefix="journal-drain-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount], check=True)
    try:
        folder = os.fsencode(mount) + b"/d"
        os.mkdir(folder)
        for _round in range(2):
            for label, module in modules:
                print(f"{label}: {per_file_us(module, folder, args.files, args.names):.2f} µs of CPU per file written")
    finally:
        subprocess.run(["umount", mount], check=True)
        os.rmdir(mount)


if __name__ == "__main__":
    main()
