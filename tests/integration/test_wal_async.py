"""Push-ahead and prefetch: one call does the work of many, later calls are served locally, and
neither shortcut can ever turn into a wrong answer."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.pgcluster import (
    CLOUDBM,
    PgCluster,
    as_postgres,
    chown_tree,
    postgres_dir,
    running_cluster,
)
from tests.integration.repos import write_config

pytestmark = pytest.mark.integration


@dataclass
class Stalled:
    """A stopped cluster whose archiver never succeeded: segments wait with .ready files."""

    cluster: PgCluster
    workdir: Path
    repo: Path
    config: Path
    segments: list[str]

    def cloudbm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return as_postgres(
            [str(CLOUDBM), "--config", str(self.config), *args],
            cwd=self.cluster.pgdata,
            check=False,
        )

    def archived_by_postgres(self, name: str) -> None:
        status = self.cluster.pgdata / "pg_wal" / "archive_status"
        (status / f"{name}.ready").rename(status / f"{name}.done")

    def wait_archived(self, names: list[str]) -> None:
        """Until the background pusher stored `names` (it starts after the call that spawned
        it may already have returned), then until it is gone."""
        deadline = time.monotonic() + 60
        while not set(names) <= {p.name for p in self.repo.glob("wal/*/*")}:
            assert time.monotonic() < deadline, "the background pusher never archived them"
            time.sleep(0.05)
        self.wait_workers()

    def wait_workers(self) -> None:
        """Until no background pusher or prefetcher holds its lock."""
        import fcntl

        deadline = time.monotonic() + 60
        for lock in self.workdir.glob("spool/*/*.lock"):
            while time.monotonic() < deadline:
                with open(lock) as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.05)


@pytest.fixture
def stalled() -> Iterator[Stalled]:
    workdir = postgres_dir("cloudbm-async-")
    repo = workdir / "repo"
    repo.mkdir()
    config = write_config(
        workdir / "cloudbm.toml",
        "main",
        {
            "repository": f"file://{repo}",
            "spool_directory": str(workdir / "spool"),
            "wal_push_ahead": 8,
            "wal_prefetch": 8,
            "operation_timeout": 5,
            "max_attempts": 2,
        },
    )
    chown_tree(workdir)
    with running_cluster("/bin/false") as cluster:
        cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        for _ in range(6):
            cluster.psql("INSERT INTO t SELECT generate_series(1, 1000)")
            cluster.psql("SELECT pg_switch_wal()")
        cluster.stop("fast")
        status = cluster.pgdata / "pg_wal" / "archive_status"
        segments = sorted(p.name[:-6] for p in status.glob("*.ready") if len(p.name) == 30)
        assert len(segments) >= 6, segments
        yield Stalled(cluster, workdir, repo, config, segments)
    shutil.rmtree(workdir, ignore_errors=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_call_archives_the_ready_files_and_later_calls_need_no_storage(
    stalled: Stalled,
) -> None:
    first, *rest = stalled.segments
    res = stalled.cloudbm("wal-push", f"pg_wal/{first}")
    assert res.returncode == 0, res.stderr
    stalled.archived_by_postgres(first)
    stalled.wait_archived(rest)
    away = stalled.repo.with_name("repo.away")
    stalled.repo.rename(away)  # from now on any storage access fails
    try:
        for name in rest:
            res = stalled.cloudbm("wal-push", f"pg_wal/{name}")
            assert res.returncode == 0, (name, res.stderr)
            stalled.archived_by_postgres(name)
    finally:
        away.rename(stalled.repo)
    archived = {p.name for p in stalled.repo.glob("wal/*/*") if len(p.name) == 24}
    assert set(stalled.segments) <= archived


def test_a_file_changed_after_its_upload_is_not_taken_for_archived(stalled: Stalled) -> None:
    first, second, *_ = stalled.segments
    assert stalled.cloudbm("wal-push", f"pg_wal/{first}").returncode == 0
    stalled.wait_archived([second])
    target = stalled.cluster.pgdata / "pg_wal" / second
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same name, different bytes: the marker must not vouch for it
    target.write_bytes(bytes(data))
    res = stalled.cloudbm("wal-push", f"pg_wal/{second}")
    assert res.returncode == 5, res.stderr
    assert "different content" in res.stderr


def test_prefetch_serves_recovery_from_the_spool_and_never_invents_a_miss(
    stalled: Stalled,
) -> None:
    for name in stalled.segments:
        assert stalled.cloudbm("wal-push", f"pg_wal/{name}").returncode == 0
        stalled.archived_by_postgres(name)
    stalled.wait_workers()
    first, *rest = stalled.segments
    wal = stalled.cluster.pgdata / "pg_wal"
    res = stalled.cloudbm("wal-fetch", first, "pg_wal/RECOVERYXLOG")
    assert res.returncode == 0, res.stderr
    assert _sha(wal / "RECOVERYXLOG") == _sha(wal / first)
    # the worker keeps running while recovery keeps asking; wait until it spooled the rest
    deadline = time.monotonic() + 30
    while len(list(stalled.workdir.glob("spool/*/prefetch/0*"))) < len(rest):
        assert time.monotonic() < deadline, "prefetch never filled the spool"
        time.sleep(0.05)
    away = stalled.repo.with_name("repo.away")
    stalled.repo.rename(away)
    try:
        for name in rest:
            res = stalled.cloudbm("wal-fetch", name, "pg_wal/RECOVERYXLOG")
            assert res.returncode == 0, (name, res.stderr)
            assert _sha(wal / "RECOVERYXLOG") == _sha(wal / name)
        # beyond the spool, with storage gone: an error, never "not found"
        res = stalled.cloudbm("wal-fetch", "0000000100000000000000FF", "pg_wal/RECOVERYXLOG")
        assert res.returncode > 125, (res.returncode, res.stderr)
    finally:
        away.rename(stalled.repo)
    res = stalled.cloudbm("wal-fetch", "0000000100000000000000FF", "pg_wal/RECOVERYXLOG")
    assert res.returncode == 1, res.stderr


def test_a_segment_asked_for_again_after_a_miss_is_served_promptly(stalled: Stalled) -> None:
    """At promotion PostgreSQL asks once more for the last segment it restored, after it has
    probed past the end of the archive. The prefetch worker delivered that segment already
    and it was taken: the second request must be fetched again at once, not left to wait
    for the worker to go idle and exit."""
    for name in stalled.segments:
        assert stalled.cloudbm("wal-push", f"pg_wal/{name}").returncode == 0
        stalled.archived_by_postgres(name)
    stalled.wait_workers()
    wal = stalled.cluster.pgdata / "pg_wal"
    for name in stalled.segments:
        res = stalled.cloudbm("wal-fetch", name, "pg_wal/RECOVERYXLOG")
        assert res.returncode == 0, (name, res.stderr)
    res = stalled.cloudbm("wal-fetch", "0000000100000000000000FF", "pg_wal/RECOVERYXLOG")
    assert res.returncode == 1, res.stderr
    last = stalled.segments[-1]
    started = time.monotonic()
    res = stalled.cloudbm("wal-fetch", last, "pg_wal/RECOVERYXLOG")
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert _sha(wal / "RECOVERYXLOG") == _sha(wal / last)
    # the worker idles out after 3 s; a fetch that waited for that would take longer
    assert took < 2.0, f"the repeated request took {took:.2f}s"
