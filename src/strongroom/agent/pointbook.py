"""The points a vault presents for one machine, checked before any of them is used.

The vault is not trusted to keep points honest. Each manifest must open sealed to its machine
and point ID; the vault's plaintext kind and mode must equal the sealed ones, and its list,
ordered by its plaintext times, must be in the order of the sealed creation times; a parent that a point names and that
is still there must carry the creation time the point recorded for it; and the newest point
must not be older than the newest one this agent home has seen of that machine, unless that
one is gone for a reason the agent can vouch for (see `_gone_for_good`). Any failure is one
line naming what is wrong, raised before a point's data is read.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from strongroom.agent.home import AgentHome, SeenPoint
from strongroom.agent.points import find_point, open_manifest, seal_manifest
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, StrongroomError
from strongroom.policy import Policy
from strongroom.vault.interface import Vault
from strongroom.vault.retention import expired_per_kind
from strongroom.vault.shapes import PointRecord

# The vault expires points by its own clock, which may be set differently from this machine's.
# Its plaintext times are that clock's, so only their order is held against the sealed times:
# the order is what decides which point is "latest"; the times shown are the sealed ones.
CLOCK_TOLERANCE_NS = 86400 * 10**9


@dataclass(frozen=True)
class OpenedPoint:
    """A point whose manifest opened sealed to its machine and ID."""

    record: PointRecord
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def created_ns(self) -> int:
        """When this machine made it (sealed): what its order and age are judged by."""
        return self.manifest["created"]

    def seen(self) -> SeenPoint:
        return SeenPoint(self.id, self.created_ns, self.manifest.get("retain_until"), self.manifest["kind"])


def when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


class PointBook:
    """The verified points of one machine: this home's own, or `machine`'s (restored from
    another machine with that machine's key)."""

    def __init__(self, home: AgentHome, vault: Vault, key: MasterKey, machine: str | None = None) -> None:
        own = home.config()["machine"]  # the name registered here, not the one the vault claims
        self.home, self.vault, self.key = home, vault, key
        self.machine = machine or own
        self.own = self.machine == own
        self._asked = None if self.own else self.machine
        self._former: list[str] | None = None  # names it was known by before a rename

    def live(self) -> list[OpenedPoint]:
        """The points the vault holds, newest first, checked; the newest is recorded as seen."""
        points = self._opened(self.vault.points(self._asked))
        self._check_not_rolled_back(points)
        if points:
            self.home.note_point(self.machine, points[0].seen())
        return points

    def deleted(self) -> list[OpenedPoint]:
        """The soft-deleted points, newest first, checked like the live ones (no rollback rule)."""
        return self._opened(self.vault.points(self._asked, deleted=True))

    def find(self, ref: str) -> OpenedPoint:
        """A live point by id, unique id prefix or "latest", once the whole list is checked."""
        return find_point(self.live(), ref)

    # -- making a point ---------------------------------------------------------------------

    def new_manifest(self, parent: OpenedPoint | None, **body: Any) -> dict[str, Any]:
        """A manifest made now, naming its parent; never dated before the parent, so that the
        chain holds even if this machine's clock stepped back."""
        created = time.time_ns()
        if parent is not None:
            created = max(created, parent.created_ns + 1)
        return {**body, "created": created, "host": socket.gethostname(),
                "parent": parent.id if parent else None, "parent_created": parent.created_ns if parent else None}

    def seal(self, point_id: str, manifest: dict[str, Any]) -> bytes:
        return seal_manifest(self.key, self.machine, point_id, manifest)

    def made(self, point_id: str, manifest: dict[str, Any]) -> None:
        """Records a point this agent just made as the newest seen."""
        self.home.note_point(self.machine, SeenPoint(point_id, manifest["created"], manifest.get("retain_until"),
                                                     manifest["kind"]))

    # -- the checks -------------------------------------------------------------------------

    def _opened(self, records: list[PointRecord]) -> list[OpenedPoint]:
        points = [OpenedPoint(r, self._open(r)) for r in records]
        for p in points:
            _check_plaintext(p)
        for newer, older in zip(points, points[1:]):
            if newer.created_ns <= older.created_ns:
                raise IntegrityError(f"the vault lists point {newer.id} (made {when(newer.created_ns)}) before "
                                     f"point {older.id}, which was made later ({when(older.created_ns)}): "
                                     "the vault reordered or redated points; refusing to use them")
        by_id = {p.id: p for p in points}
        for p in points:
            _check_parent(p, by_id)
        return points

    def _open(self, record: PointRecord) -> dict[str, Any]:
        """The manifest, sealed to this machine's name or, after `machines rename`, to a name it
        had before (the vault lists them; only this machine's key opens its manifests anyway)."""
        try:
            return open_manifest(self.key, self.machine, record)
        except IntegrityError as first:
            for name in self._former_names():
                try:
                    return open_manifest(self.key, name, record)
                except IntegrityError:
                    continue
            raise first from None

    def _former_names(self) -> list[str]:
        if self._former is None:
            current = self._asked or self.vault.machine or self.machine
            try:
                names = [current, *self.vault.former_names(current)]
            except StrongroomError:
                names = []
            self._former = [n for n in dict.fromkeys(names) if n != self.machine]
        return self._former

    def _check_not_rolled_back(self, points: list[OpenedPoint]) -> None:
        seen = self.home.newest_point(self.machine)
        if seen is None or (points and points[0].created_ns >= seen.created_ns):
            return
        if self._gone_for_good(seen, points):
            self.home.note_point(self.machine, points[0].seen() if points else None, replace=True)
            return
        maker = "this machine" if self.own else f"machine {self.machine}"
        shown = (f"point {points[0].id} (made {when(points[0].created_ns)}) as the newest"
                 if points else "no points")
        raise IntegrityError(f"the vault presents {shown} of {self.machine}, but {maker} made point {seen.id} "
                             f"on {when(seen.created_ns)}: the vault may have been rolled back or be hiding "
                             "newer points; refusing to go on")

    def _gone_for_good(self, seen: SeenPoint, points: list[OpenedPoint]) -> bool:
        """Whether the newest point seen may have left the vault lawfully. Deleting all points
        (`protection stop --delete-data`) clears this home's record itself, so what remains is
        retention: the point's own retention, by the machine's policy, must have ended. Another
        machine's deletions are not known here: a point of it that the vault lists as deleted
        is taken as deleted."""
        if self._expired_by_retention(seen, points):
            return True
        if self.own:
            return False
        try:
            return any(p.id == seen.id and p.created_ns == seen.created_ns for p in self.deleted())
        except IntegrityError:
            return False

    def _expired_by_retention(self, seen: SeenPoint, points: list[OpenedPoint]) -> bool:
        policy = self._policy()
        if policy is None:
            return False  # no policy, or protection stopped keeping the data: nothing expires
        alive = {p.id: p.created_ns for p in points} | {seen.id: seen.created_ns}
        floors = {p.id: p.manifest["retain_until"] for p in points if p.manifest.get("retain_until")}
        if seen.retain_until_ns:
            floors[seen.id] = seen.retain_until_ns
        # The vault expired it by its own clock: grant it the same tolerance as its timestamps.
        now = datetime.fromtimestamp((time.time_ns() + CLOCK_TOLERANCE_NS) / 1e9, ZoneInfo(policy.timezone))
        kinds = {p.id: p.manifest["kind"] for p in points} | {seen.id: seen.kind}
        return seen.id in expired_per_kind(alive, kinds, policy.retention, now, floors)

    def _policy(self) -> Policy | None:
        if self.own:
            return self.home.policy()  # this machine's own copy, not what the vault says now
        try:
            current = self.vault.policy(self.machine)
        except StrongroomError:
            return None
        return Policy.from_doc(current[1]) if current and current[1] else None


def _check_plaintext(p: OpenedPoint) -> None:
    r, m = p.record, p.manifest
    if (r.kind, r.mode) != (m["kind"], m["mode"]):
        raise IntegrityError(f"the vault lists point {p.id} as {r.kind}/{r.mode}, but it was made as "
                             f"{m['kind']}/{m['mode']}: the vault altered its record; refusing to use it")


def _check_parent(p: OpenedPoint, by_id: dict[str, OpenedPoint]) -> None:
    parent_id, parent_created = p.manifest["parent"], p.manifest["parent_created"]
    if parent_id is None:
        return
    if parent_created is None or parent_created >= p.created_ns:
        raise IntegrityError(f"point {p.id} names as its parent point {parent_id}, made after it: "
                             "its chain of points is broken; refusing to use it")
    parent = by_id.get(parent_id)
    if parent is not None and parent.created_ns != parent_created:
        raise IntegrityError(f"point {p.id} names as its parent point {parent_id} made {when(parent_created)}, "
                             f"but the vault presents point {parent_id} made {when(parent.created_ns)}: "
                             "its chain of points is broken; refusing to use it")
