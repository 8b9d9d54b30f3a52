"""A machine's protection policy: what, when, how long, how fast. Stored in the vault, versioned.

The vault reads only the retention and the time zone from it (to prune without the key);
the agent's daemon reads the rest. What to protect (includes and excludes) names the
machine's files, so it travels and rests sealed with the machine's key: the vault keeps
the sealed bytes and their counts, and only a holder of the key reads the paths. Parsed
from the command line's forms here, so that the CLI and the vault agree on one document.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from strongroom.agent.selection import SelectionRules
from strongroom.crypto import MasterKey, sealed_size
from strongroom.errors import IntegrityError, UsageError
from strongroom.vault.retention import Retention

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_TIMES_A_DAY = 3  # as MARS
MIN_THROTTLE = 512 * 1000 // 8  # 512 Kbit/s, in bytes per second
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(:[0-5]\d)?$")  # seconds: for tests and the impatient
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|Kbit|Mbit|Gbit)?/s$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kbit": 125, "mbit": 125_000, "gbit": 125_000_000}


@dataclass(frozen=True)
class Schedule:
    times: tuple[str, ...]  # "HH:MM", local time
    days: tuple[str, ...] = DAYS  # weekly: the chosen days; daily: every day
    every_weeks: int = 1

    def __post_init__(self) -> None:
        if not 1 <= len(self.times) <= MAX_TIMES_A_DAY:
            raise UsageError(f"a schedule has 1 to {MAX_TIMES_A_DAY} times a day")
        for t in self.times:
            if not _TIME.match(t):
                raise UsageError(f"{t!r} is not a time of day (HH:MM)")
        if not self.days or any(d not in DAYS for d in self.days):
            raise UsageError(f"days are {', '.join(DAYS)}")
        if not 1 <= self.every_weeks <= 4:
            raise UsageError("--every-weeks is 1 to 4")


@dataclass(frozen=True)
class Policy:
    includes: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    schedule: Schedule | None = None
    retention: Retention = field(default_factory=lambda: Retention(daily=30))
    throttle_work: int | None = None  # bytes per second; None: unlimited
    throttle_off: int | None = None
    work_days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    work_hours: tuple[str, str] = ("08:00", "18:00")
    timezone: str = "UTC"
    # agent/selection.py's rules (SelectionRules.to_doc()), sealed with the paths
    selection: dict[str, Any] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()  # mount points, each backed up as a volume point
    system_state: bool = False  # a system-state point with each scheduled run

    def __post_init__(self) -> None:
        SelectionRules.from_doc(self.selection)  # refuses what the rules refuse
        if not self.includes and not self.volumes and not self.system_state:
            raise UsageError("a policy needs at least one --include, --volume or --system-state")
        if any(not p.startswith("/") for p in self.includes + self.volumes):
            raise UsageError("--include and --volume take absolute paths")
        for rate in (self.throttle_work, self.throttle_off):
            if rate is not None and rate < MIN_THROTTLE:
                raise UsageError("a bandwidth limit is 512 Kbit/s or more (or 0 for unlimited)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"unknown time zone {self.timezone!r}") from None

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Policy":
        doc = dict(doc)
        sched = doc.pop("schedule")
        return cls(**{**doc, "includes": tuple(doc["includes"]), "excludes": tuple(doc["excludes"]),
                      "volumes": tuple(doc.get("volumes", ())),
                      "work_days": tuple(doc["work_days"]), "work_hours": tuple(doc["work_hours"]),
                      "schedule": Schedule(tuple(sched["times"]), tuple(sched["days"]), sched["every_weeks"])
                      if sched else None, "retention": Retention(**doc["retention"])})


PATHS_AAD = b"strongroom policy paths v1"
MAX_SEALED_PATHS = 256 * 1024  # base64 characters: thousands of paths
_PATH_FIELDS = ("includes", "excludes", "volumes")
_SELECTION = "selection"  # sealed too: its patterns and names say what the machine holds
_SEALED_FIELDS = ("sealed_paths", "include_count", "exclude_count", "volume_count")


def seal_doc(policy: Policy, key: MasterKey) -> dict[str, Any]:
    """The document the vault keeps: the policy with its paths sealed under the machine's key."""
    doc = policy.to_doc()
    paths = json.dumps({**{f: doc.pop(f) for f in _PATH_FIELDS}, _SELECTION: doc.pop(_SELECTION)}).encode()
    return {**doc, "sealed_paths": base64.b64encode(key.seal(PATHS_AAD, paths)).decode(),
            "include_count": len(policy.includes), "exclude_count": len(policy.excludes),
            "volume_count": len(policy.volumes)}


def open_doc(doc: dict[str, Any], key: MasterKey) -> dict[str, Any]:
    """The vault's document with its paths opened (a document stored before paths were
    sealed has them in the clear already)."""
    if "sealed_paths" not in doc:
        return doc
    try:
        paths = json.loads(key.open(PATHS_AAD, base64.b64decode(doc["sealed_paths"])))
        selection = SelectionRules.from_doc(paths.get(_SELECTION)).to_doc()  # absent before selections
        paths = {f: [str(p) for p in paths.get(f, [])] for f in _PATH_FIELDS}  # no volumes before kinds
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, UsageError):
        raise IntegrityError("the policy's sealed paths are damaged") from None
    rest = {k: v for k, v in doc.items() if k not in _SEALED_FIELDS}
    return {**rest, **{f: paths[f] for f in _PATH_FIELDS}, _SELECTION: selection}


def view(doc: dict[str, Any], key: MasterKey | None) -> dict[str, Any]:
    """The document as shown: paths opened with the key (without it: null) and counted."""
    if key is not None:
        doc = open_doc(doc, key)
    if "sealed_paths" in doc:
        return {**{k: v for k, v in doc.items() if k != "sealed_paths"}, "includes": None, "excludes": None,
                "volumes": None, _SELECTION: None}
    return {**doc, "include_count": len(doc["includes"]), "exclude_count": len(doc["excludes"]),
            "volume_count": len(doc.get("volumes", ()))}


def check_vault_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The vault's check of a document it is asked to store: every plaintext field as the
    agent checks it, and paths only sealed (the vault refuses to learn them)."""
    if any(doc.get(f) is not None for f in _PATH_FIELDS + (_SELECTION,)):
        raise UsageError("policy paths must reach the vault sealed with the machine's key "
                         "(this agent is older than the vault: upgrade it)")
    try:
        sealed = doc["sealed_paths"]
        counts = (int(doc["include_count"]), int(doc["exclude_count"]), int(doc.get("volume_count", 0)))
        if not isinstance(sealed, str) or len(sealed) > MAX_SEALED_PATHS:
            raise ValueError
        protects = counts[0] + counts[2] > 0 or doc.get("system_state") is True
        if len(base64.b64decode(sealed, validate=True)) < sealed_size(2) or not protects or min(counts) < 0:
            raise ValueError
        rest = {k: v for k, v in doc.items() if k not in _SEALED_FIELDS + _PATH_FIELDS + (_SELECTION,)}
        plain = Policy.from_doc({**rest, "includes": ["/"], "excludes": []}).to_doc()
    except (TypeError, KeyError, ValueError, AttributeError, binascii.Error):
        raise UsageError("malformed policy document") from None
    for f in _PATH_FIELDS + (_SELECTION,):
        del plain[f]
    return {**plain, "sealed_paths": sealed, "include_count": counts[0], "exclude_count": counts[1],
            "volume_count": counts[2]}


def parse_rate(text: str) -> int | None:
    """'4MiB/s', '512Kbit/s', '0' (unlimited) -> bytes per second or None."""
    if text.strip() in ("0", "unlimited"):
        return None
    m = _RATE.match(text.strip())
    if not m:
        raise UsageError(f"{text!r} is not a rate (like 4MiB/s, 512Kbit/s, or 0 for unlimited)")
    return int(float(m[1]) * _UNITS[(m[2] or "B").lower()])


def parse_days(text: str) -> tuple[str, ...]:
    """'mon,thu' or 'mon-fri' -> ('mon', 'thu') / ('mon', ..., 'fri')."""
    out: list[str] = []
    for part in text.lower().split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            if first not in DAYS or last not in DAYS:
                raise UsageError(f"{part!r} is not a range of days")
            out.extend(DAYS[DAYS.index(first):DAYS.index(last) + 1])
        elif part in DAYS:
            out.append(part)
        else:
            raise UsageError(f"{part!r} is not a day ({', '.join(DAYS)})")
    return tuple(d for d in DAYS if d in out)


def parse_work_hours(text: str) -> tuple[tuple[str, ...], tuple[str, str]]:
    """'mon-fri,08:00-18:00' -> (days, (start, end))."""
    days_part, _, hours = text.rpartition(",")
    start, _, end = hours.partition("-")
    if not days_part or not _TIME.match(start) or not _TIME.match(end) or start >= end:
        raise UsageError(f"{text!r} is not work hours (like mon-fri,08:00-18:00)")
    return parse_days(days_part), (start, end)
