"""When scheduled backups are due: local wall-clock times in the policy's zone. Pure: the clock is given.

Daylight saving is handled by computing each run in local time: a time that does not exist
on the spring-forward day runs an hour later (as the clock reads after the jump), a time
that exists twice on the fall-back day runs once (the first time). "Every N weeks" counts
weeks from a fixed Monday, so the rhythm does not depend on when the daemon started.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from strongroom.policy import DAYS, Schedule

_ANCHOR_MONDAY = date(2024, 1, 1)
_HORIZON_DAYS = 7 * 4 + 1  # every 4 weeks at most: a run always falls within this


def _times(schedule: Schedule) -> list[time]:
    return sorted(time.fromisoformat(t) for t in schedule.times)


def _runs_on(schedule: Schedule, day: date) -> bool:
    weeks = (day - _ANCHOR_MONDAY).days // 7
    return DAYS[day.weekday()] in schedule.days and weeks % schedule.every_weeks == 0


def next_run(schedule: Schedule, tz: ZoneInfo, after: datetime) -> datetime:
    """The first scheduled run strictly after `after` (aware), as an aware UTC datetime."""
    local_day = after.astimezone(tz).date()
    for offset in range(-1, _HORIZON_DAYS + 1):
        day = local_day + timedelta(days=offset)
        if not _runs_on(schedule, day):
            continue
        for t in _times(schedule):
            when = datetime.combine(day, t, tzinfo=tz).astimezone(timezone.utc)
            if when > after:
                return when
    raise AssertionError("a valid schedule always has a run within five weeks")


def missed(schedule: Schedule, tz: ZoneInfo, last_run: datetime, now: datetime) -> bool:
    """Whether a scheduled run fell between the last run and now (the machine was off, or the
    daemon stopped): it is run once, not once per missed time."""
    return next_run(schedule, tz, last_run) <= now
