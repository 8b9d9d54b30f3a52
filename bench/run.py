#!/usr/bin/env python3
"""Strongroom benchmark: strongroom vs restic vs borg on the bench corpus (stdlib only).

    python bench/run.py [--workdir bench/work] [--small 50000] [--scale 1.0]
                        [--rounds 3] [--tools strongroom,restic,borg]

Per round, for every tool: a fresh repository; initial backup of the corpus; a
no-change backup; `bench/corpus.py mutate --gen ROUND`; a backup after the mutation;
the repository size (du -sb); a full restore of the latest snapshot into an empty
directory, verified against the corpus, then deleted.  Each step runs the tools one
after the other (alternating), with a warm page cache.  Wall time and peak RSS come
from os.wait4() on the tool's process.  See bench/README.md.
"""
import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

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


def prepare_corpus(workdir, small, scale, reuse):
    corpus = os.path.join(workdir, "corpus")
    state_path = os.path.join(workdir, "corpus-state.json")
    want = {"seed": SEED, "small": small, "scale": scale}
    state = None
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    if state and {k: state.get(k) for k in want} == want and os.path.isdir(corpus) and \
            (state.get("gen", 0) == 0 or reuse):
        log(f"reusing corpus {corpus} (mutation generation {state.get('gen', 0)})")
        return corpus, state
    if os.path.exists(corpus):
        log(f"removing stale/mutated corpus {corpus}")
        shutil.rmtree(corpus)
    if os.path.exists(state_path):
        os.unlink(state_path)
    log(f"creating corpus: --small {small} --scale {scale}")
    subprocess.run([sys.executable, MAKE_CORPUS, "create", corpus, "--seed", str(SEED),
                    "--small", str(small), "--scale", str(scale)], check=True, stdout=sys.stderr)
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


def warm_cache(root):
    """Read every file once so the page cache is warm (the rule for these timings)."""
    t0 = time.perf_counter()
    buf = bytearray(MiB)
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            with open(os.path.join(dirpath, fn), "rb", buffering=0) as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    total += k
            n += 1
    log(f"warm-up read: {n} files, {total / MiB:.1f} MiB in {time.perf_counter() - t0:.1f}s")


def tree_manifest(root):
    """{relative path: (kind, size)} for everything under root (symlinks not followed)."""
    m = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            m[os.path.normpath(os.path.join(rel, d))] = ("d", 0)
        for fn in files:
            p = os.path.join(dirpath, fn)
            st = os.lstat(p)
            kind = "l" if os.path.islink(p) else "f"
            m[os.path.normpath(os.path.join(rel, fn))] = (kind, st.st_size if kind == "f" else 0)
    return m


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def du_bytes(path):
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def verify_restore(src, restored, src_manifest, full, rnd):
    """Compare a restored tree with the source: same paths, kinds and sizes, plus sha256 of
    every large file, every file added by mutate, and a random sample of small files."""
    if not os.path.isdir(restored):
        return {"ok": False, "error": f"restored tree {restored} does not exist"}
    got = tree_manifest(restored)
    problems = []
    missing = sorted(set(src_manifest) - set(got))
    extra = sorted(set(got) - set(src_manifest))
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected, e.g. {extra[:3]}")
    wrong = [p for p in src_manifest if p in got and got[p] != src_manifest[p]]
    if wrong:
        problems.append(f"{len(wrong)} differ in type/size, e.g. "
                        + ", ".join(f"{p}: {src_manifest[p]} vs {got[p]}" for p in wrong[:3]))
    files = sorted(p for p, (k, _) in src_manifest.items() if k == "f")
    if full:
        to_hash = files
    else:
        large = [p for p in files if p.startswith("large" + os.sep)]
        new = [p for p in files if os.sep + "new_g" in p][:20]
        small = [p for p in files if p not in set(large) | set(new)]
        to_hash = sorted(set(large + new + random.Random(rnd).sample(small, min(64, len(small)))))
    bad_hash = []
    for p in to_hash:
        if p in got and got[p][0] == "f" and sha256_file(os.path.join(src, p)) != sha256_file(os.path.join(restored, p)):
            bad_hash.append(p)
    if bad_hash:
        problems.append(f"{len(bad_hash)}/{len(to_hash)} sha256 mismatches, e.g. {bad_hash[:3]}")
    nfiles = sum(1 for k, _ in got.values() if k == "f")
    nbytes = sum(s for k, s in got.values() if k == "f")
    return {"ok": not problems, "problems": problems, "files": nfiles, "bytes": nbytes,
            "expected_files": len(files), "expected_bytes": sum(s for k, s in src_manifest.values() if k == "f"),
            "hashed": len(to_hash)}


# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

class Tool:
    name = "?"

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

    def run(self, name, cmd, cwd=None, ok_codes=(0,), timed=True):
        return run_measured(cmd, env=self.env(), logdir=self.logdir, name=name, cwd=cwd,
                            ok_codes=ok_codes, timeout=self.timeout, sync_first=timed)

    def client_state_bytes(self):
        return du_bytes(self.state)

    def teardown(self):
        """After the round's last command (not timed)."""

    # subclasses: setup(), backup(step), restore(target)


class Restic(Tool):
    name = "restic"

    def env(self):
        e = super().env()
        e["RESTIC_PASSWORD"] = PASSPHRASE
        e["RESTIC_CACHE_DIR"] = os.path.join(self.state, "cache")
        return e

    def setup(self):
        self.results["setup"].append(self.run("init", ["restic", "-r", self.repo, "init"], timed=False))

    def backup(self, step):
        res = self.run(step, ["restic", "-r", self.repo, "backup", self.corpus])
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
        return self.run("restore", ["restic", "-r", self.repo, "restore", "latest", "--target", target])


class Borg(Tool):
    name = "borg"

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
        return self.run(step, ["borg", "create", "--compression", "zstd,3",
                               f"{self.repo}::{self.last_archive}", self.corpus])

    def restore(self, target):
        # borg extract writes into the current directory; paths are stored without the leading "/"
        return self.run("restore", ["borg", "extract", f"{self.repo}::{self.last_archive}"], cwd=target)


class Strongroom(Tool):
    name = "strongroom"
    bin = "strongroom"

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
        res = self.run(step, self.sr() + ["backup", self.corpus, "--json"], ok_codes=(0, 3))
        try:
            doc = parse_json_output(res["stdout_file"])
            res["json"] = {"id": doc.get("id"), "stats": doc.get("stats"),
                           "warnings": (doc.get("warnings") or [])[:20]}
        except Exception as e:  # noqa: BLE001
            res["json_error"] = str(e)
        return res

    def restore(self, target):
        res = self.run("restore", self.sr() + ["restore", "latest", "--target", target,
                                               "--conflict", "overwrite", "--json"], ok_codes=(0, 3))
        try:
            doc = parse_json_output(res["stdout_file"])
            doc["errors"] = (doc.get("errors") or [])[:20]
            res["json"] = doc
        except Exception as e:  # noqa: BLE001
            res["json_error"] = str(e)
        return res


class StrongroomServed(Strongroom):
    """The same agent against `strongroom vault serve` on 127.0.0.1, over HTTPS (TLS on
    loopback). The server's own CPU and memory are reported apart: the agent's figures
    are the command's, as for every tool."""

    name = "strongroom-https"

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


def run_round(rnd, args, tools_order, corpus, corpus_state, workdir):
    # rotate the starting tool each round so no tool always runs first
    k = (rnd - 1) % len(tools_order)
    order = tools_order[k:] + tools_order[:k]
    tools = [TOOL_CLASSES[n](workdir, rnd, corpus, args.timeout) for n in order]
    log(f"=== round {rnd}/{args.rounds}: order {', '.join(order)}")
    for t in tools:
        t.fresh()
        try:
            t.setup()
        except CommandFailed as e:
            fail(t, "setup", e)
    warm_cache(corpus)

    def step(name):
        for t in tools:
            if t.failed:
                continue
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
            log(f"{name:9s} {t.name:10s} {r['seconds']:8.2f}s  rss {r['maxrss_mib']:7.1f} MiB{extra}")

    step("initial")
    for t in tools:
        if not t.failed:
            t.results["repo_bytes_after_initial"] = du_bytes(t.repo)
    step("nochange")
    mutate_corpus(workdir, corpus, corpus_state, corpus_state.get("base_gen", 0) + rnd)
    step("mutated")
    for t in tools:
        if not t.failed:
            t.results["repo_bytes"] = du_bytes(t.repo)
            t.results["client_state_bytes"] = t.client_state_bytes()

    src_manifest = tree_manifest(corpus)
    for t in tools:
        if t.failed:
            continue
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
        restored_root = os.path.join(target, corpus.lstrip(os.sep))
        v = verify_restore(corpus, restored_root, src_manifest, args.verify == "full", rnd)
        r["verify"] = v
        t.results["steps"]["restore"] = r
        log(f"{'restore':9s} {t.name:10s} {r['seconds']:8.2f}s  rss {r['maxrss_mib']:7.1f} MiB  "
            f"verify {'OK' if v['ok'] else 'FAILED'} ({v.get('files')} files, {v.get('hashed')} hashed)")
        if not v["ok"]:
            t.failed = "restore verification: " + "; ".join(v.get("problems") or [v.get("error", "")])
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
    return {"round": rnd, "order": order, "tools": {t.name: t.results for t in tools}}


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

def summarize(rounds, tools):
    """Per tool and metric: median, min, max over the rounds in which the tool succeeded
    that far (a failed restore verification removes the restore timing)."""
    summ = {}
    for tn in tools:
        s = {}
        vals = {m: [] for m in list(STEPS) + ["repo_mib", "rss_mib", "client_state_mib"]}
        rss_by_step = {st: [] for st in STEPS}
        cpu_by_step = {st: [] for st in STEPS}
        for r in rounds:
            tr = r["tools"].get(tn)
            if not tr:
                continue
            for st in STEPS:
                x = tr["steps"].get(st)
                if x is None:
                    continue
                if st == "restore" and not x.get("verify", {}).get("ok"):
                    continue
                vals[st].append(x["seconds"])
                rss_by_step[st].append(x["maxrss_mib"])
                cpu_by_step[st].append(x["user_s"] + x["sys_s"])
            if "repo_bytes" in tr:
                vals["repo_mib"].append(tr["repo_bytes"] / MiB)
                vals["client_state_mib"].append(tr.get("client_state_bytes", 0) / MiB)
            allrss = [x["maxrss_mib"] for x in tr["steps"].values()]
            if allrss:
                vals["rss_mib"].append(max(allrss))
        for m, v in vals.items():
            s[m] = stat(v)
        s["rss_by_step"] = {st: stat(v) for st, v in rss_by_step.items()}
        s["cpu_by_step"] = {st: stat(v) for st, v in cpu_by_step.items()}
        summ[tn] = s
    return summ


def stat(v):
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt_cell(st, digits):
    if not st:
        return "—"
    med = f"{st['median']:.{digits}f}"
    if st["n"] > 1:
        return f"{med} ({st['min']:.{digits}f}–{st['max']:.{digits}f})"
    return med


def ratio(a, b):
    if not a or not b or not b["median"]:
        return "—"
    return f"{a['median'] / b['median']:.2f}"


def markdown(summ, tools, rounds, meta):
    cols = list(tools)
    ratio_cols = [("strongroom", o) for o in ("restic", "borg") if "strongroom" in tools and o in tools]
    if "strongroom" in tools and "strongroom-https" in tools:
        ratio_cols.append(("strongroom-https", "strongroom"))
    head = ["metric"] + cols + [f"{a}/{b}" for a, b in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def row(label, getter, digits):
        cells = [label] + [fmt_cell(getter(summ[t]), digits) for t in cols]
        cells += [ratio(getter(summ[a]), getter(summ[b])) for a, b in ratio_cols]
        lines.append("| " + " | ".join(cells) + " |")

    for st in STEPS:
        row(STEP_LABEL[st], lambda s, st=st: s[st], 2)
    row("repository size (MiB)", lambda s: s["repo_mib"], 1)
    row("peak RSS (MiB, max over commands)", lambda s: s["rss_mib"], 0)

    c = meta["corpus"]
    out = [
        f"Corpus: `bench/corpus.py create --small {c['small']} --scale {c['scale']}` "
        f"({c['files']} files, {c['bytes'] / MiB:.1f} MiB before mutation); "
        f"{meta['rounds']} round(s); median (min–max) over rounds; warm page cache; "
        f"{meta['machine']['cpus']} CPUs, {meta['machine']['platform']}.",
        "",
        *lines,
        "",
        "Ratios are strongroom's median divided by the peer's (below 1 = strongroom is faster/smaller).",
        "Repository size is `du -sb` of the repository after the three backups.",
    ]
    # details: CPU, per-step RSS, client-side state
    det = ["| detail | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for st in STEPS:
        det.append(f"| CPU user+sys, {st} (s) | " + " | ".join(fmt_cell(summ[t]["cpu_by_step"][st], 2) for t in cols) + " |")
    for st in STEPS:
        det.append(f"| peak RSS, {st} (MiB) | " + " | ".join(fmt_cell(summ[t]["rss_by_step"][st], 0) for t in cols) + " |")
    det.append("| client-side cache/state (MiB) | " + " | ".join(fmt_cell(summ[t]["client_state_mib"], 1) for t in cols) + " |")
    servers = [tr["server"] for r in rounds for tn, tr in r["tools"].items() if tr.get("server")]
    if servers:
        det.append("| strongroom-https: `vault serve` CPU over a round (s) / its peak RSS (MiB) | "
                   + " | ".join(f"{statistics.median(x['cpu_s'] for x in servers):.1f} / "
                                f"{max(x['maxrss_mib'] for x in servers):.0f}" if t == "strongroom-https" else ""
                                for t in cols) + " |")
    out += ["", "Details:", "", *det]

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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default=",".join(ALL_TOOLS))
    ap.add_argument("--strongroom-bin", default=None, help="strongroom executable (default: venv / PATH)")
    ap.add_argument("--verify", choices=("sample", "full"), default="sample",
                    help="restore check: paths+sizes and sha256 of a sample (default) or of every file")
    ap.add_argument("--timeout", type=float, default=3600, help="per-command timeout in seconds")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restored trees")
    ap.add_argument("--reuse-corpus", action="store_true",
                    help="reuse an already-mutated corpus (default: recreate it so runs are comparable)")
    args = ap.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad or not tools:
        ap.error(f"unknown tools {bad}; choose from {','.join(ALL_TOOLS)}")
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

    corpus, cstate = prepare_corpus(workdir, args.small, args.scale, args.reuse_corpus)
    cstate["base_gen"] = cstate.get("gen", 0)
    man = tree_manifest(corpus)
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "tools": tools,
        "versions": tool_versions(tools, sr_bin),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "corpus": {"path": corpus, "small": args.small, "scale": args.scale, "seed": SEED,
                   "start_generation": cstate["base_gen"],
                   "files": sum(1 for k, _ in man.values() if k == "f"),
                   "bytes": sum(s for k, s in man.values() if k == "f")},
        "rounds": args.rounds,
    }
    log(f"corpus: {meta['corpus']['files']} files, {meta['corpus']['bytes'] / MiB:.1f} MiB; tools {tools}")

    rounds = []
    res_json = os.path.join(workdir, "results.json")
    res_md = os.path.join(workdir, "results.md")
    for rnd in range(1, args.rounds + 1):
        rounds.append(run_round(rnd, args, tools, corpus, cstate, workdir))
        summ = summarize(rounds, tools)
        with open(res_json, "w") as f:  # written after every round, so a crash keeps what was measured
            json.dump({"meta": meta, "summary": summ, "rounds": rounds}, f, indent=1)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summ = summarize(rounds, tools)
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
