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
from typing import Any

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

    def cloudbm(
        self, *args: str, config: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return as_postgres(
            [str(CLOUDBM), "--config", str(config or self.config), *args],
            cwd=self.cluster.pgdata,
            env=env,
            check=False,
        )

    def push_all(self) -> None:
        """Archive every segment, as PostgreSQL's archiver would, and wait for the pusher."""
        for name in self.segments:
            res = self.cloudbm("wal-push", f"pg_wal/{name}")
            assert res.returncode == 0, (name, res.stderr)
            self.archived_by_postgres(name)
        self.wait_workers()

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


# --- local state, deadlines, bad input, the worker's robustness -------------------------------


def _worker_running(stalled: Stalled) -> bool:
    import fcntl

    locks = list(stalled.workdir.glob("spool/*/prefetch.lock"))
    assert locks, "no prefetch worker was ever started"
    with open(locks[0]) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _wait_spooled(stalled: Stalled, names: list[str]) -> None:
    deadline = time.monotonic() + 30
    while not set(names) <= {p.name for p in stalled.workdir.glob("spool/*/prefetch/*")}:
        assert time.monotonic() < deadline, "prefetch never filled the spool"
        time.sleep(0.05)


def _secret_forms(secret: str) -> list[bytes]:
    """The secret and what follows from it by guessing: its common digests."""
    import zlib

    raw = secret.encode()
    forms = [raw]
    for algo in ("sha256", "sha1", "md5"):
        forms.append(hashlib.new(algo, raw).hexdigest().encode())
        forms.append(hashlib.new(algo, raw).digest())
    forms.append(f"{zlib.crc32(raw):08x}".encode())
    return forms


def test_no_secret_reaches_local_state_and_local_files_are_private(stalled: Stalled) -> None:
    """With a passphrase and other secrets in the environment, a real wal-push and wal-fetch
    run (background pusher, prefetch worker, fast path) leaves none of them, nor a digest of
    them, in any file under the spool or cache directories, and every such file is 0600."""
    import os
    import uuid

    from tests.integration.pgcluster import postgres_ids

    tag = uuid.uuid4().hex
    secrets = {
        "CLOUDBM_PASSPHRASE": f"passphrase-{tag}",
        "CLOUDBM_CONNINFO": f"host=/nonexistent password=conninfo-{tag}",
        "CLOUDBM_API_TOKEN": f"token-{tag}",
        "AWS_SECRET_ACCESS_KEY": f"aws-{tag}",
    }
    repo = stalled.workdir / "secret-repo"
    repo.mkdir()
    config = write_config(
        stalled.workdir / "secret.toml",
        "main",
        {
            "repository": f"file://{repo}",
            "spool_directory": str(stalled.workdir / "spool"),
            "encryption": "passphrase",
            "wal_push_ahead": 8,
            "wal_prefetch": 8,
        },
    )
    chown_tree(stalled.workdir)
    began = time.time() - 1
    for name in stalled.segments:
        res = stalled.cloudbm("wal-push", f"pg_wal/{name}", config=config, env=secrets)
        assert res.returncode == 0, (name, res.stderr)
        stalled.archived_by_postgres(name)
    stalled.wait_workers()
    for name in [*stalled.segments, "0000000100000000000000FF", "00000002.history"]:
        res = stalled.cloudbm("wal-fetch", name, "pg_wal/RECOVERYXLOG", config=config, env=secrets)
        assert res.returncode in (0, 1), (name, res.stderr)
    stalled.wait_workers()

    cache = Path(f"/var/tmp/cloudbm-{postgres_ids()[0]}")
    files = [p for p in (stalled.workdir / "spool").rglob("*") if p.is_file()]
    files += [p for p in cache.rglob("*") if p.is_file() and p.stat().st_mtime >= began]
    assert any(p.name.startswith("settings-") for p in files), "the fast-path cache was not written"
    forms = {name: _secret_forms(value) for name, value in secrets.items()}
    for path in files:
        data = path.read_bytes()
        for name, variants in forms.items():
            assert not any(v in data for v in variants), f"{name} (or a digest) is in {path}"
        mode = path.stat().st_mode & 0o777
        assert mode == 0o600, f"{path} has mode {mode:o}"
    for directory in [p for p in (stalled.workdir / "spool").rglob("*") if p.is_dir()]:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert os.stat(cache).st_mode & 0o777 == 0o700


def test_a_bad_destination_is_one_clear_line_and_the_fetch_error_status(
    stalled: Stalled,
) -> None:
    """A destination whose directory is missing, that is a directory, or that cannot be
    written: one line naming the path, wal-fetch's error status (never 1, never 'unexpected'),
    nothing left behind, and the spooled segment still served once the destination is right."""
    stalled.push_all()
    first, second, *_ = stalled.segments
    pgdata = stalled.cluster.pgdata
    assert stalled.cloudbm("wal-fetch", first, "pg_wal/RECOVERYXLOG").returncode == 0
    _wait_spooled(stalled, [second])
    locked = pgdata / "locked"
    locked.mkdir(mode=0o755)  # owned by root: postgres cannot write into it
    before = sorted(p.name for p in (pgdata / "pg_wal").iterdir())
    cases = {
        "pg_wal/no-such-dir/RECOVERYXLOG": "pg_wal/no-such-dir",
        "pg_wal": "pg_wal",
        f"{locked}/RECOVERYXLOG": str(locked),
    }
    for dest, named in cases.items():
        for name in (second, "0000000100000000000000FF"):  # spooled, and not archived at all
            started = time.monotonic()
            res = stalled.cloudbm("wal-fetch", name, dest)
            took = time.monotonic() - started
            assert res.returncode == 126, (dest, name, res.returncode, res.stderr)
            line = res.stderr.strip()
            assert "\n" not in line and "unexpected" not in line, line
            assert named in line, line
            assert took < 3.0, f"{dest}: answered after {took:.1f}s"
    assert not (pgdata / "pg_wal" / "no-such-dir").exists()
    assert list(locked.iterdir()) == []
    assert sorted(p.name for p in (pgdata / "pg_wal").iterdir()) == before
    res = stalled.cloudbm("wal-fetch", second, "pg_wal/RECOVERYXLOG")
    assert res.returncode == 0, res.stderr
    assert _sha(pgdata / "pg_wal" / "RECOVERYXLOG") == _sha(pgdata / "pg_wal" / second)


def test_wal_fetch_answers_within_operation_timeout_when_storage_stalls(
    stalled: Stalled, localstack_endpoints: Any
) -> None:
    """Storage that accepts requests and never answers (the fault proxy holds every WAL GET):
    the worker and the call share one operation_timeout, end to end, and the answer is the
    error status (PostgreSQL stops recovery), never 'not found'."""
    from tests.integration.faults import start_proxy, through_proxy
    from tests.integration.repos import make_target

    timeout = 4.0
    target = make_target("s3", localstack_endpoints, stalled.workdir)

    def config_for(keys: dict[str, Any], name: str) -> Path:
        return write_config(
            stalled.workdir / name,
            "main",
            {
                **keys,
                "repository": target.url,
                "spool_directory": str(stalled.workdir / "spool"),
                "wal_push_ahead": 0,
                "wal_prefetch": 8,
                "operation_timeout": timeout,
            },
        )

    first = stalled.segments[0]
    direct = config_for(target.keys, "s3.toml")
    res = stalled.cloudbm("wal-push", f"pg_wal/{first}", config=direct, env=target.env)
    assert res.returncode == 0, res.stderr
    with start_proxy(
        "s3",
        localstack_endpoints,
        rate=1.0,
        kinds=["hold"],
        only=r"^GET .*/wal/",
        hold_seconds=20,
        seed=9,
    ) as proxy:
        proxied = through_proxy(target, proxy)
        config = config_for(proxied.keys, "s3-held.toml")
        started = time.monotonic()
        res = stalled.cloudbm(
            "wal-fetch", first, "pg_wal/RECOVERYXLOG", config=config, env=proxied.env
        )
        took = time.monotonic() - started
        assert proxy.counts["hold"] >= 1, proxy.summary()
    assert res.returncode == 126, (res.returncode, res.stderr)
    assert "not in the archive" not in res.stderr
    # The bound is the caller's wait; starting and ending a Python process (as root through
    # runuser, on a busy machine) comes on top of it.
    assert took <= timeout + 1.5, f"wal-fetch took {took:.1f}s with operation_timeout {timeout}s"
    assert not (stalled.cluster.pgdata / "pg_wal" / "RECOVERYXLOG").exists()
    stalled.wait_workers()


def test_the_prefetch_worker_survives_a_failure_writing_its_spool(stalled: Stalled) -> None:
    """The spool's miss records cannot be written (a read-only or broken /var/tmp): the
    worker reports it once in its log and keeps serving; misses are still answered 1."""
    stalled.push_all()
    first, second, *_ = stalled.segments
    assert stalled.cloudbm("wal-fetch", first, "pg_wal/RECOVERYXLOG").returncode == 0
    (absent,) = stalled.workdir.glob("spool/*/absent")
    absent.chmod(0o500)  # the worker (postgres) can no longer record a miss
    try:
        for missing in ("0000000100000000000000FE", "0000000100000000000000FF"):
            res = stalled.cloudbm("wal-fetch", missing, "pg_wal/RECOVERYXLOG")
            assert res.returncode == 1, (missing, res.stderr)
            assert _worker_running(stalled), "the prefetch worker died"
        res = stalled.cloudbm("wal-fetch", second, "pg_wal/RECOVERYXLOG")
        assert res.returncode == 0, res.stderr
        assert _worker_running(stalled), "the prefetch worker died"
    finally:
        absent.chmod(0o700)
    stalled.wait_workers()
    (log,) = stalled.workdir.glob("spool/*/worker.log")
    text = log.read_text()
    # reported once, with its traceback; the rest counted in one line as the worker exits
    assert text.count("prefetch worker: unexpected PermissionError") == 1, text
    assert text.count("Traceback") == 1, text
    assert "errors it survived" in text, text


def _fetch_without_full_path(
    stalled: Stalled, name: str
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """wal-fetch through `python -m cloudbm` with -X importtime: (result, whether the full
    command line, cloudbm.cli, was imported)."""
    import sys

    res = as_postgres(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "cloudbm",
            "--config",
            str(stalled.config),
            "wal-fetch",
            name,
            "pg_wal/RECOVERYXLOG",
        ],
        cwd=stalled.cluster.pgdata,
        check=False,
    )
    return res, "cloudbm.cli" in res.stderr


def test_end_of_recovery_misses_are_answered_locally_and_never_stale(stalled: Stalled) -> None:
    """At the end of recovery PostgreSQL asks for the next segment and for history files that
    do not exist. With the worker running, those misses are answered without the full command
    (a fresh 404 the worker got after the call asked), and an object archived a moment later
    is found by the very next call."""
    stalled.push_all()
    first = stalled.segments[0]
    assert stalled.cloudbm("wal-fetch", first, "pg_wal/RECOVERYXLOG").returncode == 0
    assert _worker_running(stalled)
    nxt = "0000000100000000000000FF"
    for name in (nxt, nxt, "00000002.history", "00000001.history"):
        res, full = _fetch_without_full_path(stalled, name)
        assert res.returncode == 1, (name, res.returncode, res.stderr[-2000:])
        assert not full, f"{name}: the miss needed the full command"
    # A new timeline appears: the next probe must see it at once, not a remembered miss.
    history = stalled.cluster.pgdata / "pg_wal" / "00000002.history"
    history.write_text(
        f"1\t0/{int(first[16:], 16) << 20 | 0x100:X}\tno recovery target specified\n"
    )
    chown_tree(history)
    res = stalled.cloudbm("wal-push", "pg_wal/00000002.history")
    assert res.returncode == 0, res.stderr
    res, _ = _fetch_without_full_path(stalled, "00000002.history")
    assert res.returncode == 0, res.stderr[-2000:]
    restored = stalled.cluster.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert restored.read_text() == history.read_text()
