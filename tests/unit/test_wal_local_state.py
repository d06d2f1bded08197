"""The WAL commands' local state: the fast-path cache, the spool and markers, the fast path's
answers and the prefetch worker, in-process (the integration tests run them as PostgreSQL
does)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloudbm import config, fastpath, logs
from cloudbm.commands import wal_fetch, wal_spool
from cloudbm.commands.wal_spool import Markers, Spool, spool_root, take_lock
from cloudbm.errors import ObjectNotFoundError

FLAGS: dict[str, object] = {
    "config": None,
    "server": None,
    "repository": "file:///srv/repo",
    "pgdata": None,
}
VALUES: dict[str, object] = {"spool_root": "/var/tmp/spool", "wal_push_ahead": 8, "wal_prefetch": 8}
SEGMENTS = [f"0000000100000000000000{i:02X}" for i in range(1, 8)]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fast-path cache in a private temporary directory, with no CLOUDBM_* variable set."""
    directory = tmp_path / "cache"
    monkeypatch.setattr(fastpath, "_cache_dir", lambda: str(directory))
    for name in list(os.environ):
        if name.startswith("CLOUDBM_"):
            monkeypatch.delenv(name)
    return directory


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- the fast-path cache ----------------------------------------------------------------------


def test_the_fast_path_cache_is_the_same_whatever_the_secrets(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of a secret reaches the cache: not the value, not a digest, not even a file
    name that differs with it (so nothing can be guessed back from it)."""
    seen = []
    for secret in ("first-secret-passphrase", "second-secret-passphrase"):
        shutil.rmtree(cache_dir, ignore_errors=True)
        monkeypatch.setenv("CLOUDBM_PASSPHRASE", secret)
        monkeypatch.setenv("CLOUDBM_CONNINFO", f"host=db password={secret}")
        monkeypatch.setenv("CLOUDBM_API_TOKEN", secret)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        fastpath.remember(FLAGS, VALUES)
        contents = _contents(cache_dir)
        assert contents, "nothing was cached"
        for data in contents.values():
            assert secret.encode() not in data
        assert fastpath._recall(FLAGS) == VALUES
        seen.append(contents)
    assert seen[0] == seen[1]


def test_the_fast_path_cache_follows_every_variable_its_values_come_from(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fastpath.remember(FLAGS, VALUES)
    assert fastpath._recall(FLAGS) == VALUES
    for name in (
        "CLOUDBM_CONFIG",
        "CLOUDBM_SERVER",
        "CLOUDBM_REPOSITORY",
        "CLOUDBM_SPOOL_DIRECTORY",
        "CLOUDBM_WAL_PREFETCH",
        "CLOUDBM_WAL_PUSH_AHEAD",
    ):
        monkeypatch.setenv(name, "changed")
        assert fastpath._recall(FLAGS) is None, f"{name} changed and the cache still answered"
        monkeypatch.delenv(name)
    assert fastpath._recall(FLAGS) == VALUES
    for flag in ("config", "server", "repository", "pgdata"):
        assert fastpath._recall({**FLAGS, flag: "other"}) is None, flag


def test_a_value_the_cache_key_does_not_cover_is_not_cached(cache_dir: Path) -> None:
    fastpath.remember(FLAGS, {**VALUES, "operation_timeout": 5.0})
    assert fastpath._recall(FLAGS) is None


def test_cache_files_of_older_versions_are_removed(cache_dir: Path) -> None:
    """They were keyed by every CLOUDBM_* variable, the passphrase included."""
    cache_dir.mkdir(mode=0o700)
    legacy = cache_dir / "fast-0123abcd.bin"
    legacy.write_bytes(b"CLOUDBM_PASSPHRASE=secret")
    fastpath.remember(FLAGS, VALUES)
    assert not legacy.exists()
    assert fastpath._recall(FLAGS) == VALUES


# --- modes ----------------------------------------------------------------------------------


def test_local_state_files_are_private_whatever_the_umask(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file cloudbm writes under the spool and cache directories is 0600 and every
    directory 0700, with a permissive umask too; so are the files it restores into pg_wal."""
    monkeypatch.setattr(config, "_spool_default", lambda: str(tmp_path / "config-cache"))
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir(mode=0o700)
    previous = os.umask(0o022)
    try:
        root = spool_root(str(tmp_path / "spool"), "main", "file:///srv/repo")
        spool, markers = Spool(root), Markers(root)
        spool.want(SEGMENTS[0], missed=True)
        spool.store(SEGMENTS[1], b"wal")
        spool.remember_absent(SEGMENTS[2])
        spool.remember_absent("00000002.history", "a-session")
        spool.record_failure(SEGMENTS[3])
        markers.record(SEGMENTS[0], "ab" * 32, os.stat(tmp_path))
        markers.record_failure(SEGMENTS[4])
        fd = take_lock(root / "prefetch.lock", "1 300\n")
        assert fd is not None
        os.close(fd)
        wal_spool.spawn_worker(root, [], ["--version"]).wait(30)
        fastpath.remember(FLAGS, VALUES)
        toml = tmp_path / "cloudbm.toml"
        toml.write_text('[servers.main]\nrepository = "file:///srv/repo"\n')
        config.read_config_file(toml)
        assert spool.take(SEGMENTS[1], pg_wal / "RECOVERYXLOG")
        wal_spool.write_durably(pg_wal / "RECOVERYHISTORY", b"1\t0/1000000\tno target\n")
    finally:
        os.umask(previous)
    checked = 0
    for base in (tmp_path / "spool", cache_dir, tmp_path / "config-cache", pg_wal):
        for path in [base, *base.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path} has mode {mode:o}"
            checked += 1
    assert checked > 15


# --- the fast path's answers ------------------------------------------------------------------


@pytest.fixture
def running_worker(tmp_path: Path) -> Iterator[Spool]:
    """A spool whose prefetch lock is held, as by a running worker (this test plays it)."""
    spool = Spool(spool_root(str(tmp_path / "spool"), "main", "file:///srv/repo"))
    fd = take_lock(spool.lock, "1 300\n")
    assert fd is not None
    try:
        yield spool
    finally:
        os.close(fd)


def _answer_requests(spool: Spool, answer: Callable[[str, int], None]) -> threading.Thread:
    """Play the worker: answer the first request that appears, in a thread."""

    def run() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            name, asked, _missed = spool.wanted()
            if name is not None:
                answer(name, asked)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("name", [SEGMENTS[5], "00000002.history", "00000001.history"])
def test_the_fast_path_answers_not_found_for_a_miss_the_worker_saw_after_the_call_asked(
    running_worker: Spool, tmp_path: Path, name: str
) -> None:
    spool = running_worker
    dest = tmp_path / "RECOVERYXLOG"
    worker = _answer_requests(spool, lambda n, asked: spool.remember_absent(n, when_ns=asked + 1))
    values: dict[str, object] = {"spool_root": str(spool.root)}
    assert fastpath._fetch(values, name, str(dest)) == 1
    worker.join()
    assert not dest.exists()


def test_the_fast_path_never_answers_not_found_from_an_older_miss(
    running_worker: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 for a request sent before this call asked (a prefetch, an earlier call) may be
    stale: the object may have been archived since. The full command decides then."""
    monkeypatch.setattr(fastpath, "FAST_WAIT_SECONDS", 0.3)
    spool = running_worker
    spool.remember_absent(SEGMENTS[5], when_ns=time.time_ns() - 1_000_000)
    started = time.monotonic()
    assert fastpath._fetch({"spool_root": str(spool.root)}, SEGMENTS[5], "x") is None
    assert time.monotonic() - started >= 0.25, "it did not wait for a fresh answer"


def test_the_fast_path_leaves_a_bad_destination_to_the_full_command(
    running_worker: Spool, tmp_path: Path
) -> None:
    spool = running_worker
    worker = _answer_requests(spool, lambda n, asked: spool.remember_absent(n, when_ns=asked))
    dest = tmp_path / "no-such-dir" / "RECOVERYXLOG"
    assert fastpath._fetch({"spool_root": str(spool.root)}, SEGMENTS[5], str(dest)) is None
    worker.join()


def test_the_fast_path_asks_the_worker_for_wal_names_only(running_worker: Spool) -> None:
    values: dict[str, object] = {"spool_root": str(running_worker.root)}
    for name in ("ZZZZZZZZZZZZZZZZZZZZZZZZ", "RECOVERYHISTORY", "0000000G.history", "../x"):
        assert fastpath._fetch(values, name, "x") is None
    assert running_worker.wanted()[0] is None


# --- the prefetch worker ----------------------------------------------------------------------


class _FlakyRepository:
    """A repository whose backend raises what no error mapping expects for one file, as an
    SDK does when a response is cut in the wrong place."""

    def __init__(self, broken: str, present: set[str]) -> None:
        self.broken = broken
        self.present = present
        self.storage = SimpleNamespace(close=lambda: None)

    def read_descriptor(self) -> Any:
        return SimpleNamespace(wal_segment_size=16 * 1024 * 1024)

    def get_bytes(self, key: str) -> tuple[bytes, Any]:
        name = key.rsplit("/", 1)[-1]
        if name == self.broken:
            raise ValueError("Invalid timestamp")
        if name in self.present:
            return b"wal " + name.encode(), None
        raise ObjectNotFoundError(f"{key} does not exist")


def test_the_prefetch_worker_survives_a_backend_exception_and_reports_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = SEGMENTS[1]
    repo = _FlakyRepository(broken, set(SEGMENTS))
    monkeypatch.setattr("cloudbm.commands.context.open_repository", lambda settings: repo)
    monkeypatch.setattr(wal_fetch, "WORKER_IDLE_EXIT", 0.5)
    logs.configure(verbose=0, quiet=False, command="wal-prefetch")
    settings = config.Settings(
        repository="file:///srv/repo", spool_directory=str(tmp_path / "spool"), wal_prefetch=2
    )
    spool = Spool(spool_root(settings.spool_directory, settings.server, settings.repository))
    fetched: list[int] = []
    worker = threading.Thread(target=lambda: fetched.append(wal_fetch.prefetch_worker(settings)))
    worker.start()
    try:
        for _ in range(2):  # asked twice: two failures, one report
            asked = spool.want(broken, missed=True)
            _until(
                lambda asked=asked: (spool.failed_since_ns(broken) or 0) >= asked,  # type: ignore[misc]
                "the failure record",
            )
        spool.want(SEGMENTS[4])
        _until(lambda: spool.has(SEGMENTS[4]), "the next file, after the failures")
        asked = spool.want("0000000100000000000000FF")
        _until(
            lambda: (spool.absent_since_ns("0000000100000000000000FF") or 0) >= asked,
            "a miss record",
        )
    finally:
        worker.join(10)
    assert not worker.is_alive() and fetched, "the worker died, or never stopped"
    err = capsys.readouterr().err
    assert err.count("prefetch worker: unexpected ValueError fetching") == 1, err
    assert "2 x unexpected ValueError" in err, err
