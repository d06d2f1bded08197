"""Timeline history and the WAL a recovery needs (pure functions over names and LSNs).

A history file `<TLI>.history` lists, one line per ancestor, `parentTLI  switchpoint  reason`.
During recovery PostgreSQL reads each segment from the newest timeline of the target's ancestry
whose start is at or before that segment, so the segment holding a switch point comes from the
new timeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloudbm.pg import walnames


@dataclass(frozen=True)
class Switch:
    """`parent` timeline ended at `lsn`, where its child began."""

    parent: int
    lsn: int


def parse_history(text: str) -> list[Switch]:
    """Entries of a history file, oldest first; comments and blank lines ignored."""
    out: list[Switch] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"malformed history line {raw!r}")
        out.append(Switch(int(fields[0]), walnames.parse_lsn(fields[1])))
    return out


@dataclass(frozen=True)
class TimelineSpan:
    """A piece of the path from the backup to the target: `timeline` from `begin` (inclusive)
    up to `end` (exclusive; None = open-ended)."""

    timeline: int
    begin: int
    end: int | None


def ancestry(target: int, histories: Mapping[int, list[Switch]]) -> list[TimelineSpan]:
    """Timelines that lead to `target`, oldest first, with where each begins and ends."""
    switches = histories.get(target, [])
    spans: list[TimelineSpan] = []
    begin = 0
    for sw in switches:
        spans.append(TimelineSpan(sw.parent, begin, sw.lsn))
        begin = sw.lsn
    spans.append(TimelineSpan(target, begin, None))
    return spans


def reachable(
    backup_timeline: int, start_lsn: int, target: int, histories: Mapping[int, list[Switch]]
) -> bool:
    """Can recovery from a backup on `backup_timeline` at `start_lsn` follow to `target`?"""
    for span in ancestry(target, histories):
        if span.timeline == backup_timeline:
            return span.end is None or start_lsn < span.end
    return False


def latest_timeline(
    backup_timeline: int, start_lsn: int, histories: Mapping[int, list[Switch]]
) -> int:
    """The highest timeline reachable from the backup (recovery_target_timeline = 'latest')."""
    best = backup_timeline
    for tli in histories:
        if tli > best and reachable(backup_timeline, start_lsn, tli, histories):
            best = tli
    return best


@dataclass(frozen=True)
class WalGap:
    """Segments recovery needs that the archive lacks."""

    first: str
    last: str
    count: int

    def __str__(self) -> str:
        if self.count == 1:
            return self.first
        return f"{self.first} .. {self.last} ({self.count} segments)"


def needed_segments(
    start_lsn: int,
    end_lsn: int | None,
    target: int,
    histories: Mapping[int, list[Switch]],
    segment_size: int,
    archived: Iterable[str],
) -> tuple[list[str], list[WalGap]]:
    """Segment names recovery will read from `start_lsn` to `end_lsn` (None: as far as the
    archive continues on the path to `target`), and the gaps among them.

    With no end, the path is followed while segments exist; the first missing segment ends it,
    unless an archived segment lies beyond it on the same path (then it is a gap).
    """
    have = set(archived)
    spans = ancestry(target, histories)
    names: list[str] = []
    start_seg = start_lsn // segment_size
    last_seg = None if end_lsn is None else end_lsn // segment_size
    # Highest segment number archived on each timeline of the path, to tell gaps from the end.
    highest: dict[int, int] = {}
    timelines = {s.timeline for s in spans}
    for name in have:
        if len(name) == 24:
            parsed = walnames.parse(name)
            if parsed.timeline in timelines:
                n = walnames.segment_number(parsed, segment_size)
                highest[parsed.timeline] = max(highest.get(parsed.timeline, -1), n)
    for i, span in enumerate(spans):
        # The switch segment is read from the child timeline.
        first = max(start_seg, span.begin // segment_size)
        last = None if span.end is None else span.end // segment_size - 1
        if last_seg is not None:
            last = last_seg if last is None else min(last, last_seg)
        if last is None:
            beyond = max([highest.get(s.timeline, -1) for s in spans[i:]] + [-1])
            last = beyond
        for n in range(first, last + 1):
            names.append(walnames.from_number(span.timeline, n, segment_size))
        if last_seg is not None and last >= last_seg:
            break
    gaps: list[WalGap] = []
    run: list[str] = []
    for name in names:
        if name in have:
            if run:
                gaps.append(WalGap(run[0], run[-1], len(run)))
                run = []
        else:
            run.append(name)
    if run:
        gaps.append(WalGap(run[0], run[-1], len(run)))
    return names, gaps
