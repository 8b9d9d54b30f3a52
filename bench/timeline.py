"""Where a command's wall time goes: every thread's CPU over time, and the phases between marks.

    python bench/timeline.py [--out PREFIX] [--bin 0.1] -- --home H backup DIR --json

runs `strongroom ARGS` in a child process of this interpreter (standard library only here),
samples /proc/PID/task/*/schedstat every 20 ms (CPU and run-queue wait of each thread, in ns),
and prints the phases of a backup between marks that the child writes when a few functions
start and end (see MARKED): wall, CPU of all threads, cores busy (CPU / wall) and cores wanted
((CPU + run-queue wait) / wall: what the process would have used with free cores; on a
loaded machine the figure to read). With --bin, a line per bin: each thread's share.

In the child, threads carry their Python names in /proc (prctl), so that the pool's and the
packer's threads are told apart. Argon2's own threads live ~10 ms each and are mostly missed
by the sampler: the Argon2 phase's CPU is under-counted, its wall is right.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import subprocess
import sys
import threading
import time

# module: functions (Class.method) whose start (+) and end (-) are marked.
MARKED = {
    "strongroom.keyfile": ["derive"],
    "strongroom.cli.common": ["open_agent"],
    "strongroom.agent.home": ["AgentHome.vault"],
    "strongroom.agent.backup": ["Backup.run", "Backup._walk"],
    "strongroom.agent.packer": ["Packer.close"],
    "strongroom.agent.blobcache": ["KnownBlobs.caught_up"],
    "strongroom.agent.jobrun": ["run_backup_job"],
}
# (phase, the mark it starts at: the first "+" or the last "-" of that name)
PHASES = [
    ("process start, imports to Argon2", None),
    ("Argon2 (key-encrypting key)", "derive +"),
    ("the command's imports", "derive -"),
    ("vault open (service or client import)", "AgentHome.vault +"),
    ("job start, points, plan", "AgentHome.vault -"),
    ("walk", "Backup._walk +"),
    ("last packs, refs summary", "Backup._walk -"),
    ("point recorded, refs, job end", "Packer.close -"),
    ("output, exit", "run_backup_job -"),
]
_now = time.monotonic  # CLOCK_MONOTONIC on Linux: one clock for the child's marks and the samples


def child(marks_path: str, argv: list[str]) -> None:
    """Runs the command in this process, marking MARKED's functions."""
    import ctypes  # noqa: PLC0415

    out = open(marks_path, "a", buffering=1)  # noqa: SIM115 - open until os._exit

    def mark(label: str) -> None:
        out.write(f"{_now():.6f}\t{threading.current_thread().name}\t{label}\n")

    libc = ctypes.CDLL(None)
    run = threading.Thread.run

    def named_run(self: threading.Thread) -> None:
        libc.prctl(15, self.name[:15].encode())  # PR_SET_NAME
        run(self)
    threading.Thread.run = named_run  # type: ignore[method-assign]

    def wrapped(f, label):  # noqa: ANN001, ANN202
        def w(*a, **k):  # noqa: ANN002, ANN003, ANN202
            mark(label + " +")
            try:
                return f(*a, **k)
            finally:
                mark(label + " -")
        return w

    class Marker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
            if name not in MARKED:
                return None
            spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                         and (s := f.find_spec(name, path, target))), None)
            if spec is None:
                return None
            execute = spec.loader.exec_module

            def exec_module(module):  # noqa: ANN001, ANN202
                execute(module)
                for dotted in MARKED[name]:
                    *owners, attr = dotted.split(".")
                    owner = module
                    for o in owners:
                        owner = getattr(owner, o)
                    setattr(owner, attr, wrapped(getattr(owner, attr), dotted))
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Marker())
    exit_now = os._exit

    def marked_exit(code: int) -> None:
        mark("exit")
        exit_now(code)
    os._exit = marked_exit
    sys.argv = ["strongroom", *argv]
    from strongroom.cli.handover import main  # noqa: PLC0415
    main()


def sample(argv: list[str], prefix: str, period: float) -> dict:
    """Runs the child and samples its threads until it ends."""
    marks_path = prefix + ".marks"
    open(marks_path, "w").close()
    start = _now()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", marks_path, "--", *argv])
    samples, usage = [], None
    while usage is None:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            usage, proc.returncode = rusage, os.waitstatus_to_exitcode(status)
            break
        at, threads = _now(), {}
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                try:
                    with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                        cpu, wait = (int(x) for x in f.read().split()[:2])
                    with open(f"/proc/{proc.pid}/task/{tid}/stat") as f:
                        comm, rest = f.read().split("(", 1)[1].rsplit(")", 1)
                    name = "main" if int(tid) == proc.pid else comm
                    # Keyed by start time too: a thread ID may be reused once its thread ended.
                    threads[f"{tid}:{rest.split()[19]}"] = (name, cpu, wait)
                except (OSError, ValueError):
                    pass  # the thread ended between listing and reading
        except OSError:
            pass
        samples.append((at, threads))
        time.sleep(period)
    doc = {"start": start, "end": _now(), "rc": proc.returncode, "samples": samples,
           "cpu": usage.ru_utime + usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024,
           "marks": [line.rstrip("\n").split("\t") for line in open(marks_path)]}
    with open(prefix + ".json", "w") as f:
        json.dump(doc, f)
    return doc


def _at(samples: list, t: float) -> dict:
    """Each thread's last sampled counters up to time t (threads that ended keep theirs)."""
    last: dict = {}
    for at, threads in samples:
        if at > t:
            break
        last.update(threads)
    return last


def _between(samples: list, a: float, b: float) -> tuple[float, float]:
    """CPU and run-queue wait (s) of all threads between two times."""
    before, after = _at(samples, a), _at(samples, b)
    cpu = sum(v[1] - before.get(k, (0, 0, 0))[1] for k, v in after.items()) / 1e9
    wait = sum(v[2] - before.get(k, (0, 0, 0))[2] for k, v in after.items()) / 1e9
    return cpu, wait


def report(doc: dict, bin_s: float | None) -> None:
    marks = [(float(t), name, label) for t, name, label in doc["marks"]]

    def when(label: str) -> float | None:
        hits = [t for t, _n, lab in marks if lab == label]
        return (hits[-1] if label.endswith("-") else hits[0]) if hits else None
    bounds = [(phase, doc["start"] if label is None else when(label)) for phase, label in PHASES]
    bounds = [(p, t) for p, t in bounds if t is not None] + [("", doc["end"])]
    print(f"wall {doc['end'] - doc['start']:.2f} s, CPU {doc['cpu']:.2f} s (user+sys), peak RSS "
          f"{doc['maxrss_mib']:.0f} MiB, exit {doc['rc']}")
    print(f"{'phase':40s} {'wall s':>7s} {'CPU s':>6s} {'busy':>5s} {'wanted':>6s}")
    for (phase, a), (_p, b) in zip(bounds, bounds[1:]):
        c, w = _between(doc["samples"], a, b)
        span = max(b - a, 1e-9)
        print(f"{phase:40s} {b - a:7.3f} {c:6.3f} {c / span:5.2f} {(c + w) / span:6.2f}")
    if not bin_s:
        return
    prev: dict = {}
    for i in range(int((doc["end"] - doc["start"]) / bin_s) + 1):
        t = doc["start"] + (i + 1) * bin_s
        now = _at(doc["samples"], t)
        shares: dict[str, float] = {}
        for k, (name, c, _w) in now.items():
            shares[name] = shares.get(name, 0) + (c - prev.get(k, (name, 0, 0))[1]) / 1e9 / bin_s
        prev = now
        top = " ".join(f"{n}:{v:.2f}" for n, v in sorted(shares.items(), key=lambda x: -x[1])[:5] if v >= 0.01)
        print(f"{i * bin_s:6.2f} {sum(shares.values()):4.2f} {top}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/timeline", help="PREFIX.json and PREFIX.marks are written")
    ap.add_argument("--bin", type=float, default=None, help="also print each thread's cores per bin of this many s")
    ap.add_argument("--period", type=float, default=0.02)
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- and the strongroom arguments")
    a = ap.parse_args()
    argv = a.args[1:] if a.args[:1] == ["--"] else a.args
    report(sample(argv, a.out, a.period), a.bin)


if __name__ == "__main__":
    main()
