"""The agent daemon: carries out this machine's policy schedule, one backup at a time.

It reads the policy from the vault before each wait and opens its sealed paths with the
machine's key (falling back on this machine's copy while the vault is unreachable or sends
what the key does not open), runs a backup when one is due, and remembers when it last
ran in the agent home, so that backups missed while the machine was off run once at start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from strongroom.agent.cachedir import space_note
from strongroom.agent.home import AgentHome
from strongroom.agent.jobrun import prepare_backup, run_backup_job
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
        while not self.stop.is_set():
            self.stop.wait(self.step())

    def step(self) -> float:
        """Runs a backup if one is due; returns how long to wait before looking again."""
        policy = self._policy()
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
        started = time.monotonic()
        try:
            if short := space_note(self.agent.cache):
                log.warning("%s", short)
            run = prepare_backup(self.agent, self.vault, self.key, [os.fsencode(p) for p in policy.includes],
                                 list(policy.excludes), Selection(SelectionRules.from_doc(policy.selection)))
            result, warnings, notes = run_backup_job(self.agent, self.vault, run)
        except StrongroomError as exc:  # recorded as a failed job; the schedule goes on
            log.error("scheduled backup failed: %s", exc)
            return
        for note in notes:
            log.warning("%s", note)
        log.info("scheduled backup: point %s in %.1f s, %d file(s) not backed up as they were",
                 result.point.id, time.monotonic() - started, len(warnings))
