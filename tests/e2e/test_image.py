"""Image points (`backup --image`): image files and loop devices with ext4 and btrfs inside,
backed up, backed up again after a change (only the change is added), restored to a file and
to a device, exported as VHD and raw and checked by qemu-img and fsck; each refusal."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from blockdev import devices, fill, need, run  # noqa: F401 - devices is a fixture
from conftest import assert_clean_failure, saying

MiB = 1024 * 1024


def qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        pytest.skip("qemu-img is not installed (qemu-utils; scripts/system-packages.sh installs it)")
    return exe


def fsck(fs: str, image: Path | str) -> None:
    """A read-only consistency check of the filesystem in `image` (a file or a device)."""
    if fs == "ext4":
        res = run("e2fsck", "-n", "-f", image, check=False)
    else:
        res = run("btrfs", "check", "--readonly", image, check=False)
    assert res.returncode == 0, f"fsck of the restored {fs} failed:\n{res.stdout}\n{res.stderr}"


def filled_image(devices, tmp_path: Path, fs: str, size_mib: int = 128) -> Path:  # noqa: F811
    need("losetup", "mkfs.ext4" if fs == "ext4" else "mkfs.btrfs")
    img = devices.image(tmp_path / f"{fs}.img", size_mib, fs)
    mnt = devices.mount(devices.loop(img), tmp_path / f"{fs}-mnt")
    fill(mnt)
    devices.unmount(mnt)
    return img


def change_a_file(devices, img: Path, tmp_path: Path) -> None:  # noqa: F811
    dev = devices.loop(img)
    mnt = devices.mount(dev, tmp_path / "change-mnt")
    with open(mnt / "dir0" / "file0.txt", "ab") as f:
        f.write(os.urandom(200 * 1024))
    devices.unmount(mnt)
    run("losetup", "-d", dev)
    devices.undo.remove(["losetup", "-d", dev])


@pytest.mark.parametrize("fs", ["ext4", "btrfs"])
def test_image_file_round_trip_and_increment(registered, devices, tmp_path, fs):  # noqa: F811
    img = filled_image(devices, tmp_path, fs)
    first = registered.backup("--image", img)
    assert first["kind"] == "image" and first["image"] == {"source": str(img), "size": 128 * MiB, "device": False}
    s = first["stats"]
    assert s["image_size"] == 128 * MiB and s["image_data_bytes"] < 40 * MiB  # holes and zeros not stored
    assert 3 * MiB < s["bytes_added"] < 40 * MiB

    change_a_file(devices, img, tmp_path)
    second = registered.backup("--image", img)["stats"]
    # only what changed: the 200 KiB appended, the metadata blocks around it, and their chunks
    assert second["bytes_added"] < 12 * MiB, second

    points = registered.points()
    assert [p["kind"] for p in points] == ["image", "image"] and points[0]["image"]["size"] == 128 * MiB
    assert "image (128.0 MiB)" in registered.run("points").stdout

    out = tmp_path / "restored.img"
    res = registered.json("restore", "latest", "--image", "--target", out)
    assert (res["kind"], res["device"], res["size"]) == ("image", False, 128 * MiB)
    assert out.read_bytes() == img.read_bytes()
    assert os.stat(out).st_blocks * 512 < 60 * MiB  # holes stay holes
    fsck(fs, out)

    qemu = qemu_img()
    vhd = tmp_path / "out.vhd"
    assert registered.json("export", "latest", "--vhd", vhd)["format"] == "vhd"
    info = subprocess.run([qemu, "info", "-f", "vpc", "--output=json", vhd], capture_output=True, text=True,
                          check=True)
    assert '"virtual-size": 134217728' in info.stdout.replace(" ", "").replace('"virtual-size":', '"virtual-size": ')
    assert subprocess.run([qemu, "compare", "-f", "raw", "-F", "vpc", img, vhd], capture_output=True).returncode == 0
    raw = tmp_path / "out.raw"
    registered.run("export", "latest", "--raw", raw)
    assert subprocess.run([qemu, "compare", "-f", "raw", "-F", "raw", img, raw], capture_output=True).returncode == 0
    # the first point still restores as it was: the change is the difference
    registered.run("export", points[1]["id"], "--raw", tmp_path / "old.raw")
    assert (tmp_path / "old.raw").read_bytes() != img.read_bytes()
    fsck(fs, tmp_path / "old.raw")


def test_image_of_a_loop_device_back_to_a_device(registered, devices, tmp_path):  # noqa: F811
    img = filled_image(devices, tmp_path, "btrfs")
    source = devices.loop(img)
    res = registered.backup("--image", source)
    assert res["image"] == {"source": source, "size": 128 * MiB, "device": True}
    assert registered.run("ls", "latest").stdout.splitlines()[0] == f"Image of device {source}: 128.0 MiB."

    target_img = devices.image(tmp_path / "target.img", 130)
    with open(target_img, "r+b") as f:  # old data that must not survive where the image has zeros
        for at in range(0, 130 * MiB, 8 * MiB):
            f.seek(at)
            f.write(b"\xaa" * 4096)
    target = devices.loop(target_img)
    assert_clean_failure(registered.run("restore", "latest", "--image", "--target", target, check=False), 2,
                         saying(target, "is a device", "--force"))
    done = registered.json("restore", "latest", "--image", "--target", target, "--force")
    assert done["device"] is True
    with open(target, "rb") as f:
        assert f.read(128 * MiB) == img.read_bytes()
    fsck("btrfs", target)

    # mounted: refused, whatever --force says
    mnt = devices.mount(target, tmp_path / "target-mnt")
    assert_clean_failure(registered.run("restore", "latest", "--image", "--target", target, "--force", check=False),
                         2, saying(target, "is mounted at", str(mnt)))
    devices.unmount(mnt)

    small = devices.loop(devices.image(tmp_path / "small.img", 64))
    assert_clean_failure(registered.run("restore", "latest", "--image", "--target", small, "--force", check=False),
                         2, saying(small, "less than the image's", "too small"))


def test_image_refusals(registered, devices, tmp_path):  # noqa: F811
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(MiB))
    (tmp_path / "link.img").symlink_to(img)
    assert_clean_failure(registered.run("backup", "--image", tmp_path / "link.img", check=False), 2,
                         saying("link.img is a symlink", str(img)))
    assert_clean_failure(registered.run("backup", "--image", "/dev/null", check=False), 2,
                         saying("/dev/null is neither a block device nor an image file"))
    assert_clean_failure(registered.run("backup", "--image", tmp_path / "none.img", check=False), 2,
                         saying("none.img", "does not exist"))
    assert_clean_failure(registered.run("backup", "--image", img, "--exclude", "x", check=False), 2,
                         saying("--exclude does not apply to an image"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a").write_text("a")
    files_point = registered.backup(folder)["id"]
    image_point = registered.backup("--image", img)["id"]
    assert_clean_failure(registered.run("restore", files_point, "--image", "--target", tmp_path / "x.img",
                                        check=False), 2, saying("--image restores an image point", "files"))
    assert_clean_failure(registered.run("restore", image_point, "--target", tmp_path / "x", check=False), 2,
                         saying("this is an image point", "--image"))
    assert_clean_failure(registered.run("restore", image_point, "--image", "--target", img, check=False), 2,
                         saying(str(img), "exists", "--force"))
    assert_clean_failure(registered.run("export", image_point, "--vhd", img, check=False), 2,
                         saying(str(img), "exists", "--force"))
    assert_clean_failure(registered.run("export", image_point, check=False), 2, saying("--vhd FILE or --raw FILE"))
    assert_clean_failure(registered.run("export", files_point, "--raw", tmp_path / "y", check=False), 2,
                         saying("image point", "files"))
    fake_dev = Path("/dev/strongroom-test-not-a-device")
    try:
        fake_dev.write_bytes(b"")
        assert_clean_failure(registered.run("restore", image_point, "--image", "--target", fake_dev, "--force",
                                            check=False), 2, saying(str(fake_dev), "is not a block device"))
    finally:
        fake_dev.unlink(missing_ok=True)
    (tmp_path / "target-link").symlink_to(tmp_path / "elsewhere.img")
    assert_clean_failure(registered.run("restore", image_point, "--image", "--target", tmp_path / "target-link",
                                        check=False), 2, saying("target-link is a symlink", "elsewhere.img"))
    assert not (tmp_path / "elsewhere.img").exists()
    # a full disk: one line, and nothing left behind
    full = devices.mount("tmpfs", tmp_path / "full", "size=256k", fstype="tmpfs")
    res = registered.run("export", image_point, "--raw", full / "out.raw", check=False)
    assert_clean_failure(res, 1, saying("the disk is full"))
    assert list(full.iterdir()) == []
    # a replaced file with --force: whole, and nothing named as incomplete left behind
    registered.run("restore", image_point, "--image", "--target", img, "--force")
    assert [p.name for p in tmp_path.iterdir() if "incomplete" in p.name] == []


def _kill_once_written(sr, args: list, nbytes: int) -> None:
    """Runs `strongroom ARGS` and SIGKILLs it once it has written `nbytes` (its wchar)."""
    import signal
    import time

    proc = subprocess.Popen(sr.cmd + [str(a) for a in args], env=sr.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            io = dict(line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines())
        except (OSError, ValueError):
            io = {}
        if int(io.get("wchar", 0)) >= nbytes:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the restore finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_an_interrupted_restore_never_looks_whole(registered, devices, tmp_path):  # noqa: F811
    need("mkfs.ext4", "losetup", "blkid")
    img = devices.image(tmp_path / "src.img", 160, "ext4")
    mnt = devices.mount(devices.loop(img), tmp_path / "src-mnt")
    (mnt / "random.bin").write_bytes(os.urandom(120 * MiB))
    devices.unmount(mnt)
    registered.backup("--image", img)

    target_img = devices.image(tmp_path / "target.img", 160, "ext4", label="oldfs")
    target = devices.loop(target_img)
    assert run("blkid", "-o", "value", "-s", "LABEL", target).stdout.strip() == "oldfs"
    _kill_once_written(registered, ["restore", "latest", "--image", "--target", target, "--force"], 60 * MiB)
    with open(target, "rb") as f:
        assert f.read(MiB) == bytes(MiB)  # no signature: blkid finds no filesystem
    assert run("blkid", "-p", target, check=False).returncode == 2
    registered.run("restore", "latest", "--image", "--target", target, "--force")
    fsck("ext4", target)
    with open(target, "rb") as f:
        assert f.read(160 * MiB) == img.read_bytes()

    out = tmp_path / "out.img"
    _kill_once_written(registered, ["restore", "latest", "--image", "--target", out], 60 * MiB)
    assert not out.exists()
    assert [p.name.startswith(".out.img.strongroom-incomplete-") for p in tmp_path.iterdir()
            if "incomplete" in p.name] == [True]
