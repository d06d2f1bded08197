"""What a WAL file says about itself: the long page header that starts every segment, and the
first line of a backup history file. Pure functions (errors are strings or IntegrityError), and
read_wal_file, which reads one file PostgreSQL hands archive_command.

The first page of segment N (of S bytes) on timeline T carries xlp_pageaddr = N * S (the
segment's start LSN), xlp_seg_size = S and xlp_tli = T, with one exception PostgreSQL writes on
purpose: when T began inside segment N, promotion copied the parent's pages before the switch
point into T's segment N, so its first page carries the timeline that wrote that position (the
parent, or an older ancestor if that one also began in N). Seen on PostgreSQL 15: the first
segment of timeline 3, branched off 2 in the segment where 2 branched off 1, starts with a
timeline-1 page.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudbm.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from cloudbm.pg.timeline import Switch
    from cloudbm.pg.walnames import WalName

XLP_LONG_HEADER = 0x0002
# XLogPageHeaderData (24 bytes with alignment padding) + xlp_sysid, xlp_seg_size, xlp_xlog_blcksz
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size
# initdb --wal-segsize accepts powers of two from 1 MiB to 1 GiB.
MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30

# Object metadata wal-push records, so wal-verify can compare a segment with its name without
# downloading (or being able to decrypt) it.
META_PAGE_TLI = "cloudbm-wal-page-tli"
META_PAGE_ADDRESS = "cloudbm-wal-page-address"
META_SEGMENT_SIZE = "cloudbm-wal-segment-size"
META_SYSTEM_IDENTIFIER = "cloudbm-wal-system-identifier"


def read_wal_file(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """The whole file and its identity as read (what a push marker records); ConfigError when
    it cannot be read (PostgreSQL passes %p relative to PGDATA)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            st = os.fstat(fh.fileno())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist",
            hint="archive_command gets %p, a path relative to the data directory",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a WAL file") from None
    except PermissionError:
        raise ConfigError(f"{path} cannot be read: permission denied") from None
    return data, st


@dataclass(frozen=True)
class SegmentHeader:
    magic: int
    timeline: int
    page_address: int
    system_identifier: int
    segment_size: int
    block_size: int


def read_segment_header(data: bytes, name: str) -> SegmentHeader:
    """Parse the long page header at the start of a segment; IntegrityError if it has none."""
    if len(data) < LONG_HEADER_SIZE:
        raise IntegrityError(f"{name} is too short ({len(data)} bytes) to be a WAL segment")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER or magic < 0xD000 or seg_size == 0 or blcksz == 0:
        raise IntegrityError(
            f"{name} does not start with a WAL long page header",
            hint="it is not a PostgreSQL WAL segment, or it is corrupt",
        )
    return SegmentHeader(magic, tli, pageaddr, sysid, seg_size, blcksz)


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _segment_name(tli: int, lsn: int, size: int) -> str:
    per_log = 0x100000000 // size
    number = lsn // size
    return f"{tli:08X}{number // per_log:08X}{number % per_log:08X}"


def valid_segment_size(size: int) -> bool:
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and not size & (size - 1)


def segment_start(name: WalName, size: int) -> int:
    """The LSN where the segment `name` names begins, for `size`-byte segments."""
    return (name.log << 32) + name.seg * size


def name_mismatch(header: SegmentHeader, name: WalName) -> str | None:
    """Why this first page cannot start the segment (or .partial) `name` names, or None.

    A page from an older timeline than the name's passes here; whether the history puts it
    there is `ancestor_mismatch`'s question."""
    size = header.segment_size
    if not valid_segment_size(size):
        return (
            f"its header declares a segment size of {size} bytes, which PostgreSQL cannot use "
            "(powers of two from 1 MiB to 1 GiB)"
        )
    if name.seg >= 0x100000000 // size:
        return f"segment {name.segment_name} cannot exist with {size}-byte segments"
    start = segment_start(name, size)
    if header.page_address != start:
        holds = _segment_name(header.timeline or name.timeline, header.page_address, size)
        return (
            f"its first page is WAL position {_lsn(header.page_address)} (the start of "
            f"{holds}), not {_lsn(start)}: it holds another segment's WAL"
        )
    if not 0 < header.timeline <= name.timeline:
        return (
            f"its first page belongs to timeline {header.timeline}, not to timeline "
            f"{name.timeline} or an ancestor"
        )
    return None


def ancestor_mismatch(header: SegmentHeader, name: WalName, switches: list[Switch]) -> str | None:
    """For a first page older than the name's timeline T: None if T's history (`switches`)
    says T began inside this segment and the page's timeline wrote its start."""
    from cloudbm.pg.timeline import timeline_at

    size = header.segment_size
    start = segment_start(name, size)
    began = switches[-1].lsn if switches else 0
    tli = name.timeline
    if began <= start:
        return (
            f"its first page belongs to timeline {header.timeline}, but timeline {tli} began at "
            f"{_lsn(began)}, so this segment is all its own"
        )
    if began >= start + size:
        return f"timeline {tli} begins at {_lsn(began)}, after this segment ends"
    expected = timeline_at(start, tli, switches)
    if header.timeline != expected:
        return (
            f"its first page belongs to timeline {header.timeline}, but the history of timeline "
            f"{tli} says timeline {expected} wrote {_lsn(start)}"
        )
    return None


def header_metadata(header: SegmentHeader) -> dict[str, str]:
    """The header facts as plain object metadata."""
    return {
        META_PAGE_TLI: str(header.timeline),
        META_PAGE_ADDRESS: _lsn(header.page_address),
        META_SEGMENT_SIZE: str(header.segment_size),
        META_SYSTEM_IDENTIFIER: str(header.system_identifier),
    }


def header_from_metadata(meta: Mapping[str, str]) -> SegmentHeader | None:
    """The header facts wal-push recorded, or None (an older cloudbm, or unreadable values).
    Magic and block size are not recorded (0)."""
    try:
        hi, slash, lo = meta[META_PAGE_ADDRESS].partition("/")
        if not slash:
            return None
        return SegmentHeader(
            magic=0,
            timeline=int(meta[META_PAGE_TLI]),
            page_address=(int(hi, 16) << 32) | int(lo, 16),
            system_identifier=int(meta[META_SYSTEM_IDENTIFIER]),
            segment_size=int(meta[META_SEGMENT_SIZE]),
            block_size=0,
        )
    except (KeyError, ValueError):
        return None


_BACKUP_START = "START WAL LOCATION: "


def backup_history_mismatch(data: bytes, name: WalName, segment_size: int) -> str | None:
    """Why a backup history file does not describe the backup its name says, or None.

    PostgreSQL names it `<start segment>.<start offset>.backup` and writes as its first line
    "START WAL LOCATION: %X/%X (file <start segment>)"."""
    first = data.split(b"\n", 1)[0].decode("ascii", errors="replace")
    lsn_text, _, rest = first.removeprefix(_BACKUP_START).partition(" (file ")
    hi, slash, lo = lsn_text.partition("/")
    try:
        lsn = (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        lsn = -1
    if not first.startswith(_BACKUP_START) or not slash or lsn < 0 or not rest.endswith(")"):
        return f"its first line is not PostgreSQL's {_BACKUP_START.strip()!r} line"
    offset = int(name.name.split(".")[1], 16)
    if rest[:-1] != name.segment_name or lsn % segment_size != offset:
        return (
            f"its {_BACKUP_START.strip()} is {_lsn(lsn)} in {rest[:-1]}, not offset "
            f"{offset:X} of {name.segment_name}"
        )
    if _segment_name(name.timeline, lsn, segment_size) != name.segment_name:
        return f"its {_BACKUP_START.strip()} {_lsn(lsn)} is not in {name.segment_name}"
    return None
