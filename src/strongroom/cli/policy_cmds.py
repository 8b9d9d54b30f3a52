"""`strongroom policy set|show`: this machine's protection policy, kept (versioned) by the vault."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from strongroom.agent.passphrase import read_passphrase
from strongroom.agent.selection import SelectionRules
from strongroom.cli.common import (
    echo,
    emit_json,
    exit_if_incomplete,
    home,
    json_option,
    key_if_given,
    passphrase_option,
    warn_line,
)
from strongroom.cli.selection_opts import chosen, pop_options, selection_options
from strongroom.model import display_path
from strongroom.policy import (
    Policy,
    Schedule,
    parse_days,
    parse_rate,
    parse_work_hours,
    seal_doc,
    view,
)
from strongroom.vault.retention import Retention


def local_timezone() -> str:
    """The machine's IANA zone name (schedules follow it, daylight saving included)."""
    if os.environ.get("TZ"):
        return os.environ["TZ"].lstrip(":")
    try:
        return str(Path("/etc/localtime").resolve()).split("/zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


@click.group("policy")
def policy_group() -> None:
    """What to protect, when, how long and how fast."""


@policy_group.command("set")
@click.option("--include", "includes", multiple=True, metavar="PATH", help="Protect this path (or give --files-from).")
@click.option("--volume", "volumes", multiple=True, metavar="MOUNTPOINT",
              help="Protect the volume mounted there (a volume point each run).")
@click.option("--system-state", is_flag=True, help="Protect this machine's system state (a point each run).")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB", help="Leave out matching paths.")
@click.option("--daily", "daily_times", metavar="HH:MM[,HH:MM...]", help="Back up every day at these times (up to 3).")
@click.option("--weekly", "weekly_days", metavar="DAYS", help="Back up on these days (mon,thu or mon-fri)...")
@click.option("--at", "weekly_times", metavar="HH:MM[,...]", help="...at these times.")
@click.option("--every-weeks", type=click.IntRange(1, 4), default=1, show_default=True)
@click.option("--keep-daily", type=int, help="Days to keep every point (7-9999).")
@click.option("--keep-weekly", type=int, help="Weeks to keep each week's first point (4-5163).")
@click.option("--keep-monthly", type=int, help="Months to keep each month's first point (3-1188).")
@click.option("--keep-yearly", type=int, help="Years to keep each year's first point (1-99).")
@click.option("--throttle-work", default="0", show_default=True, help="Bandwidth in work hours (4MiB/s; 0: unlimited).")
@click.option("--throttle-off", default="0", show_default=True, help="Bandwidth outside work hours.")
@click.option("--work-hours", default="mon-fri,08:00-18:00", show_default=True)
@click.option("--timezone", default=None, help="IANA time zone of the schedule (default: this machine's).")
@click.option("--pin", help="Shortening retention needs a PIN from `strongroom vault pin --act shorten-retention`.")
@selection_options
@passphrase_option
@json_option
@click.pass_context
def set_policy(ctx: click.Context, includes: tuple[str, ...], volumes: tuple[str, ...], system_state: bool,
               excludes: tuple[str, ...], daily_times: str | None,
               weekly_days: str | None, weekly_times: str | None, every_weeks: int, keep_daily: int | None,
               keep_weekly: int | None, keep_monthly: int | None, keep_yearly: int | None, throttle_work: str,
               throttle_off: str, work_hours: str, timezone: str | None, pin: str | None,
               passphrase_file: Path | None, as_json: bool, **select: Any) -> None:
    """Set this machine's policy; the vault keeps every version and prunes by the newest.
    The paths are sealed with this machine's key, so the passphrase is needed. The selection
    options' files are read now: the policy keeps their patterns and paths, not the files."""
    picked = chosen(excludes, pop_options(select))
    if daily_times and weekly_days:
        raise click.UsageError("--daily and --weekly exclude each other")
    if weekly_days and not weekly_times:
        raise click.UsageError("--weekly needs --at")
    schedule = None
    if daily_times:
        schedule = Schedule(tuple(daily_times.split(",")))
    elif weekly_days:
        schedule = Schedule(tuple(weekly_times.split(",")), parse_days(weekly_days), every_weeks)
    tiers = {"daily": keep_daily, "weekly": keep_weekly, "monthly": keep_monthly, "yearly": keep_yearly}
    retention = Retention(**tiers) if any(v is not None for v in tiers.values()) else Retention(daily=30)
    work_days, hours = parse_work_hours(work_hours)
    paths = [os.path.abspath(p) for p in includes] + [os.fsdecode(p) for p in picked.listed]
    policy = Policy(tuple(dict.fromkeys(paths)), tuple(picked.excludes), schedule, retention,
                    parse_rate(throttle_work), parse_rate(throttle_off), work_days, hours,
                    timezone or local_timezone(), picked.rules.to_doc(),
                    volumes=tuple(os.path.abspath(v) for v in volumes), system_state=system_state)
    agent = home(ctx)
    key = agent.master_key(read_passphrase(passphrase_file))
    version = agent.vault().set_policy(seal_doc(policy, key), pin)
    agent.save_policy_copy(version, policy.to_doc())
    missing = [{"path": display_path(p), "error": m} for p, m in picked.missing]
    if as_json:
        emit_json({"version": version, "policy": view(policy.to_doc(), None), "warnings": missing})
    else:
        echo(f"Policy version {version} stored in the vault.")
    exit_if_incomplete(ctx, missing, as_json, "are not in the policy")


@policy_group.command("show")
@passphrase_option
@json_option
@click.pass_context
def show_policy(ctx: click.Context, passphrase_file: Path | None, as_json: bool) -> None:
    """The policy the vault applies to this machine (and whether this machine's copy differs).
    Its paths are sealed: they are shown when the passphrase is given (file or environment),
    else only counted."""
    agent = home(ctx)
    key = key_if_given(agent, passphrase_file)
    found = agent.vault().policy()
    if found is None:
        if as_json:
            emit_json(None)
        else:
            echo("No policy: backups run only on demand, and the vault prunes nothing.")
        return
    version, doc = found
    if doc is not None:
        doc = view(doc, key)
    if doc is None:
        if as_json:
            emit_json({"version": version, "policy": None})
        else:
            echo(f"Policy version {version}: protection stopped; the points kept stay until deleted.")
        return
    had = agent.policy_copy_doc()["version"]
    if had != version:
        warn_line(f"this machine's copy of the policy (version {had}) differs from "
                  f"the vault's (version {version}); the vault's applies")
    if as_json:
        emit_json({"version": version, "policy": doc})
        return
    r = doc["retention"]
    s = doc["schedule"]
    when = "on demand only" if not s else (
        f"{','.join(s['days'])} at {','.join(s['times'])}" + (f", every {s['every_weeks']} weeks"
                                                             if s["every_weeks"] > 1 else ""))
    echo(f"Policy version {version}")
    echo(f"  protect:   {_paths(doc)}")
    if doc.get("selection"):
        for rule in SelectionRules.from_doc(doc["selection"]).describe():
            echo(f"  select:    {rule}")
    echo(f"  schedule:  {when} ({doc['timezone']})")
    echo("  retention: " + ", ".join(f"{k} {v}" for k, v in r.items() if v is not None))
    echo(f"  bandwidth: work {_rate(doc['throttle_work'])}, off {_rate(doc['throttle_off'])} "
         f"(work hours {','.join(doc['work_days'])} {'-'.join(doc['work_hours'])})")


def _paths(doc: dict) -> str:
    state = "; system state" if doc.get("system_state") else ""
    if doc["includes"] is None:
        volumes = f", {doc['volume_count']} volume(s)" if doc.get("volume_count") else ""
        return (f"{doc['include_count']} path(s), {doc['exclude_count']} exclusion(s){volumes}{state} "
                "(sealed: give the passphrase to see them)")
    files = ", ".join(doc["includes"]) + (f" (except {', '.join(doc['excludes'])})" if doc["excludes"] else "")
    volumes = "; volumes " + ", ".join(doc["volumes"]) if doc.get("volumes") else ""
    return (files or "no files") + volumes + state


def _rate(value: int | None) -> str:
    return "unlimited" if value is None else f"{value / 1024 / 1024:.2f} MiB/s"


@click.group("protection")
def protection_group() -> None:
    """Stop protecting this machine."""


@protection_group.command("stop")
@click.option("--keep-data", "mode", flag_value="keep", help="Stop backups; keep every point until deleted.")
@click.option("--delete-data", "mode", flag_value="delete",
              help="Stop backups and delete every point (recoverable for the vault's soft-delete period).")
@click.option("--pin", help="Deleting data needs a PIN from `strongroom vault pin --act delete-data`.")
@click.pass_context
def stop(ctx: click.Context, mode: str | None, pin: str | None) -> None:
    """Stop scheduled backups of this machine, keeping or deleting its data."""
    if mode is None:
        raise click.UsageError("say --keep-data or --delete-data")
    agent = home(ctx)
    deleted = agent.vault().stop_protection(mode == "delete", pin)
    if mode == "delete":  # gone by this machine's own act: no newer point is expected now
        agent.note_point(agent.config()["machine"], None, replace=True)
    agent.policy_copy.unlink(missing_ok=True)
    echo("Protection stopped; " + (f"{deleted} point(s) deleted (recoverable with `points undelete` "
                                   "until the soft-delete period ends)." if mode == "delete"
                                   else "the points are kept until deleted."))


def add_to(cli: click.Group) -> None:
    cli.add_command(policy_group)
    cli.add_command(protection_group)
