"""Backup decisions: keep or remove each backup, with the reason the plan prints for it.

Precedence, strongest first:

1. a kept (pinned) backup is never removed;
2. a backup that is not DONE is removed only when it began before the newest DONE backup;
3. `minimum_redundancy` keeps the newest DONE backups even if the policy would remove them;
4. the policy (`REDUNDANCY n` or `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`) keeps the rest.

Backups are ordered by start time within one system identifier, never by name; when several
system identifiers are present (pg_upgrade), the current system's backups come first, so older
systems can never push them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cloudbm import catalog
from cloudbm.catalog import BackupEntry
from cloudbm.pg import walnames
from cloudbm.retention.policy import Policy, RecoveryWindow, Redundancy

KEEP_FULL = "full"
KEEP_STANDALONE = "standalone"

# How long a STARTED/WAITING_FOR_WALS backup is presumed to be running (on another host, its
# process cannot be checked) before retention treats it as abandoned.
DEFAULT_UNFINISHED_GRACE = timedelta(hours=24)

Action = Literal["keep", "remove"]


@dataclass(frozen=True)
class BackupInfo:
    """What retention needs to know about one backup (any status)."""

    backup_id: str
    status: str
    begin: datetime | None  # timezone-aware; None when unknown (never removed for age then)
    end: datetime | None = None  # when it became consistent; None = unknown (use begin)
    system_identifier: str = ""
    timeline: int | None = None
    start_lsn: int | None = None
    start_wal: str | None = None
    stop_wal: str | None = None
    keep: str | None = None  # KEEP_FULL, KEEP_STANDALONE or None

    @classmethod
    def from_entry(cls, entry: BackupEntry) -> BackupInfo:
        """From a catalogue entry: the manifest when DONE, started.json otherwise."""
        m = entry.manifest
        if m is not None:
            return cls(
                backup_id=entry.backup_id,
                status=entry.status,
                begin=_time(m.begin_time),
                end=_time(m.end_time),
                system_identifier=m.system_identifier,
                timeline=m.timeline,
                start_lsn=_lsn(m.start_lsn),
                start_wal=m.start_wal or None,
                stop_wal=m.stop_wal or None,
                keep=entry.keep,
            )
        started = entry.started or {}
        return cls(
            backup_id=entry.backup_id,
            status=entry.status,
            begin=_time(str(started.get("begin_time", ""))),
            system_identifier=str(started.get("system_identifier", "") or ""),
            keep=entry.keep,
        )


def _time(text: str) -> datetime | None:
    try:
        ts = catalog.parse_iso(text)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else None


def _lsn(text: str) -> int | None:
    try:
        return walnames.parse_lsn(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class BackupDecision:
    """Keep or remove one backup, and why."""

    backup_id: str
    action: Action
    reason: str
    status: str
    system_identifier: str

    def line(self) -> str:
        verb = "keeping" if self.action == "keep" else "removing"
        return f"{verb} {self.backup_id}: {self.reason}"


def _order_key(b: BackupInfo) -> tuple[datetime, str]:
    assert b.begin is not None
    return (b.begin, b.backup_id)


def plural(n: int, word: str) -> str:
    """'1 backup', '2 backups': the wording of reasons and of the plan's summary."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def decide_backups(
    infos: Sequence[BackupInfo],
    policy: Policy,
    minimum_redundancy: int,
    window_start: datetime | None,
    current_system: str | None,
    running_since: datetime,
) -> dict[str, tuple[Action, str]]:
    """Keep or remove, and why, per backup id, by the precedence above.

    `current_system` is the repository's system identifier when known; a STARTED or
    WAITING_FOR_WALS backup that began at or after `running_since` may still be running.
    """
    decisions: dict[str, tuple[Action, str]] = {}
    dated = [b for b in infos if b.begin is not None]
    for b in infos:
        if b.begin is None and not b.keep:
            decisions[b.backup_id] = ("keep", f"{b.status}, start time unknown: not judged by age")

    # Groups by system identifier, newest system first: the repository's current system when
    # known, else the one whose latest backup began last. Clocks can lie across a pg_upgrade;
    # the descriptor cannot.
    groups: dict[str, list[BackupInfo]] = {}
    for b in sorted(dated, key=_order_key):
        groups.setdefault(b.system_identifier, []).append(b)
    ranked = sorted(
        groups,
        key=lambda s: (s == current_system, _order_key(groups[s][-1])),
        reverse=True,
    )

    # The newest DONE backup over a group and every newer one: a non-DONE backup of an old
    # system is stale once any newer system has a DONE backup that began after it.
    reference: dict[str, BackupInfo] = {}
    best: BackupInfo | None = None
    for sysid in ranked:
        done = [b for b in groups[sysid] if b.status == catalog.DONE]
        if done and (best is None or _order_key(done[-1]) > _order_key(best)):
            best = done[-1]
        if best is not None:
            reference[sysid] = best

    for b in dated:
        if b.keep:
            continue
        if b.status == catalog.DONE:
            continue
        # Unknown system (an old started.json): compare with the newest DONE of any system.
        ref = reference.get(b.system_identifier) if b.system_identifier else best
        assert b.begin is not None
        # STARTED/WAITING may be a run on another host (a standby) that is still copying:
        # only a run older than the grace is presumed dead. INCOMPLETE (its process is known
        # to be gone) and FAILED are finished.
        running = b.status in (catalog.STARTED, catalog.WAITING_FOR_WALS)
        older = ref is not None and ref.begin is not None and b.begin < ref.begin
        if older and running and b.begin >= running_since:
            decisions[b.backup_id] = (
                "keep",
                f"{b.status}, began {catalog.iso(b.begin)}, less than the unfinished-backup "
                "grace ago (may still be running)",
            )
            continue
        if older and ref is not None:
            decisions[b.backup_id] = (
                "remove",
                f"{b.status} and older than the newest DONE backup {ref.backup_id}",
            )
            continue
        where = "newer than the newest DONE backup" if ref is not None else "no DONE backup yet"
        why = "may still be running" if running else "kept for diagnosis"
        decisions[b.backup_id] = ("keep", f"{b.status}, {where} ({why})")

    for b in infos:
        if b.keep:
            decisions[b.backup_id] = ("keep", f"kept (keep {b.keep})")

    # The rotation: DONE backups that are not pinned, newest first, current system first.
    # Pinned backups stand outside it: they neither count toward n nor push anything out.
    rotation = [
        b
        for sysid in ranked
        for b in reversed(groups[sysid])
        if b.status == catalog.DONE and not b.keep
    ]
    kept_by_policy = _policy_prefix(rotation, policy, window_start)
    # Pinned DONE backups of the same order, to say how many newer backups remain.
    order = [b for sysid in ranked for b in reversed(groups[sysid]) if b.status == catalog.DONE]
    position = {b.backup_id: i for i, b in enumerate(order)}
    kept_positions: list[int] = sorted(position[b.backup_id] for b in order if b.keep)

    for i, b in enumerate(rotation):
        if i < len(kept_by_policy):
            decisions[b.backup_id] = ("keep", kept_by_policy[i])
            kept_positions.append(position[b.backup_id])
        elif i < minimum_redundancy:
            decisions[b.backup_id] = (
                "keep",
                f"minimum redundancy {minimum_redundancy} ({policy} alone would remove it)",
            )
            kept_positions.append(position[b.backup_id])
        else:
            newer = sum(1 for p in kept_positions if p < position[b.backup_id])
            remain = plural(newer, "newer backup") + (" remains" if newer == 1 else " remain")
            if isinstance(policy, RecoveryWindow):
                why = f"older than the window and {remain}"
            else:
                why = f"beyond {policy} and {remain}"
            decisions[b.backup_id] = ("remove", why)
    return decisions


def _policy_prefix(
    rotation: Sequence[BackupInfo], policy: Policy, window_start: datetime | None
) -> list[str]:
    """Reasons for the newest backups the policy keeps (a prefix of `rotation`)."""
    if isinstance(policy, Redundancy):
        why = (
            f"the newest DONE backup ({policy})"
            if policy.count == 1
            else f"one of the {policy.count} newest DONE backups ({policy})"
        )
        return [why] * min(policy.count, len(rotation))
    assert window_start is not None
    reasons: list[str] = []
    for b in rotation:
        assert b.begin is not None
        # Recovery to a time T needs a backup that was consistent (ended) by T: a backup that
        # began before the window start but ended inside it cannot reach the start itself.
        consistent_at = b.end or b.begin
        if consistent_at > window_start:
            reasons.append(f"needed for the {policy.label}")
        else:
            reasons.append(
                f"needed for the {policy.label}: the newest backup consistent at its start"
            )
            break
    return reasons
