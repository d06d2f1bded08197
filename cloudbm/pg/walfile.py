"""Reading what a WAL segment says about itself: the long page header of its first page."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cloudbm.errors import IntegrityError

XLP_LONG_HEADER = 0x0002
# XLogPageHeaderData (24 bytes with alignment padding) + xlp_sysid, xlp_seg_size, xlp_xlog_blcksz
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size


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
