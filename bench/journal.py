#!/usr/bin/env python3
"""Optimized backups (the change journal) against unoptimized ones and restic, on one corpus.

    python bench/journal.py [--workdir bench/work-journal] [--small 50000] [--scale 1.0]
                            [--churn-seconds 10] [--tree N] [--keep]
    make bench-journal                      # the same with the defaults
    make bench-journal ARGS="--small 5000 --scale 0.02"   # a small corpus, in a minute

Three repositories of the same corpus (bench/corpus.py): Strongroom with
`strongroom agent run` keeping the change journal (optimized backups), Strongroom without it
and with `--unoptimized`, and restic. Each takes an initial backup; then, one tool after the
other on the same state: a no-change backup; `bench/corpus.py mutate` (1 % of the small files
rewritten, 100 added, 100 deleted, two large files changed); a backup after it. Wall time
and peak RSS of each command come from os.wait4(). Last, the daemon's steady cost: its CPU
and RSS while 1,000 files a second change under the source (--churn-seconds, 0 to skip).
With --tree N, also a tree of N tiny files (bench/scale.py's): an optimized and an
unoptimized backup after 10 of them changed.
restic (Debian package `restic`) is installed here if missing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MAKE_CORPUS = os.path.join(REPO, "bench", "corpus.py")  # the bench's own generator: a clean clone has no ../shared
PASSPHRASE = "strongroom-bench-passphrase-0123456789"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    """Runs `cmd`; its wall time, peak RSS and, where it prints JSON, what it printed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)  # reaped here: the child's own peak RSS
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
        result = {"s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                  "rss_mib": round(usage.ru_maxrss / 1024, 1)}
        try:
            result["json"] = json.loads(out.read())
        except ValueError:
            pass
    return result


def ensure_restic() -> str:
    if shutil.which("restic") is None:
        log("installing restic (Debian package)")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "restic"], check=True,
                       stdout=subprocess.DEVNULL)
    return shutil.which("restic") or "restic"


def strongroom_bin() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "strongroom")
    return venv if os.path.exists(venv) else shutil.which("strongroom") or "strongroom"


class Strongroom:
    def __init__(self, work: str, name: str, corpus: str, journal: bool) -> None:
        self.home = os.path.join(work, name, "home")
        self.vault = os.path.join(work, name, "vault")
        self.corpus, self.journal, self.sr = corpus, journal, strongroom_bin()
        self.env = {**os.environ, "STRONGROOM_HOME": self.home, "STRONGROOM_PASSPHRASE": PASSPHRASE}
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = os.path.join(work, name, "daemon.log")
        cred = os.path.join(work, name, "cred")
        for args in (["vault", "create", self.vault], ["vault", "credentials", self.vault, "--out", cred],
                     ["register", "--credentials", cred, "--machine", name],
                     ["policy", "set", "--include", corpus, "--daily", "03:00", "--keep-daily", "7"]):
            subprocess.run([self.sr, *args], env=self.env, check=True, stdout=subprocess.DEVNULL)
        if journal:
            self.daemon = subprocess.Popen([self.sr, "agent", "run"], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=open(self.daemon_log, "wb"))
            marker = os.path.join(self.home, "cache", "journal", "journal")
            deadline = time.monotonic() + 120
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.1)

    def backup(self, in_process: bool = False) -> dict:
        extra = [] if self.journal else ["--unoptimized"]
        env = {**self.env, "STRONGROOM_NO_DAEMON": "1"} if in_process else self.env
        workers = self._workers()
        r = measured([self.sr, "backup", self.corpus, "--json", *extra], env)
        r["mode"], r["mode_reason"], r["via"] = r["json"]["mode"], r["json"]["mode_reason"], r["json"].get("via")
        r["inner_s"] = r["json"]["stats"]["duration_s"]  # the backup itself: no start-up, no key derivation
        del r["json"]
        if r["via"] == "daemon":
            # The daemon's worker did the backup; this process (the client) only waited for it. The
            # worker is no child of ours: its figures are in the daemon's log (from its zygote's wait4).
            deadline = time.monotonic() + 10
            while len(self._workers()) == len(workers) and time.monotonic() < deadline:
                time.sleep(0.01)
            s, cpu, rss = self._workers()[-1]
            r["worker"] = {"s": s, "cpu_s": cpu, "rss_mib": rss}
        return r

    def _workers(self) -> list[tuple[float, float, float]]:
        """(wall, CPU, peak RSS) of each backup the daemon's workers carried out, from its log."""
        try:
            with open(self.daemon_log, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return [(float(a), float(b), float(c)) for a, b, c in
                re.findall(r"worker \d+: exit \S+ in ([\d.]+) s, ([\d.]+) s CPU, peak RSS ([\d.]+) MiB", text)]

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=60)


class Restic:
    def __init__(self, work: str, corpus: str) -> None:
        self.corpus, self.bin = corpus, ensure_restic()
        self.env = {**os.environ, "RESTIC_REPOSITORY": os.path.join(work, "restic"), "RESTIC_PASSWORD": PASSPHRASE,
                    "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
        subprocess.run([self.bin, "init"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def backup(self) -> dict:
        r = measured([self.bin, "backup", "--json", "--quiet", self.corpus], self.env)
        r.pop("json", None)
        return r


def churn(daemon_pid: int, folder: str, seconds: float) -> dict:
    """The daemon's CPU share and RSS while 1,000 files a second are written under `folder`."""
    os.makedirs(folder, exist_ok=True)
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        with open(f"/proc/{daemon_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    def rss_mib() -> float:
        with open(f"/proc/{daemon_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    before, started, written, peak = cpu(), time.monotonic(), 0, 0.0
    while time.monotonic() - started < seconds:
        for _ in range(100):
            with open(os.path.join(folder, f"f{written % 5000}"), "w") as f:
                f.write(str(written))
            written += 1
        peak = max(peak, rss_mib())
        time.sleep(max(0.0, started + written / 1000 - time.monotonic()))
    wall = time.monotonic() - started
    return {"files_per_s": round(written / wall), "cpu_percent": round(100 * (cpu() - before) / wall, 1),
            "rss_mib": round(peak, 1)}


def big_tree(work: str, n: int) -> dict:
    """An optimized and an unoptimized backup of N tiny files after 10 of them changed."""
    sys.path.insert(0, HERE)
    from scale import make_tree, remove_tree  # noqa: PLC0415 - the scale bench's tree

    root = os.path.join(work, "tree")
    log(f"tree of {n} files")
    make_tree(__import__("pathlib").Path(root), n)
    tools = {"optimized": Strongroom(work, "tree-opt", root, journal=True),
             "unoptimized": Strongroom(work, "tree-unopt", root, journal=False)}
    out: dict[str, dict] = {}
    try:
        for name, tool in tools.items():
            out[name] = {"initial": tool.backup()}
            log(f"tree initial {name}: {out[name]['initial']}")
        folders = sorted(d for d, _s, files in os.walk(root) if files)
        for i in range(10):  # 10 files in 10 folders spread over the tree
            folder = folders[i * len(folders) // 10]
            with open(os.path.join(folder, sorted(os.listdir(folder))[0]), "ab") as f:
                f.write(b"changed\n")
        for name, tool in tools.items():
            out[name]["ten_changed"] = tool.backup()
            log(f"tree 10 changed {name}: {out[name]['ten_changed']}")
    finally:
        for tool in tools.values():
            tool.stop()
        remove_tree(__import__("pathlib").Path(root))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=os.path.join(HERE, "work-journal"))
    ap.add_argument("--small", type=int, default=50_000, help="small files in the corpus")
    ap.add_argument("--scale", type=float, default=1.0, help="scale of the large files (1.0 = 1.5 GiB)")
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--tree", type=int, default=0, help="files of the tree for the 10-file change (0: none)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    corpus = os.path.join(work, "corpus")
    log(f"corpus: {args.small} small files, large files at scale {args.scale}")
    subprocess.run([sys.executable, MAKE_CORPUS, "create", corpus, "--small", str(args.small),
                    "--scale", str(args.scale)], check=True, stdout=subprocess.DEVNULL)
    tools = {"optimized": Strongroom(work, "optimized", corpus, journal=True),
             "unoptimized": Strongroom(work, "unoptimized", corpus, journal=False),
             "restic": Restic(work, corpus)}
    results: dict[str, dict] = {name: {} for name in tools}
    try:
        for step in ("initial", "nochange", "mutate", "mutated"):
            if step == "mutate":
                subprocess.run([sys.executable, MAKE_CORPUS, "mutate", corpus, "--gen", "1"], check=True,
                               stdout=subprocess.DEVNULL)
                continue
            for name, tool in tools.items():
                results[name][step] = tool.backup()
                log(f"{step:9} {name:11} {results[name][step]}")
                if step == "nochange" and name == "optimized":  # before the hand-over to the daemon: in-process
                    results[name]["nochange_in_process"] = tool.backup(in_process=True)
                    log(f"{step:9} {name:11} in-process {results[name]['nochange_in_process']}")
        daemon = tools["optimized"].daemon
        if args.churn_seconds > 0 and daemon is not None:
            results["daemon_churn"] = churn(daemon.pid, os.path.join(corpus, "churn"), args.churn_seconds)
            log(f"daemon under churn: {results['daemon_churn']}")
    finally:
        for tool in tools.values():
            if isinstance(tool, Strongroom):
                tool.stop()
    if args.tree:
        results["tree"] = big_tree(work, args.tree)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("| backup | optimized (s) | unoptimized (s) | restic (s) | optimized / restic "
          "| inside the backup: optimized / unoptimized (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for step in ("initial", "nochange", "mutated"):
        o, u, r = (results[n][step]["s"] for n in ("optimized", "unoptimized", "restic"))
        oi, ui = (results[n][step]["inner_s"] for n in ("optimized", "unoptimized"))
        print(f"| {step} | {o} | {u} | {r} | {o / r:.2f}x | {oi} / {ui} |")
    n, p = results["optimized"]["nochange"], results["optimized"]["nochange_in_process"]
    w = n.get("worker") or {}
    print(f"\nno-change optimized backup: via {n['via']} {n['s']} s wall (client {n['cpu_s']} s CPU, "
          f"{n['rss_mib']} MiB; worker {w.get('s')} s, {w.get('cpu_s')} s CPU, {w.get('rss_mib')} MiB) against "
          f"in-process {p['s']} s wall, {p['cpu_s']} s CPU, {p['rss_mib']} MiB; "
          f"restic {results['restic']['nochange']['s']} s, {results['restic']['nochange']['cpu_s']} s CPU, "
          f"{results['restic']['nochange']['rss_mib']} MiB\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
