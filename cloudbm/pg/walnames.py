"""WAL file names and segment arithmetic (pure functions, no I/O).

Names PostgreSQL archives: 24-hex segments `TTTTTTTTLLLLLLLLSSSSSSSS`, `<TLI>.history`,
backup history files `<segment>.<offset8>.backup` and `<segment>.partial`.
"""

from __future__ import annotations

from typing import NamedTuple

from cloudbm.errors import ConfigError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_HEX = frozenset("0123456789ABCDEF")


def _hex8(text: str) -> int | None:
    """Eight upper-case hex digits -> int (PostgreSQL writes WAL names in upper case)."""
    if len(text) != 8 or not _HEX.issuperset(text):
        return None
    return int(text, 16)


class WalKind:
    """The kinds of file PostgreSQL archives (plain strings: cheap to import)."""

    SEGMENT = "segment"
    HISTORY = "history"
    BACKUP = "backup"
    PARTIAL = "partial"


class WalName(NamedTuple):
    """A parsed WAL file name. For history files `log` and `seg` are 0."""

    timeline: int
    log: int
    seg: int
    kind: str
    name: str

    @property
    def segment_name(self) -> str:
        """The 24-hex segment a segment/backup/partial name refers to."""
        return segment_name(self.timeline, self.log, self.seg)

    @property
    def has_page_header(self) -> bool:
        """Segments and partial segments start with a long page header."""
        return self.kind in (WalKind.SEGMENT, WalKind.PARTIAL)


def parse(name: str) -> WalName:
    """Parse a file name PostgreSQL hands to archive/restore commands; ConfigError if foreign."""
    parsed = _parse(name)
    if parsed is None:
        raise ConfigError(
            f"{name!r} is not a WAL file name",
            hint="expected a 24-hex segment, TLI.history, SEGMENT.partial or SEGMENT.OFFSET.backup",
        )
    return parsed


def _parse(name: str) -> WalName | None:
    # Plain string checks: no regular expressions to compile on every archive_command call.
    head, dot, rest = name.partition(".")
    if len(head) == 8 and rest == "history":
        tli = _hex8(head)
        return WalName(tli, 0, 0, WalKind.HISTORY, name) if tli else None
    if len(head) != 24:
        return None
    tli, log, seg = _hex8(head[:8]), _hex8(head[8:16]), _hex8(head[16:])
    if not tli or log is None or seg is None:
        return None
    if not dot:
        return WalName(tli, log, seg, WalKind.SEGMENT, name)
    if rest == "partial":
        return WalName(tli, log, seg, WalKind.PARTIAL, name)
    offset, _, suffix = rest.partition(".")
    if suffix == "backup" and _hex8(offset) is not None:
        return WalName(tli, log, seg, WalKind.BACKUP, name)
    return None


def is_wal_name(name: str) -> bool:
    """True if `name` is any file name PostgreSQL archives."""
    return _parse(name) is not None


def is_segment_name(name: str) -> bool:
    """True if `name` is a plain 24-hex segment name."""
    parsed = _parse(name)
    return parsed is not None and parsed.kind == WalKind.SEGMENT


def segment_name(timeline: int, log: int, seg: int) -> str:
    return f"{timeline:08X}{log:08X}{seg:08X}"


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def segments_per_log(segment_size: int) -> int:
    """Segments per 4 GiB 'log' id; depends on wal_segment_size (1 MiB .. 1 GiB)."""
    if segment_size <= 0 or segment_size & (segment_size - 1):
        raise ValueError(f"WAL segment size {segment_size} is not a power of two")
    return 0x100000000 // segment_size


def segment_number(name: WalName, segment_size: int) -> int:
    """Absolute segment number within its timeline."""
    return name.log * segments_per_log(segment_size) + name.seg


def from_number(timeline: int, number: int, segment_size: int) -> str:
    per = segments_per_log(segment_size)
    return segment_name(timeline, number // per, number % per)


def next_segments(name: str, count: int, segment_size: int) -> list[str]:
    """The `count` segment names after `name` on the same timeline."""
    parsed = parse(name)
    start = segment_number(parsed, segment_size)
    return [from_number(parsed.timeline, start + i, segment_size) for i in range(1, count + 1)]


def lsn_to_segment(timeline: int, lsn: int, segment_size: int) -> str:
    """Name of the segment holding byte position `lsn` on `timeline`."""
    return from_number(timeline, lsn // segment_size, segment_size)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer."""
    hi, _, lo = text.strip().partition("/")
    if not lo:
        raise ValueError(f"{text!r} is not an LSN")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
