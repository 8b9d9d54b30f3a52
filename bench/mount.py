#!/usr/bin/env python3
"""Benchmark: `strongroom mount` beside `restic mount` on the bench corpus (stdlib only).

    python bench/mount.py [--workdir bench/work-mount] [--small 50000] [--scale 1.0]

Both tools back up the same corpus (not timed), then, for each tool, one mount after the
other with a warm page cache for the corpus and a cold one for the mount (fresh mount):

1. a fresh mount; `pread` of 1 MiB at the middle of the largest file: time, and the bytes
   the mount process read (/proc/PID/io rchar: from the repository's pack files, its
   index, its cache) and, for strongroom, the bytes it fetched from the vault (its --json);
2. a fresh mount; `find POINT -type f | wc -l` over the latest point;
3. in that mount, `cat` of every file (`find -type f -print0 | xargs -0 cat`): time and
   throughput;
   for 2 and 3 also the CPU seconds (user + system) of the mount process, which other work
   on a shared machine hardly moves;
4. the peak RSS of the mount process (VmHWM) after all that.

restic is installed from Debian when missing (root only). Prints a Markdown table; the
JSON of every figure goes to WORKDIR/mount-results.json. See bench/README.md, "Mount".
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PASSPHRASE, ensure_peers, find_strongroom, log, prepare_corpus, warm_cache  # noqa: E402

MiB = 1024 * 1024


def proc_field(pid, name, fname="status"):
    with open(f"/proc/{pid}/{fname}") as f:
        for line in f:
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its threads so far (/proc/PID/stat): unlike
    wall-clock time, hardly moved by other work on a shared machine."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mounted_ok(mnt, probe):
    try:
        return probe in os.listdir(mnt)
    except OSError:
        return False


class Tool:
    name = ""

    def __init__(self, work, corpus):
        self.work, self.corpus = work, corpus
        self.mnt = os.path.join(work, f"mnt-{self.name}")
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = None

    def env(self):
        return dict(os.environ, HOME=os.path.join(self.work, f"home-{self.name}"))

    def start(self):
        """Mounts in the background; returns when the latest point is listed."""
        self.proc = subprocess.Popen(self.mount_cmd(), env=self.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not mounted_ok(self.mnt, self.probe):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                sys.exit(f"{self.name} mount failed: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)

    def stop(self):
        subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        out, _err = self.proc.communicate(timeout=120)
        return out.decode()


class Strongroom(Tool):
    name, probe = "strongroom", "latest"

    def __init__(self, work, corpus, sr_bin):
        self.bin = sr_bin
        super().__init__(work, corpus)
        self.repo = os.path.join(work, "vault")

    def env(self):
        return dict(super().env(), STRONGROOM_PASSPHRASE=PASSPHRASE, STRONGROOM_HOME=os.path.join(self.work, "agent"))

    def setup(self):
        # Made anew each run: a vault left by an earlier run holds another corpus (a reused one
        # once made a 50,000-file run measure a 2,010-file point).
        for old in (self.repo, os.path.join(self.work, "agent")):
            shutil.rmtree(old, ignore_errors=True)
        creds = os.path.join(self.work, "credentials")
        for cmd in (["vault", "create", self.repo], ["vault", "credentials", self.repo, "--out", creds],
                    ["register", "--credentials", creds, "--machine", "bench"], ["backup", self.corpus]):
            subprocess.run([self.bin, *cmd], env=self.env(), check=True, capture_output=True)

    def mount_cmd(self):
        return [self.bin, "mount", self.mnt, "--unmount-after", "0", "--json"]

    def point(self):
        return os.path.join(self.mnt, "latest", self.corpus.lstrip("/"))


class Restic(Tool):
    name, probe = "restic", "snapshots"

    def __init__(self, work, corpus):
        super().__init__(work, corpus)
        self.repo = os.path.join(work, "restic-repo")

    def env(self):
        return dict(super().env(), RESTIC_PASSWORD=PASSPHRASE, RESTIC_REPOSITORY=self.repo,
                    RESTIC_CACHE_DIR=os.path.join(self.work, "restic-cache"))

    def setup(self):
        for old in (self.repo, os.path.join(self.work, "restic-cache")):  # anew each run, as above
            shutil.rmtree(old, ignore_errors=True)
        subprocess.run(["restic", "init"], env=self.env(), check=True, capture_output=True)
        subprocess.run(["restic", "backup", self.corpus], env=self.env(), check=True, capture_output=True)

    def mount_cmd(self):
        return ["restic", "mount", "--no-default-permissions", self.mnt]

    def point(self):
        return os.path.join(self.mnt, "snapshots", "latest", self.corpus.lstrip("/"))


def largest_file(corpus):
    best = (0, "")
    for dirpath, _dirs, files in os.walk(corpus):
        for fn in files:
            p = os.path.join(dirpath, fn)
            best = max(best, (os.path.getsize(p), p))
    return best


def measure(tool, corpus, largest):
    size, path = largest
    r = {}
    tool.start()
    inside = os.path.join(tool.point(), os.path.relpath(path, corpus))
    rchar0 = proc_field(tool.proc.pid, "rchar", "io")
    t0 = time.perf_counter()
    fd = os.open(inside, os.O_RDONLY)
    data = os.pread(fd, MiB, size // 2)
    os.close(fd)
    r["middle_read_s"] = time.perf_counter() - t0
    r["middle_read_rchar"] = proc_field(tool.proc.pid, "rchar", "io") - rchar0
    assert len(data) == MiB
    with open(path, "rb") as f:
        f.seek(size // 2)
        assert f.read(MiB) == data, "wrong data"
    out = tool.stop()
    if tool.name == "strongroom":
        r["middle_read_fetched"] = json.loads(out)["bytes_fetched"]

    tool.start()
    c0, t0 = cpu_seconds(tool.proc.pid), time.perf_counter()
    found = subprocess.run(f"find '{tool.point()}' -type f | wc -l", shell=True, capture_output=True, text=True,
                           check=True)
    r["find_s"] = time.perf_counter() - t0
    r["find_cpu_s"] = cpu_seconds(tool.proc.pid) - c0
    r["files"] = int(found.stdout.strip())
    c0, t0 = cpu_seconds(tool.proc.pid), time.perf_counter()
    subprocess.run(f"find '{tool.point()}' -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
    r["cat_s"] = time.perf_counter() - t0
    r["cat_cpu_s"] = cpu_seconds(tool.proc.pid) - c0
    r["rss_mib"] = proc_field(tool.proc.pid, "VmHWM") / 1024
    tool.stop()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "work-mount"))
    ap.add_argument("--small", type=int, default=50000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--tools", default="strongroom,restic")
    ap.add_argument("--strongroom-bin")
    args = ap.parse_args()
    tools = args.tools.split(",")
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        sys.exit("FUSE is missing: install fuse3 (scripts/system-packages.sh)")
    ensure_peers(tools)
    os.makedirs(args.workdir, exist_ok=True)
    corpus, _state = prepare_corpus(args.workdir, args.small, args.scale, False)
    corpus = os.path.abspath(corpus)
    warm_cache(corpus)
    largest = largest_file(corpus)
    sr_bin = find_strongroom(args.strongroom_bin)
    runners = [Strongroom(args.workdir, corpus, sr_bin) if t == "strongroom" else Restic(args.workdir, corpus)
               for t in tools]
    results = {}
    for tool in runners:
        log(f"{tool.name}: backing up the corpus (not timed)")
        tool.setup()
    # The backups' writes reach the disk before anything is timed (else the first tool measured
    # competes with the last one's writeback).
    os.sync()
    for tool in runners:
        log(f"{tool.name}: mounting and measuring")
        results[tool.name] = measure(tool, corpus, largest)
        log(f"{tool.name}: {results[tool.name]}")
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(corpus) for f in fs)
    with open(os.path.join(args.workdir, "mount-results.json"), "w") as f:
        json.dump({"corpus_bytes": total, "largest": largest, "results": results}, f, indent=1)
    rows = [("find -type f | wc -l (s)", "find_s", "{:.2f}"),
            ("  CPU seconds of the mount process for it", "find_cpu_s", "{:.2f}"), ("files found", "files", "{}"),
            ("cat every file (s)", "cat_s", "{:.1f}"),
            ("  CPU seconds of the mount process for it", "cat_cpu_s", "{:.2f}"),
            ("cat throughput (MiB/s)", None, None),
            ("1 MiB at the middle of the largest file (s)", "middle_read_s", "{:.3f}"),
            ("  bytes read by the mount process for it (MiB)", "middle_read_rchar", None),
            ("  bytes fetched from the vault (MiB)", "middle_read_fetched", None),
            ("peak RSS of the mount process (MiB)", "rss_mib", "{:.0f}")]
    print("| measure | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label, key, fmt in rows:
        cells = []
        for name in results:
            r = results[name]
            if key is None:
                cells.append(f"{total / MiB / r['cat_s']:.0f}")
            elif key not in r:
                cells.append("-")
            elif fmt is None:
                cells.append(f"{r[key] / MiB:.2f}")
            else:
                cells.append(fmt.format(r[key]))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
