"""The schedule against an injected clock: a year of runs in seconds, daylight saving included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from strongroom.agent.schedule import missed, next_run
from strongroom.policy import Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def runs(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    out, now = [], start
    while (now := next_run(schedule, BERLIN, now)) < end:
        out.append(now.astimezone(BERLIN))
    return out


def test_three_times_a_day_for_a_year_keeps_local_time_across_daylight_saving():
    start = datetime(2027, 1, 1, tzinfo=BERLIN)
    year = runs(Schedule(("09:00", "13:00", "21:00")), start, datetime(2028, 1, 1, tzinfo=BERLIN))
    assert len(year) == 365 * 3
    assert {(r.hour, r.minute) for r in year} == {(9, 0), (13, 0), (21, 0)}
    # 2027-03-28 and 2027-10-31 are the switch days: still 3 runs each, at the local times.
    for day in (datetime(2027, 3, 28).date(), datetime(2027, 10, 31).date()):
        assert [r.hour for r in year if r.date() == day] == [9, 13, 21]
    # UTC moves by an hour at the switches; the local time does not.
    march = [r for r in year if r.month == 3 and r.hour == 9]
    assert march[0].utcoffset() == timedelta(hours=1) and march[-1].utcoffset() == timedelta(hours=2)


def test_a_time_in_the_spring_gap_runs_once_after_the_jump_and_a_repeated_one_once():
    sched = Schedule(("02:30",))
    spring = runs(sched, datetime(2027, 3, 27, 12, tzinfo=BERLIN), datetime(2027, 3, 29, 12, tzinfo=BERLIN))
    assert [r.astimezone(timezone.utc).strftime("%m-%d %H:%M") for r in spring] == ["03-28 01:30", "03-29 00:30"]
    autumn = runs(sched, datetime(2027, 10, 30, 12, tzinfo=BERLIN), datetime(2027, 11, 1, 12, tzinfo=BERLIN))
    assert [r.astimezone(timezone.utc).strftime("%m-%d %H:%M") for r in autumn] == ["10-31 00:30", "11-01 01:30"]


def test_weekly_every_two_weeks_on_chosen_days():
    sched = Schedule(("21:00",), ("mon", "thu"), every_weeks=2)
    got = runs(sched, datetime(2027, 1, 1, tzinfo=BERLIN), datetime(2027, 2, 1, tzinfo=BERLIN))
    # Weeks counted from Monday 2024-01-01: 2027-01-04 is 1099 days later, week 157 (odd,
    # skipped); 2027-01-11 starts week 158.
    assert [r.strftime("%a %d") for r in got] == ["Mon 11", "Thu 14", "Mon 25", "Thu 28"]


def test_missed_runs_are_run_once_when_the_daemon_starts():
    sched = Schedule(("09:00", "21:00"))
    last = datetime(2027, 5, 3, 9, 0, tzinfo=BERLIN)
    assert not missed(sched, BERLIN, last, datetime(2027, 5, 3, 20, 59, tzinfo=BERLIN))
    assert missed(sched, BERLIN, last, datetime(2027, 5, 3, 21, 0, tzinfo=BERLIN))
    assert missed(sched, BERLIN, last, datetime(2027, 5, 10, 8, 0, tzinfo=BERLIN))  # off for a week: due
