"""WAL name parsing and segment arithmetic."""

from __future__ import annotations

import pytest

from cloudbm.errors import ConfigError
from cloudbm.pg import walnames
from cloudbm.pg.walnames import WalKind
from cloudbm.repository.layout import wal_key


@pytest.mark.parametrize(
    ("name", "kind", "tli"),
    [
        ("000000010000000A000000FE", WalKind.SEGMENT, 1),
        ("00000002.history", WalKind.HISTORY, 2),
        ("000000010000000A000000FE.00000028.backup", WalKind.BACKUP, 1),
        ("000000030000000A000000FE.partial", WalKind.PARTIAL, 3),
    ],
)
def test_every_archived_file_kind_parses(name: str, kind: str, tli: int) -> None:
    parsed = walnames.parse(name)
    assert parsed.kind == kind
    assert parsed.timeline == tli
    assert parsed.name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "RECOVERYXLOG",
        "000000010000000A000000fe",
        "000000000000000A000000FE",
        "00000000.history",
        "000000010000000A000000FE.backup",
        "../000000010000000A000000FE",
        "000000010000000A000000FE0",
    ],
)
def test_foreign_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        walnames.parse(name)


def test_next_segment_wraps_the_log_with_16mib_segments() -> None:
    assert walnames.next_segments("000000010000000A000000FE", 2, 16 << 20) == [
        "000000010000000A000000FF",
        "000000010000000B00000000",
    ]


def test_next_segment_depends_on_segment_size() -> None:
    # 1 MiB segments: 4096 per 4 GiB log, so 0x...FF is not the last one.
    assert walnames.next_segments("000000010000000A000000FF", 1, 1 << 20) == [
        "000000010000000A00000100"
    ]
    assert walnames.next_segments("000000010000000A00000FFF", 1, 1 << 20) == [
        "000000010000000B00000000"
    ]


def test_lsn_maps_to_its_segment() -> None:
    lsn = walnames.parse_lsn("A/FE000028")
    assert walnames.lsn_to_segment(1, lsn, 16 << 20) == "000000010000000A000000FE"
    assert walnames.format_lsn(lsn) == "A/FE000028"


def test_segments_group_by_timeline_and_log_and_history_sits_at_the_top() -> None:
    assert wal_key(walnames.parse("000000010000000A000000FE")) == (
        "wal/000000010000000A/000000010000000A000000FE"
    )
    assert wal_key(walnames.parse("00000002.history")) == "wal/00000002.history"
    assert wal_key(walnames.parse("000000010000000A000000FE.00000028.backup")).startswith(
        "wal/000000010000000A/"
    )
