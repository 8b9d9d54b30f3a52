#!/usr/bin/env python3
"""The benchmark corpus, generated here so that `make bench` runs from a clean clone.

    corpus.py create DIR [--seed N] [--small N] [--scale F] [--meta]
    corpus.py mutate DIR [--seed N] [--gen G] [--small N]

create: `small/` holds N files (default 50,000) of 1-16 KiB in 500 leaf folders
(small/dA/eB/fC, 10 x 10 x 5); even-numbered files are log-like text (compressible), odd ones
random bytes. `large/` holds ten files, 1.5 GiB at scale 1: rand_0..4.bin (random) and
log_0..4.log (text) of 64, 96, 128, 200 and 280 MiB each. Every byte is a function of the seed
and the file's number, so two runs give identical trees.

With --meta (bench/run.py asks for it; the other benches do not, so their corpora have only
regular files), `meta/` holds a dozen entries whose metadata a restore must keep, so that the bench's restore
check of mode, mtime, owner and symlink targets checks something: files of modes 0600, 0755,
0444 and 04755, a 0700 folder, an empty file, a file dated 2001 with an odd nanosecond, a file
owned by uid 1234 / gid 5678 (when run as root), and four symlinks (relative, absolute, to a
folder, dangling).

mutate (generation G): rewrites 1 % of the small files with new content of a new size, deletes
100 others, adds 100 new ones under small/new_gG/, appends 16 MiB of text to large/log_1.log,
overwrites 1 MiB (not block-aligned) in the middle of large/rand_2.bin, and changes only the
metadata of meta/retouched.txt (mode and mtime, same content).

The same shape as the corpus the project's peers were first measured on; stdlib only.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

KiB, MiB = 1024, 1024 * 1024
LARGE_MIB = (64, 96, 128, 200, 280)
VOCABULARY = ("GET POST PUT DELETE /api/v1/users /api/v1/orders /healthz /metrics /login status=200 "
              "status=404 status=500 latency_ms= bytes= id= shard= region=eu-west region=us-east "
              "request response session token cache miss hit backend timeout retry connection "
              "closed reset query select insert update commit rollback lock worker thread queue "
              "job scheduled completed failed started stopped config reload disk memory cpu gc "
              "heap alloc read write fsync rename unlink scan index segment merge compaction "
              "snapshot backup restore chunk hash verify ok error warning").split()
LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")


def _message_pool(seed: int) -> list[str]:
    """8,192 log message bodies: real logs repeat a bounded set of shapes."""
    rng = random.Random(f"messages-{seed}")
    pool = []
    for _ in range(8192):
        words = [w + str(rng.randrange(100000)) if w.endswith("=") else w
                 for w in rng.choices(VOCABULARY, k=rng.randint(4, 14))]
        pool.append(f"{'web' if rng.random() < 0.75 else 'db'}-{rng.randrange(12):02d} "
                    f"{rng.choice(('api', 'worker', 'db', 'cron'))}[{rng.randint(100, 32000)}]: "
                    f"{rng.choice(LEVELS)} {' '.join(words)}")
    return pool


_POOLS: dict[int, list[str]] = {}


def log_text(rng: random.Random, size: int, seed: int) -> bytes:
    """`size` bytes of timestamped log lines."""
    if seed not in _POOLS:
        _POOLS[seed] = _message_pool(seed)
    pool = _POOLS[seed]
    stamp = rng.randint(1_600_000_000_000, 1_700_000_000_000)
    parts, have = [], 0
    while have < size:
        lines = []
        for message in rng.choices(pool, k=max(8, (size - have) // 60)):
            stamp += rng.randint(1, 996)
            lines.append(f"{stamp // 1000}.{stamp % 1000:03d} {message}\n")
        block = "".join(lines).encode()
        parts.append(block)
        have += len(block)
    return b"".join(parts)[:size]


def small_path(i: int) -> str:
    return os.path.join("small", f"d{i % 10}", f"e{i // 10 % 10}", f"f{i // 100 % 5}",
                        f"file_{i:05d}.{'txt' if i % 2 == 0 else 'bin'}")


def small_data(seed: int, i: int, gen: int = 0) -> bytes:
    rng = random.Random(f"small-{seed}-{i}-{gen}")
    size = rng.randint(KiB, 16 * KiB)
    return log_text(rng, size, seed) if i % 2 == 0 else rng.randbytes(size)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def create(root: str, seed: int, small: int, scale: float, meta: bool = False) -> None:
    started = time.monotonic()
    total = 0
    for i in range(small):
        path = os.path.join(root, small_path(i))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = small_data(seed, i)
        _write(path, data)
        total += len(data)
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    for kind, ext in (("rand", "bin"), ("log", "log")):
        for n, mib in enumerate(LARGE_MIB):
            size = max(1, int(mib * scale)) * MiB
            with open(os.path.join(root, "large", f"{kind}_{n}.{ext}"), "wb") as f:
                for at in range(0, size, 4 * MiB):
                    rng = random.Random(f"large-{seed}-{kind}-{n}-{at}")
                    piece = min(4 * MiB, size - at)
                    f.write(log_text(rng, piece, seed) if kind == "log" else rng.randbytes(piece))
            total += size
    if meta:
        create_meta(root, seed)
    print(f"created {small} small files and 10 large ones, {total / MiB:.1f} MiB, "
          f"in {time.monotonic() - started:.1f} s")


META_OLD_MTIME_NS = 1_000_000_000_123_456_789  # 2001-09-09, odd nanoseconds


def create_meta(root: str, seed: int) -> None:
    """The `meta/` entries (see the module's first lines); a few KiB in all."""
    meta = os.path.join(root, "meta")
    os.makedirs(os.path.join(meta, "private"))
    rng = random.Random(f"meta-{seed}")
    for name, mode in (("mode-0600.txt", 0o600), ("mode-0755.sh", 0o755), ("mode-0444.txt", 0o444),
                       ("setuid-04755", 0o4755), ("retouched.txt", 0o644), ("private/secret.txt", 0o640),
                       ("old-mtime.txt", 0o644), ("owned-1234.txt", 0o644)):
        path = os.path.join(meta, name)
        _write(path, log_text(rng, rng.randint(100, 3000), seed))
        os.chmod(path, mode)
    _write(os.path.join(meta, "empty"), b"")
    os.chmod(os.path.join(meta, "private"), 0o700)
    os.utime(os.path.join(meta, "old-mtime.txt"), ns=(META_OLD_MTIME_NS, META_OLD_MTIME_NS))
    if os.geteuid() == 0:
        os.chown(os.path.join(meta, "owned-1234.txt"), 1234, 5678)
    for name, target in (("link-relative", "mode-0600.txt"), ("link-absolute", "/etc/hostname"),
                         ("link-to-folder", "private"), ("link-dangling", "does-not-exist")):
        os.symlink(target, os.path.join(meta, name))


def mutate(root: str, seed: int, gen: int, small: int) -> None:
    rng = random.Random(f"mutate-{seed}-{gen}")
    present = [i for i in range(small) if os.path.exists(os.path.join(root, small_path(i)))]
    rewrite = min(max(1, small // 100), len(present))
    deleted = min(100, len(present) - rewrite)  # fewer in a corpus of fewer than 101 small files
    chosen = rng.sample(present, rewrite + deleted)
    changed = 0
    for i in chosen[:rewrite]:
        data = small_data(seed, i, gen)
        _write(os.path.join(root, small_path(i)), data)
        changed += len(data)
    for i in chosen[rewrite:]:
        os.unlink(os.path.join(root, small_path(i)))
    folder = os.path.join(root, "small", f"new_g{gen}")
    os.makedirs(folder, exist_ok=True)
    for j in range(100):
        r = random.Random(f"new-{seed}-{gen}-{j}")
        size = r.randint(KiB, 16 * KiB)
        data = log_text(r, size, seed) if j % 2 == 0 else r.randbytes(size)
        _write(os.path.join(folder, f"new_{j:03d}.{'txt' if j % 2 == 0 else 'bin'}"), data)
        changed += len(data)
    with open(os.path.join(root, "large", "log_1.log"), "ab") as f:
        f.write(log_text(random.Random(f"append-{seed}-{gen}"), 16 * MiB, seed))
    target = os.path.join(root, "large", "rand_2.bin")
    middle = os.path.getsize(target) // 2 // 4096 * 4096 + 1234
    with open(target, "r+b") as f:
        f.seek(middle)
        f.write(random.Random(f"poke-{seed}-{gen}").randbytes(MiB))
    changed += 17 * MiB
    retouched = os.path.join(root, "meta", "retouched.txt")
    if os.path.exists(retouched):  # corpora made before meta/ existed have none
        os.chmod(retouched, 0o600 if gen % 2 else 0o644)
        os.utime(retouched, ns=(META_OLD_MTIME_NS + gen, META_OLD_MTIME_NS + gen))
    print(f"mutation {gen}: {rewrite} small files rewritten, {deleted} deleted, 100 added, 16 MiB appended, "
          f"1 MiB overwritten, one file's mode and mtime changed; about {changed / MiB:.1f} MiB of new data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("create", "mutate"))
    ap.add_argument("dir")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--small", type=int, default=50_000)
    ap.add_argument("--scale", type=float, default=1.0, help="scale of the large files' sizes")
    ap.add_argument("--gen", type=int, default=1)
    ap.add_argument("--meta", action="store_true", help="create: add meta/ (modes, owner, old mtime, symlinks)")
    a = ap.parse_args()
    if a.mode == "create":
        if os.path.exists(a.dir) and os.listdir(a.dir):
            sys.exit(f"{a.dir} exists and is not empty")
        create(a.dir, a.seed, a.small, a.scale, a.meta)
    else:
        mutate(a.dir, a.seed, a.gen, a.small)


if __name__ == "__main__":
    main()
