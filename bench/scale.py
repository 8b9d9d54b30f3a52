#!/usr/bin/env python3
"""Strongroom scale benchmark (issue 8): memory and time of the agent and the vault at millions.

    .venv/bin/python bench/scale.py [--parts agent,vault,rebuild] [--files 200000,2000000]
                                    [--blobs 2000000,20000000] [--workdir bench/work/scale]

agent:   first and no-change backup of a synthetic tree of N tiny files (~1000 per folder)
         into an embedded vault; wall time and peak RSS of each `strongroom` process.
vault:   a vault whose catalog is filled directly with N synthetic blob rows (~10,000 per
         pack, no pack files); `add_point` of a point naming 90% of them, then `prune`, which
         drops the other 10% of packs (wholly unreferenced, so nothing is repacked). Each in
         a child process of its own (peak RSS by os.wait4), with the longest catalog write
         transaction and the catalog's WAL size watched from inside.
rebuild: `strongroom vault rebuild-catalog` of a vault holding a backup of bench/run.py's
         corpus, and of the agent part's smallest vault.

Prints a Markdown table; bench/README.md ("Scale") explains the figures. Standard library
plus Strongroom's own dependencies; the work folder is deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import run as benchrun  # noqa: E402  (bench/run.py: the corpus and the measured runner)

BLOBS_PER_PACK = 10_000
FILES_PER_DIR = 1000
UNREFERENCED_EVERY = 10  # every 10th pack holds no blob any point needs: prune drops it
MiB = 1024 * 1024


def log(msg: str) -> None:
    benchrun.log(msg)


def load() -> str:
    return "%.1f / %.1f / %.1f" % os.getloadavg()


def child_env(home: Path | None = None) -> dict[str, str]:
    """The environment of every measured process: this checkout's code, a private HOME."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    env["STRONGROOM_PASSPHRASE"] = benchrun.PASSPHRASE
    env["LC_ALL"] = "C.UTF-8"
    if home is not None:
        env["HOME"] = str(home)
    return env


def measured(cmd: list[str], logdir: Path, name: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict:
    res = benchrun.run_measured(cmd, env=env, logdir=str(logdir), name=name, ok_codes=ok)
    res["load"] = load()
    return res


# -- agent: a tree of N tiny files -----------------------------------------------------------

def make_tree(root: Path, n: int) -> None:
    """N files of 8 to ~200 bytes, each different, FILES_PER_DIR to a folder, 100 folders
    to a parent: what a mail store or a source tree of millions of files looks like."""
    for i in range(n):
        if i % FILES_PER_DIR == 0:
            folder = root / f"g{i // (FILES_PER_DIR * 100):04d}" / f"d{i // FILES_PER_DIR:06d}"
            folder.mkdir(parents=True)
        with open(folder / f"f{i}.txt", "wb") as f:
            f.write(b"file %d of the scale bench\n" % i * (1 + i % 7))


def remove_tree(root: Path) -> None:
    """shutil.rmtree, with the files removed by many threads first, a folder each: where the
    filesystem is mounted with `discard` (as on the machine of bench/README.md), each unlink
    of a file that has a data block waits ~3.5 ms for the device, and unlinks in different
    folders overlap (a 200,000-file tree took 12 minutes to delete one file at a time)."""
    def clear(folder: str) -> None:
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
    if root.exists():
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(clear, (d for d, _dirs, files in os.walk(root) if files)))
    shutil.rmtree(root, ignore_errors=True)


def agent_part(work: Path, sr: str, sizes: list[int], logs: Path, keep_vault: int | None) -> list[dict]:
    rows = []
    for n in sizes:
        base = work / f"agent-{n}"
        remove_tree(base)
        tree, vault, home = base / "tree", base / "vault", base / "home"
        home.mkdir(parents=True)
        t0 = time.perf_counter()
        make_tree(tree, n)
        log(f"tree of {n} files made in {time.perf_counter() - t0:.0f}s")
        env = child_env(home)
        srh = [sr, "--home", str(home / "agent")]
        creds = base / "credentials"
        for step, cmd in (("vault-create", ["vault", "create", str(vault)]),
                          ("credentials", ["vault", "credentials", str(vault), "--out", str(creds)]),
                          ("register", ["register", "--credentials", str(creds), "--machine", "bench"])):
            measured(srh + cmd, logs / f"agent-{n}", step, env)
        for step in ("first", "nochange"):
            res = measured(srh + ["backup", str(tree), "--json"], logs / f"agent-{n}", step, env)
            stats = benchrun.parse_json_output(res["stdout_file"]).get("stats", {})
            rows.append({"part": "agent", "files": n, "step": step, **_figures(res),
                         "note": f"{stats.get('files_new')} new / {stats.get('files_unchanged')} unchanged"})
            log(f"agent {n} {step}: {res['seconds']:.1f}s, {res['maxrss_mib']:.0f} MiB (load {res['load']})")
        remove_tree(tree)
        if n != keep_vault:
            remove_tree(base)
    return rows


def _figures(res: dict) -> dict:
    return {"seconds": res["seconds"], "rss_mib": res["maxrss_mib"], "cpu_s": res["user_s"] + res["sys_s"],
            "load": res["load"]}


# -- vault: a catalog of N synthetic blob rows -----------------------------------------------

def fill_vault(root: Path, n: int, refs_path: Path) -> dict:
    """A real vault (VaultService.create, a registered machine) whose catalog gets n blob rows
    in packs of BLOBS_PER_PACK, inserted pack by pack as backups would, with random IDs; no
    pack files. Writes the sorted IDs of the packs a point keeps to refs_path."""
    from strongroom.vault.service import CATALOG_FILE, VaultService

    service = VaultService.create(root)
    creds = service.issue_credentials("bench", 1)
    service.register(creds, "bench", "bench keyfile (unused)")
    mid = service.machine_id("bench")
    service.engine.dispose()
    del service  # and init_catalog's engine: no connection of theirs may stay open
    gc.collect()
    npacks = -(-n // BLOBS_PER_PACK)
    rng = random.Random(n)
    db = sqlite3.connect(root / CATALOG_FILE, isolation_level=None)
    # Bulk load only: no journal, a large cache; the catalog goes back to WAL afterwards.
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-2000000")
    db.execute("BEGIN")
    created = int(time.time()) - 30 * 86400
    for p in range(1, npacks + 1):
        count = min(BLOBS_PER_PACK, n - (p - 1) * BLOBS_PER_PACK)
        lengths = [200 + rng.randrange(16000) for _ in range(count)]
        offsets = [0] * count
        for k in range(1, count):
            offsets[k] = offsets[k - 1] + lengths[k - 1]
        db.execute("INSERT INTO packs (id, name, machine_id, size, created, seq) VALUES (?, ?, ?, ?, ?, ?)",
                   (p, rng.randbytes(32).hex(), mid, sum(lengths), created, p))
        ids = rng.randbytes(32 * count)
        db.executemany('INSERT INTO blobs (machine_id, blob_id, pack_id, kind, "offset", length) '
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       ((mid, ids[32 * k:32 * k + 32], p, 0, offsets[k], lengths[k]) for k in range(count)))
    db.execute("UPDATE machines SET pack_seq = ? WHERE id = ?", (npacks, mid))
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=WAL")
    kept = 0
    with open(refs_path, "wb", buffering=MiB) as out:
        for (blob_id,) in db.execute(f"SELECT blob_id FROM blobs WHERE machine_id = ? AND pack_id % "
                                     f"{UNREFERENCED_EVERY} != 0 ORDER BY blob_id", (mid,)):
            out.write(blob_id)
            kept += 1
    db.close()
    return {"packs": npacks, "refs": kept, "dropped_packs": npacks // UNREFERENCED_EVERY}


def vault_part(work: Path, sizes: list[int], logs: Path) -> list[dict]:
    rows = []
    for n in sizes:
        base = work / f"vault-{n}"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        root, refs = base / "vault", base / "refs.bin"
        env = child_env()
        me = [sys.executable, str(Path(__file__).resolve()), "--child"]
        res = measured(me + ["fill", str(root), str(refs), str(n)], logs / f"vault-{n}", "fill", env)
        facts = benchrun.parse_json_output(res["stdout_file"])
        size = (root / "catalog.sqlite").stat().st_size
        log(f"vault of {n} blob rows ({facts['packs']} packs, catalog {size / MiB:.0f} MiB) "
            f"filled in {res['seconds']:.0f}s")
        for step, args in (("open", ["open", str(root)]),
                           ("add_point", ["add-point", str(root), str(refs)]),
                           ("prune", ["prune", str(root)])):
            res = measured(me + args, logs / f"vault-{n}", step, env)
            inner = benchrun.parse_json_output(res["stdout_file"])
            note = {"open": "VaultService opened, nothing done (the baseline)",
                    "add_point": f"{facts['refs']} refs",
                    "prune": f"{inner.get('packs_deleted')} of {facts['packs']} packs dropped, "
                             f"{inner.get('packs_repacked')} repacked; trust check {inner.get('trust_s', 0):.1f}s"
                    }[step]
            if step == "prune" and (inner.get("packs_deleted") != facts["dropped_packs"] or inner.get("packs_repacked")):
                note += f" (EXPECTED {facts['dropped_packs']} dropped, 0 repacked)"
            rows.append({"part": "vault", "files": n, "step": step, **_figures(res), "note": note,
                         "lock_max_s": inner.get("lock_max_s"), "lock_count": inner.get("lock_count"),
                         "wal_max_mib": inner.get("wal_max_mib")})
            log(f"vault {n} {step}: {res['seconds']:.1f}s, {res['maxrss_mib']:.0f} MiB, longest write "
                f"{inner.get('lock_max_s')}s (load {res['load']})")
        shutil.rmtree(base)
    return rows


# -- the measured children of the vault part ------------------------------------------------

class WriteLockWatch:
    """Times every `catalog.write` transaction (from asking for the lock to the end of its
    commit; nothing else writes in the bench, so no time is spent waiting) and samples the
    size of the catalog's write-ahead log, which a long read transaction keeps from being
    reset."""

    def __init__(self, root: Path) -> None:
        from strongroom.vault import catalog
        self.longest, self.count, self.wal_max = 0.0, 0, 0
        original = catalog.write
        wal = root / "catalog.sqlite-wal"

        @contextlib.contextmanager
        def timed(engine: Any) -> Iterator[Any]:
            t0 = time.perf_counter()
            try:
                with original(engine) as db:
                    yield db
            finally:
                self.longest = max(self.longest, time.perf_counter() - t0)
                self.count += 1
        catalog.write = timed

        def sample() -> None:
            while True:
                with contextlib.suppress(OSError):
                    self.wal_max = max(self.wal_max, wal.stat().st_size)
                time.sleep(0.2)
        threading.Thread(target=sample, daemon=True).start()

    def figures(self) -> dict:
        return {"lock_max_s": round(self.longest, 3), "lock_count": self.count,
                "wal_max_mib": round(self.wal_max / MiB, 1)}


def child(what: str, root: Path, refs: Path | None, n: int) -> None:
    if what == "fill":
        print(json.dumps(fill_vault(root, n, refs)))
        return
    watch = WriteLockWatch(root)
    from strongroom.vault import trust
    from strongroom.vault.prune import prune
    from strongroom.vault.service import VaultService

    service = VaultService(root)
    out: dict[str, Any] = {}
    if what == "add-point":
        def chunks() -> Iterator[bytes]:
            with open(refs, "rb") as f:
                while piece := f.read(MiB):
                    yield piece
        point = service.add_point(service.machine_id("bench"), "files", "unoptimized", {}, b"bench", chunks())
        out["point"] = point.id
    elif what == "prune":
        checked = trust.ensure_trusted
        spent = []

        def timed_check(*args: Any, **kw: Any) -> None:
            t0 = time.perf_counter()
            checked(*args, **kw)
            spent.append(time.perf_counter() - t0)
        trust.ensure_trusted = timed_check
        report = prune(service)
        out.update(packs_deleted=report.packs_deleted, packs_repacked=report.packs_repacked,
                   kept=report.packs_kept_for_new_points, trust_s=sum(spent))
    print(json.dumps({**out, **watch.figures()}))


# -- rebuild-catalog -------------------------------------------------------------------------

def rebuild_part(work: Path, sr: str, small: int, scale: float, logs: Path, agent_vault: Path | None) -> list[dict]:
    rows = []
    corpus, _state = benchrun.prepare_corpus(str(work), small, scale, False)
    base = work / "rebuild-corpus"
    shutil.rmtree(base, ignore_errors=True)
    home = base / "home"
    home.mkdir(parents=True)
    env = child_env(home)
    srh = [sr, "--home", str(home / "agent")]
    vault, creds = base / "vault", base / "credentials"
    for step, cmd in (("vault-create", ["vault", "create", str(vault)]),
                      ("credentials", ["vault", "credentials", str(vault), "--out", str(creds)]),
                      ("register", ["register", "--credentials", str(creds), "--machine", "bench"]),
                      ("backup", ["backup", corpus, "--json"])):
        measured(srh + cmd, logs / "rebuild-corpus", step, env)
    targets = [(f"corpus --small {small} --scale {scale}", vault)]
    if agent_vault is not None:
        targets.append((f"agent part's vault ({agent_vault.parent.name})", agent_vault))
    for label, v in targets:
        res = measured([sr, "vault", "rebuild-catalog", str(v), "--json"], logs / "rebuild", v.parent.name, env)
        doc = benchrun.parse_json_output(res["stdout_file"])
        rows.append({"part": "rebuild", "files": label, "step": "rebuild-catalog", **_figures(res),
                     "note": f"{doc.get('packs')} packs, {doc.get('blobs')} blobs, {doc.get('points')} points, "
                             f"{len(doc.get('problems') or [])} problems"})
        log(f"rebuild {label}: {res['seconds']:.1f}s, {res['maxrss_mib']:.0f} MiB (load {res['load']})")
    shutil.rmtree(base)
    return rows


# -- report ----------------------------------------------------------------------------------

def markdown(rows: list[dict]) -> str:
    lines = ["| part | size | step | wall (s) | peak RSS (MiB) | CPU (s) | longest write txn (s) / count "
             "| WAL peak (MiB) | load 1/5/15 min | note |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        size = f"{r['files']:,}" if isinstance(r["files"], int) else r["files"]
        lock = f"{r['lock_max_s']:.3f} / {r['lock_count']}" if r.get("lock_max_s") is not None else ""
        wal = f"{r['wal_max_mib']:.0f}" if r.get("wal_max_mib") is not None else ""
        lines.append(f"| {r['part']} | {size} | {r['step']} | {r['seconds']:.1f} | {r['rss_mib']:.0f} | "
                     f"{r['cpu_s']:.1f} | {lock} | {wal} | {r['load']} | {r['note']} |")
    return "\n".join(lines) + "\n"


def sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, root, *rest = sys.argv[2:]
        child(what, Path(root), Path(rest[0]) if rest else None, int(rest[1]) if len(rest) > 1 else 0)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="agent,vault,rebuild", help="which parts, comma-separated")
    ap.add_argument("--files", default="200000,2000000", help="tree sizes of the agent part")
    ap.add_argument("--blobs", default="2000000,20000000", help="blob rows of the vault part")
    ap.add_argument("--corpus-small", type=int, default=50_000, help="rebuild part: bench/run.py's --small")
    ap.add_argument("--corpus-scale", type=float, default=0.25, help="rebuild part: bench/run.py's --scale")
    ap.add_argument("--workdir", default=str(HERE / "work" / "scale"))
    ap.add_argument("--strongroom-bin", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - {"agent", "vault", "rebuild"}:
        ap.error(f"unknown parts {sorted(parts - {'agent', 'vault', 'rebuild'})}")
    sr = benchrun.find_strongroom(args.strongroom_bin)
    if not sr:
        sys.exit("strongroom executable not found: `pip install -e .` in the venv, or pass --strongroom-bin")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    rows: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        files = sizes(args.files)
        keep = min(files) if "rebuild" in parts and "agent" in parts and files else None
        if "agent" in parts:
            rows += agent_part(work, sr, files, logs, keep)
        if "vault" in parts:
            rows += vault_part(work, sizes(args.blobs), logs)
        if "rebuild" in parts:
            agent_vault = work / f"agent-{keep}" / "vault" if keep else None
            rows += rebuild_part(work, sr, args.corpus_small, args.corpus_scale, logs, agent_vault)
    except benchrun.CommandFailed as exc:
        print(f"scale bench: a command failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if rows:
            print(f"Started {started}; {os.cpu_count()} CPUs; `{' '.join(sys.argv)}`\n")
            print(markdown(rows))
        if not args.keep:
            remove_tree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
