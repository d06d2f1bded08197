"""Retention planning: table and golden cases for every rule, properties, and scale."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudbm import retention
from cloudbm.catalog import (
    DONE,
    FAILED,
    INCOMPLETE,
    STARTED,
    WAITING_FOR_WALS,
    BackupEntry,
    Manifest,
)
from cloudbm.errors import EXIT_USAGE, ConfigError
from cloudbm.pg import walnames
from cloudbm.pg.timeline import Switch
from cloudbm.retention import BackupInfo, RecoveryWindow, Redundancy, parse_policy

SEG = 16 << 20
NOW = datetime(2026, 11, 8, tzinfo=UTC)
SYS = "7300000000000000001"


def seg(tli: int, n: int) -> str:
    return walnames.from_number(tli, n, SEG)


def backup(
    backup_id: str,
    begin: datetime | str,
    *,
    status: str = DONE,
    minutes: int = 30,
    tli: int = 1,
    start: int = 0,
    stop: int | None = None,
    keep: str | None = None,
    system: str = SYS,
) -> BackupInfo:
    """A backup that began at `begin`, ran `minutes`, and used WAL segments start..stop."""
    began = datetime.fromisoformat(begin) if isinstance(begin, str) else begin
    if began.tzinfo is None:
        began = began.replace(tzinfo=UTC)
    done = status == DONE
    return BackupInfo(
        backup_id=backup_id,
        status=status,
        begin=began,
        end=began + timedelta(minutes=minutes) if done else None,
        system_identifier=system,
        timeline=tli if done else None,
        start_lsn=start * SEG + 0x28 if done else None,
        start_wal=seg(tli, start) if done else None,
        stop_wal=seg(tli, start if stop is None else stop) if done else None,
        keep=keep,
    )


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def run(
    backups: list[BackupInfo],
    policy: str,
    minimum_redundancy: int = 0,
    wal: list[str] | None = None,
    histories: dict[int, list[Switch]] | None = None,
    **kw: Any,
) -> retention.Plan:
    return retention.plan(
        backups,
        wal or [],
        histories or {},
        parse_policy(policy),
        minimum_redundancy,
        NOW,
        SEG,
        **kw,
    )


def actions(p: retention.Plan) -> dict[str, str]:
    return {d.backup_id: d.action for d in p.backups}


def lines(p: retention.Plan) -> dict[str, str]:
    return {d.backup_id: d.line() for d in p.backups}


# --- policy parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy", "days"),
    [
        ("REDUNDANCY 3", Redundancy(3), None),
        ("  redundancy    1  ", Redundancy(1), None),
        ("Redundancy 012", Redundancy(12), None),
        ("RECOVERY WINDOW OF 7 DAYS", RecoveryWindow(7, "DAYS"), 7),
        ("recovery   window of 1 day", RecoveryWindow(1, "DAYS"), 1),
        ("Recovery Window Of 2 Weeks", RecoveryWindow(2, "WEEKS"), 14),
        ("RECOVERY WINDOW OF 3 MONTHS", RecoveryWindow(3, "MONTHS"), 90),
        ("\tRECOVERY WINDOW OF 1 MONTH\n", RecoveryWindow(1, "MONTHS"), 30),
    ],
)
def test_policies_parse(text: str, policy: retention.Policy, days: int | None) -> None:
    parsed = parse_policy(text)
    assert parsed == policy
    if days is not None:
        assert isinstance(parsed, RecoveryWindow)
        assert parsed.length == timedelta(days=days)
    assert parse_policy(str(parsed)) == parsed  # str() is the canonical form


@pytest.mark.parametrize(
    "text",
    [
        "",
        "REDUNDANCY",
        "REDUNDANCY 0",
        "REDUNDANCY -1",
        "REDUNDANCY 2 DAYS",
        "REDUNDANCY two",
        "REDUNDANCY \uff13",  # a full-width digit is not a number here
        "RECOVERY WINDOW OF 0 DAYS",
        "RECOVERY WINDOW 7 DAYS",
        "RECOVERY WINDOW OF 7 YEARS",
        "RECOVERY WINDOW OF 7",
        "KEEP 7 DAYS",
        "REDUNDANCY 2\nREDUNDANCY 3",
    ],
)
def test_bad_policies_are_one_line_config_errors_naming_the_text(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message
    assert "REDUNDANCY n" in message and "RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS" in message
    assert caught.value.exit_code == EXIT_USAGE


def test_wal_retention_and_minimum_redundancy_are_validated() -> None:
    assert retention.parse_wal_retention(" Backups ") == "backups"
    assert retention.parse_wal_retention("ALL") == "all"
    with pytest.raises(ConfigError, match="'none'"):
        retention.parse_wal_retention("none")
    assert retention.check_minimum_redundancy(0) == 0
    for bad in (-1, True):
        with pytest.raises(ConfigError, match="minimum_redundancy"):
            retention.check_minimum_redundancy(bad)


# --- backups: golden cases ------------------------------------------------------------------


def test_window_golden_explain() -> None:
    """The worked example in docs/retention.md."""
    backups = [
        backup("20261020T000000", "2026-10-20T00:00:00", start=0x10),
        backup("20261025T000000", "2026-10-25T00:00:00", start=0x20),
        backup("20261101T000000", "2026-11-01T00:00:00", start=0x30),
        backup("20261105T000000", "2026-11-05T00:00:00", start=0x40),
        backup("20261103T000000", "2026-11-03T00:00:00", status=FAILED),
        backup("20261107T000000", "2026-11-07T00:00:00", status=FAILED),
    ]
    wal = [seg(1, n) for n in range(0x08, 0x48)]
    wal += [seg(1, 0x10) + ".00000028.backup", seg(1, 0x20) + ".00000028.backup"]
    wal += ["00000002.history"]
    p = run(backups, "RECOVERY WINDOW OF 7 DAYS", 1, sorted(wal), {2: [Switch(1, 0x48 * SEG)]})
    assert p.explain() == [
        "policy RECOVERY WINDOW OF 7 DAYS, minimum redundancy 1, wal_retention backups, "
        "now 2026-11-08T00:00:00Z, window starts 2026-11-01T00:00:00Z",
        "removing 20261020T000000: older than the window and 3 newer backups remain",
        "keeping 20261025T000000: needed for the 7-day window: "
        "the newest backup consistent at its start",
        "keeping 20261101T000000: needed for the 7-day window",
        "removing 20261103T000000: FAILED and older than the newest DONE backup 20261105T000000",
        "keeping 20261105T000000: needed for the 7-day window",
        "keeping 20261107T000000: FAILED, newer than the newest DONE backup (kept for diagnosis)",
        "WAL timeline 1: removing 25 of 66 files "
        "(000000010000000000000008 .. 00000001000000000000001F): "
        "older than 000000010000000000000020, the first segment backup 20261025T000000 needs",
        "WAL: keeping 1 history file (never removed)",
        "summary: keeping 4 backups, removing 2; removing 25 WAL files",
    ]
    assert p.wal_remove[-2:] == (
        "00000001000000000000001E",
        "00000001000000000000001F",
    )
    assert seg(1, 0x10) + ".00000028.backup" in p.wal_remove  # follows its segment
    assert seg(1, 0x20) + ".00000028.backup" not in p.wal_remove


def test_window_boundary_at_a_backups_begin_keeps_the_one_before() -> None:
    # Began exactly at the window start but became consistent after it: recovery to the
    # start itself needs the previous backup.
    p = run(
        [
            backup("a", "2026-10-20T00:00:00"),
            backup("b", "2026-10-25T00:00:00"),
            backup("c", "2026-11-01T00:00:00"),
        ],
        "RECOVERY WINDOW OF 1 WEEK",
    )
    assert actions(p) == {"a": "remove", "b": "keep", "c": "keep"}
    assert lines(p)["b"].endswith("the newest backup consistent at its start")


def test_window_boundary_at_a_backups_end_needs_nothing_older() -> None:
    p = run(
        [
            backup("a", "2026-10-25T00:00:00"),
            backup("b", "2026-10-31T23:00:00", minutes=60),  # consistent exactly at the start
            backup("c", "2026-11-03T00:00:00"),
        ],
        "RECOVERY WINDOW OF 7 DAYS",
    )
    assert actions(p) == {"a": "remove", "b": "keep", "c": "keep"}
    assert lines(p)["a"] == "removing a: older than the window and 2 newer backups remain"


def test_redundancy_keeps_the_n_newest_done() -> None:
    p = run([backup(f"b{i}", days_ago(10 - i)) for i in range(5)], "REDUNDANCY 2")
    assert actions(p) == {
        "b0": "remove",
        "b1": "remove",
        "b2": "remove",
        "b3": "keep",
        "b4": "keep",
    }
    assert lines(p)["b4"] == "keeping b4: one of the 2 newest DONE backups (REDUNDANCY 2)"
    assert lines(p)["b0"] == "removing b0: beyond REDUNDANCY 2 and 2 newer backups remain"


def test_order_is_begin_time_never_the_id() -> None:
    # "zzz" sorts after every id but began first; "aaa" sorts first but began last.
    p = run(
        [
            backup("zzz", days_ago(9)),
            backup("mmm", days_ago(5)),
            backup("aaa", days_ago(1)),
        ],
        "REDUNDANCY 1",
    )
    assert actions(p) == {"zzz": "remove", "mmm": "remove", "aaa": "keep"}
    assert [d.backup_id for d in p.backups] == ["zzz", "mmm", "aaa"]  # oldest first


def test_failed_backups_never_count_toward_redundancy() -> None:
    p = run(
        [
            backup("a", days_ago(6)),
            backup("f1", days_ago(5), status=FAILED),
            backup("i1", days_ago(4.5), status=INCOMPLETE),
            backup("s1", days_ago(4), status=STARTED),
            backup("w1", days_ago(3.5), status=WAITING_FOR_WALS),
            backup("b", days_ago(3)),
            backup("f2", days_ago(2), status=FAILED),
            backup("s2", days_ago(1), status=STARTED),
        ],
        "REDUNDANCY 2",
    )
    assert actions(p) == {
        "a": "keep",
        "f1": "remove",
        "i1": "remove",
        "s1": "remove",
        "w1": "remove",
        "b": "keep",
        "f2": "keep",
        "s2": "keep",
    }
    assert lines(p)["f1"] == "removing f1: FAILED and older than the newest DONE backup b"
    assert lines(p)["s2"] == (
        "keeping s2: STARTED, newer than the newest DONE backup (may still be running)"
    )


def test_a_recent_unfinished_backup_overtaken_by_a_done_one_is_kept() -> None:
    """A long backup on a standby (STARTED) can begin before a short one on the primary that
    is DONE: retention must not delete the objects of a run that may still be copying."""
    p = run(
        [
            backup("old", days_ago(3)),
            backup("standby", days_ago(0.2), status=STARTED),
            backup("waiting", days_ago(0.2), status=WAITING_FOR_WALS),
            backup("gone", days_ago(0.2), status=INCOMPLETE),
            backup("primary", days_ago(0.1)),
        ],
        "REDUNDANCY 1",
    )
    assert actions(p) == {
        "old": "remove",
        "standby": "keep",
        "waiting": "keep",
        "gone": "remove",
        "primary": "keep",
    }
    assert "may still be running" in lines(p)["standby"]


def test_without_a_done_backup_nothing_is_removed() -> None:
    p = run(
        [backup("f", days_ago(30), status=FAILED), backup("s", days_ago(1), status=STARTED)],
        "REDUNDANCY 1",
        wal=[seg(1, n) for n in range(10)],
    )
    assert actions(p) == {"f": "keep", "s": "keep"}
    assert p.wal_remove == ()
    assert p.wal_note == "no kept backup anchors WAL retention: all WAL kept"


def test_unknown_start_time_is_never_judged_by_age() -> None:
    p = run(
        [
            BackupInfo("odd", FAILED, None),
            backup("a", days_ago(9)),
            backup("b", days_ago(1)),
        ],
        "REDUNDANCY 1",
    )
    assert actions(p) == {"odd": "keep", "a": "remove", "b": "keep"}
    assert [d.backup_id for d in p.backups][-1] == "odd"


@pytest.mark.parametrize("policy", ["REDUNDANCY 1", "RECOVERY WINDOW OF 2 DAYS"])
def test_keep_beats_every_policy_and_stands_outside_the_rotation(policy: str) -> None:
    p = run(
        [
            backup("old", days_ago(400), keep="full"),
            backup("a", days_ago(20)),
            backup("b", days_ago(10)),
            backup("pinned", days_ago(5), keep="standalone"),
        ],
        policy,
    )
    assert actions(p) == {"old": "keep", "a": "remove", "b": "keep", "pinned": "keep"}
    assert lines(p)["old"] == "keeping old: kept (keep full)"
    assert lines(p)["pinned"] == "keeping pinned: kept (keep standalone)"


def test_keep_beats_the_non_done_cleanup() -> None:
    p = run(
        [backup("f", days_ago(9), status=FAILED, keep="full"), backup("a", days_ago(1))],
        "REDUNDANCY 1",
    )
    assert actions(p) == {"f": "keep", "a": "keep"}


def test_minimum_redundancy_beats_the_window() -> None:
    backups = [backup(x, days_ago(d)) for x, d in (("a", 40), ("b", 30), ("c", 20))]
    assert actions(run(backups, "RECOVERY WINDOW OF 7 DAYS")) == {
        "a": "remove",
        "b": "remove",
        "c": "keep",  # the newest one consistent before the window
    }
    p = run(backups, "RECOVERY WINDOW OF 7 DAYS", minimum_redundancy=2)
    assert actions(p) == {"a": "remove", "b": "keep", "c": "keep"}
    assert lines(p)["b"] == (
        "keeping b: minimum redundancy 2 (RECOVERY WINDOW OF 7 DAYS alone would remove it)"
    )
    assert set(actions(run(backups, "RECOVERY WINDOW OF 7 DAYS", 5)).values()) == {"keep"}


def test_minimum_redundancy_beats_redundancy() -> None:
    backups = [backup(x, days_ago(d)) for x, d in (("a", 3), ("b", 2), ("c", 1))]
    assert actions(run(backups, "REDUNDANCY 1", 2)) == {"a": "remove", "b": "keep", "c": "keep"}


def test_after_pg_upgrade_the_new_systems_backups_are_never_removed() -> None:
    # The old cluster's host clock ran a month fast: by time alone its backups look newest.
    old = [backup(f"old{i}", days_ago(i - 30), system="OLD") for i in range(3)]
    new = [backup(f"new{i}", days_ago(3 - i), system="NEW") for i in range(2)]
    p = run(old + new, "REDUNDANCY 2", system_identifier="NEW")
    assert actions(p) == {
        "old0": "remove",
        "old1": "remove",
        "old2": "remove",
        "new0": "keep",
        "new1": "keep",
    }
    # With honest clocks the newest system wins without being named; the count spans systems.
    old = [backup(f"old{i}", days_ago(30 - i), system="OLD") for i in range(3)]
    p = run(old + new, "REDUNDANCY 3")
    assert actions(p) == {
        "old0": "remove",
        "old1": "remove",
        "old2": "keep",
        "new0": "keep",
        "new1": "keep",
    }


def test_after_pg_upgrade_old_failures_are_stale_once_the_new_system_has_a_done_backup() -> None:
    p = run(
        [
            backup("old", days_ago(30), system="OLD"),
            backup("oldfail", days_ago(29), status=FAILED, system="OLD"),
            backup("new", days_ago(1), system="NEW"),
        ],
        "REDUNDANCY 2",
    )
    assert actions(p) == {"old": "keep", "oldfail": "remove", "new": "keep"}


def test_after_a_timeline_switch_the_newest_backups_are_never_removed() -> None:
    # A point-in-time recovery went back to LSN 0x20 and forked timeline 2: the new backups
    # have lower LSNs (and would sort first by TLI+LSN name) but are the newest.
    histories = {2: [Switch(1, 0x20 * SEG + 0x100)]}
    backups = [
        backup("t1a", days_ago(9), start=0x10),
        backup("t1b", days_ago(6), start=0x30),
        backup("t1c", days_ago(5), start=0x40),
        backup("t2a", days_ago(2), tli=2, start=0x21),
        backup("t2b", days_ago(1), tli=2, start=0x24),
    ]
    wal = [seg(1, n) for n in range(0x08, 0x48)] + [seg(1, 0x20) + ".partial"]
    wal += [seg(2, n) for n in range(0x20, 0x28)] + ["00000002.history"]
    p = run(backups, "REDUNDANCY 2", wal=wal, histories=histories)
    assert actions(p) == {
        "t1a": "remove",
        "t1b": "remove",
        "t1c": "remove",
        "t2a": "keep",
        "t2b": "keep",
    }
    # Nothing on timeline 1 is read from a timeline-2 backup; on timeline 2 only the switch
    # segment lies before the oldest kept backup. The history file stays.
    timeline1 = {seg(1, n) for n in range(0x08, 0x48)} | {seg(1, 0x20) + ".partial"}
    assert set(p.wal_remove) == timeline1 | {seg(2, 0x20)}
    assert "00000002.history" not in p.wal_remove
    assert p.history_files == 1
    assert [(t.timeline, t.removed) for t in p.wal_timelines] == [(1, 0x41), (2, 1)]


# --- WAL -----------------------------------------------------------------------------------


def test_wal_per_timeline_follows_every_timeline_reachable_from_the_oldest_kept_backup() -> None:
    histories = {
        2: [Switch(1, 0x30 * SEG + 0x80)],
        3: [Switch(1, 0x30 * SEG + 0x80), Switch(2, 0x40 * SEG)],
    }
    backups = [
        backup("x", days_ago(20), start=0x10),
        backup("y", days_ago(10), start=0x20),
        backup("z", days_ago(2), tli=2, start=0x35),
    ]
    wal = [seg(1, n) for n in range(0x00, 0x31)] + [seg(1, 0x30) + ".partial"]
    wal += [seg(2, n) for n in range(0x30, 0x41)] + [seg(2, 0x40) + ".partial"]
    wal += [seg(3, n) for n in range(0x40, 0x50)]
    wal += ["00000002.history", "00000003.history"]
    p = run(backups, "REDUNDANCY 2", wal=sorted(wal), histories=histories)
    assert actions(p) == {"x": "remove", "y": "keep", "z": "keep"}
    assert list(p.wal_remove) == [seg(1, n) for n in range(0x00, 0x20)]
    assert [(t.timeline, t.removed, t.keep_from) for t in p.wal_timelines] == [
        (1, 0x20, seg(1, 0x20)),
        (2, 0, seg(2, 0x30)),  # from the switch segment, which recovery reads from timeline 2
        (3, 0, seg(3, 0x40)),
    ]
    assert p.wal_timelines[1].line() == (
        "WAL timeline 2: keeping all 18 files: backup y needs them from 000000020000000000000030"
    )


def test_unreachable_timelines_go_but_the_newest_and_historyless_ones_stay() -> None:
    histories = {
        2: [Switch(1, 0x15 * SEG)],  # forked before the kept backup started: a dead branch
        3: [Switch(1, 0x25 * SEG)],  # forked after it: reachable
        4: [Switch(1, 0x18 * SEG)],  # newest, though no kept backup reaches it
    }
    wal = [seg(1, n) for n in range(0x10, 0x30)]
    wal += [seg(2, n) for n in range(0x15, 0x20)] + [seg(2, 0x1F) + ".partial"]
    wal += [seg(3, n) for n in range(0x25, 0x30)]
    wal += [seg(4, n) for n in range(0x18, 0x1A)]
    wal += [seg(7, n) for n in range(0x40, 0x42)]  # no history file: origin unknown
    p = run([backup("k", days_ago(1), start=0x20)], "REDUNDANCY 1", wal=wal, histories=histories)
    by_tli = {t.timeline: t for t in p.wal_timelines}
    assert {t: s.removed for t, s in by_tli.items()} == {1: 0x10, 2: 12, 3: 0, 4: 0, 7: 0}
    assert by_tli[2].reason == "no kept backup can reach timeline 2"
    assert by_tli[4].reason == "newest timeline: the live one until a backup reaches it"
    assert by_tli[7].reason == "no history file for timeline 7, so its origin is unknown"
    assert by_tli[3].keep_from == seg(3, 0x25)


def test_standalone_keeps_only_its_own_range_full_keeps_everything_after() -> None:
    wal = [seg(1, n) for n in range(0x00, 0x40)]
    wal += [seg(1, 0x05) + ".partial", seg(1, 0x0B) + ".00000028.backup"]

    def plan_for(keep: str) -> set[str]:
        backups = [
            backup("pin", days_ago(30), start=0x0A, stop=0x0C, keep=keep),
            backup("a", days_ago(20), start=0x20),
            backup("b", days_ago(1), start=0x30),
        ]
        return set(run(backups, "REDUNDANCY 1", wal=wal).wal_remove)

    below = {seg(1, n) for n in range(0x00, 0x0A)} | {seg(1, 0x05) + ".partial"}
    assert plan_for("full") == below
    assert "(standalone pin keep their own start..stop range)" in "\n".join(
        run(
            [
                backup("pin", days_ago(3), start=1, stop=2, keep="standalone"),
                backup("b", NOW, start=9),
            ],
            "REDUNDANCY 1",
            wal=wal,
        ).explain()
    )
    assert plan_for("standalone") == below | {seg(1, n) for n in range(0x0D, 0x30)}


def test_overlapping_standalone_ranges() -> None:
    backups = [
        backup("p1", days_ago(30), start=0x10, stop=0x30, keep="standalone"),
        backup("p2", days_ago(29), start=0x12, stop=0x14, keep="standalone"),
        backup("p3", days_ago(28), start=0x38, stop=0x38, keep="standalone"),
        backup("b", days_ago(1), start=0x40),
    ]
    p = run(backups, "REDUNDANCY 1", wal=[seg(1, n) for n in range(0x48)])
    kept = {seg(1, n) for n in [*range(0x10, 0x31), 0x38, *range(0x40, 0x48)]}
    assert set(p.wal_remove) == {seg(1, n) for n in range(0x48)} - kept


def test_wal_retention_all_removes_no_wal() -> None:
    p = run(
        [backup("a", days_ago(9)), backup("b", days_ago(1), start=0x10)],
        "REDUNDANCY 1",
        wal=[seg(1, n) for n in range(0x20)],
        wal_retention="all",
    )
    assert actions(p) == {"a": "remove", "b": "keep"}
    assert p.wal_remove == ()
    assert p.wal_timelines[0].line() == (
        "WAL timeline 1: keeping all 32 files: wal_retention = all: WAL is never removed"
    )


def test_key_prefixes_are_kept_and_foreign_names_ignored() -> None:
    keys = [f"wal/{seg(1, n)[:16]}/{seg(1, n)}" for n in range(4)]
    foreign = [
        "wal/junk",
        "000000010000000000000001.tmp",
        seg(1, 0x0A).lower(),
        "000000000000000000000001",  # timeline 0
        "00000001000000000000000",
    ]
    p = run([backup("b", days_ago(1), start=2)], "REDUNDANCY 1", wal=keys + foreign)
    assert p.wal_remove == tuple(keys[:2])
    assert p.foreign_files == len(foreign)
    assert p.wal_timelines[0].first_removed == seg(1, 0)


def test_a_kept_backup_without_a_wal_position_stops_wal_removal() -> None:
    p = run(
        [BackupInfo("odd", DONE, days_ago(1)), backup("a", days_ago(9))],
        "REDUNDANCY 2",
        wal=[seg(1, n) for n in range(4)],
    )
    assert p.wal_remove == ()
    assert p.wal_note == "backup odd has no start WAL position: all WAL kept"


def test_catalogue_entries_are_accepted() -> None:
    def manifest(backup_id: str, begin: str, start: int) -> Manifest:
        return Manifest(
            backup_id=backup_id,
            server="main",
            label="",
            begin_time=begin,
            end_time=begin,
            start_lsn=walnames.format_lsn(start * SEG + 0x28),
            stop_lsn=walnames.format_lsn(start * SEG + 0x100),
            start_wal=seg(1, start),
            stop_wal=seg(1, start),
            timeline=1,
            backup_from="primary",
            pg_version="15.4",
            pg_version_num=150004,
            system_identifier=SYS,
            wal_segment_size=SEG,
            size=0,
            tar_size=0,
            stored_size=0,
            file_count=0,
            parts=(),
            tablespaces=(),
            compression="zstd",
            encryption="none",
            key_id=None,
            recovery_key="",
            recovery_stored_sha256="",
            cloudbm_version="0",
        )

    entries = [
        BackupEntry("zz", DONE, manifest("zz", "2026-11-01T00:00:00Z", 4)),
        BackupEntry("aa", DONE, manifest("aa", "2026-11-07T00:00:00Z", 8)),
        BackupEntry("ff", FAILED, started={"begin_time": "2026-11-02T00:00:00Z"}),
    ]
    p = retention.plan(entries, [seg(1, n) for n in range(10)], {}, Redundancy(1), 0, NOW, SEG)
    assert actions(p) == {"zz": "remove", "ff": "remove", "aa": "keep"}
    assert p.wal_remove == tuple(seg(1, n) for n in range(8))


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        retention.plan([], [], {}, Redundancy(1), 0, datetime(2026, 1, 1), SEG)


def test_a_window_longer_than_the_calendar_keeps_everything() -> None:
    p = run(
        [backup("a", days_ago(900)), backup("b", days_ago(1))],
        "RECOVERY WINDOW OF 999999999 MONTHS",
    )
    assert set(actions(p).values()) == {"keep"}


# --- properties ----------------------------------------------------------------------------

HISTORIES = {2: [Switch(1, 0x20 * SEG + 0x80)], 3: [Switch(2, 0x30 * SEG)]}
STATUSES = [DONE, DONE, DONE, FAILED, INCOMPLETE, STARTED, WAITING_FOR_WALS]


@st.composite
def backups_strategy(draw: st.DrawFn) -> list[BackupInfo]:
    count = draw(st.integers(1, 9))
    out = []
    for i in range(count):
        start = draw(st.integers(0, 0x40))
        out.append(
            backup(
                f"b{draw(st.integers(0, 99)):02d}-{i}",  # ids in no relation to time
                days_ago(draw(st.floats(0, 60))),
                status=draw(st.sampled_from(STATUSES)),
                minutes=draw(st.integers(0, 600)),
                tli=draw(st.integers(1, 3)),
                start=start,
                stop=start + draw(st.integers(0, 4)),
                keep=draw(st.sampled_from([None, None, None, "full", "standalone"])),
            )
        )
    return out


WAL = sorted(
    [seg(t, n) for t in (1, 2, 3) for n in range(0x48)]
    + [seg(1, 0x20) + ".partial", seg(2, 0x30) + ".partial", seg(1, 0x05) + ".00000028.backup"]
    + ["00000002.history", "00000003.history"]
)


@settings(max_examples=300, deadline=None)
@given(
    backups=backups_strategy(),
    policy=st.one_of(
        st.builds(Redundancy, st.integers(1, 5)),
        st.builds(RecoveryWindow, st.integers(1, 8), st.sampled_from(["DAYS", "WEEKS"])),
    ),
    minimum=st.integers(0, 3),
)
def test_properties(backups: list[BackupInfo], policy: retention.Policy, minimum: int) -> None:
    p = retention.plan(backups, WAL, HISTORIES, policy, minimum, NOW, SEG)
    decided = actions(p)
    assert sorted(decided) == sorted(b.backup_id for b in backups)

    done = [b for b in backups if b.status == DONE]
    if done:
        newest = max(done, key=lambda b: (b.begin, b.backup_id))
        assert decided[newest.backup_id] == "keep"
    for b in backups:
        if b.keep:
            assert decided[b.backup_id] == "keep"
    kept_done = sum(1 for b in done if decided[b.backup_id] == "keep")
    assert kept_done >= min(minimum, len(done))

    assert not any(n.endswith(".history") for n in p.wal_remove)
    assert list(p.wal_remove) == sorted(set(p.wal_remove))
    removed = [walnames.parse(n) for n in p.wal_remove]
    for b in done:
        if decided[b.backup_id] != "keep":
            continue
        assert b.start_wal is not None and b.stop_wal is not None
        start = walnames.parse(b.start_wal)
        first = walnames.segment_number(start, SEG)
        last = walnames.segment_number(walnames.parse(b.stop_wal), SEG)
        for r in removed:
            if r.timeline != start.timeline:
                continue
            number = walnames.segment_number(r, SEG)
            if b.keep == "standalone":
                assert not first <= number <= last, (b, r.name)
            else:
                assert number < first, (b, r.name)


# --- scale ---------------------------------------------------------------------------------


def test_a_million_wal_names_in_one_quick_pass() -> None:
    per_log = 0x100000000 // SEG
    names = [
        f"wal/{tli:08X}{n // per_log:08X}/{tli:08X}{n // per_log:08X}{n % per_log:08X}"
        for tli in (1, 2)
        for n in range(500_000)
    ]
    histories = {2: [Switch(1, 350_000 * SEG)]}
    backups = [
        backup("a", days_ago(30), start=100_000),
        backup("b", days_ago(20), start=300_000),
        backup("c", days_ago(1), tli=2, start=400_000),
    ]
    began = time.process_time()
    p = retention.plan(backups, names, histories, Redundancy(2), 0, NOW, SEG)
    elapsed = time.process_time() - began
    # Timeline 1 below b's start; timeline 2 below its switch point, which b reaches.
    assert [(t.timeline, t.removed) for t in p.wal_timelines] == [(1, 300_000), (2, 350_000)]
    assert len(p.wal_remove) == 650_000
    assert elapsed < 2.0, f"planning 1,000,000 names took {elapsed:.2f}s"


def test_wal_may_be_a_lazy_listing() -> None:
    listing = (seg(1, n) for n in range(8))  # e.g. storage.list() pages, consumed once
    p = run([backup("b", days_ago(1), start=5)], "REDUNDANCY 1", wal=list(listing))
    lazy = retention.plan(
        [backup("b", days_ago(1), start=5)],
        (seg(1, n) for n in range(8)),
        {},
        Redundancy(1),
        0,
        NOW,
        SEG,
    )
    assert lazy.wal_remove == p.wal_remove == tuple(seg(1, n) for n in range(5))


def test_non_done_reasons() -> None:
    p = run(
        [
            backup("i", days_ago(3), status=INCOMPLETE),
            backup("w", days_ago(2), status=WAITING_FOR_WALS),
        ],
        "REDUNDANCY 1",
    )
    assert lines(p) == {
        "i": "keeping i: INCOMPLETE, no DONE backup yet (kept for diagnosis)",
        "w": "keeping w: WAITING_FOR_WALS, no DONE backup yet (may still be running)",
    }
