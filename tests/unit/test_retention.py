"""Retention planning as a whole: the documented example, its inputs, properties over all rules."""

from __future__ import annotations

from datetime import datetime

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
from cloudbm.pg import walnames
from cloudbm.pg.timeline import Switch
from cloudbm.retention import BackupInfo, RecoveryWindow, Redundancy
from tests.unit.retention_cases import NOW, SEG, SYS, actions, backup, days_ago, run, seg

# --- the documented example ----------------------------------------------------------------


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


# --- inputs --------------------------------------------------------------------------------


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
