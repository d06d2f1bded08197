"""The WAL commands' local state in use: modes of every file they write, the fast path's
answers and the prefetch worker, in-process (the integration tests run them as PostgreSQL
does; tests/unit/test_localstate.py covers the format itself)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloudbm import config, fastpath, fsutil, localstate, logs
from cloudbm.commands import wal_fetch
from cloudbm.errors import ObjectNotFoundError
from cloudbm.localstate import take_lock
from cloudbm.localstate.spool import Markers, Spool, spool_root
from cloudbm.localstate.workers import spawn_worker

FLAGS: dict[str, object] = {
    "config": None,
    "server": None,
    "repository": "file:///srv/repo",
    "pgdata": None,
}
VALUES: dict[str, object] = {"spool_root": "/var/tmp/spool", "wal_push_ahead": 8, "wal_prefetch": 8}
SEGMENTS = [f"0000000100000000000000{i:02X}" for i in range(1, 8)]


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- modes ----------------------------------------------------------------------------------


def test_local_state_files_are_private_whatever_the_umask(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file cloudbm writes under the spool and cache directories is 0600 and every
    directory 0700, with a permissive umask too; so are the files it restores into pg_wal."""
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
        spawn_worker(root, [], ["--version"]).wait(30)
        localstate.remember_settings(FLAGS, VALUES)
        toml = tmp_path / "cloudbm.toml"
        toml.write_text('[servers.main]\nrepository = "file:///srv/repo"\n')
        config.read_config_file(toml)
        assert spool.take(SEGMENTS[1], pg_wal / "RECOVERYXLOG")
        fsutil.write_durably(pg_wal / "RECOVERYHISTORY", b"1\t0/1000000\tno target\n")
    finally:
        os.umask(previous)
    checked = 0
    assert any(p.name.startswith("config-") for p in cache_dir.iterdir())
    for base in (tmp_path / "spool", cache_dir, pg_wal):
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

    def __enter__(self) -> _FlakyRepository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

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
    monkeypatch.setattr(config.Settings, "open_repository", lambda settings: repo)
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
