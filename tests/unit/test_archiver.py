"""When pg_stat_archiver proves that the WAL a backup waits for will not come (table tests)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloudbm.pg.archiver import (
    ArchiverStats,
    archiver_runs_here,
    check_verdict,
    reached,
    wait_verdict,
)

MiB = 1024 * 1024
REPO = "s3://bucket/pg/main"
HEALTHY = ArchiverStats(
    archived_count=10,
    last_archived_wal="000000010000000000000005",
    last_archived_age=2.0,
    failed_count=0,
    last_failed_wal=None,
    failing=False,
    archive_command="cloudbm wal-push %p",
)


@pytest.mark.parametrize(
    ("mode", "in_recovery", "runs"),
    [
        ("on", False, True),
        ("always", False, True),
        ("on", True, False),  # a standby with on: its primary archives
        ("always", True, True),
        ("off", False, False),
    ],
)
def test_where_the_servers_own_archiver_runs(mode: str, in_recovery: bool, runs: bool) -> None:
    assert archiver_runs_here(mode, in_recovery) is runs


@pytest.mark.parametrize(
    ("last", "segment", "size", "is_reached"),
    [
        ("000000010000000000000005", "000000010000000000000005", 16 * MiB, True),
        ("000000010000000000000006", "000000010000000000000005", 16 * MiB, True),
        ("000000010000000000000004", "000000010000000000000005", 16 * MiB, False),
        ("000000010000000000000005.00000028.backup", "000000010000000000000005", 16 * MiB, True),
        ("000000010000000000000004.partial", "000000010000000000000005", 16 * MiB, False),
        ("000000010000000100000000", "0000000100000000000000FF", 16 * MiB, True),  # next log
        ("000000010000000000000FFF", "000000010000000100000000", 1 * MiB, False),  # 1 MiB segs
        ("00000002.history", "000000010000000000000005", 16 * MiB, False),
        ("000000020000000000000009", "000000010000000000000005", 16 * MiB, False),  # other TLI
        (None, "000000010000000000000005", 16 * MiB, False),
    ],
)
def test_the_archiver_has_reached_a_segment(
    last: str | None, segment: str, size: int, is_reached: bool
) -> None:
    stats = replace(HEALTHY, last_archived_wal=last)
    assert reached(stats, segment, size) is is_reached


WAITING = "000000010000000000000005"


@pytest.mark.parametrize(
    ("stats", "failed_before", "confirmed", "expect"),
    [
        # slow but healthy: not there yet, nothing to say
        (replace(HEALTHY, last_archived_wal="000000010000000000000004"), 0, True, None),
        # archived past the segment the repository lacks: elsewhere (or nowhere)
        (HEALTHY, 0, True, "does not archive into this repository"),
        # ... unless the repository's answer was a storage error, not "absent"
        (HEALTHY, 0, False, None),
        # failing: three new failures and no success since
        (
            replace(HEALTHY, failed_count=7, failing=True, last_failed_wal=WAITING),
            4,
            True,
            "the archiver is failing (3 failures since the backup began",
        ),
        # one failed try is a blip PostgreSQL retries
        (replace(HEALTHY, failed_count=5, failing=True, last_failed_wal=WAITING), 4, False, None),
        # failures long ago, success since
        (
            replace(
                HEALTHY, failed_count=9, failing=False, last_archived_wal="000000010000000000000004"
            ),
            0,
            True,
            None,
        ),
        # counters reset (pg_stat_reset_shared) during the backup
        (
            replace(HEALTHY, failed_count=3, failing=True, last_failed_wal=WAITING),
            50,
            False,
            "the archiver is failing",
        ),
    ],
)
def test_why_waiting_for_wal_is_pointless(
    stats: ArchiverStats, failed_before: int, confirmed: bool, expect: str | None
) -> None:
    verdict = wait_verdict(
        stats,
        failed_before=failed_before,
        missing=WAITING,
        missing_confirmed=confirmed,
        segment_size=16 * MiB,
        repository=REPO,
    )
    if expect is None:
        assert verdict is None
    else:
        assert verdict is not None and expect in verdict
        assert "archive_command = 'cloudbm wal-push %p'" in verdict


def test_the_verdict_names_archive_library_when_it_is_in_effect() -> None:
    stats = replace(HEALTHY, archive_library="basic_archive")
    verdict = wait_verdict(
        stats,
        failed_before=0,
        missing=WAITING,
        missing_confirmed=True,
        segment_size=16 * MiB,
        repository=REPO,
    )
    assert verdict is not None and "archive_library = 'basic_archive'" in verdict


def test_check_reports_a_failing_archiver_and_one_that_archives_elsewhere() -> None:
    assert check_verdict(HEALTHY, True, REPO) is None
    assert (
        check_verdict(replace(HEALTHY, archived_count=0, last_archived_wal=None), None, REPO)
        is None
    )
    elsewhere = check_verdict(replace(HEALTHY, archive_command="true"), False, REPO)
    assert elsewhere is not None
    assert "000000010000000000000005 2s ago, but it is not in s3://bucket/pg/main" in elsewhere
    assert "archive_command = 'true'" in elsewhere
    failing = check_verdict(replace(HEALTHY, failing=True, failed_count=3), True, REPO)
    assert failing is not None and failing.startswith("the archiver is failing (3 failures")
