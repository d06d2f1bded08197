"""Reading the long page header of a WAL segment."""

from __future__ import annotations

import struct

import pytest

from cloudbm.errors import IntegrityError
from cloudbm.pg import walfile, walnames
from cloudbm.pg.timeline import Switch
from cloudbm.pg.walfile import SegmentHeader, read_segment_header


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


# --- does the first page belong to the segment the name names? ------------------------------

MiB = 1 << 20


def _header(tli: int, pageaddr: int, seg_size: int = MiB) -> SegmentHeader:
    return SegmentHeader(0xD110, tli, pageaddr, 42, seg_size, 8192)


def test_a_segment_whose_first_page_is_its_own_matches_its_name() -> None:
    name = walnames.parse("00000001000000000000000A")
    assert walfile.name_mismatch(_header(1, 0xA00000), name) is None
    # 16 MiB segments: the same name is another position.
    assert walfile.name_mismatch(_header(1, 0xA000000, 16 * MiB), name) is None


def test_another_segments_content_is_named_for_what_it_holds() -> None:
    name = walnames.parse("000000010000000000000009")
    why = walfile.name_mismatch(_header(1, 0x500000), name)
    assert why is not None
    assert "0/500000" in why and "000000010000000000000005" in why


def test_a_name_beyond_the_last_segment_of_a_log_is_refused() -> None:
    # With 1 MiB segments a 4 GiB log holds 0x1000 segments: ...00001000 does not exist, and
    # its arithmetic would alias the first segment of the next log.
    name = walnames.parse("000000010000000000001000")
    assert "cannot exist" in (walfile.name_mismatch(_header(1, 1 << 32), name) or "")


@pytest.mark.parametrize("size", [0, 3 * MiB, MiB // 2, 2 << 30])
def test_segment_sizes_postgresql_cannot_use_are_refused(size: int) -> None:
    name = walnames.parse("000000010000000000000000")
    assert "segment size" in (walfile.name_mismatch(_header(1, 0, size), name) or "")


def test_a_first_page_from_a_later_timeline_is_refused() -> None:
    name = walnames.parse("00000002000000000000000A")
    assert "timeline 3" in (walfile.name_mismatch(_header(3, 0xA00000), name) or "")


# PostgreSQL 15 for timeline 3 (seen on a real cluster): 1 -> 2 at 0/A05B78, 2 -> 3 at 0/A07660,
# and the first page of 00000003000000000000000A, copied at promotion, carries timeline 1.
TL3 = [Switch(1, 0xA05B78), Switch(2, 0xA07660)]


def test_the_segment_where_a_timeline_began_may_start_with_an_ancestors_page() -> None:
    name = walnames.parse("00000003000000000000000A")
    header = _header(1, 0xA00000)
    assert walfile.name_mismatch(header, name) is None
    assert walfile.ancestor_mismatch(header, name, TL3) is None


def test_an_ancestors_page_must_be_the_one_the_history_puts_there() -> None:
    name = walnames.parse("00000003000000000000000A")
    why = walfile.ancestor_mismatch(_header(2, 0xA00000), name, TL3)
    assert why is not None and "timeline 1" in why


def test_an_ancestors_page_is_refused_where_the_timeline_had_already_begun() -> None:
    name = walnames.parse("00000003000000000000000B")
    why = walfile.ancestor_mismatch(_header(1, 0xB00000), name, TL3)
    assert why is not None and "began at 0/A07660" in why


def test_an_ancestors_page_is_refused_before_the_timeline_began() -> None:
    name = walnames.parse("000000030000000000000009")
    why = walfile.ancestor_mismatch(_header(1, 0x900000), name, TL3)
    assert why is not None and "begins at 0/A07660" in why


def test_header_facts_travel_as_plain_metadata() -> None:
    header = read_segment_header(_segment(7301234567890123456), "x")
    meta = walfile.header_metadata(header)
    assert all(isinstance(v, str) for v in meta.values())
    back = walfile.header_from_metadata(meta)
    assert back is not None
    assert (back.timeline, back.page_address, back.system_identifier, back.segment_size) == (
        header.timeline,
        header.page_address,
        header.system_identifier,
        header.segment_size,
    )
    assert walfile.header_from_metadata({"cloudbm-kind": "segment"}) is None
    assert walfile.header_from_metadata({**meta, "cloudbm-wal-page-address": "zz"}) is None


BACKUP_HISTORY = (
    b"START WAL LOCATION: 0/900028 (file 000000010000000000000009)\n"
    b"STOP WAL LOCATION: 0/900100 (file 000000010000000000000009)\n"
    b"CHECKPOINT LOCATION: 0/900060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n"
    b"START TIME: 2026-12-02 12:50:13 UTC\nLABEL: pg_basebackup base backup\n"
    b"START TIMELINE: 1\nSTOP TIME: 2026-12-02 12:50:14 UTC\nSTOP TIMELINE: 1\n"
)


def test_a_backup_history_file_postgresql_wrote_matches_its_name() -> None:
    name = walnames.parse("000000010000000000000009.00000028.backup")
    assert walfile.backup_history_mismatch(BACKUP_HISTORY, name, MiB) is None


@pytest.mark.parametrize(
    ("file_name", "data"),
    [
        ("000000010000000000000009.00000030.backup", BACKUP_HISTORY),
        ("000000010000000000000008.00000028.backup", BACKUP_HISTORY),
        ("000000010000000000000009.00000028.backup", b"not a backup history file\n"),
        ("000000010000000000000009.00000028.backup", b""),
    ],
)
def test_a_backup_history_file_that_does_not_match_its_name_is_refused(
    file_name: str, data: bytes
) -> None:
    assert walfile.backup_history_mismatch(data, walnames.parse(file_name), MiB) is not None
