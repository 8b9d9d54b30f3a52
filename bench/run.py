#!/usr/bin/env python3
"""Strongroom benchmark: strongroom vs restic vs borg on the bench corpus (stdlib only).

    python bench/run.py [--workdir bench/work] [--small 50000] [--scale 1.0]
                        [--rounds N] [--tools strongroom,strongroom-https,restic,borg]

Per round, for every tool: a fresh repository; initial backup of the corpus; a
no-change backup; `bench/corpus.py mutate --gen ROUND`; a backup after the mutation;
the repository size (du -sb); a full restore of the latest snapshot into an empty
directory, checked against the corpus (every path; every file's sha256; type, size, mode,
mtime, owner, symlink target), then deleted.  Each step runs the tools one after the
other (alternating); the first tool rotates from round to round (default: one round per
tool, so each starts one).  Warm page cache.  Wall time, CPU and peak RSS come from
os.wait4() on the tool's process, and for the served rows also from /proc of the vault
server during the step.  A documented warning exit counts as done, flagged.  See
bench/README.md.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
MAKE_CORPUS = os.path.join(REPO_ROOT, "bench", "corpus.py")  # the bench's own generator: a clean clone has no ../shared
MiB = 1024 * 1024
ALL_TOOLS = ("strongroom", "strongroom-https", "restic", "borg")
STEPS = ("initial", "nochange", "mutated", "restore")
STEP_LABEL = {
    "initial": "initial backup (s)",
    "nochange": "no-change backup (s)",
    "mutated": "backup after mutate (s)",
    "restore": "full restore (s)",
}
PASSPHRASE = "strongroom-bench-passphrase-0123456789"
SEED = 42


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CommandFailed(Exception):
    def __init__(self, res):
        self.res = res
        super().__init__(
            f"{res['cmd_str']} -> rc={res['rc']}{' (timeout)' if res.get('timed_out') else ''}\n"
            f"--- stderr tail ({res['stderr_file']}):\n{res['stderr_tail']}\n"
            f"--- stdout tail ({res['stdout_file']}):\n{res['stdout_tail']}"
        )


# ---------------------------------------------------------------------------
# Running and measuring one command
# ---------------------------------------------------------------------------

def _tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_measured(cmd, *, env, logdir, name, cwd=None, ok_codes=(0,), timeout=None, sync_first=True):
    """Run cmd; return wall seconds, peak RSS (ru_maxrss of the child, which covers its
    waited-for descendants), user/sys CPU and the paths of its captured output."""
    os.makedirs(logdir, exist_ok=True)
    out_path = os.path.join(logdir, name + ".out")
    err_path = os.path.join(logdir, name + ".err")
    if sync_first:
        os.sync()  # write back the previous tool's dirty pages so they do not land in our timing
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        timed_out = []
        timer = None
        if timeout:
            def _kill():
                timed_out.append(True)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            timer = threading.Timer(timeout, _kill)
            timer.daemon = True
            timer.start()
        while True:
            try:
                _, status, ru = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # already reaped: keep Popen from waiting again
    res = {
        "cmd": [str(c) for c in cmd],
        "cmd_str": " ".join(str(c) for c in cmd) + (f"   (cwd={cwd})" if cwd else ""),
        "rc": rc,
        "seconds": wall,
        "maxrss_mib": ru.ru_maxrss / 1024.0,  # Linux: KiB
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "stdout_file": out_path,
        "stderr_file": err_path,
    }
    if timed_out:
        res["timed_out"] = True
    if rc not in ok_codes or timed_out:
        res["stdout_tail"] = _tail(out_path)
        res["stderr_tail"] = _tail(err_path)
        raise CommandFailed(res)
    return res


def parse_json_output(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):  # fall back to the last JSON-looking line
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError(f"no JSON in {path}: {text[-500:]!r}")


# ---------------------------------------------------------------------------
# Environment: packages, corpus, page cache
# ---------------------------------------------------------------------------

def ensure_peers(tools):
    need = []
    if "restic" in tools and not shutil.which("restic"):
        need.append("restic")
    if "borg" in tools and not shutil.which("borg"):
        need.append("borgbackup")
    if not need:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {need}; install them (apt-get install {' '.join(need)}) or run as root")
    log(f"installing {need} from Debian")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", *need], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def find_strongroom(explicit):
    if explicit:
        return explicit
    cands = [os.path.join(os.path.dirname(sys.executable), "strongroom"), shutil.which("strongroom"),
             os.path.join(REPO_ROOT, ".venv", "bin", "strongroom")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def tool_versions(tools, sr_bin):
    v = {}
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"error: {e}"
    if "restic" in tools:
        v["restic"] = out(["restic", "version"])
    if "borg" in tools:
        v["borg"] = out(["borg", "--version"])
    if "strongroom" in tools:
        v["strongroom"] = {"bin": sr_bin,
                           "git": out(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"]),
                           "dirty": bool(out(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "src"]))}
    return v


def prepare_corpus(workdir, small, scale, reuse, meta=False):
    """The corpus under workdir, made again unless it has the wanted shape and is unmutated
    (or reuse); meta: with `meta/` (corpus.py --meta), which only this bench's restore check needs."""
    corpus = os.path.join(workdir, "corpus")
    state_path = os.path.join(workdir, "corpus-state.json")
    want = {"seed": SEED, "small": small, "scale": scale, "meta": meta}
    state = None
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    if state and {k: state.get(k, False) for k in want} == want and os.path.isdir(corpus) and \
            (state.get("gen", 0) == 0 or reuse):
        log(f"reusing corpus {corpus} (mutation generation {state.get('gen', 0)})")
        return corpus, state
    if os.path.exists(corpus):
        log(f"removing stale/mutated corpus {corpus}")
        shutil.rmtree(corpus)
    if os.path.exists(state_path):
        os.unlink(state_path)
    log(f"creating corpus: --small {small} --scale {scale}{' --meta' if meta else ''}")
    subprocess.run([sys.executable, MAKE_CORPUS, "create", corpus, "--seed", str(SEED),
                    "--small", str(small), "--scale", str(scale), *(["--meta"] if meta else [])],
                   check=True, stdout=sys.stderr)
    state = dict(want, gen=0)
    save_state(state_path, state)
    return corpus, state


def save_state(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def mutate_corpus(workdir, corpus, state, gen):
    log(f"mutating corpus, generation {gen}")
    # Mark dirty first: an interrupted mutate must not be mistaken for a pristine corpus.
    state["gen"] = gen
    save_state(os.path.join(workdir, "corpus-state.json"), state)
    subprocess.run([sys.executable, MAKE_CORPUS, "mutate", corpus, "--seed", str(SEED),
                    "--small", str(state["small"]), "--gen", str(gen)], check=True, stdout=sys.stderr)


def corpus_totals(root):
    """(number of regular files, their bytes) under root."""
    files = nbytes = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                nbytes += st.st_size
    return files, nbytes


def warm_cache(root):
    """Read every file once so the page cache is warm (the rule for these timings)."""
    t0 = time.perf_counter()
    buf = bytearray(MiB)
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            if os.path.islink(os.path.join(dirpath, fn)):  # meta/ has symlinks, one dangling
                continue
            with open(os.path.join(dirpath, fn), "rb", buffering=0) as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    total += k
            n += 1
    log(f"warm-up read: {n} files, {total / MiB:.1f} MiB in {time.perf_counter() - t0:.1f}s")


class Entry(NamedTuple):
    """What the restore check compares for one path (symlinks are not followed)."""
    kind: str          # "f" file, "d" folder, "l" symlink, "o" other
    size: int          # files only (0 otherwise)
    mode: int          # permission bits with setuid/setgid/sticky (S_IMODE)
    mtime_ns: int
    uid: int
    gid: int
    target: str        # symlink target ("" otherwise)
    sha256: str        # files only ("" otherwise)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tree_entries(root):
    """{relative path: Entry} for root itself ("."), everything under it, and the sha256 of
    every file's content. hashlib releases the GIL, so a thread per core hashes in parallel."""
    entries = {}
    files = []
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in ([] if rel != "." else ["."]) + dirs + names:
            p = os.path.normpath(os.path.join(dirpath, name))
            r = os.path.normpath(os.path.join(rel, name))
            st = os.lstat(p)
            kind = ("f" if stat.S_ISREG(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode)
                    else "l" if stat.S_ISLNK(st.st_mode) else "o")
            entries[r] = Entry(kind, st.st_size if kind == "f" else 0, stat.S_IMODE(st.st_mode),
                               st.st_mtime_ns, st.st_uid, st.st_gid,
                               os.readlink(p) if kind == "l" else "", "")
            if kind == "f":
                files.append(r)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for r, digest in zip(files, pool.map(lambda r: sha256_file(os.path.join(root, r)), files, chunksize=64)):
            entries[r] = entries[r]._replace(sha256=digest)
    return entries


def compare_trees(want, got, mtime_precision_ns=1):
    """Problems (one line each: what differs, how many paths, examples) between the source's
    entries and a restored tree's; an empty list when they agree on the set of paths and, for
    each path, type, size, content, mode, owner, symlink target and mtime (truncated to
    mtime_precision_ns, the finest the tool keeps)."""
    problems = []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected, e.g. {extra[:3]}")
    checks = (("type", lambda e: e.kind), ("size", lambda e: e.size), ("content (sha256)", lambda e: e.sha256),
              ("mode", lambda e: oct(e.mode)), ("owner uid:gid", lambda e: f"{e.uid}:{e.gid}"),
              ("symlink target", lambda e: e.target),
              ("mtime", lambda e: e.mtime_ns // mtime_precision_ns * mtime_precision_ns))
    both = sorted(set(want) & set(got))
    for what, key in checks:
        wrong = [p for p in both if key(want[p]) != key(got[p])]
        if wrong:
            problems.append(f"{len(wrong)} differ in {what}, e.g. "
                            + ", ".join(f"{p}: {key(want[p])} vs {key(got[p])}" for p in wrong[:3]))
        if what == "type":  # the other attributes mean nothing across types
            wrong_type = set(wrong)
            both = [p for p in both if p not in wrong_type]
    return problems


def du_bytes(path):
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def verify_restore(restored, want, mtime_precision_ns):
    """Compare a restored tree with the source's entries (see compare_trees): every path,
    every file's content, every attribute the bench's corpus sets."""
    if not os.path.isdir(restored):
        return {"ok": False, "problems": [f"restored tree {restored} does not exist"]}
    t0 = time.perf_counter()
    got = tree_entries(restored)
    problems = compare_trees(want, got, mtime_precision_ns)
    files = [e for e in got.values() if e.kind == "f"]
    return {"ok": not problems, "problems": problems, "entries": len(got), "files": len(files),
            "bytes": sum(e.size for e in files), "hashed": len(files),
            "expected_entries": len(want), "expected_files": sum(1 for e in want.values() if e.kind == "f"),
            "mtime_precision_ns": mtime_precision_ns, "check_s": round(time.perf_counter() - t0, 2)}


def hash_source(corpus, path):
    """tree_entries(corpus), kept in a file for the round's restore checks; their number."""
    want = tree_entries(corpus)
    with open(path, "wb") as f:
        pickle.dump(want, f)
    return len(want)


def verify_against(restored, want_path, mtime_precision_ns):
    with open(want_path, "rb") as f:
        want = pickle.load(f)
    return verify_restore(restored, want, mtime_precision_ns)


def in_child(fn, *args):
    """fn(*args) in a fresh interpreter. Hashing and comparing two 50,000-entry trees grows a
    process by some 100 MiB, and a command the bench starts afterwards reports at least the
    bench's own high-water mark as its ru_maxrss (subprocess starts children with vfork, and
    exec hands the old memory's high-water mark on): once the bench had checked a restore,
    every later tool showed the same 169 MiB peak. The bench itself stays small this way."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

# The per-process counters of a long-lived server (the vault behind strongroom-https), read
# from /proc around each timed step: wait4() gives them only for a process that has ended.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_proc_stat(text):
    """(ppid, CPU seconds) from the text of /proc/PID/stat: utime+stime, plus cutime+cstime
    (children it has waited for). The name (field 2) may hold spaces and parentheses."""
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5), "state"
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / CLK_TCK


def process_tree(pid):
    """pid and its live descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid, _ = parse_proc_stat(f.read())
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


class ServerProbe:
    """CPU seconds and peak RSS of a server process tree over one step: the peak is reset
    before the step (`5` into /proc/PID/clear_refs, Linux 4.0+) and VmHWM read after it."""

    def __init__(self, pid):
        self.pid = pid

    def _cpu(self, pids):
        total = 0.0
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as f:
                    total += parse_proc_stat(f.read())[1]
            except OSError:  # ended meanwhile: its time is in its parent's cutime once reaped
                pass
        return total

    def start(self):
        self.pids = process_tree(self.pid)
        self.peak_reset = True
        for p in self.pids:
            try:
                with open(f"/proc/{p}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.peak_reset = False  # then VmHWM is the peak since the server started
        self.cpu0 = self._cpu(self.pids)

    def stop(self):
        pids = process_tree(self.pid)
        cpu = self._cpu(pids) - self.cpu0
        hwm = 0
        for p in pids:
            try:
                with open(f"/proc/{p}/status") as f:
                    hwm += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            except (OSError, StopIteration):
                pass
        return {"cpu_s": round(cpu, 3), "maxrss_mib": round(hwm / 1024, 1), "processes": len(pids),
                "peak_since_step_start": self.peak_reset}


class Tool:
    name = "?"
    # Exit codes each tool documents as "finished, with warnings", per command: a warning
    # is counted the same way for every tool (see bench/README.md, "Exit codes").
    warning_codes = {"backup": (), "restore": ()}
    # The finest mtime the tool restores (ns); the restore check compares at this precision.
    mtime_precision_ns = 1

    def __init__(self, workdir, rnd, corpus, timeout):
        self.workdir = workdir
        self.rnd = rnd
        self.corpus = corpus
        self.timeout = timeout
        self.repo = os.path.join(workdir, "repos", self.name)
        self.state = os.path.join(workdir, "state", self.name)  # client-side cache / home
        self.logdir = os.path.join(workdir, "logs", f"round{rnd}", self.name)
        self.results = {"steps": {}, "setup": []}
        self.failed = None

    def fresh(self):
        for d in (self.repo, self.state):
            if os.path.exists(d):
                shutil.rmtree(d)
        os.makedirs(self.state)
        os.makedirs(os.path.dirname(self.repo), exist_ok=True)

    def env(self):
        e = dict(os.environ)
        e["HOME"] = os.path.join(self.state, "home")
        e["XDG_CACHE_HOME"] = os.path.join(self.state, "home", ".cache")
        e["XDG_CONFIG_HOME"] = os.path.join(self.state, "home", ".config")
        e["LC_ALL"] = "C.UTF-8"
        return e

    def run(self, name, cmd, cwd=None, timed=True, kind=None):
        """Run one command; kind ("backup"/"restore") admits that command's warning codes,
        and a result that used one carries "warning": true and its stderr's tail."""
        warn = self.warning_codes.get(kind, ()) if kind else ()
        res = run_measured(cmd, env=self.env(), logdir=self.logdir, name=name, cwd=cwd,
                           ok_codes=(0, *warn), timeout=self.timeout, sync_first=timed)
        res["warning"] = res["rc"] != 0
        if res["warning"]:
            res["warning_text"] = _tail(res["stderr_file"], 600)
        return res

    def client_state_bytes(self):
        return du_bytes(self.state)

    def teardown(self):
        """After the round's last command (not timed)."""

    # subclasses: setup(), backup(step), restore(target)


class Restic(Tool):
    name = "restic"
    # restic 0.14 (Debian 12), man restic-backup: 3 = "some source data could not be read
    # (incomplete snapshot created)"; man restic-restore: non-zero for any error, no warning code.
    warning_codes = {"backup": (3,), "restore": ()}

    def env(self):
        e = super().env()
        e["RESTIC_PASSWORD"] = PASSPHRASE
        e["RESTIC_CACHE_DIR"] = os.path.join(self.state, "cache")
        return e

    def setup(self):
        self.results["setup"].append(self.run("init", ["restic", "-r", self.repo, "init"], timed=False))

    def backup(self, step):
        res = self.run(step, ["restic", "-r", self.repo, "backup", self.corpus], kind="backup")
        # e.g. "Added to the repository: 43.332 MiB (27.482 MiB stored)" (informational only)
        m = re.search(r"Added to the repository: ([\d.]+) (\w+)(?: \(([\d.]+) (\w+) stored\))?",
                      _tail(res["stdout_file"], 4000))
        if m:
            unit = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
            res["added"] = {"bytes_added": float(m.group(1)) * unit.get(m.group(2), 1)}
            if m.group(3):
                res["added"]["bytes_stored"] = float(m.group(3)) * unit.get(m.group(4), 1)
        return res

    def restore(self, target):
        return self.run("restore", ["restic", "-r", self.repo, "restore", "latest", "--target", target],
                        kind="restore")


class Borg(Tool):
    name = "borg"
    # borg 1.2 "Return codes": 0 success, 1 warning ("operation reached its normal end, but
    # there were warnings"), 2 error, 128+N killed by signal N; the same for create and extract.
    warning_codes = {"backup": (1,), "restore": (1,)}
    # `auto,zstd,3`: a cheap LZ4 trial decides per chunk whether zstd,3 is worth running, as
    # restic's `auto` and Strongroom skip incompressible data; plain `zstd,3` compresses all.
    compression = "auto,zstd,3"

    def env(self):
        e = super().env()
        e["BORG_PASSPHRASE"] = PASSPHRASE
        e["BORG_BASE_DIR"] = os.path.join(self.state, "base")
        e["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        e["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
        return e

    def setup(self):
        self.results["setup"].append(self.run("init", ["borg", "init", "-e", "repokey", self.repo], timed=False))

    def backup(self, step):
        self.last_archive = f"r{self.rnd}-{step}"
        return self.run(step, ["borg", "create", "--compression", self.compression,
                               f"{self.repo}::{self.last_archive}", self.corpus], kind="backup")

    def restore(self, target):
        # borg extract writes into the current directory; paths are stored without the leading "/"
        return self.run("restore", ["borg", "extract", f"{self.repo}::{self.last_archive}"], cwd=target,
                        kind="restore")


class Strongroom(Tool):
    name = "strongroom"
    bin = "strongroom"
    # README "Exit codes": 3 = completed with warnings (some files not backed up or restored).
    warning_codes = {"backup": (3,), "restore": (3,)}

    def env(self):
        e = super().env()
        e["STRONGROOM_PASSPHRASE"] = PASSPHRASE
        return e

    def sr(self):
        return [self.bin, "--home", os.path.join(self.state, "agent")]

    def setup(self):
        creds = os.path.join(self.state, "credentials")
        self.results["setup"].append(self.run("vault-create", self.sr() + ["vault", "create", self.repo], timed=False))
        self.results["setup"].append(self.run("vault-credentials", self.sr() + ["vault", "credentials", self.repo, "--out", creds], timed=False))
        self.results["setup"].append(self.run("register", self.sr() + ["register", "--credentials", creds, "--machine", "bench"], timed=False))

    def backup(self, step):
        res = self.run(step, self.sr() + ["backup", self.corpus, "--json"], kind="backup")
        try:
            doc = parse_json_output(res["stdout_file"])
            res["json"] = {"id": doc.get("id"), "stats": doc.get("stats"),
                           "warnings": (doc.get("warnings") or [])[:20]}
        except Exception as e:  # noqa: BLE001
            res["json_error"] = str(e)
        return res

    def restore(self, target):
        res = self.run("restore", self.sr() + ["restore", "latest", "--target", target,
                                               "--conflict", "overwrite", "--json"], kind="restore")
        try:
            doc = parse_json_output(res["stdout_file"])
            doc["errors"] = (doc.get("errors") or [])[:20]
            res["json"] = doc
        except Exception as e:  # noqa: BLE001
            res["json_error"] = str(e)
        return res


class StrongroomServed(Strongroom):
    """The same agent against `strongroom vault serve` on 127.0.0.1, over HTTPS (TLS on
    loopback). Each timed step also records the server's CPU seconds and peak RSS during it
    (res["server"]); the tables add that CPU to the agent's and show that RSS beside it."""

    name = "strongroom-https"

    def run(self, name, cmd, cwd=None, timed=True, kind=None):
        server = getattr(self, "server", None)
        if not timed or server is None or server.poll() is not None:
            return super().run(name, cmd, cwd=cwd, timed=timed, kind=kind)
        probe = ServerProbe(server.pid)
        probe.start()
        res = super().run(name, cmd, cwd=cwd, timed=timed, kind=kind)
        res["server"] = probe.stop()
        return res

    def setup(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.results["setup"].append(self.run("vault-create", self.sr() + ["vault", "create", self.repo], timed=False))
        os.makedirs(self.logdir, exist_ok=True)
        with open(os.path.join(self.logdir, "serve.log"), "wb") as log_file:
            self.server = subprocess.Popen(self.sr() + ["vault", "serve", self.repo, "--port", str(port)],
                                           env=self.env(), stdout=log_file, stderr=log_file)
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(self.repo, "serve.json")):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise self._server_failed()
            time.sleep(0.05)
        while True:  # listening?
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise self._server_failed() from None
                time.sleep(0.05)
        creds = os.path.join(self.state, "credentials")
        self.results["setup"].append(self.run("vault-credentials", self.sr() + ["vault", "credentials", self.repo, "--out", creds], timed=False))
        self.results["setup"].append(self.run("register", self.sr() + ["register", "--credentials", creds, "--machine", "bench"], timed=False))

    def _server_failed(self):
        log_path = os.path.join(self.logdir, "serve.log")
        return CommandFailed({"cmd_str": "strongroom vault serve", "rc": self.server.poll(), "stderr_file": log_path,
                              "stderr_tail": _tail(log_path), "stdout_file": log_path, "stdout_tail": ""})

    def teardown(self):
        server = getattr(self, "server", None)
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGTERM)
        _pid, _status, usage = os.wait4(server.pid, 0)
        server.returncode = 0
        self.results["server"] = {"cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                                  "maxrss_mib": round(usage.ru_maxrss / 1024, 1)}
        log(f"vault serve: CPU {self.results['server']['cpu_s']} s over the round, "
            f"peak RSS {self.results['server']['maxrss_mib']} MiB")


TOOL_CLASSES = {"strongroom": Strongroom, "strongroom-https": StrongroomServed, "restic": Restic, "borg": Borg}


# ---------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------

def fail(tool, where, exc):
    msg = str(exc)
    tool.failed = f"{where}: {msg}"
    tool.results["error"] = tool.failed
    log(f"!! {tool.name} failed at {where}:\n{msg}")


def round_order(tools_order, rnd):
    """The order of the tools in round rnd (1-based): the list rotated by rnd-1, so over
    len(tools) rounds every tool is first once and takes every position once."""
    k = (rnd - 1) % len(tools_order)
    return list(tools_order[k:] + tools_order[:k])


def never_first(tools_order, rounds):
    """The tools that start no round when `rounds` rounds are run."""
    firsts = {round_order(tools_order, r)[0] for r in range(1, rounds + 1)}
    return [t for t in tools_order if t not in firsts]


def run_round(rnd, args, tools_order, corpus, corpus_state, workdir):
    order = round_order(tools_order, rnd)
    tools = [TOOL_CLASSES[n](workdir, rnd, corpus, args.timeout) for n in order]
    log(f"=== round {rnd}/{args.rounds}: {order[0]} starts; order {', '.join(order)}")
    for t in tools:
        t.fresh()
        try:
            t.setup()
        except CommandFailed as e:
            fail(t, "setup", e)

    def describe(r):
        extra = f"  cpu {r['user_s'] + r['sys_s']:.2f}s"
        if "server" in r:
            extra += f" + server {r['server']['cpu_s']:.2f}s, server rss {r['server']['maxrss_mib']:.1f} MiB"
        if r.get("warning"):
            extra += f"  WARNING exit {r['rc']}"
        return f"{r['seconds']:8.2f}s  rss {r['maxrss_mib']:7.1f} MiB{extra}"

    def step(name):
        for t in tools:
            if t.failed:
                continue
            # Borg's chunker drops every file it reads from the page cache
            # (posix_fadvise DONTNEED): without this, the tool after Borg read a cold corpus.
            warm_cache(corpus)
            try:
                r = t.backup(name)
            except CommandFailed as e:
                fail(t, name, e)
                continue
            t.results["steps"][name] = r
            extra = ""
            if "json" in r and r["json"].get("stats"):
                s = r["json"]["stats"]
                extra = f"  read {s.get('bytes_read', 0) / MiB:.1f} MiB, added {s.get('bytes_added', 0) / MiB:.1f} MiB"
            log(f"{name:9s} {t.name:16s} {describe(r)}{extra}")

    before = corpus_totals(corpus)[1]
    step("initial")
    for t in tools:
        if not t.failed:
            t.results["repo_bytes_after_initial"] = du_bytes(t.repo)
    step("nochange")
    mutate_corpus(workdir, corpus, corpus_state, corpus_state.get("base_gen", 0) + rnd)
    after = corpus_totals(corpus)[1]
    step("mutated")
    for t in tools:
        if not t.failed:
            t.results["repo_bytes"] = du_bytes(t.repo)
            t.results["client_state_bytes"] = t.client_state_bytes()

    t0 = time.perf_counter()
    want = os.path.join(workdir, "source-tree.pickle")  # after the round's mutation: what every restore must give back
    log(f"source tree: {in_child(hash_source, corpus, want)} entries hashed in {time.perf_counter() - t0:.1f}s")
    position = 0
    for t in tools:
        if t.failed:
            continue
        position += 1
        target = os.path.join(workdir, "restore", t.name)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.makedirs(target)
        try:
            r = t.restore(target)
        except CommandFailed as e:
            fail(t, "restore", e)
            shutil.rmtree(target, ignore_errors=True)
            continue
        r["position"] = position  # among the restores of this round (1 = first)
        restored_root = os.path.join(target, corpus.lstrip(os.sep))
        v = in_child(verify_against, restored_root, want, t.mtime_precision_ns)
        r["verify"] = v
        t.results["steps"]["restore"] = r
        log(f"{'restore':9s} {t.name:16s} {describe(r)}  #{position}  verify {'OK' if v['ok'] else 'FAILED'} "
            f"({v.get('entries')} entries, {v.get('hashed')} files hashed, {v.get('check_s')}s)")
        if not v["ok"]:
            t.failed = "restore verification: " + "; ".join(v["problems"])
            t.results["error"] = t.failed
            log(f"!! {t.name}: {t.failed}")
    for t in tools:
        t.teardown()
    # Restored trees are deleted only now, not after each restore: ext4 skips recently
    # freed inodes when it allocates new ones (find_inode_bit/recently_deleted), so a
    # restore started right after 50,000 files were deleted pays seconds of kernel time
    # for the previous tool's clean-up (measured: the same restore took 10 s or 46 s).
    if not args.keep:
        for t in tools:
            shutil.rmtree(os.path.join(workdir, "restore", t.name), ignore_errors=True)
            shutil.rmtree(t.repo, ignore_errors=True)
            shutil.rmtree(t.state, ignore_errors=True)
    return {"round": rnd, "order": order, "first": order[0], "tools": {t.name: t.results for t in tools},
            # the corpus as each step found it (CPU per GiB divides by this)
            "corpus_bytes": {"initial": before, "nochange": before, "mutated": after, "restore": after}}


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

def step_cpu(x):
    """CPU seconds of one step: the command's user+sys, plus the vault server's during the
    step for the served rows (so work moved into the server is still counted)."""
    return x["user_s"] + x["sys_s"] + (x["server"]["cpu_s"] if "server" in x else 0.0)


def summarize(rounds, tools, corpus_bytes):
    """Per tool and metric: median, min, max over the rounds in which the tool succeeded
    that far (a failed restore verification removes the restore's figures), with the
    number of those values whose command exited with a warning code. CPU per GiB divides
    by the corpus as the step found it (the round's "corpus_bytes"), else by corpus_bytes."""
    summ = {}
    for tn in tools:
        per_step = {k: {st: [] for st in STEPS}
                    for k in ("seconds", "rss", "cpu", "agent_cpu", "server_cpu", "server_rss", "cpu_per_gib")}
        warned = {st: 0 for st in STEPS}
        vals = {m: [] for m in ("repo_mib", "rss_mib", "client_state_mib", "server_rss_mib")}
        by_position = {}
        for r in rounds:
            tr = r["tools"].get(tn)
            if not tr:
                continue
            counted = []
            for st in STEPS:
                x = tr["steps"].get(st)
                if x is None:
                    continue
                if st == "restore" and not x.get("verify", {}).get("ok"):
                    continue
                counted.append(x)
                warned[st] += bool(x.get("warning"))
                per_step["seconds"][st].append(x["seconds"])
                per_step["rss"][st].append(x["maxrss_mib"])
                per_step["agent_cpu"][st].append(x["user_s"] + x["sys_s"])
                per_step["cpu"][st].append(step_cpu(x))
                gib = r.get("corpus_bytes", {}).get(st, corpus_bytes) / (1024 * MiB)
                per_step["cpu_per_gib"][st].append(step_cpu(x) / gib)
                if "server" in x:
                    per_step["server_cpu"][st].append(x["server"]["cpu_s"])
                    per_step["server_rss"][st].append(x["server"]["maxrss_mib"])
                if st == "restore":
                    by_position.setdefault(x["position"], []).append(x["seconds"])
            if "repo_bytes" in tr:
                vals["repo_mib"].append(tr["repo_bytes"] / MiB)
                vals["client_state_mib"].append(tr.get("client_state_bytes", 0) / MiB)
            if counted:
                vals["rss_mib"].append(max(x["maxrss_mib"] for x in counted))
            if any("server" in x for x in counted):
                vals["server_rss_mib"].append(max(x["server"]["maxrss_mib"] for x in counted if "server" in x))
        s = {st: stats_of(per_step["seconds"][st], warned[st]) for st in STEPS}
        s.update({m: stats_of(v) for m, v in vals.items()})
        for k, key in (("rss", "rss_by_step"), ("cpu", "cpu_by_step"), ("agent_cpu", "agent_cpu_by_step"),
                       ("server_cpu", "server_cpu_by_step"), ("server_rss", "server_rss_by_step"),
                       ("cpu_per_gib", "cpu_per_gib_by_step")):
            s[key] = {st: stats_of(v) for st, v in per_step[k].items()}
        s["restore_by_position"] = {str(p): stats_of(v) for p, v in sorted(by_position.items())}
        s["warnings"] = sum(warned.values())
        summ[tn] = s
    return summ


def stats_of(v, warnings=0):
    if not v:
        return None
    out = {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
    if warnings:
        out["warnings"] = warnings
    return out


def fmt_cell(st, digits):
    """median (min–max), and ⚠N when N of the values came from a command's warning exit."""
    if not st:
        return "—"
    cell = f"{st['median']:.{digits}f}"
    if st["n"] > 1:
        cell += f" ({st['min']:.{digits}f}–{st['max']:.{digits}f})"
    if st.get("warnings"):
        cell += f" ⚠{st['warnings']}"
    return cell


def ratio(a, b):
    if not a or not b or not b["median"]:
        return "—"
    return f"{a['median'] / b['median']:.2f}"


def ratio_columns(tools):
    """(numerator, denominator) pairs: each strongroom row against each peer, served against embedded."""
    cols = [(a, b) for a in ("strongroom", "strongroom-https") for b in ("restic", "borg")
            if a in tools and b in tools]
    if "strongroom" in tools and "strongroom-https" in tools:
        cols.append(("strongroom-https", "strongroom"))
    return cols


def table(summ, tools, rows, ratios=True):
    """A Markdown table: rows are (label, getter on a tool's summary, digits)."""
    ratio_cols = ratio_columns(tools) if ratios else []
    head = ["metric"] + list(tools) + [f"{a}/{b}" for a, b in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, getter, digits in rows:
        cells = [label] + [fmt_cell(getter(summ[t]), digits) for t in tools]
        cells += [ratio(getter(summ[a]), getter(summ[b])) for a, b in ratio_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(summ, tools, rounds, meta):
    served = "strongroom-https" in tools
    main_rows = [(STEP_LABEL[st], lambda s, st=st: s[st], 2) for st in STEPS]
    main_rows += [("repository size (MiB)", lambda s: s["repo_mib"], 1),
                  ("peak RSS (MiB, max over commands)", lambda s: s["rss_mib"], 0)]
    if served:
        main_rows.append(("peak RSS of the vault server (MiB, max over steps)", lambda s: s["server_rss_mib"], 0))
    cpu_rows = [(f"{st} (CPU s/GiB)", lambda s, st=st: s["cpu_per_gib_by_step"][st], 2) for st in STEPS]

    c = meta["corpus"]
    out = [
        f"Corpus: `bench/corpus.py create --meta --small {c['small']} --scale {c['scale']}` "
        f"({c['files']} files, {c['bytes'] / MiB:.1f} MiB before mutation); "
        f"{meta['rounds']} round(s); median (min–max) over rounds; warm page cache; "
        f"{meta['machine']['cpus']} CPUs, {meta['machine']['platform']}.",
        "",
        *table(summ, tools, main_rows),
        "",
        "Ratios are the first tool's median divided by the second's (below 1 = faster/smaller).",
        "Repository size is `du -sb` of the repository after the three backups. ⚠N: N of the",
        "values came from a command that exited with its tool's warning code (counted, flagged).",
        "",
        "CPU seconds (user+sys) per GiB of the corpus as the step found it"
        + ("; strongroom-https: the agent's plus the vault server's during the step:" if served else ":"),
        "",
        *table(summ, tools, cpu_rows),
    ]
    det_rows = [(f"CPU user+sys, {st} (s)", lambda s, st=st: s["cpu_by_step"][st], 2) for st in STEPS]
    if served:
        det_rows += [(f"of which the vault server, {st} (s)", lambda s, st=st: s["server_cpu_by_step"][st], 2)
                     for st in STEPS]
    det_rows += [(f"peak RSS, {st} (MiB)", lambda s, st=st: s["rss_by_step"][st], 0) for st in STEPS]
    if served:
        det_rows += [(f"vault server peak RSS, {st} (MiB)", lambda s, st=st: s["server_rss_by_step"][st], 0)
                     for st in STEPS]
    det_rows.append(("client-side cache/state (MiB)", lambda s: s["client_state_mib"], 1))
    positions = sorted({p for t in tools for p in summ[t]["restore_by_position"]}, key=int)
    det_rows += [(f"full restore, #{p} of the round's restores (s)",
                  lambda s, p=p: s["restore_by_position"].get(p), 2) for p in positions]
    out += ["", "Details:", "", *table(summ, tools, det_rows, ratios=False)]
    out += ["", "Order of the tools in each round (the first one starts every step):", ""]
    out += [f"- round {r['round']}: {', '.join(r['order'])}" for r in rounds]
    left_out = never_first(tools, len(rounds))
    if left_out:
        out.append(f"- with {len(rounds)} rounds, {', '.join(left_out)} never started a round "
                   f"(run --rounds {len(tools)} or more for every tool to start one)")

    if "strongroom" in tools:
        sr = ["| strongroom --json stats | bytes_read (MiB) | bytes_added (MiB) | files new/changed/unchanged |",
              "|---|---:|---:|---|"]
        for r in rounds:
            tr = r["tools"].get("strongroom", {})
            for st in ("initial", "nochange", "mutated"):
                x = tr.get("steps", {}).get(st)
                s = (x or {}).get("json", {}).get("stats") if x else None
                if not s:
                    continue
                sr.append(f"| round {r['round']} {st} | {s.get('bytes_read', 0) / MiB:.1f} | "
                          f"{s.get('bytes_added', 0) / MiB:.1f} | "
                          f"{s.get('files_new')}/{s.get('files_changed')}/{s.get('files_unchanged')} |")
        out += ["", *sr]

    warns = [(r["round"], tn, st, x) for r in rounds for tn, tr in r["tools"].items()
             for st, x in tr["steps"].items() if x.get("warning")]
    if warns:
        out += ["", "Warning exits (counted as completed, flagged ⚠ above):", ""]
        for rnd, tn, st, x in warns:
            last = (x.get("warning_text") or "").strip().splitlines()
            out.append(f"- round {rnd}, {tn}, {st}: exit {x['rc']}: `{last[-1] if last else ''}`")
    errs = [(r["round"], tn, tr["error"]) for r in rounds for tn, tr in r["tools"].items() if tr.get("error")]
    if errs:
        out += ["", "Failures:", ""]
        for rnd, tn, e in errs:
            first = e.strip().splitlines()
            out.append(f"- round {rnd}, {tn}: `{first[0] if first else e}` (full output in results.json / logs)")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
    ap.add_argument("--small", type=int, default=50_000, help="number of small files in the corpus")
    ap.add_argument("--scale", type=float, default=1.0, help="scale of the large files (1.0 = 1.5 GiB)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds (default: the number of tools, at least 3, so every tool starts one)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS))
    ap.add_argument("--strongroom-bin", default=None, help="strongroom executable (default: venv / PATH)")
    ap.add_argument("--timeout", type=float, default=3600, help="per-command timeout in seconds")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restored trees")
    ap.add_argument("--reuse-corpus", action="store_true",
                    help="reuse an already-mutated corpus (default: recreate it so runs are comparable)")
    args = ap.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad or not tools:
        ap.error(f"unknown tools {bad}; choose from {','.join(ALL_TOOLS)}")
    if args.rounds is None:
        args.rounds = max(3, len(tools))
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if never_first(tools, args.rounds):
        log(f"note: with {args.rounds} rounds, {', '.join(never_first(tools, args.rounds))} never starts a round")
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)

    ensure_peers(tools)
    sr_bin = None
    if any(t.startswith("strongroom") for t in tools):
        sr_bin = find_strongroom(args.strongroom_bin)
        if not sr_bin:
            sys.exit("strongroom executable not found: `pip install -e .` in the venv, or pass --strongroom-bin")
        Strongroom.bin = sr_bin
    if os.path.exists(os.path.join(workdir, "logs")):
        shutil.rmtree(os.path.join(workdir, "logs"))

    corpus, cstate = prepare_corpus(workdir, args.small, args.scale, args.reuse_corpus, meta=True)
    cstate["base_gen"] = cstate.get("gen", 0)
    files, nbytes = corpus_totals(corpus)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "tools": tools,
        "versions": tool_versions(tools, sr_bin),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "corpus": {"path": corpus, "small": args.small, "scale": args.scale, "seed": SEED,
                   "start_generation": cstate["base_gen"],
                   "files": files, "bytes": nbytes},
        "rounds": args.rounds,
    }
    log(f"corpus: {meta['corpus']['files']} files, {meta['corpus']['bytes'] / MiB:.1f} MiB; tools {tools}")

    rounds = []
    res_json = os.path.join(workdir, "results.json")
    res_md = os.path.join(workdir, "results.md")
    for rnd in range(1, args.rounds + 1):
        rounds.append(run_round(rnd, args, tools, corpus, cstate, workdir))
        summ = summarize(rounds, tools, nbytes)
        with open(res_json, "w") as f:  # written after every round, so a crash keeps what was measured
            json.dump({"meta": meta, "summary": summ, "rounds": rounds}, f, indent=1)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summ = summarize(rounds, tools, nbytes)
    md = markdown(summ, tools, rounds, meta)
    with open(res_json, "w") as f:
        json.dump({"meta": meta, "summary": summ, "rounds": rounds}, f, indent=1)
    with open(res_md, "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {res_md} and {res_json}")
    failed = any(tr.get("error") for r in rounds for tr in r["tools"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
