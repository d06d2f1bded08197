"""The WAL sweep: per-timeline cases, standalone ranges, foreign names, and a million names."""

from __future__ import annotations

import time

from cloudbm import retention
from cloudbm.catalog import DONE
from cloudbm.pg.timeline import Switch
from cloudbm.retention import BackupInfo, Redundancy
from tests.unit.retention_cases import NOW, SEG, actions, backup, days_ago, run, seg


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
