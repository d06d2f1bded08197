"""What pg_stat_archiver says, and when it proves that waiting for WAL is pointless.

PostgreSQL marks a file archived only after archive_command returned 0, and `wal-push` returns
0 only once the object is stored. So when the archiver reports a segment (or a later one on
the same timeline) archived and the repository, looked at afterwards, lacks it, the archive
command in effect stores WAL somewhere else, or nowhere. A failing archiver shows in
`failed_count` and `last_failed_time`. A slow archiver that has not reached the segment yet
proves nothing, and is waited for. Pure decisions; the query is BackupSession.archiver().
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudbm.pg import walnames

# PostgreSQL tries a file three times, a second apart, before it pauses: three new failures
# and no success since is a failing archiver, not a blip.
FAILURES_TO_JUDGE = 3


@dataclass(frozen=True)
class ArchiverStats:
    """One row of pg_stat_archiver plus the archive settings in effect."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_age: float | None  # seconds since last_archived_time
    failed_count: int
    last_failed_wal: str | None
    failing: bool  # the newest event is a failure
    archive_command: str
    archive_library: str = ""

    @property
    def command(self) -> str:
        """What archives, as the user wrote it (archive_library wins when set, PostgreSQL 15+)."""
        if self.archive_library:
            return f"archive_library = '{self.archive_library}'"
        return f"archive_command = '{self.archive_command}'"


def archiver_runs_here(archive_mode: str, in_recovery: bool) -> bool:
    """A primary archives with archive_mode on or always; a standby only with always (with
    `on` its primary archives, and this server's pg_stat_archiver says nothing)."""
    if archive_mode == "always":
        return True
    return archive_mode == "on" and not in_recovery


def reached(stats: ArchiverStats, segment: str, segment_size: int) -> bool:
    """pg_stat_archiver's newest archived file is `segment` or a later one on its timeline
    (a `.backup` or `.partial` file counts as its segment; history files say nothing)."""
    name = stats.last_archived_wal
    if not name or not walnames.is_wal_name(name):
        return False
    done = walnames.parse(name)
    want = walnames.parse(segment)
    if done.kind == walnames.WalKind.HISTORY or done.timeline != want.timeline:
        return False
    return walnames.segment_number(done, segment_size) >= walnames.segment_number(
        want, segment_size
    )


def new_failures(stats: ArchiverStats, failed_before: int) -> int:
    """Failures since the baseline (a reset of the counters starts from zero)."""
    if stats.failed_count < failed_before:
        return stats.failed_count
    return stats.failed_count - failed_before


def wait_verdict(
    stats: ArchiverStats,
    *,
    failed_before: int,
    missing: str,
    missing_confirmed: bool,
    segment_size: int,
    repository: str,
) -> str | None:
    """Why the WAL the backup waits for will not come, or None to keep waiting.

    `missing` is the oldest needed segment not in the repository; `missing_confirmed` says the
    repository answered "absent" for it after these stats were read (not a storage error)."""
    failures = new_failures(stats, failed_before)
    if stats.failing and failures >= FAILURES_TO_JUDGE:
        return (
            f"the archiver is failing ({failures} failures since the backup began, last on "
            f"{stats.last_failed_wal}): {stats.command}"
        )
    if missing_confirmed and reached(stats, missing, segment_size):
        return (
            f"PostgreSQL reports {stats.last_archived_wal} archived, but {missing} is not in "
            f"{repository}: {stats.command} does not archive into this repository"
        )
    return None


def check_verdict(stats: ArchiverStats, in_repository: bool | None, repository: str) -> str | None:
    """`cloudbm check`: the problem with the archiver, or None. `in_repository` says whether
    the newest archived WAL file is in the repository (None: nothing to look for)."""
    if stats.failing:
        return (
            f"the archiver is failing ({stats.failed_count} failures, last on "
            f"{stats.last_failed_wal}): {stats.command}"
        )
    if in_repository is False:
        age = "" if stats.last_archived_age is None else f" {stats.last_archived_age:.0f}s ago"
        return (
            f"PostgreSQL archived {stats.last_archived_wal}{age}, but it is not in "
            f"{repository}: {stats.command} does not archive into this repository"
        )
    return None
