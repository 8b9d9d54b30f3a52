"""The agent home: this machine's registration, wrapped key and cache, in one private folder.

Resolved from --home, else $STRONGROOM_HOME, else a per-user default. The passphrase is
never stored; the key is kept only wrapped, so every command that needs it asks for the
passphrase (from a file, the environment or a prompt).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import IO, NamedTuple

from strongroom.agent.homepath import KEYFILE, home_path
from strongroom.crypto import MasterKey, unwrap_key
from strongroom.errors import StrongroomError, UsageError, WrongPassphrase
from strongroom.fsutil import write_private
from strongroom.policy import Policy
from strongroom.vault.connect import connect
from strongroom.vault.interface import Vault


def check_private(folder: Path, st: os.stat_result, what: str, fix: str) -> None:
    """Refuses a folder of the agent's that another user owns or can write into: they could
    swap the files the agent reads there (its registration, its blob index), or plant links
    where it will make files, which SQLite follows (a root agent would write its journal into
    any file on the machine)."""
    if st.st_uid != os.geteuid():
        raise StrongroomError(f"{what} {folder} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}), "
                              f"who could change what the agent finds there: {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StrongroomError(f"{what} {folder} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o}), "
                              f"who could change what the agent finds there: make it private (chmod 700) or {fix}")


class SeenPoint(NamedTuple):
    """The newest point of a machine that this home has seen (times from its sealed manifest)."""

    id: str
    created_ns: int
    retain_until_ns: int | None = None  # its own retention floor, if an on-demand backup set one
    kind: str = "files"  # retention keeps each kind of point as a series of its own


class AgentHome:
    def __init__(self, path: Path | None) -> None:
        self.path = home_path(path)
        self.config_path = self.path / "config.json"
        self.token_path = self.path / "token"
        self.keyfile_path = self.path / KEYFILE
        # The key wrapped with a new passphrase while `passphrase change` runs (vault copy
        # being replaced): until it replaces key.json, either passphrase opens the key.
        self.pending_keyfile_path = self.path / "key.json.new"
        self.job_marker = self.path / "job"  # the job this home's agent is running, while it runs
        self.policy_copy = self.path / "policy.json"  # the last policy version this machine saw
        self._policy_read: tuple[float, Policy | None] | None = None
        # Per machine, the newest point seen here: a vault presenting an older "latest" is caught.
        self.newest_points = self.path / "newest-points.json"

    @property
    def cache_path(self) -> Path:
        """Where the cache folder is: config.json's "cache" if set (register --cache, agent
        cache move), whatever is there."""
        try:
            configured = json.loads(self.config_path.read_text()).get("cache")
        except (FileNotFoundError, ValueError, AttributeError):
            configured = None
        return Path(configured) if isinstance(configured, str) and configured else self.path / "cache"

    @property
    def cache(self) -> Path:
        """The cache folder, which may be missing (it is made when needed) but must not be a
        file or under one: each of its users would fail on its own path with a bare "File
        exists" or "Not a directory"."""
        folder = self.cache_path
        move = "choose another place with `strongroom agent cache move DIR`"
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return folder
        except NotADirectoryError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise StrongroomError(f"the cache folder {folder} is not a folder (a file is in its place or above it): "
                                  f"move that away, or {move}")
        check_private(folder, st, "the cache folder", move)
        return folder

    @property
    def registered(self) -> bool:
        return self.config_path.exists()

    def save_registration(self, vault_url: str, machine: str, token: str, keyfile: str,
                          fingerprint: str | None = None, insecure_http: bool = False,
                          cache: Path | None = None) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        (cache or self.path / "cache").mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.token_path, token.encode())
        write_private(self.keyfile_path, keyfile.encode())
        config = {"vault": vault_url, "machine": machine, "fingerprint": fingerprint}
        if insecure_http:  # chosen at registration; every later command keeps to it
            config["insecure_http"] = True
        if cache is not None:  # elsewhere than in the home (`agent cache move` changes it)
            config["cache"] = str(cache)
        self.save_config(config)

    def save_config(self, config: dict) -> None:
        write_private(self.config_path, json.dumps(config, indent=1).encode())

    def config(self) -> dict:
        try:
            config = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise UsageError(f"this machine is not registered (no agent home at {self.path}); "
                             "run `strongroom register --credentials FILE` first") from None
        except ValueError:
            config = None
        check_private(self.path, os.stat(self.path), "the agent home", "use a folder of this user's alone")
        if not (isinstance(config, dict) and isinstance(config.get("vault"), str)
                and isinstance(config.get("machine"), str)):
            # A disk that failed under the home: the key and the points are safe (the vault keeps
            # a copy of the wrapped key), and the machine's name is taken back as a rebuilt one's.
            raise StrongroomError(f"this agent home's registration {self.config_path} is damaged; move it away and "
                                  "take the machine's name back with `strongroom register --credentials FILE "
                                  "--replace NAME`")
        return config

    def vault(self) -> Vault:
        """The vault this machine is registered with, bound to this machine's token."""
        config = self.config()
        vault = connect(config["vault"], config.get("fingerprint"), config.get("insecure_http") is True)
        vault.bind(self.token_path.read_text().strip())
        if self.policy() is None:
            return vault
        from strongroom.agent.throttle import ThrottledVault, TokenBucket, rate_now

        def rate() -> int | None:  # the daemon runs for months: follow the copy as it changes
            policy = self.policy(max_age_s=30)
            return rate_now(policy) if policy else None
        return ThrottledVault(vault, TokenBucket(rate))  # type: ignore[return-value]

    def policy(self, max_age_s: float = 0) -> Policy | None:
        """This machine's copy of its policy (the vault's newest, as last seen)."""
        if self._policy_read and time.monotonic() - self._policy_read[0] < max_age_s:
            return self._policy_read[1]
        doc = self.policy_copy_doc()["policy"]
        self._policy_read = (time.monotonic(), Policy.from_doc(doc) if doc else None)
        return self._policy_read[1]

    def policy_copy_doc(self) -> dict:
        """{"version", "policy"} as this machine last saw them (both None if never)."""
        try:
            return {"version": None, "policy": None, **json.loads(self.policy_copy.read_text())}
        except (FileNotFoundError, ValueError):
            return {"version": None, "policy": None}

    def save_policy_copy(self, version: int | None, doc: dict | None) -> None:
        write_private(self.policy_copy, json.dumps({"version": version, "policy": doc}).encode())
        self._policy_read = None

    def newest_point(self, machine: str) -> SeenPoint | None:
        """The newest point of `machine` seen here (None: none yet, or its points were deleted here)."""
        seen = self._newest_points().get(machine)
        return SeenPoint(*seen) if seen else None

    def note_point(self, machine: str, point: SeenPoint | None, replace: bool = False) -> None:
        """Records `point` as the newest of `machine` if it is newer than the one recorded (or
        always, with `replace`: when the recorded one is known to be gone for good)."""
        with self._newest_points_lock():
            doc = self._newest_points()
            known = doc.get(machine)
            if not replace and (point is None or (known and known[1] >= point.created_ns)):
                return
            if point is None:
                doc.pop(machine, None)
            else:
                doc[machine] = list(point)
            write_private(self.newest_points, json.dumps(doc, indent=1).encode())

    def _newest_points(self) -> dict[str, list]:
        try:
            doc = json.loads(self.newest_points.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not all(isinstance(seen, list) for seen in doc.values()):
            raise UsageError(f"{self.newest_points} is damaged; remove it to trust the vault's newest "
                             "points afresh")
        return doc

    def _newest_points_lock(self) -> IO[bytes]:
        """Blocking and short: two processes updating the record must not lose each other's."""
        handle = open(self.path / "newest-points.lock", "wb", opener=lambda path, flags: os.open(path, flags, 0o600))
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def master_key(self, passphrase: str) -> MasterKey:
        try:
            return unwrap_key(self.keyfile_path.read_text(), passphrase)
        except WrongPassphrase:
            if not self.pending_keyfile_path.exists():
                raise
        # a passphrase change was cut short: the new passphrase works too
        return unwrap_key(self.pending_keyfile_path.read_text(), passphrase)

    def lock(self) -> IO[bytes]:
        """An exclusive lock on this home, held while a backup or restore runs."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.path / "lock", "wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            # A failure (exit 1), not a usage error: the vault's lease says the same of a second
            # home of this machine, and a retry later succeeds with the same command line.
            raise StrongroomError("another backup or restore of this machine is running "
                                  "(this agent home is in use); one at a time") from None
        return handle
