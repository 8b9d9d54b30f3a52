"""Retention: which recovery points a policy keeps, and until when. Pure: the clock is given.

Tiers, as a MARS backup policy has them, in the machine's time zone:
- daily: every point is kept N days (a schedule of three a day keeps all three);
- weekly, monthly, yearly: the first point of each ISO week, calendar month or year is
  kept N weeks, months or years. The first *good* backup of the period is the one kept, so
  when the backup a tier expected failed, the next good one takes its place.
A point is kept while any tier wants it. While backups keep failing nothing new arrives,
and the point with the longest retention is never pruned, so a machine never loses its
last point to expiry.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from strongroom.errors import UsageError

# Bounds from the MARS policy rules.
LIMITS = {"daily": (7, 9999), "weekly": (4, 5163), "monthly": (3, 1188), "yearly": (1, 99)}
MAX_POINTS = 9999


@dataclass(frozen=True)
class Retention:
    daily: int | None = None  # days
    weekly: int | None = None  # weeks
    monthly: int | None = None  # months
    yearly: int | None = None  # years

    def __post_init__(self) -> None:
        for tier, (low, high) in LIMITS.items():
            value = getattr(self, tier)
            if value is not None and not low <= value <= high:
                raise UsageError(f"{tier} retention must be {low} to {high}, not {value}")
        if all(getattr(self, tier) is None for tier in LIMITS):
            raise UsageError("a retention policy needs at least one tier")


def _add_months(when: datetime, months: int) -> datetime:
    month0 = when.month - 1 + months
    year, month = when.year + month0 // 12, month0 % 12 + 1
    return when.replace(year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1]))


def _period(when: datetime, tier: str) -> tuple[int, ...]:
    if tier == "weekly":
        iso = when.isocalendar()
        return iso.year, iso.week
    if tier == "monthly":
        return when.year, when.month
    return (when.year,)


def _kept_for(when: datetime, tier: str, count: int) -> datetime:
    if tier == "daily":
        return when + timedelta(days=count)
    if tier == "weekly":
        return when + timedelta(weeks=count)
    return _add_months(when, count if tier == "monthly" else 12 * count)


def expiries(points: dict[str, int], policy: Retention, tz: ZoneInfo) -> dict[str, datetime]:
    """Until when each point is kept (points given as id -> creation time in ns)."""
    local = {pid: datetime.fromtimestamp(ns / 1e9, tz) for pid, ns in points.items()}
    ordered = sorted(local, key=lambda pid: points[pid])
    until: dict[str, datetime] = {pid: local[pid] for pid in ordered}  # no tier: kept no time at all
    for tier in LIMITS:
        count = getattr(policy, tier)
        if count is None:
            continue
        seen: set[tuple[int, ...]] = set()
        for pid in ordered:
            if tier != "daily":
                period = _period(local[pid], tier)
                if period in seen:
                    continue  # not the first good point of its period
                seen.add(period)
            until[pid] = max(until[pid], _kept_for(local[pid], tier, count))
    return until


def expired_per_kind(points: dict[str, int], kinds: dict[str, str], policy: Retention, now: datetime,
                     floors: dict[str, int] | None = None) -> set[str]:
    """`expired` for each kind of point (files, volume, system-state, image) as a series of its
    own: a weekly tier keeps each kind's first point of the week, and no kind loses its last
    point to expiry, whatever the other kinds do."""
    gone: set[str] = set()
    for kind in set(kinds.get(pid, "files") for pid in points):
        series = {pid: ns for pid, ns in points.items() if kinds.get(pid, "files") == kind}
        gone |= expired(series, policy, now, floors)
    return gone


def expired(points: dict[str, int], policy: Retention, now: datetime,
            floors: dict[str, int] | None = None) -> set[str]:
    """The points the policy no longer keeps at `now` (an aware datetime, the machine's zone).
    `floors` are points' own retention (ns), as an on-demand backup may carry."""
    if not points:
        return set()
    until = expiries(points, policy, now.tzinfo)  # type: ignore[arg-type]
    for pid, floor in (floors or {}).items():
        if pid in until:
            until[pid] = max(until[pid], datetime.fromtimestamp(floor / 1e9, now.tzinfo))
    gone = {pid for pid, end in until.items() if end <= now}
    gone.discard(max(until, key=lambda pid: (until[pid], points[pid])))  # never the longest-kept
    # At most MAX_POINTS per machine: the soonest to expire go first.
    alive = sorted((pid for pid in until if pid not in gone), key=lambda pid: (until[pid], points[pid]))
    gone.update(alive[:max(0, len(alive) - MAX_POINTS)])
    return gone
