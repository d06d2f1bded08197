"""Recovery targets: table cases for what is accepted (and written) and what is refused, and
for what a backup and its archive can reach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cloudbm.errors import EXIT_USAGE, ConfigError
from cloudbm.pg import walnames
from cloudbm.pg.recovery_conf import RecoveryConfig, RecoveryTarget, quote, settings
from cloudbm.pg.recovery_target import (
    CLOCK_ALLOWANCE,
    Reach,
    check_name,
    earliest_time,
    format_time,
    normalise,
    parse_lsn,
    parse_time,
    parse_timeline,
    parse_xid,
    unreachable,
)

# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant", "written"),
    [
        ("2026-11-22 14:02:59+00", "2026-11-22T14:02:59+00:00", "2026-11-22 14:02:59+00"),
        ("2026-11-22T14:02:59Z", "2026-11-22T14:02:59+00:00", "2026-11-22 14:02:59+00"),
        ("2026-11-22 14:02:59 UTC", "2026-11-22T14:02:59+00:00", "2026-11-22 14:02:59+00"),
        ("2026-11-22 14:02:59 gmt", "2026-11-22T14:02:59+00:00", "2026-11-22 14:02:59+00"),
        ("2026-11-22 14:02+01", "2026-11-22T13:02:00+00:00", "2026-11-22 14:02:00+01:00"),
        ("2026-11-22 14:02:59.5-05:30", "2026-11-22T19:32:59.5+00:00", None),
        ("2026-11-22 14:02:59.123456+0530", "2026-11-22T08:32:59.123456+00:00", None),
        (" 2026-11-22 14:02:59+00 ", "2026-11-22T14:02:59+00:00", "2026-11-22 14:02:59+00"),
    ],
)
def test_time_with_a_zone_is_accepted_and_written_canonically(
    text: str, instant: str, written: str | None
) -> None:
    value = parse_time(text)
    assert value == datetime.fromisoformat(instant)
    if written is not None:
        assert format_time(value) == written
    assert parse_time(format_time(value)) == value  # what is written reads back the same


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-12-02 04:35:00", "has no time zone"),
        ("2026-12-02T04:35", "has no time zone"),
        ("yesterday-ish", "is not a timestamp"),
        ("now", "is not a timestamp"),
        ("epoch", "is not a timestamp"),
        ("", "is not a timestamp"),
        ("Dec 2 2026 04:35:00 UTC", "is not a timestamp"),
        ("2026-12-02", "is not a timestamp"),
        ("2026-02-30 04:35:00+00", "is not a timestamp"),
        ("2026-12-02 24:00:00+00", "is not a timestamp"),
        ("2026-12-02 04:60:00+00", "is not a timestamp"),
        ("2026-12-02 04:35:60+00", "is not a timestamp"),
        ("2026-12-02 04:35 Europe/Paris", "time zone cloudbm does not read"),
        ("2026-12-02 04:35:00 CET", "time zone cloudbm does not read"),
        ("2026-12-02 04:35:00+16", "impossible zone offset"),
        ("2026-12-02 04:35:00+01:75", "impossible zone offset"),
        ("2026-12-02 04:35:00.1234567+00", "6 decimals"),
        ("\uff12\uff10\uff12\uff16-12-02 04:35:00+00", "is not a timestamp"),  # full-width
    ],
)
def test_time_without_an_unambiguous_instant_is_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        parse_time(text)
    assert info.value.exit_code == EXIT_USAGE
    assert "\n" not in str(info.value)


# --- lsn, xid, name, timeline --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/3A000108", 0x3A000108), ("16/b374d848", (0x16 << 32) | 0xB374D848), (" 0/0 ", 0)],
)
def test_lsn_is_two_hex_halves(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize(
    "text", ["zz/yy", "0x1/0", "1/", "/1", "3A000108", "123456789/0", "0/123456789", "1/2/3", ""]
)
def test_anything_else_is_not_an_lsn(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a WAL location"):
        parse_lsn(text)


@pytest.mark.parametrize(
    ("text", "xid"),
    [
        ("3", 3),
        ("48211", 48211),
        ("4294967295", 0xFFFFFFFF),
        (str((7 << 32) | 48211), 48211),  # xid8 from pg_current_xact_id(): epoch 7
    ],
)
def test_xid_and_xid8_give_the_32_bit_id_postgresql_compares(text: str, xid: int) -> None:
    assert parse_xid(text) == xid


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("12abc", "is not a transaction id"),  # PostgreSQL's strtoul would read 12
        ("0x1F", "is not a transaction id"),
        ("-5", "is not a transaction id"),
        ("", "is not a transaction id"),
        ("1.5", "is not a transaction id"),
        (str(1 << 64), "is not a transaction id"),
        ("٣٤", "is not a transaction id"),  # Arabic-Indic digits: int() would take them
        ("2", "reserved"),
        ("0", "reserved"),
        (str(5 << 32), "reserved"),  # epoch 5, xid 0
    ],
)
def test_other_xids_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_xid(text)


@pytest.mark.parametrize("text", ["before-big-delete", "n" * 63, "é" * 31, "with space"])
def test_restore_point_names_postgresql_could_have_made_are_kept(text: str) -> None:
    assert check_name(text) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "empty"), ("   ", "empty"), ("n" * 64, "at most 63"), ("é" * 32, "at most 63")],
)
def test_names_postgresql_could_not_have_made_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        check_name(text)


def test_a_name_with_a_line_break_is_refused() -> None:
    with pytest.raises(ConfigError, match="control characters"):
        check_name("a\nrecovery_target_action = 'promote'")


@pytest.mark.parametrize(
    ("text", "written"),
    [("latest", "latest"), ("Current", "current"), ("1", "1"), ("010", "10"), ("4294967295", None)],
)
def test_timelines(text: str, written: str | None) -> None:
    assert parse_timeline(text) == (written or text)


@pytest.mark.parametrize("text", ["0", "newest", "0x2", "²", "-1", "4294967296", "", "1.0"])
def test_other_timelines_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--target-tli"):
        parse_timeline(text)


# --- combinations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (RecoveryTarget(action="promote"), "--target-action applies only with a recovery target"),
        (RecoveryTarget(inclusive=False), "--exclusive applies only"),
        (RecoveryTarget(name="x", inclusive=False), "--exclusive applies only"),
        (RecoveryTarget(immediate=True, inclusive=False), "--exclusive applies only"),
        (RecoveryTarget(time="2026-11-22 10:00+00", lsn="0/1"), "choose one recovery target"),
        (RecoveryTarget(lsn="0/1", action="resume"), "--target-action 'resume'"),
        (RecoveryTarget(lsn="0/1", timeline="two"), "--target-tli"),
    ],
)
def test_combinations_postgresql_would_ignore_or_refuse(target: RecoveryTarget, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        normalise(target)


def test_normalise_writes_what_was_checked() -> None:
    target = normalise(
        RecoveryTarget(time="2026-11-22T14:02:59Z", inclusive=False, timeline="LATEST")
    )
    assert target == RecoveryTarget(
        time="2026-11-22 14:02:59+00", inclusive=False, timeline="latest"
    )
    assert normalise(RecoveryTarget(lsn="0/3a000108")).lsn == "0/3A000108"
    assert normalise(RecoveryTarget(xid=str((1 << 32) | 900))).xid == "900"
    assert normalise(RecoveryTarget(immediate=True, action="promote")).action == "promote"
    assert normalise(RecoveryTarget()) == RecoveryTarget()


def test_a_value_with_a_line_break_never_reaches_postgresql_auto_conf() -> None:
    with pytest.raises(ConfigError, match="line break"):
        settings(RecoveryConfig("cloudbm wal-fetch %f %p\narchive_mode = on"))
    assert quote("it's") == "'it''s'"


# --- reach ---------------------------------------------------------------------------------

SEG = 1 << 20
END = datetime(2026, 11, 22, 4, 15, 0, tzinfo=UTC)
UPLOADED = datetime(2026, 11, 22, 9, 12, 0, tzinfo=UTC)
REACH = Reach(
    backup_id="20261122T041500",
    timeline=1,
    earliest_lsn=0x700100,
    earliest_time=earliest_time(END),
    latest_lsn=0x12 * SEG,
    latest_segment=walnames.from_number(1, 0x11, SEG),
    latest_upload=UPLOADED,
)


def _at(when: datetime) -> RecoveryTarget:
    return normalise(RecoveryTarget(time=when.isoformat()))


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (_at(END - timedelta(days=1)), "is before backup 20261122T041500 ended"),
        (_at(END), "is before backup 20261122T041500 ended"),  # end is truncated to seconds
        (_at(END + timedelta(seconds=1)), None),
        (_at(UPLOADED), None),
        (_at(UPLOADED + CLOCK_ALLOWANCE), None),
        (_at(UPLOADED + CLOCK_ALLOWANCE + timedelta(seconds=1)), "after the newest WAL"),
        (_at((UPLOADED + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))), "after"),
        (RecoveryTarget(lsn="0/7000FF"), "is before backup 20261122T041500's stop point"),
        (RecoveryTarget(lsn="0/700100"), None),
        (RecoveryTarget(lsn="0/11FFFFF"), None),
        (RecoveryTarget(lsn="0/1200000"), "beyond the archived WAL on timeline 1"),
        (RecoveryTarget(lsn="FFFFFFFF/FFFFFFFF"), "beyond the archived WAL"),
        (RecoveryTarget(xid="48211"), None),  # not knowable without reading WAL
        (RecoveryTarget(name="before-migration"), None),  # likewise
        (RecoveryTarget(immediate=True), None),
        (RecoveryTarget(), None),
    ],
)
def test_what_a_backup_and_its_archive_can_reach(target: RecoveryTarget, says: str | None) -> None:
    problem = unreachable(target, REACH)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem


def test_without_upload_times_only_the_lower_time_bound_is_checked() -> None:
    from dataclasses import replace

    reach = replace(REACH, latest_upload=None)
    assert unreachable(_at(UPLOADED + timedelta(days=365)), reach) is None
    assert "reachable" in reach.explain() and "no upload times" in reach.explain()


def test_reach_explains_itself_in_one_line() -> None:
    text = REACH.explain()
    assert text == (
        "from backup 20261122T041500 on timeline 1, reachable are LSNs 0/700100 up to (not "
        "including) 0/1200000, the end of 000000010000000000000011, and times from "
        "2026-11-22 04:15:01+00 to about 2026-11-22 09:12:00+00 (when that segment was "
        "archived, +5 min for clock differences)"
    )
