"""Recovery targets: what PostgreSQL will accept, and what one backup and its archive can reach.

Pure decisions over plain data (no storage, no clock), so each has a table test and `recover`
can refuse a target before it writes anything:

- `normalise` checks every option the way PostgreSQL reads it, or more strictly, and returns
  the target in the form written to postgresql.auto.conf (ConfigError, exit 2, naming the value
  and the accepted form otherwise);
- `recover_operands` and `tablespace_map` read the rest of `cloudbm recover`'s arguments;
- `Reach` is what recovery from a chosen backup along a chosen timeline can reach, as far as
  the manifest and the archive listing (names, upload times) tell; `unreachable` says why a
  target lies outside it (recover raises CheckFailed, exit 3, with `Reach.explain`).

What can and cannot be known without reading WAL (docs/recovery.md says the same):

- LSN: from the backup's stop LSN (consistency; PostgreSQL refuses to stop earlier) to the end
  of the newest archived segment on the timeline path. Exact bounds, except that the last
  segment may end in padding after a WAL switch.
- time: from the backup's end time (recorded after pg_backup_stop, in whole seconds, so one
  second is added) to the upload time of the newest archived segment on the path plus
  CLOCK_ALLOWANCE. No record in the archive is newer than the upload of its segment, so a later
  target cannot be reached; the allowance covers clocks that differ between the database host
  and the storage service. A target between the last commit and that bound is not caught.
- xid and restore point name: only their syntax. Which transactions and restore points the
  archive holds is in the WAL records themselves; PostgreSQL 14+ stops with "recovery ended
  before configured recovery target was reached" if the archive lacks them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

from cloudbm.errors import ConfigError
from cloudbm.pg import walnames
from cloudbm.pg.recovery_conf import TARGET_ACTIONS, RecoveryTarget

# How far the storage service's clock may be behind the database host's before an honest
# time target is refused: S3 and Azure refuse signed requests from clients more than 15 minutes
# off, and hosts that archive WAL keep far closer than that with NTP.
CLOCK_ALLOWANCE = timedelta(minutes=5)
# The manifest's end time is whole seconds, truncated: the real end is up to 1 s later.
END_TIME_RESOLUTION = timedelta(seconds=1)
MAX_NAME_BYTES = 63  # PostgreSQL's MAXFNAMELEN - 1, as pg_create_restore_point enforces
MAX_TIMELINE = 0xFFFFFFFF
FIRST_NORMAL_XID = 3  # 0-2 are invalid, bootstrap and frozen: never a transaction to stop at
MAX_OFFSET = timedelta(hours=15, minutes=59)  # PostgreSQL's widest numeric zone offset

_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[T ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?(?P<zone>.*)",
    re.ASCII | re.DOTALL,
)
_OFFSET = re.compile(r"([+-])([0-9]{2})(?::?([0-9]{2}))?", re.ASCII)
_UTC_NAMES = ("Z", "UTC", "GMT")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TIME_FORM = "ISO 8601 with a zone, e.g. '2026-11-22 14:02:59+00' or '2026-11-22T14:02:59.5+05:30'"


# --- syntax --------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """A --target-time value -> an aware datetime; ConfigError unless ISO 8601 with a zone.

    Stricter than PostgreSQL on purpose: it would read a bare timestamp in its own time zone
    and accepts words ('now', 'epoch', 'Dec 2 04:35') and zone names whose meaning depends on
    its settings; here the instant is unambiguous.
    """
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"--target-time {text!r} is not a timestamp", hint=f"use {_TIME_FORM}")
    zone = m["zone"].strip()
    if not zone:
        raise ConfigError(
            f"--target-time {text!r} has no time zone",
            hint=f"add one, e.g. {text.strip()}+00: PostgreSQL would read it in its own zone",
        )
    tz = _zone(zone, text)
    if len(m["fraction"] or "") > 6:
        raise ConfigError(
            f"--target-time {text!r} has more than 6 decimals of a second",
            hint="PostgreSQL keeps microseconds; round to 6 decimals",
        )
    fraction = (m["fraction"] or "").ljust(6, "0")
    try:
        return datetime.fromisoformat(m["date"]).replace(
            hour=int(m["hour"]),
            minute=int(m["minute"]),
            second=int(m["second"] or 0),
            microsecond=int(fraction),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise ConfigError(
            f"--target-time {text!r} is not a timestamp ({exc})", hint=f"use {_TIME_FORM}"
        ) from None


def _zone(zone: str, text: str) -> timezone:
    """A numeric offset or UTC; zone names are refused (their offset depends on the date and
    the zone database PostgreSQL was built with)."""
    if zone.upper() in _UTC_NAMES:
        return UTC
    m = _OFFSET.fullmatch(zone)
    if m is None:
        raise ConfigError(
            f"--target-time {text!r} has a time zone cloudbm does not read: {zone!r}",
            hint="give a numeric offset (e.g. +01, -05:30) or UTC",
        )
    sign, hours, minutes = m.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    if int(minutes or 0) >= 60 or offset > MAX_OFFSET:
        raise ConfigError(
            f"--target-time {text!r} has an impossible zone offset {zone}",
            hint="offsets run from -15:59 to +15:59",
        )
    return timezone(-offset if sign == "-" else offset)


def format_time(value: datetime) -> str:
    """The form written for PostgreSQL: '2026-11-22 14:02:59.5+05:30' (microseconds if any)."""
    text = value.isoformat(sep=" ", timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "+00")


def parse_lsn(text: str) -> int:
    """A --target-lsn value ('16/B374D848') -> int; ConfigError otherwise."""
    m = _LSN.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"--target-lsn {text!r} is not a WAL location",
            hint="use two hexadecimal numbers of up to 8 digits, e.g. 0/3A000108",
        )
    return (int(m[1], 16) << 32) | int(m[2], 16)


def parse_xid(text: str) -> int:
    """A --target-xid value -> the 32-bit transaction id PostgreSQL compares.

    A 64-bit xid8 (pg_current_xact_id(): epoch << 32 | xid) is accepted: PostgreSQL keeps only
    its low 32 bits, so that is what is written. Decimal only (PostgreSQL's strtoul would also
    take hex, octal and trailing junk, reading '12abc' as 12).
    """
    value = text.strip()
    if not _DECIMAL.fullmatch(value) or int(value) >= 1 << 64:
        raise ConfigError(
            f"--target-xid {text!r} is not a transaction id",
            hint="use a decimal number, as txid_current() or pg_current_xact_id() prints it",
        )
    xid = int(value) & 0xFFFFFFFF
    if xid < FIRST_NORMAL_XID:
        raise ConfigError(
            f"--target-xid {text!r} is not a transaction id a recovery can stop at "
            f"(ids {FIRST_NORMAL_XID - 1} and below are reserved)",
            hint="use the id of a transaction that committed or aborted",
        )
    return xid


def check_name(text: str) -> str:
    """A --target-name value, unchanged; ConfigError if PostgreSQL could not have made it."""
    if not text.strip():
        raise ConfigError(
            "--target-name is empty",
            hint="give the name passed to pg_create_restore_point() (PostgreSQL would read an "
            "empty name as no target at all and replay everything)",
        )
    if _CONTROL.search(text):
        raise ConfigError(
            f"--target-name {text!r} contains control characters",
            hint="restore point names are plain text",
        )
    if len(text.encode()) > MAX_NAME_BYTES:
        raise ConfigError(
            f"--target-name is {len(text.encode())} bytes long; restore point names have at most "
            f"{MAX_NAME_BYTES}",
            hint="pg_create_restore_point() refuses longer names, so no such point exists",
        )
    return text


def parse_timeline(text: str) -> str:
    """--target-tli: 'latest', 'current' or a decimal timeline number, as written."""
    value = text.strip().lower()
    if value in ("latest", "current"):
        return value
    if _DECIMAL.fullmatch(value) and 1 <= int(value) <= MAX_TIMELINE:
        return str(int(value))
    raise ConfigError(
        f"--target-tli {text!r} is not latest, current or a timeline number",
        hint="timelines are decimal and start at 1 (history file 0000000A.history is timeline 10)",
    )


def normalise(target: RecoveryTarget) -> RecoveryTarget:
    """Every option checked, in the form PostgreSQL will read; ConfigError naming the first
    that is wrong. Time, LSN and xid are rewritten canonically (what was checked is what
    PostgreSQL parses); a name is kept byte for byte."""
    given = [k for k in ("time", "xid", "lsn", "name") if getattr(target, k) is not None]
    if target.immediate:
        given.append("immediate")
    if len(given) > 1:
        raise ConfigError(
            f"choose one recovery target, not {' and '.join(given)}",
            hint="PostgreSQL stops at the first target it meets; give just that one",
        )
    kind = given[0] if given else None
    if target.action is not None and target.action not in TARGET_ACTIONS:
        raise ConfigError(
            f"--target-action {target.action!r} is not one of {', '.join(TARGET_ACTIONS)}"
        )
    if target.action is not None and kind is None:
        raise ConfigError(
            "--target-action applies only with a recovery target",
            hint="without one, recovery replays the whole archive and the server promotes; "
            "add --target-time/-xid/-lsn/-name or --target-immediate",
        )
    if not target.inclusive and kind not in ("time", "xid", "lsn"):
        raise ConfigError(
            "--exclusive applies only to --target-time, --target-xid and --target-lsn",
            hint="PostgreSQL ignores recovery_target_inclusive for other targets",
        )
    out = replace(target, timeline=parse_timeline(target.timeline))
    if target.time is not None:
        out = replace(out, time=format_time(parse_time(target.time)))
    elif target.lsn is not None:
        out = replace(out, lsn=walnames.format_lsn(parse_lsn(target.lsn)))
    elif target.xid is not None:
        out = replace(out, xid=str(parse_xid(target.xid)))
    elif target.name is not None:
        out = replace(out, name=check_name(target.name))
    return out


# --- the recover command's operands ---------------------------------------------------------

# A backup id as backup-push names it: UTC start time, and a counter if that second was taken.
_BACKUP_ID = re.compile(r"[0-9]{8}T[0-9]{6}(-[0-9]+)?", re.ASCII)


def recover_operands(
    operands: Sequence[str], target: RecoveryTarget, backup_aliases: Collection[str]
) -> tuple[str | None, str]:
    """`recover [ID] DEST`: the backup id and the destination directory, or ConfigError.

    Without an id the backup is the newest DONE one that ended before the target (None), or
    "latest" when there is no target. A lone operand that looks like a backup id or one of
    `backup_aliases` is refused: `recover latest` forgot DEST, and must not restore into
    ./latest."""
    if len(operands) > 2:
        raise ConfigError("recover takes at most a backup id and a destination")
    if len(operands) == 2:
        backup_id: str | None
        backup_id, dest = operands
    else:
        backup_id, dest = None, operands[0]
    if not dest.strip():
        raise ConfigError("the destination directory is empty", hint="give DEST")
    if backup_id is None:
        _refuse_lone_backup_id(dest, backup_aliases)
        if target.kind() is None:
            backup_id = "latest"
    return backup_id, dest


def _refuse_lone_backup_id(dest: str, backup_aliases: Collection[str]) -> None:
    if "/" in dest:
        return
    if dest.lower() in backup_aliases or _BACKUP_ID.fullmatch(dest):
        raise ConfigError(
            f"recover needs a destination directory; {dest!r} looks like a backup id",
            hint=f"cloudbm recover {dest} DEST (to restore into a directory of that name, "
            f"write ./{dest})",
        )


def tablespace_map(items: Iterable[str]) -> dict[str, str]:
    """`--tablespace NAME:DIR` (repeatable) as {NAME: DIR}; ConfigError for anything else."""
    spaces: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition(":")
        if not sep or not name or not directory:
            raise ConfigError(f"--tablespace {item!r} is not NAME:DIR")
        spaces[name] = directory
    return spaces


# --- reach ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """What recovery from one backup along one timeline can reach."""

    backup_id: str
    timeline: int
    earliest_lsn: int  # the backup's stop LSN: consistency
    earliest_time: datetime  # the backup's end time, rounded up to the next second
    latest_lsn: int  # end of the newest archived segment on the path (exclusive)
    latest_segment: str
    latest_upload: datetime | None  # newest upload time on the path; None if storage gave none

    @property
    def latest_time(self) -> datetime | None:
        """The last time a target may name (upload time plus the clock allowance)."""
        return None if self.latest_upload is None else self.latest_upload + CLOCK_ALLOWANCE

    def explain(self) -> str:
        """One clause: the reachable LSNs and times."""
        lsns = (
            f"LSNs {walnames.format_lsn(self.earliest_lsn)} up to (not including) "
            f"{walnames.format_lsn(self.latest_lsn)}, the end of {self.latest_segment}"
        )
        first = format_time(self.earliest_time.astimezone(UTC))
        if self.latest_upload is None:
            times = f"times from {first} (storage gives no upload times to bound them)"
        else:
            last = format_time(self.latest_upload.astimezone(UTC).replace(microsecond=0))
            times = (
                f"times from {first} to about {last} (when that segment was archived, "
                f"+{int(CLOCK_ALLOWANCE.total_seconds() // 60)} min for clock differences)"
            )
        return (
            f"from backup {self.backup_id} on timeline {self.timeline}, reachable are {lsns}, "
            f"and {times}"
        )


def earliest_time(end: datetime) -> datetime:
    """The first target time a backup that ended at `end` (whole seconds) can reach."""
    return end + END_TIME_RESOLUTION


def unreachable(target: RecoveryTarget, reach: Reach) -> str | None:
    """Why a normalised `target` cannot be reached, or None if it may be."""
    if target.time is not None:
        when = parse_time(target.time)
        if when < reach.earliest_time:
            return (
                f"--target-time {target.time} is before backup {reach.backup_id} ended: "
                "PostgreSQL cannot stop before the backup is consistent"
            )
        latest = reach.latest_time
        if latest is not None and when > latest:
            return (
                f"--target-time {target.time} is after the newest WAL in the archive "
                f"({reach.latest_segment}): recovery would end before reaching it"
            )
    elif target.lsn is not None:
        lsn = parse_lsn(target.lsn)
        if lsn < reach.earliest_lsn:
            return (
                f"--target-lsn {target.lsn} is before backup {reach.backup_id}'s stop point "
                f"{walnames.format_lsn(reach.earliest_lsn)}: PostgreSQL cannot stop before "
                "the backup is consistent"
            )
        if lsn >= reach.latest_lsn:
            return (
                f"--target-lsn {target.lsn} is beyond the archived WAL on timeline "
                f"{reach.timeline}: recovery would end before reaching it"
            )
    return None
