"""Retention planning: which backups and which WAL files a policy keeps, and why.

A pure function of plain data — the catalogue, the names of the archived WAL files, the
timeline histories, the policy and `now` — so every rule has a table test and
`cloudbm retention --dry-run` prints exactly what `cloudbm retention` then does. Nothing here
reads storage or the clock. docs/retention.md describes the rules for operators.

`plan()` checks the settings (policy.py), decides each backup (backups.py), sweeps the WAL the
kept backups do not need (wal.py) and returns one `Plan` that explains itself line by line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cloudbm import catalog
from cloudbm.catalog import BackupEntry
from cloudbm.pg import timeline, walnames
from cloudbm.retention.backups import (
    DEFAULT_UNFINISHED_GRACE,
    BackupDecision,
    BackupInfo,
    decide_backups,
    plural,
)
from cloudbm.retention.policy import (
    WAL_RETENTION_BACKUPS,
    Policy,
    RecoveryWindow,
    check_minimum_redundancy,
    parse_wal_retention,
)
from cloudbm.retention.wal import TimelineWal, sweep_wal


@dataclass(frozen=True)
class Plan:
    """The outcome of `plan()`: backup decisions (oldest first) and WAL to remove (sorted)."""

    policy: Policy
    minimum_redundancy: int
    wal_retention: str
    now: datetime
    window_start: datetime | None
    backups: tuple[BackupDecision, ...]
    wal_remove: tuple[str, ...]
    wal_timelines: tuple[TimelineWal, ...]
    history_files: int  # .history files seen; never removed
    foreign_files: int  # names that are not WAL file names; never removed
    wal_note: str | None = None  # why no WAL is removed at all, when that is the case

    @property
    def keep(self) -> tuple[BackupDecision, ...]:
        return tuple(d for d in self.backups if d.action == "keep")

    @property
    def remove(self) -> tuple[BackupDecision, ...]:
        return tuple(d for d in self.backups if d.action == "remove")

    def explain(self) -> list[str]:
        """Lines for `cloudbm retention --dry-run` (and the log of a real run)."""
        head = (
            f"policy {self.policy}, minimum redundancy {self.minimum_redundancy}, "
            f"wal_retention {self.wal_retention}, now {catalog.iso(self.now)}"
        )
        if self.window_start is not None:
            head += f", window starts {catalog.iso(self.window_start)}"
        lines = [head]
        lines.extend(d.line() for d in self.backups)
        if self.wal_note:
            lines.append(f"WAL: {self.wal_note}")
        lines.extend(t.line() for t in self.wal_timelines)
        if self.history_files:
            files = plural(self.history_files, "history file")
            lines.append(f"WAL: keeping {files} (never removed)")
        if self.foreign_files:
            objects = plural(self.foreign_files, "object")
            lines.append(f"WAL: ignoring {objects} that are not WAL file names")
        lines.append(
            f"summary: keeping {plural(len(self.keep), 'backup')}, removing "
            f"{len(self.remove)}; removing {plural(len(self.wal_remove), 'WAL file')}"
        )
        return lines


def plan(
    backups: Sequence[BackupEntry | BackupInfo],
    wal: Iterable[str],
    histories: Mapping[int, list[timeline.Switch]],
    policy: Policy,
    minimum_redundancy: int,
    now: datetime,
    segment_size: int,
    *,
    wal_retention: str = WAL_RETENTION_BACKUPS,
    system_identifier: str | None = None,
    unfinished_grace: timedelta = DEFAULT_UNFINISHED_GRACE,
) -> Plan:
    """Decide which backups and WAL files `policy` removes.

    `wal` holds archived object names (bare or with a key prefix such as
    `wal/0000000100000001/`); the names to remove are returned as given, sorted.
    `histories` maps each timeline with a history file to its parsed entries.
    `system_identifier` is the repository's current system (cloudbm.json), which wins over
    clocks when backups of several systems are present. A STARTED or WAITING_FOR_WALS
    backup that began less than `unfinished_grace` ago is never removed: it may be running.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    check_minimum_redundancy(minimum_redundancy)
    wal_retention = parse_wal_retention(wal_retention)
    walnames.segments_per_log(segment_size)  # fail early on a bad segment size

    infos = [b if isinstance(b, BackupInfo) else BackupInfo.from_entry(b) for b in backups]
    ids = [b.backup_id for b in infos]
    if len(set(ids)) != len(ids):
        raise ValueError("backup ids must be unique")

    window_start: datetime | None = None
    if isinstance(policy, RecoveryWindow):
        try:
            window_start = now - policy.length
        except OverflowError:  # a window longer than the calendar: everything is inside
            window_start = datetime.min.replace(tzinfo=now.tzinfo)

    decided = decide_backups(
        infos, policy, minimum_redundancy, window_start, system_identifier, now - unfinished_grace
    )
    ordered = sorted(
        infos,
        key=lambda b: (b.begin is None, b.begin or now, b.backup_id),
    )
    decisions = tuple(
        BackupDecision(b.backup_id, *decided[b.backup_id], b.status, b.system_identifier)
        for b in ordered
    )

    kept = [b for b in infos if decided[b.backup_id][0] == "keep"]
    newest_tli = max(
        [1, *histories, *(b.timeline for b in infos if b.timeline is not None)],
    )
    swept = sweep_wal(
        wal,
        kept,
        histories,
        segment_size,
        newest_timeline=newest_tli,
        wal_retention=wal_retention,
    )
    return Plan(
        policy=policy,
        minimum_redundancy=minimum_redundancy,
        wal_retention=wal_retention,
        now=now,
        window_start=window_start,
        backups=decisions,
        wal_remove=swept.remove,
        wal_timelines=swept.timelines,
        history_files=swept.history_files,
        foreign_files=swept.foreign_files,
        wal_note=swept.note,
    )
