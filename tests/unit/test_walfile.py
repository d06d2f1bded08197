"""Reading the long page header of a WAL segment."""

from __future__ import annotations

import struct

import pytest

from cloudbm.errors import IntegrityError
from cloudbm.pg.walfile import read_segment_header


def _segment(sysid: int, seg_size: int = 1 << 20, info: int = 0x0002) -> bytes:
    header = struct.pack("<HHIQI4xQII", 0xD110, info, 1, 0, 0, sysid, seg_size, 8192)
    return header + bytes(seg_size - len(header))


def test_system_identifier_and_segment_size_are_read() -> None:
    h = read_segment_header(_segment(7301234567890123456), "x")
    assert h.system_identifier == 7301234567890123456
    assert h.segment_size == 1 << 20
    assert h.block_size == 8192


def test_a_page_without_long_header_is_not_a_segment() -> None:
    with pytest.raises(IntegrityError):
        read_segment_header(_segment(1, info=0), "x")


def test_a_short_file_is_not_a_segment() -> None:
    with pytest.raises(IntegrityError):
        read_segment_header(b"\x10\xd1", "x")
