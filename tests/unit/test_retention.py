"""Retention against an injected clock: a daily backup at 21:00 Berlin time, pruned after each
day, compared with tables worked out by hand (see the comments for the reasoning)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from strongroom.errors import UsageError
from strongroom.vault.retention import Retention, expired

BERLIN = ZoneInfo("Europe/Berlin")


def simulate(policy: Retention, first: date, last: date, failed: set[date]) -> dict[date, set[date]]:
    """Runs one backup a day (except on `failed` days) and a prune at 23:00; returns the
    days whose points exist after each day's prune."""
    points: dict[str, int] = {}
    kept_after: dict[date, set[date]] = {}
    day = first
    while day <= last:
        if day not in failed:
            at = datetime(day.year, day.month, day.day, 21, 0, tzinfo=BERLIN)
            points[day.isoformat()] = int(at.timestamp() * 1e9)
        now = datetime(day.year, day.month, day.day, 23, 0, tzinfo=BERLIN)
        for pid in expired(points, policy, now):
            del points[pid]
        kept_after[day] = {date.fromisoformat(p) for p in points}
        day += timedelta(days=1)
    return kept_after


def days(*spec: str) -> set[date]:
    return {date.fromisoformat(s) for s in spec}


def test_tiers_keep_the_first_good_point_of_each_period_and_substitute_failed_ones():
    # Mon 2027-02-08 and Mon 2027-03-01 fail: the weekly points of ISO weeks 6 and 9 become
    # the Tuesdays, and March's monthly point becomes 03-02.
    kept = simulate(Retention(daily=7, weekly=4, monthly=3), date(2027, 2, 1), date(2027, 6, 5),
                    days("2027-02-08", "2027-03-01"))
    # After 02-14: daily keeps 02-08..02-14 (02-08 failed); week 5's first point 02-01 is
    # kept weekly (and monthly); nothing else of week 5 survives its 7 days.
    assert kept[date(2027, 2, 14)] == days("2027-02-01", "2027-02-09", "2027-02-10", "2027-02-11",
                                           "2027-02-12", "2027-02-13", "2027-02-14")
    # After 03-10: daily 03-04..03-10; weekly (first of the week, kept 28 days, so from
    # 02-11 on): 02-15, 02-22, 03-02 (substitute), 03-08; monthly: 02-01 and 03-02.
    # 02-09 went on 03-09 at 21:00, 28 days after it was made.
    assert kept[date(2027, 3, 10)] == days("2027-02-01", "2027-02-15", "2027-02-22", "2027-03-02",
                                           "2027-03-04", "2027-03-05", "2027-03-06", "2027-03-07",
                                           "2027-03-08", "2027-03-09", "2027-03-10")
    # After 05-01 (a Saturday): February's point is 3 months old at 21:00 and goes;
    # weekly from 04-04 on: 04-05, 04-12, 04-19, 04-26; monthly: 03-02, 04-01, 05-01.
    assert kept[date(2027, 5, 1)] == days("2027-03-02", "2027-04-01", "2027-04-05", "2027-04-12",
                                          "2027-04-19", "2027-04-25", "2027-04-26", "2027-04-27",
                                          "2027-04-28", "2027-04-29", "2027-04-30", "2027-05-01")
    # The number of points stays bounded: 7 daily + at most 4 weekly + 3 monthly.
    assert max(len(k) for k in kept.values()) <= 14


def test_while_backups_keep_failing_the_longest_kept_point_stays():
    # Good backups until 2027-01-10, then every backup fails for two months.
    failed = {date(2027, 1, 11) + timedelta(days=i) for i in range(60)}
    kept = simulate(Retention(daily=7), date(2027, 1, 1), date(2027, 3, 11), failed)
    assert kept[date(2027, 1, 16)] == days("2027-01-10")  # 01-09 turned 7 days old at 21:00
    assert kept[date(2027, 3, 11)] == days("2027-01-10")  # expired long ago, but the last one
    # When backups work again, the old point goes once a new one is kept.
    kept = simulate(Retention(daily=7), date(2027, 1, 1), date(2027, 3, 20), failed)
    assert date(2027, 1, 10) not in kept[date(2027, 3, 13)]


def test_shortening_applies_at_the_next_prune_and_lengthening_keeps_what_exists():
    base = datetime(2027, 1, 1, 21, 0, tzinfo=BERLIN)
    points = {f"p{i}": int((base + timedelta(days=i)).timestamp() * 1e9) for i in range(30)}
    now = base + timedelta(days=29, hours=2)
    assert len(points) - len(expired(points, Retention(daily=30), now)) == 30
    assert len(points) - len(expired(points, Retention(daily=7), now)) == 7
    assert len(points) - len(expired(points, Retention(daily=60), now)) == 30


def test_daylight_saving_days_are_whole_days():
    # 2027-03-28 has 23 hours in Berlin; a point made at 21:00 the day before is kept
    # 7 calendar days, until 21:00 local on 04-03, not an hour off.
    made = datetime(2027, 3, 27, 21, 0, tzinfo=BERLIN)
    later = datetime(2027, 4, 3, 22, 0, tzinfo=BERLIN)
    points = {"p": int(made.timestamp() * 1e9), "new": int(later.timestamp() * 1e9)}
    assert expired(points, Retention(daily=7), datetime(2027, 4, 3, 20, 59, tzinfo=BERLIN)) == set()
    assert expired(points, Retention(daily=7), datetime(2027, 4, 3, 21, 0, tzinfo=BERLIN)) == {"p"}


@pytest.mark.parametrize("tiers", [{"daily": 6}, {"weekly": 5164}, {"monthly": 2}, {"yearly": 100}, {}])
def test_out_of_range_policies_are_refused(tiers):
    with pytest.raises(UsageError):
        Retention(**tiers)


def test_weekly_points_are_told_apart_by_iso_week_and_iso_year():
    # Daily backups from Monday 2026-11-30 to 2029-01-10, kept weekly=104 (two years). ISO years
    # and calendar years part around each new year: 2027-01-01 (a Friday) is in week 53 of
    # 2026, 2028-01-01 (a Saturday) in week 52 of 2027, 2029-01-01 a Monday of week 1 of 2029.
    # The weekly point is each week's first, a Monday; it stays 104 weeks (728 days).
    # A week keyed by its number alone, or by calendar year and ISO week, keeps other days.
    first, last = date(2026, 11, 30), date(2029, 1, 10)
    assert first.weekday() == 0
    kept = simulate(Retention(daily=7, weekly=104), first, last, set())
    for day in (date(2027, 1, 3), date(2027, 1, 4), date(2028, 1, 2), date(2028, 12, 31), last):
        mondays = {first + timedelta(weeks=w) for w in range(200)
                   if day - timedelta(days=728) < first + timedelta(weeks=w) <= day}
        recent = {day - timedelta(days=i) for i in range(7) if day - timedelta(days=i) >= first}
        assert kept[day] == mondays | recent, f"after {day}: {sorted(kept[day] ^ (mondays | recent))} differ"
    assert len([d for d in kept[last] if d.weekday() == 0]) == 104


def test_at_most_9999_points_per_machine_the_soonest_to_expire_go_first():
    # MARS keeps at most 9,999 recovery points per machine. Three backups a day for ten
    # years, all of them within daily=9999 days: 10,950 points, the oldest 951 over the cap.
    base = datetime(2027, 1, 1, 9, 0, tzinfo=BERLIN)
    made = [base + timedelta(days=d, hours=h) for d in range(3650) for h in (0, 4, 8)]
    points = {f"p{i:05d}": int(t.timestamp() * 1e9) for i, t in enumerate(made)}
    now = made[-1] + timedelta(hours=1)
    gone = expired(points, Retention(daily=9999), now)
    assert len(points) - len(gone) == 9999
    assert gone == {f"p{i:05d}" for i in range(len(points) - 9999)}
