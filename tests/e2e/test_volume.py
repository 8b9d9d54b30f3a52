"""Volume points (`backup --volume`): a whole filesystem on a real loop device, staying on it,
its type, UUID, label and size recorded; each refusal with its one line; restore --volume."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blockdev import devices, fill, need, run  # noqa: F401 - devices is a fixture
from conftest import assert_clean_failure, saying
from treeutil import assert_trees_equal, under


@pytest.fixture
def ext4_volume(devices, tmp_path):  # noqa: F811
    need("mkfs.ext4", "losetup", "blkid")
    img = devices.image(tmp_path / "vol.img", 64, "ext4", label="srvol")
    dev = devices.loop(img)
    mnt = devices.mount(dev, tmp_path / "vol")
    fill(mnt)
    return mnt, dev


def test_volume_round_trip_stays_on_its_filesystem(registered, devices, ext4_volume, tmp_path):  # noqa: F811
    mnt, dev = ext4_volume
    nested = devices.mount("tmpfs", mnt / "nested", "size=1m", fstype="tmpfs")
    (nested / "not-on-the-volume.txt").write_text("a tmpfs inside the volume")
    res = registered.backup("--volume", mnt)
    assert res["kind"] == "volume"
    v = res["volume"]
    assert (v["mount"], v["fstype"], v["device"], v["label"]) == (str(mnt), "ext4", dev, "srvol")
    blkid = run("blkid", "-o", "value", "-s", "UUID", dev).stdout.strip()
    assert v["uuid"] == blkid and v["size"] > 50 * 1024 * 1024 and 0 < v["used"] < v["size"]
    assert res["not_crossed"] == [str(nested)] and res["stats"]["mounts_not_crossed"] == 1

    text = registered.run("backup", "--volume", mnt).stdout
    assert f"nested mounts not crossed: {nested}" in text and "UUID " + blkid in text

    points = registered.points()
    assert [p["kind"] for p in points] == ["volume", "volume"]
    assert points[0]["volume"]["uuid"] == blkid and points[0]["sources"] == [str(mnt)]
    table = registered.run("points").stdout
    assert "volume (ext4" in table and "srvol" in table
    ls = registered.run("ls", points[0]["id"]).stdout
    assert ls.splitlines()[0].startswith(f"Volume {mnt}: ext4 on {dev}, UUID {blkid}, label srvol")
    listed = [r["path"] for r in registered.json("ls", points[0]["id"])]
    assert str(nested) in listed and str(nested / "not-on-the-volume.txt") not in listed

    out = tmp_path / "out"
    restored = registered.restore(points[0]["id"], "--volume", mnt, target=out)
    assert restored["kind"] == "volume" and restored["errors"] == []
    got = under(out, mnt)
    for name in ("dir0", "dir1", "dir2", "dir3", "dir4", "lost+found"):
        assert_trees_equal(mnt / name, got / name)
    assert filecmp.cmp(mnt / "big.bin", got / "big.bin", shallow=False)
    assert os.readlink(got / "link") == "dir0/file0.txt"
    assert (got / "nested").is_dir() and list((got / "nested").iterdir()) == []

    # one folder of the volume, named relative to it, back in place over a damaged copy
    (mnt / "dir1" / "file1.txt").write_text("damaged")
    registered.restore(points[0]["id"], "dir1", "--volume", mnt, target="original")
    assert_trees_equal(mnt / "dir1", got / "dir1")


def test_parent_is_the_newest_point_of_the_same_kind(registered, ext4_volume, tmp_path):
    mnt, _dev = ext4_volume
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = registered.backup("--volume", mnt)["stats"]
    files = registered.backup(folder)["stats"]
    assert files["files_new"] == 1
    second = registered.backup("--volume", mnt)["stats"]
    # the files point in between is not its parent: every file of the volume is carried over unread
    assert second["files_new"] == 0 and second["files_changed"] == 0
    assert second["files_unchanged"] == first["files_new"] and second["bytes_read"] == 0
    again = registered.backup(folder)["stats"]
    assert again["files_unchanged"] == 1 and again["files_new"] == 0


def test_refuses_tmpfs_unless_asked(registered, devices, tmp_path):  # noqa: F811
    need()
    mnt = devices.mount("tmpfs", tmp_path / "tmp", "size=2m", fstype="tmpfs")
    (mnt / "x").write_text("x")
    assert_clean_failure(registered.run("backup", "--volume", mnt, check=False), 2,
                         saying(str(mnt), "is a tmpfs", "--allow-tmpfs"))
    res = registered.backup("--volume", mnt, "--allow-tmpfs")
    assert res["kind"] == "volume" and res["volume"]["fstype"] == "tmpfs" and res["stats"]["files_new"] == 1


def test_refuses_pseudo_filesystems(registered):
    assert_clean_failure(registered.run("backup", "--volume", "/proc", check=False), 2,
                         saying("/proc is a pseudo filesystem (proc)"))
    assert_clean_failure(registered.run("backup", "--volume", "/sys", check=False), 2,
                         saying("/sys is a pseudo filesystem (sysfs)"))


def test_refuses_a_folder_that_is_not_a_mount_point(registered, tmp_path):
    (tmp_path / "plain").mkdir()
    assert_clean_failure(registered.run("backup", "--volume", tmp_path / "plain", check=False), 2,
                         saying(str(tmp_path / "plain"), "is not a mount point"))
    assert_clean_failure(registered.run("backup", "--volume", tmp_path / "missing", check=False), 2,
                         saying("missing", "is not a directory"))


def test_refuses_read_only_media(registered, devices, tmp_path):  # noqa: F811
    need("mkfs.ext4", "losetup")
    img = devices.image(tmp_path / "ro.img", 16, "ext4")
    dev = devices.loop(img, read_only=True)
    mnt = devices.mount(dev, tmp_path / "ro", "ro,noload")
    assert_clean_failure(registered.run("backup", "--volume", mnt, check=False), 2,
                         saying(str(mnt), "read-only"))


def test_refuses_fuse_mounts(registered, tmp_path):
    need("fusermount3")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tinyfuse.py")), str(mnt)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while str(mnt) not in Path("/proc/self/mountinfo").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"cannot make a FUSE mount here: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.05)
        assert_clean_failure(registered.run("backup", "--volume", mnt, check=False), 2,
                             saying(str(mnt), "is a FUSE mount"))
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        proc.terminate()
        proc.wait(10)


def test_kind_options_are_one_at_a_time(registered, tmp_path):
    assert_clean_failure(registered.run("backup", "--volume", "/", "--system-state", check=False), 2,
                         saying("--volume and --system-state", "one at a time"))
    assert_clean_failure(registered.run("backup", tmp_path, "--volume", "/", check=False), 2,
                         saying("--volume takes no PATHS"))
    assert_clean_failure(registered.run("backup", check=False), 2, saying("give PATHS"))


def test_restore_volume_checks_the_point(registered, ext4_volume, tmp_path):
    mnt, _dev = ext4_volume
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    files_point = registered.backup(folder)["id"]
    volume_point = registered.backup("--volume", mnt)["id"]
    assert_clean_failure(registered.run("restore", files_point, "--volume", mnt, "--target", tmp_path / "o",
                                        check=False), 2, saying("--volume restores a volume point", "files"))
    assert_clean_failure(registered.run("restore", volume_point, "--volume", folder, "--target", tmp_path / "o",
                                        check=False), 2, saying("mounted at", str(mnt), "not", str(folder)))
    assert_clean_failure(registered.run("restore", volume_point, "/etc", "--volume", mnt, "--target",
                                        tmp_path / "o", check=False), 2, saying("/etc is not on the volume"))


def test_btrfs_volume_is_read_from_a_snapshot_and_stays_on_it(registered, devices, tmp_path):  # noqa: F811
    need("mkfs.btrfs", "losetup", "btrfs")
    img = devices.image(tmp_path / "b.img", 128, "btrfs", label="srbtrfs")
    mnt = devices.mount(devices.loop(img), tmp_path / "bvol")
    fill(mnt)
    run("btrfs", "subvolume", "create", mnt / "sub")
    (mnt / "sub" / "in-a-subvolume.txt").write_text("a nested subvolume has a device of its own")
    nested = devices.mount("tmpfs", mnt / "nested", "size=1m", fstype="tmpfs")
    (nested / "not-on-the-volume.txt").write_text("x")
    res = registered.backup("--volume", mnt)
    assert res["kind"] == "volume" and res["snapshot"] == "btrfs" and res["volume"]["fstype"] == "btrfs"
    assert sorted(res["not_crossed"]) == sorted([str(mnt / "nested"), str(mnt / "sub")])
    listed = {r["path"] for r in registered.json("ls", "latest")}
    assert str(mnt / "big.bin") in listed and str(nested / "not-on-the-volume.txt") not in listed
    assert not any(".strongroom-snapshots" in p for p in listed)
    out = tmp_path / "out"
    registered.restore("latest", "--volume", mnt, target=out)
    got = under(out, mnt)
    for name in ("dir0", "dir3"):
        assert_trees_equal(mnt / name, got / name)
    assert filecmp.cmp(mnt / "big.bin", got / "big.bin", shallow=False)
    assert list((got / "nested").iterdir()) == [] and list((got / "sub").iterdir()) == []
