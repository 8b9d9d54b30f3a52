"""Preparing a backup of each kind of point (files, volume, system-state, image), for the
`backup` command and the daemon alike."""

from __future__ import annotations

import os
from pathlib import Path

from strongroom.agent.backup import Backup
from strongroom.agent.home import AgentHome
from strongroom.agent.image import ImageBackup
from strongroom.agent.jobrun import own_folders
from strongroom.agent.pointbook import PointBook
from strongroom.agent.system_state import STATE_DIR, SystemStateBackup, real_sources
from strongroom.agent.volume import VolumeBackup, check_volume
from strongroom.crypto import MasterKey
from strongroom.errors import UsageError
from strongroom.vault.interface import Vault


def prepare_kind_backup(agent: AgentHome, vault: Vault, key: MasterKey, kind: str, excludes: list[str],
                        volume: Path | None, allow_tmpfs: bool, image: Path | None) -> Backup:
    """A prepared backup of a kind other than files."""
    if kind == "volume":
        assert volume is not None
        mount, info = check_volume(os.fsencode(volume), allow_tmpfs)
        run = VolumeBackup(vault, key, [info.mount], excludes, own_folders(agent, vault), agent.cache,
                           book=PointBook(agent, vault, key))
        run.set_volume(mount, info)
        return run
    if kind == "system-state":
        run = SystemStateBackup(vault, key, real_sources(), excludes, own_folders(agent, vault), agent.cache,
                                book=PointBook(agent, vault, key))
        run.prepare(agent.cache / "system-state-stage" / STATE_DIR.decode())
        return run
    if kind == "image":
        assert image is not None
        if excludes:
            raise UsageError("--exclude does not apply to an image")
        return ImageBackup(vault, key, [os.fsencode(image)], [], own_folders(agent, vault), agent.cache,
                           book=PointBook(agent, vault, key))
    raise UsageError(f"unknown kind {kind}")
