"""Prune is safe beside running backups: 50 prune runs beside a loop of backups of a changing
tree, some of them cancelled halfway (their uploaded packs are garbage for prune to drop),
then `check --read-data` is clean and every point restores to the tree it was taken of."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading

from conftest import wait_for_packs
from treeutil import assert_trees_equal

PRUNE_RUNS = 50


def _mutate(src, rng: random.Random, step: int) -> None:
    files = sorted(src.iterdir())
    for f in rng.sample(files, min(4, len(files))):
        f.write_bytes(os.urandom(rng.randrange(50_000, 400_000)))
    if len(files) > 10:
        rng.choice(files).unlink()
    (src / f"new-{step}.bin").write_bytes(os.urandom(rng.randrange(1, 300_000)))


def test_prune_runs_beside_backups_lose_nothing(registered, tmp_path):
    sr, vault = registered, registered.vault
    src, copies = tmp_path / "src", tmp_path / "copies"
    src.mkdir()
    rng = random.Random(8)
    for i in range(30):
        (src / f"f{i:02}.bin").write_bytes(os.urandom(rng.randrange(50_000, 400_000)))
    done = threading.Event()
    pruned: list[dict] = []
    failures: list[str] = []

    def prune_loop() -> None:
        try:
            for _ in range(PRUNE_RUNS):
                res = sr.run("vault", "prune", vault, "--repack-below", "0.9", "--json", check=False)
                if res.returncode != 0:
                    failures.append(res.stderr)
                    return
                pruned.append(res)
        finally:
            done.set()

    pruner = threading.Thread(target=prune_loop)
    pruner.start()
    points: list[str] = []
    step = 0
    while not done.is_set() or step < 6:
        step += 1
        _mutate(src, rng, step)
        argv = sr.cmd + ["backup", str(src), "--json"]
        proc = subprocess.Popen(argv, env=sr.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if step % 3 == 0 and wait_for_packs(vault, 1, proc, timeout=30):
            proc.send_signal(signal.SIGTERM)  # cancelled halfway: its packs are garbage
        out, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            points.append(json.loads(out)["id"])
            shutil.copytree(src, copies / points[-1])
        else:
            assert b"Traceback" not in err, err
    pruner.join()
    assert not failures, failures[0]
    assert len(pruned) == PRUNE_RUNS and len(points) >= 4

    report = sr.json("check", "--read-data")
    assert report["ok"], report["errors"]
    # A backup stopped just after its point was recorded keeps it: every point must restore,
    # and those whose tree is known must restore to it byte for byte.
    listed = [p["id"] for p in sr.points()]
    assert set(points) <= set(listed)
    for pid in listed:
        target = tmp_path / f"r-{pid}"
        sr.restore(pid, target=target)
        if pid in points:
            assert_trees_equal(copies / pid, target / str(src).lstrip("/"))
        shutil.rmtree(target)
