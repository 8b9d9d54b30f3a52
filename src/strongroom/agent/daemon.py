"""The agent daemon: carries out this machine's policy schedule, one backup at a time.

It reads the policy from the vault before each wait and opens its sealed paths with the
machine's key (falling back on this machine's copy while the vault is unreachable or sends
what the key does not open), runs a backup when one is due, and remembers when it last
ran in the agent home, so that backups missed while the machine was off run once at start.
It also keeps the change journal of the policy's sources (journal.py), restarted whenever
they change, which lets backups run optimized.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from strongroom.agent.backup import Backup
from strongroom.agent.cachedir import space_note
from strongroom.agent.home import AgentHome
from strongroom.agent.kinds import prepare_kind_backup
from strongroom.agent.jobrun import own_folders, prepare_backup, run_backup_job
from strongroom.agent.journal import Keeper
from strongroom.agent.schedule import missed, next_run
from strongroom.agent.selection import Selection, SelectionRules
from strongroom.crypto import MasterKey
from strongroom.errors import StrongroomError
from strongroom.fsutil import write_private
from strongroom.policy import Policy, open_doc

log = logging.getLogger("strongroom.agent")
STATE_FILE = "daemon.json"
_LOOK_AGAIN_S = 60.0  # a changed policy is seen within a minute


class Daemon:
    def __init__(self, agent: AgentHome, key: MasterKey, stop: threading.Event | None = None) -> None:
        self.agent, self.key = agent, key
        self.vault = agent.vault()
        self.stop = stop or threading.Event()
        self.state_path = agent.path / STATE_FILE
        self.keeper: Keeper | None = None

    def _last_run(self, now: datetime) -> datetime:
        try:
            return datetime.fromtimestamp(json.loads(self.state_path.read_text())["last_run"], timezone.utc)
        except (FileNotFoundError, ValueError, KeyError):
            self._remember(now)  # a first start owes nothing
            return now

    def _remember(self, when: datetime) -> None:
        write_private(self.state_path, json.dumps({"last_run": when.timestamp()}).encode())

    def _policy(self) -> Policy | None:
        try:
            found = self.vault.policy()
            version, doc = found if found else (None, None)
            doc = open_doc(doc, self.key) if doc else None  # its paths are sealed with our key
        except StrongroomError as exc:
            log.warning("cannot read the policy from the vault (%s); using this machine's copy", exc)
            return self.agent.policy()
        had = self.agent.policy_copy_doc()["version"]
        if version != had:
            log.warning("the vault's policy is version %s; this machine had version %s: following the vault's",
                        version, had)
            self.agent.save_policy_copy(version, doc)
        return Policy.from_doc(doc) if doc else None

    def run_forever(self) -> None:
        log.info("started for machine %s", self.vault.machine)
        try:
            while not self.stop.is_set():
                self.stop.wait(self.step())
        finally:
            if self.keeper is not None:
                self.keeper.stop()

    def _journal(self, policy: Policy) -> None:
        """Keeps the change journal of the policy's sources (a new run when they change)."""
        from strongroom.agent.backup import normalise_sources  # noqa: PLC0415 - heavy import
        try:
            sources = normalise_sources([os.fsencode(p) for p in policy.includes])
        except StrongroomError as exc:
            sources = []
            log.warning("change journal: %s; backups run unoptimized", exc)
        try:
            cache = self.agent.cache  # `agent cache move` may have moved it: the journal moves along
        except StrongroomError as exc:  # a file in its place: each backup says so, the daemon goes on
            log.warning("change journal: %s; backups run unoptimized", exc)
            cache, sources = self.agent.cache_path, []
        if self.keeper is not None and self.keeper.sources == sources and self.keeper.cache == cache:
            return
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
        if not sources:
            return
        skip = set()
        for folder in own_folders(self.agent, self.vault):
            try:
                st = os.stat(folder)
                skip.add((st.st_dev, st.st_ino))
            except OSError:
                pass
        try:
            self.keeper = Keeper(cache, sources, skip)
            self.keeper.start()
        except OSError as exc:
            log.warning("change journal: cannot watch the sources (%s); backups run unoptimized", exc)
            self.keeper = None

    def step(self) -> float:
        """Runs a backup if one is due; returns how long to wait before looking again."""
        policy = self._policy()
        if policy is not None:
            self._journal(policy)
        if policy is None or policy.schedule is None:
            return _LOOK_AGAIN_S
        tz = ZoneInfo(policy.timezone)
        now = datetime.now(timezone.utc)
        last = self._last_run(now)
        if missed(policy.schedule, tz, last, now):
            self._remember(now)
            self._backup(policy)
            return 0.0
        return min(_LOOK_AGAIN_S, max(0.0, (next_run(policy.schedule, tz, last) - now).total_seconds()))

    def _backup(self, policy: Policy) -> None:
        """One run of the schedule: a point of each kind the policy protects (kinds.py)."""
        if policy.includes:
            self._backup_one("files", lambda: prepare_backup(
                self.agent, self.vault, self.key, [os.fsencode(p) for p in policy.includes], list(policy.excludes),
                Selection(SelectionRules.from_doc(policy.selection))))
        for volume in policy.volumes:
            self._backup_one(f"volume {volume}", lambda v=volume: prepare_kind_backup(
                self.agent, self.vault, self.key, "volume", list(policy.excludes), Path(v), False, None))
        if policy.system_state:
            self._backup_one("system-state", lambda: prepare_kind_backup(
                self.agent, self.vault, self.key, "system-state", [], None, False, None))

    def _backup_one(self, what: str, prepare: Callable[[], Backup]) -> None:
        started = time.monotonic()
        try:
            if short := space_note(self.agent.cache):
                log.warning("%s", short)
            run = prepare()
            result, warnings, notes = run_backup_job(self.agent, self.vault, run)
        except StrongroomError as exc:  # recorded as a failed job; the schedule goes on
            log.error("scheduled backup (%s) failed: %s", what, exc)
            return
        for note in notes:
            log.warning("%s", note)
        log.info("scheduled backup: point %s (%s) in %.1f s, %d file(s) not backed up as they were",
                 result.point.id, what, time.monotonic() - started, len(warnings))
