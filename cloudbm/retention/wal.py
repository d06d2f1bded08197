"""The WAL sweep: which archived WAL files no kept backup needs, decided per timeline.

Each kept DONE backup needs WAL from its start on its own timeline and, on every later timeline
recovery can reach from it (through the timeline histories), from the switch point on; a
`keep standalone` backup keeps only its own start..stop range. Below the first segment a kept
backup needs, a timeline's files go; a timeline no kept backup reaches goes whole unless it may
be the live one (the newest, or one whose history file is missing). History files are never
removed and names that are not WAL file names are ignored.

A listing can hold millions of names, so they are judged in one pass: fixed-width upper-case
hex sorts like the segment numbers it spells, so each name costs a few string operations.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cloudbm import catalog
from cloudbm.errors import ConfigError
from cloudbm.pg import timeline, walnames
from cloudbm.retention.backups import KEEP_STANDALONE, BackupInfo
from cloudbm.retention.policy import WAL_RETENTION_ALL

_HEXCHARS = "0123456789ABCDEF"
_ALL = "\x7f"  # sorts after every WAL name: "remove everything below" = remove all
_NONE = ""  # sorts before every WAL name: nothing is below it


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
class WalSweep:
    """The outcome of `sweep_wal`: the names to remove and what happens on each timeline."""

    remove: tuple[str, ...]  # sorted, as given
    timelines: tuple[TimelineWal, ...]
    history_files: int  # .history files seen; never removed
    foreign_files: int  # names that are not WAL file names; never removed
    note: str | None  # why no WAL is removed at all, when that is the case


def sweep_wal(
    wal: Iterable[str],
    kept: Sequence[BackupInfo],
    histories: Mapping[int, list[timeline.Switch]],
    segment_size: int,
    *,
    newest_timeline: int,
    wal_retention: str,
) -> WalSweep:
    """Judge every name in `wal` (read once) against the backups the plan keeps.

    `kept` may hold backups of any status (only DONE ones need WAL); `newest_timeline` is the
    newest timeline any backup or history file knows of, presumed to be the live one.
    """
    note: str | None = None
    cuts: dict[int, tuple[int, str]] = {}
    islands: dict[int, list[tuple[int, int, str]]] = {}
    if wal_retention == WAL_RETENTION_ALL:
        note = "wal_retention = all: WAL is never removed"
    else:
        cuts, islands, note = _wal_rules(kept, histories, segment_size)

    def make(tli: int) -> _Rule:
        if note:
            return _Rule(_NONE, note, None)
        return _make_rule(tli, cuts, islands, histories, newest_timeline, segment_size)

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
    return WalSweep(tuple(removed), tuple(summaries), history, foreign, note)


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


def _base(name: str | None) -> str | None:
    return None if name is None else name[name.rfind("/") + 1 :]
