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


class HistoryError(ValueError):
    """Text that is not a timeline history PostgreSQL could have written (for that timeline)."""


_DIGITS = frozenset("0123456789")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_MAX_TLI = 0xFFFFFFFF


def _switch_point(text: str) -> int | None:
    """'0/A05B78' -> int, as PostgreSQL's "%X/%X" reads it (two 32-bit hex halves)."""
    hi, slash, lo = text.partition("/")
    for half in (hi, lo):
        if not slash or not 1 <= len(half) <= 8 or not _HEXDIGITS.issuperset(half):
            return None
    return (int(hi, 16) << 32) | int(lo, 16)


def parse_history(text: str, timeline: int | None = None) -> list[Switch]:
    """Entries of a history file, oldest first; comments and blank lines ignored.

    HistoryError for anything PostgreSQL never writes: each entry is "parentTLI switchpoint
    [reason]" (decimal, then hex "hi/lo"), parents strictly increasing (PostgreSQL refuses
    others), switch points non-decreasing and valid. With `timeline` (the TLI the file is
    named for) there must be at least one entry and every parent must be older.
    """
    out: list[Switch] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if not _DIGITS.issuperset(fields[0]) or not 0 < int(fields[0]) <= _MAX_TLI:
            raise HistoryError(f"line {line[:60]!r} does not start with a timeline ID")
        lsn = _switch_point(fields[1]) if len(fields) > 1 else None
        if not lsn:
            raise HistoryError(f"line {line[:60]!r} has no valid switch point after its TLI")
        switch = Switch(int(fields[0]), lsn)
        if out and switch.parent <= out[-1].parent:
            raise HistoryError("timeline IDs are not in increasing sequence")
        if out and switch.lsn < out[-1].lsn:
            raise HistoryError("switch points decrease")
        out.append(switch)
    if timeline is not None:
        if not out:
            raise HistoryError("it has no entry (PostgreSQL writes at least the parent's)")
        if out[-1].parent >= timeline:
            raise HistoryError(
                f"it names timeline {out[-1].parent} as an ancestor, which is not lower than "
                f"{timeline}, the timeline it is named for"
            )
    return out


def read_history(data: bytes, timeline: int) -> list[Switch]:
    """Parse the bytes of `<timeline>.history`. The reason column may be in any server
    encoding (restore point names), so only the ASCII fields are interpreted."""
    return parse_history(data.decode("utf-8", errors="surrogateescape"), timeline)


def format_switches(switches: Iterable[Switch]) -> str:
    """Switch points as plain object metadata: "parent:lsn,..."."""
    return ",".join(f"{sw.parent}:{walnames.format_lsn(sw.lsn)}" for sw in switches)


def parse_switches(text: str, timeline: int) -> list[Switch]:
    """Inverse of `format_switches`, checked like the file it came from (HistoryError)."""
    lines = []
    for item in text.split(","):
        parent, _, lsn = item.partition(":")
        lines.append(f"{parent} {lsn}")
    return parse_history("\n".join(lines), timeline)


def timeline_at(lsn: int, target: int, switches: list[Switch]) -> int:
    """The timeline that wrote position `lsn` on the way to `target` (whose history is
    `switches`): where recovery to `target` reads it from."""
    for span in ancestry(target, {target: switches}):
        if span.end is None or lsn < span.end:
            return span.timeline
    return target


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
