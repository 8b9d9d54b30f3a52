#!/usr/bin/env python3
"""Image backup benchmark (issue 12): a loop device holding the bench corpus, per filesystem.

    python bench/image.py [--workdir bench/work-image] [--size-mib 512] [--small 5000]
                          [--scale 0.1] [--fs ext4,btrfs] [--peers dd-zstd,restic]

Needs root (loop devices, mounts). Per filesystem: a fresh image file of --size-mib with the
filesystem; the bench corpus (bench/corpus.py create, small files and large files scaled by
--scale) copied in; then, on the loop device:
  1. first `strongroom backup --image /dev/loopN` (time, bytes added to the vault);
  2. `bench/corpus.py mutate` on the mounted filesystem (it prints the bytes it changed);
  3. second image backup: bytes added, beside the changed data (the point of the test: it
     must be close to the change, not to the device); at the end, a volume backup of the
     mounted filesystem beside restic's `backup --one-file-system` of it (fresh repositories);
  4. `restore --image --target FILE` and `export --vhd FILE` (time), checked equal to the
     device by `qemu-img compare`;
  peers on the same device after step 3: `dd | zstd -3` (time, compressed size) and restic
  `backup --stdin` twice (before and after the mutation; data added by the second).
One round: the machine is shared; quote the figures with the command line. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_CORPUS = os.path.join(HERE, "corpus.py")  # the bench's own generator: a clean clone has no ../shared
PASSPHRASE = "strongroom-bench-passphrase-0123456789"
MiB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, env: dict | None = None, stdin=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=False)
    if res.returncode not in (0, 3):  # 3: strongroom's "completed with warnings"
        raise SystemExit(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.decode()[-2000:]}")
    return res


def timed(*argv: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    os.sync()
    start = time.monotonic()
    res = sh(*argv, env=env)
    return time.monotonic() - start, res


def strongroom_bin() -> str:
    local = os.path.join(HERE, "..", ".venv", "bin", "strongroom")
    return os.path.abspath(local) if os.path.exists(local) else (shutil.which("strongroom") or "strongroom")


class Env:
    def __init__(self, work: str) -> None:
        self.work = work
        self.sr = strongroom_bin()
        self.env = {**os.environ, "STRONGROOM_HOME": os.path.join(work, "home"), "STRONGROOM_PASSPHRASE": PASSPHRASE,
                    "RESTIC_PASSWORD": PASSPHRASE}
        vault = os.path.join(work, "vault")
        sh(self.sr, "vault", "create", vault, env=self.env)
        sh(self.sr, "vault", "credentials", vault, "--out", os.path.join(work, "cred"), env=self.env)
        sh(self.sr, "register", "--credentials", os.path.join(work, "cred"), "--machine", "bench", env=self.env)

    def json(self, *args: str) -> tuple[float, dict]:
        took, res = timed(self.sr, *args, "--json", env=self.env)
        return took, json.loads(res.stdout)


def bench_fs(fs: str, args: argparse.Namespace, corpus: str, peers: list[str]) -> dict:
    work = os.path.join(args.workdir, fs)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = Env(work)
    img = os.path.join(work, "disk.img")
    with open(img, "wb") as f:
        f.truncate(args.size_mib * MiB)
    sh("mkfs.ext4", "-q", "-F", img) if fs == "ext4" else sh("mkfs.btrfs", "-q", "-f", img)
    dev = sh("losetup", "-f", "--show", img).stdout.decode().strip()
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    row: dict = {"fs": fs, "device_bytes": args.size_mib * MiB}
    try:
        sh("mount", dev, mnt)
        sh("cp", "-a", corpus, os.path.join(mnt, "corpus"))
        os.sync()  # btrfs reports its usage late
        row["used_bytes"] = int(sh("df", "-B1", "--output=used", mnt).stdout.split()[-1])
        sh("umount", mnt)
        log(f"{fs}: first image backup of {dev}")
        row["first_s"], first = env.json("backup", "--image", dev)
        row["first_added"], row["first_data"] = first["stats"]["bytes_added"], first["stats"]["image_data_bytes"]
        if "restic" in peers:
            repo = os.path.join(work, "restic")
            sh("restic", "-r", repo, "init", env=env.env)
            row["restic_first_s"], _ = timed("sh", "-c", f"restic -r {repo} backup --stdin --stdin-filename disk "
                                             f"--json < {dev} > /dev/null", env=env.env)
        sh("mount", dev, mnt)
        mutate_out = sh(sys.executable, MAKE_CORPUS, "mutate", os.path.join(mnt, "corpus"), "--gen", "1")
        said = (mutate_out.stdout + mutate_out.stderr).decode()
        changed = re.search(r"~([\d.]+) MiB new data", said)  # what the mutation wrote, by its own count
        row["changed_bytes"] = int(float(changed[1]) * MiB) if changed else None
        sh("umount", mnt)
        log(f"{fs}: second image backup")
        row["second_s"], second = env.json("backup", "--image", dev)
        row["second_added"] = second["stats"]["bytes_added"]
        out = os.path.join(work, "restored.img")
        row["restore_s"], _ = env.json("restore", "latest", "--image", "--target", out)
        sh("qemu-img", "compare", "-f", "raw", "-F", "raw", dev, out)
        os.unlink(out)
        vhd = os.path.join(work, "out.vhd")
        row["vhd_s"], _ = env.json("export", "latest", "--vhd", vhd)
        sh("qemu-img", "compare", "-f", "raw", "-F", "vpc", dev, vhd)
        os.unlink(vhd)
        if "dd-zstd" in peers and shutil.which("zstd"):
            zst = os.path.join(work, "disk.zst")
            row["dd_zstd_s"], _ = timed("sh", "-c", f"dd if={dev} bs=4M status=none | zstd -3 -q -T1 -o {zst}")
            row["dd_zstd_bytes"] = os.path.getsize(zst)
            os.unlink(zst)
        if "restic" in peers:
            repo = os.path.join(work, "restic")
            took, res = timed("sh", "-c", f"restic -r {repo} backup --stdin --stdin-filename disk --json < {dev}",
                              env=env.env)
            summary = [json.loads(line) for line in res.stdout.decode().splitlines() if '"summary"' in line]
            row["restic_second_s"] = took
            row["restic_second_added"] = summary[-1].get("data_added") if summary else None
        # last, so that its reads (atime) and snapshot do not count in the image increment
        sh("mount", dev, mnt)
        log(f"{fs}: volume backup of {mnt}")
        row["volume_s"], vol = env.json("backup", "--volume", mnt)
        row["volume_added"] = vol["stats"]["bytes_added"]
        if "restic" in peers:
            repo = os.path.join(work, "restic-volume")
            sh("restic", "-r", repo, "init", env=env.env)
            row["restic_volume_s"], _ = timed("restic", "-r", repo, "backup", "--one-file-system", "--json", mnt,
                                              env=env.env)
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(HERE, "work-image"))
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--fs", default="ext4,btrfs")
    ap.add_argument("--peers", default="dd-zstd,restic")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: loop devices and mounts")
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, "corpus")
    if not os.path.isdir(corpus):
        log("making the corpus")
        sh(sys.executable, MAKE_CORPUS, "create", corpus, "--small", str(args.small), "--scale", str(args.scale))
    peers = [p for p in args.peers.split(",") if p and (p != "restic" or shutil.which("restic"))]
    rows = [bench_fs(fs, args, corpus, peers) for fs in args.fs.split(",")]
    print(json.dumps(rows, indent=1))
    print()
    print("| fs | volume backup | restic backup (same folder) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['fs']} | {r['volume_s']:.1f} s | " + (f"{r['restic_volume_s']:.1f} s |" if "restic_volume_s" in r
                                                          else "- |"))
    print()
    print("| fs | device | used | 1st backup | 1st added | data changed | 2nd backup | 2nd added | "
          "restore | VHD export | dd\\|zstd | restic 2nd added |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = lambda n: f"{n / MiB:.1f} MiB" if isinstance(n, int) else "-"  # noqa: E731
        print(f"| {r['fs']} | {m(r['device_bytes'])} | {m(r['used_bytes'])} | {r['first_s']:.1f} s | "
              f"{m(r['first_added'])} | {m(r['changed_bytes'])} | {r['second_s']:.1f} s | {m(r['second_added'])} | "
              f"{r['restore_s']:.1f} s | {r['vhd_s']:.1f} s | "
              f"{r.get('dd_zstd_s', 0):.1f} s, {m(r.get('dd_zstd_bytes'))} | {m(r.get('restic_second_added'))} |")


if __name__ == "__main__":
    main()
