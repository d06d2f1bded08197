"""Timeline history files: what PostgreSQL writes, what it would refuse, and ancestry."""

from __future__ import annotations

import pytest

from cloudbm.pg import timeline
from cloudbm.pg.timeline import HistoryError, Switch
from cloudbm.pg.walnames import parse_lsn

# Written by PostgreSQL 15 for timeline 3 (recovered along timeline 2 and promoted): the
# parent's file copied verbatim, then a blank line and one new entry.
PG_WROTE_TL3 = b"1\t0/A05B78\tno recovery target specified\n\n2\t0/A07660\tafter LSN 0/A05BA8\n"


def test_the_history_postgresql_wrote_parses_for_its_own_timeline() -> None:
    assert timeline.read_history(PG_WROTE_TL3, 3) == [
        Switch(1, parse_lsn("0/A05B78")),
        Switch(2, parse_lsn("0/A07660")),
    ]


def test_comments_lower_case_hex_and_a_reason_in_another_encoding_are_accepted() -> None:
    data = b'# copied\n  1\t0/a05b78\tat restore point "vor \xe4nderung"\n'
    assert timeline.read_history(data, 2) == [Switch(1, 0xA05B78)]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "no entry"),
        (b"# only a comment\n\n", "no entry"),
        (b"hello, this is not a history file\n", "timeline ID"),
        (b"\x00\x01\x02binary", "timeline ID"),
        (b"1\n", "switch point"),
        (b"1\tnot-an-lsn\treason\n", "switch point"),
        (b"1\t0/A05B78/3\treason\n", "switch point"),
        (b"1\t123456789/0\treason\n", "switch point"),
        (b"-1\t0/A05B78\treason\n", "timeline ID"),
        (b"0\t0/A05B78\treason\n", "timeline ID"),
        (b"1\t0/0\treason\n", "switch point"),
        (b"2\t0/3000000\tr\n1\t0/4000000\tr\n", "increasing"),
        (b"1\t0/3000000\tr\n1\t0/4000000\tr\n", "increasing"),
        (b"1\t0/5000000\tr\n2\t0/4000000\tr\n", "decrease"),
    ],
)
def test_what_postgresql_never_writes_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(HistoryError, match=why):
        timeline.read_history(data, 9)


def test_equal_switch_points_are_possible_and_accepted() -> None:
    # Promoted again before writing any WAL of its own: the child starts where its parent did.
    data = b"1\t0/3000000\tr\n2\t0/3000000\tr\n"
    assert [s.parent for s in timeline.read_history(data, 3)] == [1, 2]


@pytest.mark.parametrize("name_tli", [1, 2])
def test_a_parent_must_be_older_than_the_timeline_the_file_is_named_for(name_tli: int) -> None:
    with pytest.raises(HistoryError, match="lower than"):
        timeline.read_history(b"1\t0/3000000\tr\n2\t0/4000000\tr\n", name_tli)


def test_switch_metadata_round_trips_and_is_checked_like_the_file() -> None:
    switches = timeline.read_history(PG_WROTE_TL3, 3)
    text = timeline.format_switches(switches)
    assert text == "1:0/A05B78,2:0/A07660"
    assert timeline.parse_switches(text, 3) == switches
    with pytest.raises(HistoryError):
        timeline.parse_switches("", 3)  # what wal-push stored for a file it could not parse
    with pytest.raises(HistoryError):
        timeline.parse_switches(text, 2)


def test_the_timeline_at_a_position_follows_the_ancestry() -> None:
    switches = timeline.read_history(PG_WROTE_TL3, 3)
    assert timeline.timeline_at(0xA00000, 3, switches) == 1  # first page of 3/A: timeline 1's
    assert timeline.timeline_at(0xA05B78, 3, switches) == 2
    assert timeline.timeline_at(0xA07660, 3, switches) == 3
    assert timeline.timeline_at(0xB00000, 3, switches) == 3
