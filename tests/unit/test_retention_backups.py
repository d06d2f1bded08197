"""Backup decisions: a table case for each keep/remove rule, its precedence and its reason."""

from __future__ import annotations

import pytest

from cloudbm.catalog import (
    FAILED,
    INCOMPLETE,
    STARTED,
    WAITING_FOR_WALS,
)
from cloudbm.pg.timeline import Switch
from cloudbm.retention import BackupInfo
from tests.unit.retention_cases import SEG, actions, backup, days_ago, lines, run, seg


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


def test_a_window_longer_than_the_calendar_keeps_everything() -> None:
    p = run(
        [backup("a", days_ago(900)), backup("b", days_ago(1))],
        "RECOVERY WINDOW OF 999999999 MONTHS",
    )
    assert set(actions(p).values()) == {"keep"}


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
