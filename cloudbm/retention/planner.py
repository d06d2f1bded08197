"""Retention planning: which backups and which WAL files a policy keeps, and why.

A pure function of plain data — the catalogue, the names of the archived WAL files, the
timeline histories, the policy and `now` — so every rule has a table test and
`cloudbm retention --dry-run` prints exactly what `cloudbm retention` then does. Nothing here
reads storage or the clock. docs/retention.md describes the rules for operators.

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

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cloudbm import catalog
from cloudbm.catalog import BackupEntry
from cloudbm.errors import ConfigError
from cloudbm.pg import timeline, walnames

KEEP_FULL = "full"
KEEP_STANDALONE = "standalone"

WAL_RETENTION_BACKUPS = "backups"
WAL_RETENTION_ALL = "all"
WAL_RETENTION_CHOICES = (WAL_RETENTION_BACKUPS, WAL_RETENTION_ALL)

# How long a STARTED/WAITING_FOR_WALS backup is presumed to be running (on another host, its
# process cannot be checked) before retention treats it as abandoned.
DEFAULT_UNFINISHED_GRACE = timedelta(hours=24)
DAYS_PER_MONTH = 30  # a fixed month: a window must not change length with the calendar

Action = Literal["keep", "remove"]

# --- policies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Redundancy:
    """`REDUNDANCY n`: keep the n newest DONE backups."""

    count: int

    def __str__(self) -> str:
        return f"REDUNDANCY {self.count}"


@dataclass(frozen=True)
class RecoveryWindow:
    """`RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`: recovery to any point of the last n units."""

    count: int
    unit: Literal["DAYS", "WEEKS", "MONTHS"]

    @property
    def length(self) -> timedelta:
        per = {"DAYS": 1, "WEEKS": 7, "MONTHS": DAYS_PER_MONTH}[self.unit]
        return timedelta(days=self.count * per)

    @property
    def label(self) -> str:
        """'7-day window', as plan reasons say it."""
        return f"{self.count}-{self.unit[:-1].lower()} window"

    def __str__(self) -> str:
        return f"RECOVERY WINDOW OF {self.count} {self.unit}"


Policy = Redundancy | RecoveryWindow

_ACCEPTED = "'REDUNDANCY n' or 'RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS' with n >= 1"
_REDUNDANCY = re.compile(r"\s*REDUNDANCY\s+([0-9]+)\s*", re.IGNORECASE | re.ASCII)
_WINDOW = re.compile(
    r"\s*RECOVERY\s+WINDOW\s+OF\s+([0-9]+)\s+(DAY|WEEK|MONTH)S?\s*", re.IGNORECASE | re.ASCII
)


def parse_policy(text: str) -> Policy:
    """`retention_policy` text -> Policy; ConfigError (one line, naming the text) otherwise."""
    if m := _REDUNDANCY.fullmatch(text):
        count = int(m[1])
        if count >= 1:
            return Redundancy(count)
    elif m := _WINDOW.fullmatch(text):
        count = int(m[1])
        if count >= 1:
            unit = m[2].upper()
            if unit == "DAY":
                return RecoveryWindow(count, "DAYS")
            if unit == "WEEK":
                return RecoveryWindow(count, "WEEKS")
            return RecoveryWindow(count, "MONTHS")
    # repr() keeps a stray newline or tab in the value from breaking the one-line message.
    raise ConfigError(f"retention_policy {text!r} is not valid: expected {_ACCEPTED}")


def parse_wal_retention(text: str) -> str:
    """`wal_retention`: 'backups' (remove WAL no kept backup needs) or 'all' (never remove WAL)."""
    value = text.strip().lower()
    if value not in WAL_RETENTION_CHOICES:
        raise ConfigError(
            f"wal_retention {text!r} is not valid: expected 'backups' (default) or 'all'"
        )
    return value


def check_minimum_redundancy(value: int) -> int:
    """`minimum_redundancy` must be a whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"minimum_redundancy {value!r} is not valid: expected an integer >= 0")
    return value


# --- input ---------------------------------------------------------------------------------


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


# --- output --------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TimelineWal:
    """What happens to the archived files of one timeline (history files excluded)."""

    timeline: int
    files: int  # segments, .partial and .backup files seen on this timeline
    removed: int
    first_removed: str | None
    last_removed: str | None
    keep_from: str | None  # the oldest segment name kept by the cut, when there is one
    reason: str

    def line(self) -> str:
        if self.removed:
            span = self.first_removed
            if self.removed > 1:
                span = f"{self.first_removed} .. {self.last_removed}"
            return (
                f"WAL timeline {self.timeline}: removing {self.removed} of {self.files} files "
                f"({span}): {self.reason}"
            )
        return f"WAL timeline {self.timeline}: keeping all {self.files} files: {self.reason}"


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
            files = _plural(self.history_files, "history file")
            lines.append(f"WAL: keeping {files} (never removed)")
        if self.foreign_files:
            objects = _plural(self.foreign_files, "object")
            lines.append(f"WAL: ignoring {objects} that are not WAL file names")
        lines.append(
            f"summary: keeping {_plural(len(self.keep), 'backup')}, removing "
            f"{len(self.remove)}; removing {_plural(len(self.wal_remove), 'WAL file')}"
        )
        return lines


# --- backups -------------------------------------------------------------------------------


def _order_key(b: BackupInfo) -> tuple[datetime, str]:
    assert b.begin is not None
    return (b.begin, b.backup_id)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _decide_backups(
    infos: Sequence[BackupInfo],
    policy: Policy,
    minimum_redundancy: int,
    window_start: datetime | None,
    current_system: str | None,
    running_since: datetime,
) -> dict[str, tuple[Action, str]]:
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
            remain = _plural(newer, "newer backup") + (" remains" if newer == 1 else " remain")
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


# --- WAL -----------------------------------------------------------------------------------

_HEXCHARS = "0123456789ABCDEF"
_ALL = "\x7f"  # sorts after every WAL name: "remove everything below" = remove all
_NONE = ""  # sorts before every WAL name: nothing is below it


class _Rule:
    """How one timeline's files are judged in the single pass over the names."""

    __slots__ = (
        "cut",
        "files",
        "islands_hi",
        "islands_lo",
        "keep_from",
        "kept_reason",
        "reason",
        "removed",
    )

    def __init__(
        self, cut: str, reason: str, keep_from: str | None, kept_reason: str | None = None
    ) -> None:
        self.cut = cut  # files whose 24-hex segment sorts below this are removed
        self.reason = reason  # why files go (or, for a keep-all rule, why they all stay)
        self.kept_reason = kept_reason or reason  # the line's reason when nothing goes
        self.keep_from = keep_from
        self.islands_lo: list[str] = []  # standalone keeps: [lo, hi] ranges still kept
        self.islands_hi: list[str] = []
        self.files = 0
        self.removed: list[str] = []


@dataclass(frozen=True)
class _Anchor:
    """A kept backup from whose start every later WAL on its reachable timelines is kept."""

    backup_id: str
    timeline: int
    start_lsn: int
    start_seg: int


def _segment_of(name: str | None) -> walnames.WalName | None:
    if not name:
        return None
    try:
        return walnames.parse(name)
    except ConfigError:
        return None


def _wal_rules(
    kept: Sequence[BackupInfo],
    histories: Mapping[int, list[timeline.Switch]],
    segment_size: int,
) -> tuple[dict[int, tuple[int, str]], dict[int, list[tuple[int, int, str]]], str | None]:
    """Per timeline the oldest segment number a kept backup needs (and which backup), the
    standalone islands, or a note saying why no WAL may be removed at all."""
    anchors: list[_Anchor] = []
    islands: dict[int, list[tuple[int, int, str]]] = {}
    for b in kept:
        if b.status != catalog.DONE:
            continue  # not usable for recovery: needs no WAL
        start = _segment_of(b.start_wal)
        if start is None and b.timeline is not None and b.start_lsn is not None:
            start = walnames.parse(walnames.lsn_to_segment(b.timeline, b.start_lsn, segment_size))
        if start is None:
            return {}, {}, f"backup {b.backup_id} has no start WAL position: all WAL kept"
        start_seg = walnames.segment_number(start, segment_size)
        if b.keep == KEEP_STANDALONE:
            stop = _segment_of(b.stop_wal) or start
            lo, hi = sorted((start_seg, walnames.segment_number(stop, segment_size)))
            # A backup from a standby promoted mid-run stops on the next timeline.
            for tli in {start.timeline, stop.timeline}:
                islands.setdefault(tli, []).append((lo, hi, b.backup_id))
            continue
        lsn = b.start_lsn if b.start_lsn is not None else start_seg * segment_size
        anchors.append(_Anchor(b.backup_id, start.timeline, lsn, start_seg))
    if not anchors:
        return {}, islands, "no kept backup anchors WAL retention: all WAL kept"

    cuts: dict[int, tuple[int, str]] = {}
    targets = set(histories) | {a.timeline for a in anchors}
    for a in anchors:
        for target in targets:
            if not timeline.reachable(a.timeline, a.start_lsn, target, histories):
                continue
            on_path = False
            for span in timeline.ancestry(target, histories):
                on_path = on_path or span.timeline == a.timeline
                if not on_path:
                    continue  # timelines before the backup's own are never read from it
                # The backup's own timeline is needed from its start whatever the history
                # says; each later one from the segment holding its switch point (recovery
                # reads the switch segment from the child).
                if span.timeline == a.timeline:
                    first = a.start_seg
                else:
                    first = max(a.start_seg, span.begin // segment_size)
                if span.timeline not in cuts or first < cuts[span.timeline][0]:
                    cuts[span.timeline] = (first, a.backup_id)
    return cuts, islands, None


def _make_rule(
    tli: int,
    cuts: Mapping[int, tuple[int, str]],
    islands: Mapping[int, list[tuple[int, int, str]]],
    histories: Mapping[int, list[timeline.Switch]],
    newest_tli: int,
    segment_size: int,
) -> _Rule:
    if tli in cuts:
        first, backup_id = cuts[tli]
        keep_from = walnames.from_number(tli, first, segment_size)
        rule = _Rule(
            keep_from,
            f"older than {keep_from}, the first segment backup {backup_id} needs",
            keep_from,
            f"backup {backup_id} needs them from {keep_from}",
        )
    elif tli != 1 and tli not in histories:
        # Without its history file the timeline's origin is unknown: it may be the live one.
        rule = _Rule(_NONE, f"no history file for timeline {tli}, so its origin is unknown", None)
    elif tli >= newest_tli:
        rule = _Rule(_NONE, "newest timeline: the live one until a backup reaches it", None)
    else:
        rule = _Rule(_ALL, f"no kept backup can reach timeline {tli}", None)
    ranges = sorted(islands.get(tli, []))
    if ranges and rule.cut:
        owners = ", ".join(sorted({backup_id for _lo, _hi, backup_id in ranges}))
        rule.reason += f" (standalone {owners} keep their own start..stop range)"
    reach = -1
    for lo, hi, _backup_id in ranges:
        # A running maximum of the ends: one bisect on the starts then answers "inside any".
        reach = max(reach, hi)
        rule.islands_lo.append(walnames.from_number(tli, lo, segment_size))
        rule.islands_hi.append(walnames.from_number(tli, reach, segment_size))
    return rule


def _scan_wal(
    wal: Iterable[str], make: Callable[[int], _Rule]
) -> tuple[dict[str, _Rule], int, int]:
    """One pass over the names: per name a few string operations and one comparison, because
    fixed-width upper-case hex sorts like the segment numbers it spells."""
    rules: dict[str, _Rule] = {}
    history = foreign = 0
    hexchars = _HEXCHARS
    # A listing arrives grouped by timeline, so the current timeline's rule lives in locals
    # and is looked up again only when the timeline changes.
    prefix = ""
    rule = _Rule(_NONE, "", None)  # a placeholder until the first name
    cut, lows, highs, remove, seen = rule.cut, rule.islands_lo, rule.islands_hi, None, 0
    for name in wal:
        base = name.rpartition("/")[2]
        if len(base) == 24:
            if base.strip(hexchars):  # not all upper-case hex (strip is one C loop)
                foreign += 1
                continue
            head = base
        elif not walnames.is_wal_name(base):
            foreign += 1
            continue
        elif base.endswith(".history"):
            history += 1
            continue
        else:
            head = base[:24]  # .partial and .backup files follow their segment
        if not prefix or not head.startswith(prefix):
            rule.files += seen
            seen = 0
            prefix = head[:8]
            found = rules.get(prefix)
            if found is None:
                found = rules[prefix] = make(int(prefix, 16))
            rule = found
            cut, lows, highs = rule.cut, rule.islands_lo, rule.islands_hi
            remove = rule.removed.append
        seen += 1
        if head < cut:
            if lows:
                i = bisect_right(lows, head) - 1
                if i >= 0 and head <= highs[i]:
                    continue  # inside a standalone backup's start..stop range
            assert remove is not None
            remove(name)
    rule.files += seen
    zero = rules.pop("00000000", None)  # timeline 0 does not exist: not a WAL name
    if zero is not None:
        foreign += zero.files
    return rules, history, foreign


# --- the planner ---------------------------------------------------------------------------


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

    decided = _decide_backups(
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
    note: str | None = None
    cuts: dict[int, tuple[int, str]] = {}
    islands: dict[int, list[tuple[int, int, str]]] = {}
    if wal_retention == WAL_RETENTION_ALL:
        note = "wal_retention = all: WAL is never removed"
    else:
        cuts, islands, note = _wal_rules(kept, histories, segment_size)
    newest_tli = max(
        [1, *histories, *(b.timeline for b in infos if b.timeline is not None)],
    )

    def make(tli: int) -> _Rule:
        if note:
            return _Rule(_NONE, note, None)
        return _make_rule(tli, cuts, islands, histories, newest_tli, segment_size)

    rules, history, foreign = _scan_wal(wal, make)

    removed: list[str] = []
    summaries: list[TimelineWal] = []
    for prefix in sorted(rules):
        rule = rules[prefix]
        names = rule.removed
        removed.extend(names)
        first = min(names) if names else None
        last = max(names) if names else None
        summaries.append(
            TimelineWal(
                timeline=int(prefix, 16),
                files=rule.files,
                removed=len(names),
                first_removed=_base(first),
                last_removed=_base(last),
                keep_from=rule.keep_from,
                reason=rule.reason if names else rule.kept_reason,
            )
        )
    removed.sort()
    return Plan(
        policy=policy,
        minimum_redundancy=minimum_redundancy,
        wal_retention=wal_retention,
        now=now,
        window_start=window_start,
        backups=decisions,
        wal_remove=tuple(removed),
        wal_timelines=tuple(summaries),
        history_files=history,
        foreign_files=foreign,
        wal_note=note,
    )


def _base(name: str | None) -> str | None:
    return None if name is None else name[name.rfind("/") + 1 :]


__all__ = [
    "DAYS_PER_MONTH",
    "KEEP_FULL",
    "KEEP_STANDALONE",
    "WAL_RETENTION_ALL",
    "WAL_RETENTION_BACKUPS",
    "BackupDecision",
    "BackupInfo",
    "Plan",
    "Policy",
    "RecoveryWindow",
    "Redundancy",
    "TimelineWal",
    "check_minimum_redundancy",
    "parse_policy",
    "parse_wal_retention",
    "plan",
]
