"""Data safety: hostile points cannot write outside the target, corruption is found and
named, and a killed backup leaves the vault consistent and is completed by the next one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import PASSPHRASE, assert_clean_failure, killed_once_packs_land, packs_in
from treeutil import assert_trees_equal

from strongroom.agent.blobcache import KnownBlobs
from strongroom.agent.home import AgentHome
from strongroom.agent.packer import Packer
from strongroom.agent.pointbook import PointBook
from strongroom.model import encode_tree
from strongroom.packs import KIND_DATA, KIND_TREE, read_header


def _entry(name: bytes, kind: str = "f", **extra) -> dict:
    return {"n": name, "t": kind, "m": 0o644, "u": os.getuid(), "g": os.getgid(),
            "mt": 1_600_000_000_000_000_000, **extra}


def _plant_point(home: Path, root_entries_of) -> None:
    """Writes a hand-made (hostile) recovery point with this machine's key."""
    agent = AgentHome(home)
    vault = agent.vault()
    key = agent.master_key(PASSPHRASE)
    packer = Packer(vault, key, KnownBlobs(agent.cache))
    refs: list[bytes] = []

    def blob(data: bytes, kind: int = KIND_DATA) -> bytes:
        blob_id = key.blob_id(data)
        packer.add(blob_id, kind, data)
        refs.append(blob_id)
        return blob_id

    def tree(entries: list[dict]) -> bytes:
        return blob(encode_tree(entries), KIND_TREE)

    root = tree(root_entries_of(blob, tree))
    packer.close()
    book = PointBook(agent, vault, key)
    manifest = book.new_manifest(None, kind="files", mode="unoptimized", tree=root, sources=[b"/"], excludes=[],
                                 warnings=[])
    vault.add_point("files", "unoptimized", {"files_new": 1, "files_changed": 0, "files_unchanged": 0,
                                              "bytes_added": 0}, book.seal("0bad0bad0bad0bad", manifest),
                    [b"".join(sorted(set(refs)))], point_id="0bad0bad0bad0bad")


def test_hostile_point_cannot_escape_the_target(registered, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()

    def entries(blob, tree):
        evil = blob(b"evil\n")
        inner = tree([_entry(b"payload", s=5, c=[evil])])
        return [
            _entry(b"..", s=5, c=[evil]),
            _entry(b"../escaped", s=5, c=[evil]),
            _entry(b"sub/../../escaped2", s=5, c=[evil]),
            _entry(b"/abs-escape", s=5, c=[evil]),
            _entry(b"ok.txt", s=5, c=[evil]),
            # a symlink to outside, then a directory of the same name: the directory's
            # contents must never be written through the link
            _entry(b"trap", "l", l=os.fsencode(outside)),
            _entry(b"trap", "d", tree=inner),
            _entry(b"dotdir", "d", tree=tree([_entry(b"..", "d", tree=inner)])),
        ]

    _plant_point(registered.home, entries)
    target = tmp_path / "target"
    res = registered.run("restore", "latest", "--target", target, "--conflict", "overwrite", "--json", check=False)
    assert res.returncode == 3, res.stderr
    assert (target / "ok.txt").read_bytes() == b"evil\n"
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["home", "vault", "cred", "outside", "target"])
    assert not (target / "trap").is_symlink() or not (outside / "payload").exists()


def test_a_name_with_a_leading_slash_is_not_written_at_the_filesystem_root(registered, tmp_path):
    # Opened relative to a directory descriptor, an absolute name ignores the descriptor: a
    # restore that let "/x" through wrote /x, wherever the target was.
    tag = os.urandom(6).hex()
    at_root = [f"/strongroom-test-{tag}-file", f"/strongroom-test-{tag}-dir", f"/strongroom-test-{tag}-link"]

    def entries(blob, tree):
        evil = blob(b"evil\n")
        return [_entry(os.fsencode(at_root[0]), s=5, c=[evil]),
                _entry(os.fsencode(at_root[1]), "d", tree=tree([_entry(b"inner", s=5, c=[evil])])),
                _entry(os.fsencode(at_root[2]), "l", l=b"/etc/passwd"),
                _entry(b"fine", s=5, c=[evil])]

    _plant_point(registered.home, entries)
    target = tmp_path / "target"
    try:
        res = registered.run("restore", "latest", "--target", target, "--conflict", "overwrite", "--json",
                             check=False)
        written = [p for p in at_root if os.path.lexists(p)]
    finally:
        for p in at_root:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
    assert written == [], f"a restore wrote at the filesystem root: {written}"
    assert res.returncode == 3, res.stderr
    errors = json.loads(res.stdout)["errors"]
    assert sorted(e["path"] for e in errors) == sorted("/" + p for p in at_root)
    assert {e["error"] for e in errors} == {"refused: the name would leave its directory"}
    assert (target / "fine").read_bytes() == b"evil\n"


def test_symlink_in_target_is_not_followed(registered, tmp_path):
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file.txt").write_text("data\n")
    registered.backup(src)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    # the user's target holds a symlink where the point has a directory
    lead = target / str(src).lstrip("/")
    lead.mkdir(parents=True)
    (lead / "dir").symlink_to(outside)
    res = registered.run("restore", "latest", "--target", target, "--conflict", "skip", check=False)
    assert res.returncode == 3
    assert list(outside.iterdir()) == []
    registered.restore("latest", target=target, conflict="overwrite")
    assert list(outside.iterdir()) == []
    assert (lead / "dir" / "file.txt").read_text() == "data\n" and not (lead / "dir").is_symlink()


def test_corrupt_blob_is_named_and_the_rest_restores(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(1_500_000))
    for i in range(5):
        (src / f"small-{i}.txt").write_text(f"small file {i}\n" * 100)
    registered.backup(src)
    assert registered.json("check", "--read-data")["ok"]
    pack = next(p for p in packs_in(registered.vault) if any(r.length > 100_000 for r in read_header(p.read_bytes())))
    data = bytearray(pack.read_bytes())
    ref = max(read_header(bytes(data)), key=lambda r: r.length)
    data[ref.offset + ref.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))

    res = registered.run("check", "--read-data", "--json", check=False)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert not report["ok"]
    named = [e for e in report["errors"] if e.get("pack") == pack.name]
    assert named and any(f.endswith("/big.bin") for e in named for f in e.get("files", []))

    target = tmp_path / "target"
    res = registered.run("restore", "latest", "--target", target, "--json", check=False)
    assert res.returncode == 3
    out = json.loads(res.stdout)
    assert [e["path"] for e in out["errors"]] == [str(src / "big.bin")]
    assert not (target / str(src).lstrip("/") / "big.bin").exists(), "a half-restored file was left behind"
    for i in range(5):
        assert (target / str(src).lstrip("/") / f"small-{i}.txt").read_text() == f"small file {i}\n" * 100


def test_check_read_data_finds_an_altered_pack_whose_blobs_all_still_decode(registered, tmp_path):
    # One byte of the pack header changes, the kind of a data blob (0) becomes tree (1): every
    # blob still decrypts and matches its ID, the size is the same, so only the pack's hash
    # (its name) shows that the pack is not what was uploaded.
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(100_000))
    registered.backup(src)
    (pack,) = [p for p in packs_in(registered.vault) if any(r.kind == KIND_DATA for r in read_header(p.read_bytes()))]
    data = bytearray(pack.read_bytes())
    ref = next(r for r in read_header(bytes(data)) if r.kind == KIND_DATA)
    at = bytes(data).rindex(b"\xc4\x20" + ref.blob_id) + 2 + 32  # msgpack: bin 32, the ID, then the kind
    assert data[at] == KIND_DATA
    data[at] = KIND_TREE
    pack.write_bytes(bytes(data))
    assert any(r.blob_id == ref.blob_id and r.kind == KIND_TREE for r in read_header(bytes(data)))

    assert registered.json("check")["ok"]  # the structure is sound: only reading the data tells
    res = registered.run("check", "--read-data", "--json", check=False)
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert [(e.get("pack"), e["error"]) for e in report["errors"]] == [
        (pack.name, "pack content does not match its name (corrupt)")]
    assert report["errors"][0]["files"] == [f"{registered.points()[0]['id']}:{src / 'f.bin'}"]


def test_missing_pack_is_reported_by_check(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    registered.backup(src)
    for p in packs_in(registered.vault):
        p.unlink()
    res = registered.run("check", check=False)
    assert res.returncode == 1
    assert "missing" in res.stderr


def test_killed_backup_leaves_vault_consistent_and_next_backup_resumes(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"part-{i}.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    total = 6 * 12 * 1024 * 1024
    # Killed once 4 packs landed: with two uploaders, the last two may still wait for their
    # index, so at least 2 (each over 4 MiB: over 10 % of the data) are indexed.
    killed_once_packs_land(registered, ["backup", src], registered.vault, 4)
    assert registered.points() == []
    assert registered.json("check", "--read-data")["ok"]

    stats = registered.backup(src)["stats"]
    assert stats["bytes_read"] == total
    assert stats["bytes_added"] < total * 0.9, "packs that landed before the kill were uploaded again"
    assert registered.json("check", "--read-data")["ok"]
    target = tmp_path / "target"
    registered.restore("latest", target=target)
    assert_trees_equal(src, target / str(src).lstrip("/"))


def test_backup_while_vault_folder_is_unreadable_fails_cleanly(registered, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.rename(registered.vault, tmp_path / "vault-moved")
    assert_clean_failure(registered.run("backup", src, check=False), 1, "no Strongroom vault at")


def test_unindexed_pack_is_noted_but_not_an_error(registered, tmp_path):
    """A backup killed between storing a pack and indexing it leaves such a pack."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x\n")
    registered.backup(src)
    pack = packs_in(registered.vault)[0]
    stray = pack.parent / ("0" * 64)
    stray.write_bytes(pack.read_bytes())
    report = registered.json("check", "--read-data")
    assert report["ok"] and report["orphan_packs"] == 1
    assert "not indexed" in registered.run("check").stdout
