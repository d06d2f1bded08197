"""cloudbm.localstate and cloudbm.fsutil: the format of the local state and its locks.

Names and records are a format: a worker of one release and a call of the next meet in the same
spool during an upgrade. Locks are tested across real processes; crashes are real SIGKILLs in
the middle of writing.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import itertools
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cloudbm
from cloudbm import fsutil, localstate
from cloudbm.localstate import (
    MISS_ANY,
    MISS_FAILED,
    SpoolLayout,
    lock_is_held,
    marker_matches,
    marker_record,
    miss_seen_ns,
    parse_want,
    read_want,
    record_miss,
    seen_since,
    take_lock,
    want_record,
    worker_timeout,
)
from cloudbm.localstate.spool import Markers, Spool, spool_root
from cloudbm.localstate.wait import BoundedWait

FLAGS: dict[str, object] = {
    "config": None,
    "server": None,
    "repository": "file:///srv/repo",
    "pgdata": None,
}
VALUES: dict[str, object] = {"spool_root": "/var/tmp/spool", "wal_push_ahead": 8, "wal_prefetch": 8}
SEGMENT = "000000010000000000000005"
SHA = "ab" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return spool_root(str(tmp_path / "spool"), "main", "file:///srv/repo")


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    """Another process running `code` with this interpreter (and this checkout of cloudbm)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(cloudbm.__file__).parent.parent,
    )


# --- names -----------------------------------------------------------------------------------


def test_every_spool_file_has_the_name_earlier_releases_use(root: Path) -> None:
    """A worker left running by the previous release and a call of this one share a spool."""
    layout = SpoolLayout(root)
    assert root.name == "main-" + hashlib.sha256(b"file:///srv/repo").hexdigest()[:16]
    assert {
        "archived": layout.marker(SEGMENT),
        "push-failed": layout.push_failure(SEGMENT),
        "push.lock": layout.push_lock,
        "prefetch": layout.spooled(SEGMENT),
        "prefetch.lock": layout.prefetch_lock,
        "prefetch.starting": layout.starting,
        "want": layout.want,
        "absent": layout.miss(SEGMENT, "failed"),
        "worker.log": layout.worker_log,
    } == {
        "archived": f"{root}/archived/{SEGMENT}",
        "push-failed": f"{root}/push-failed/{SEGMENT}",
        "push.lock": f"{root}/push.lock",
        "prefetch": f"{root}/prefetch/{SEGMENT}",
        "prefetch.lock": f"{root}/prefetch.lock",
        "prefetch.starting": f"{root}/prefetch.starting",
        "want": f"{root}/want",
        "absent": f"{root}/absent/{SEGMENT}@failed",
        "worker.log": f"{root}/worker.log",
    }
    assert localstate.cache_dir() == f"/var/tmp/cloudbm-{os.getuid()}"


def test_spools_of_two_servers_or_two_repositories_are_apart(tmp_path: Path) -> None:
    base = str(tmp_path / "spool")
    roots = {
        spool_root(base, "main", "s3://bucket/a"),
        spool_root(base, "main", "s3://bucket/b"),
        spool_root(base, "other", "s3://bucket/a"),
    }
    assert len(roots) == 3
    assert spool_root(base, "main", "s3://bucket/a") in roots  # and stable


# --- the fast path's settings cache ----------------------------------------------------------


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
        localstate.remember_settings(FLAGS, VALUES)
        contents = _contents(cache_dir)
        assert contents, "nothing was cached"
        for data in contents.values():
            assert secret.encode() not in data
        assert localstate.recall_settings(FLAGS) == VALUES
        seen.append(contents)
    assert seen[0] == seen[1]


def test_the_fast_path_cache_follows_every_variable_its_values_come_from(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    localstate.remember_settings(FLAGS, VALUES)
    assert localstate.recall_settings(FLAGS) == VALUES
    for name in (
        "CLOUDBM_CONFIG",
        "CLOUDBM_SERVER",
        "CLOUDBM_REPOSITORY",
        "CLOUDBM_SPOOL_DIRECTORY",
        "CLOUDBM_WAL_PREFETCH",
        "CLOUDBM_WAL_PUSH_AHEAD",
    ):
        monkeypatch.setenv(name, "changed")
        assert localstate.recall_settings(FLAGS) is None, (
            f"{name} changed and the cache still answered"
        )
        monkeypatch.delenv(name)
    assert localstate.recall_settings(FLAGS) == VALUES
    for flag in ("config", "server", "repository", "pgdata"):
        assert localstate.recall_settings({**FLAGS, flag: "other"}) is None, flag


def test_a_value_the_cache_key_does_not_cover_is_not_cached(cache_dir: Path) -> None:
    localstate.remember_settings(FLAGS, {**VALUES, "operation_timeout": 5.0})
    assert localstate.recall_settings(FLAGS) is None


def test_cache_files_of_older_versions_are_removed(cache_dir: Path) -> None:
    """The oldest were keyed by every CLOUDBM_* variable, the passphrase included; the next
    are named in a way no call looks for any more."""
    cache_dir.mkdir(mode=0o700)
    legacy = [cache_dir / "fast-0123abcd.bin", cache_dir / "fastpath-0123abcd.bin"]
    for path in legacy:
        path.write_bytes(b"CLOUDBM_PASSPHRASE=secret")
    localstate.remember_settings(FLAGS, VALUES)
    assert not any(path.exists() for path in legacy)
    assert [p.name.startswith("settings-") for p in cache_dir.iterdir()] == [True]
    assert localstate.recall_settings(FLAGS) == VALUES


def test_a_cache_directory_others_can_read_is_not_trusted(cache_dir: Path) -> None:
    localstate.remember_settings(FLAGS, VALUES)
    cache_dir.chmod(0o755)
    assert localstate.recall_settings(FLAGS) is None
    localstate.remember_settings(FLAGS, VALUES)  # tightens it again
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert localstate.recall_settings(FLAGS) == VALUES


def test_a_cache_file_that_is_not_whole_is_ignored(cache_dir: Path) -> None:
    localstate.remember_settings(FLAGS, VALUES)
    (cache,) = cache_dir.iterdir()
    data = cache.read_bytes()
    for cut in range(len(data)):
        cache.write_bytes(data[:cut])
        assert localstate.recall_settings(FLAGS) is None, cut
    cache.write_bytes(data)
    assert localstate.recall_settings(FLAGS) == VALUES


# --- push markers ----------------------------------------------------------------------------


def test_a_push_marker_vouches_for_the_file_it_was_written_for_only(tmp_path: Path) -> None:
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"wal")
    st = os.stat(wal)
    record = marker_record(SHA, st)
    assert (
        record == f"{SHA}\n{st.st_dev} {st.st_ino} 3 {st.st_mtime_ns} {st.st_ctime_ns}\n".encode()
    )
    assert marker_matches(record.decode(), st)
    os.utime(wal, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the same bytes, touched
    assert not marker_matches(record.decode(), os.stat(wal))


def test_no_cut_of_a_push_marker_is_read_as_valid(tmp_path: Path) -> None:
    """What a crash in the middle of writing one in place would leave, at every byte."""
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"wal")
    st = os.stat(wal)
    text = marker_record(SHA, st).decode()
    for cut in range(len(text)):
        assert not marker_matches(text[:cut], st), repr(text[:cut])
    assert not marker_matches(text + "more\n", st)
    assert marker_matches(text, st)


_CRASH_WRITING = """
    import os, signal, sys
    from pathlib import Path
    from cloudbm.localstate.spool import Markers, Spool

    root, wal, what, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    real_write = os.write

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    def half_then_die(fd, data):
        real_write(fd, data[: len(data) // 2])
        die()

    if where == "mid-write":
        os.write = half_then_die
    elif where == "before-rename":
        os.replace = die
    if what == "marker":
        Markers(root).record(wal.name, "ab" * 32, os.stat(wal))
    elif what == "want":
        Spool(root).want(wal.name, missed=True)
    else:
        Spool(root).store(wal.name, wal.read_bytes())
    print("not killed")
"""


@pytest.mark.parametrize(
    ("what", "where"),
    [
        ("marker", "mid-write"),
        ("marker", "before-rename"),
        ("want", "mid-write"),
        ("want", "before-rename"),
        ("spooled", "before-rename"),
    ],
)
def test_a_crash_while_writing_leaves_nothing_half_written_to_read(
    root: Path, tmp_path: Path, what: str, where: str
) -> None:
    """A writer killed (SIGKILL) in the middle of writing a push marker, the want file or a
    prefetched segment: readers see what was there before, never part of the new record;
    the hidden temporary file left behind is cleared by the owner's usual sweep."""
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    wal = pg_wal / SEGMENT
    wal.write_bytes(b"segment bytes " * 100)
    markers, spool = Markers(root), Spool(root)
    earlier = spool.want("000000010000000000000004")
    writer = _python(_CRASH_WRITING, str(root), str(wal), what, where)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL, (out, err)
    leftovers = [p for p in root.rglob(".*") if p.is_file()]
    if what == "marker":
        assert not markers.exists(SEGMENT)
        assert markers.names() == set()
        assert not markers.consume(SEGMENT, os.stat(wal))
        markers.collect_garbage(pg_wal)
    elif what == "want":
        assert spool.wanted() == ("000000010000000000000004", earlier, False)
    else:
        assert not spool.has(SEGMENT)
        assert not spool.take(SEGMENT, pg_wal / "RECOVERYXLOG")
        spool.clear()  # what every new worker does first
    assert leftovers, "the crash left no temporary file: it did not happen mid-write"
    if what != "want":
        assert [p for p in root.rglob(".*") if p.is_file()] == []


_CRASH_REWRITING_MARKER = """
    import os, signal, sys
    from pathlib import Path
    from cloudbm.localstate.spool import Markers

    root, wal = Path(sys.argv[1]), Path(sys.argv[2])
    real_write = os.write

    def half_then_die(fd, data):
        real_write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    os.write = half_then_die
    Markers(root).record(wal.name, "cd" * 32, os.stat(wal))
    print("not killed")
"""


def test_a_crash_while_rewriting_a_marker_leaves_the_old_record_whole(
    root: Path, tmp_path: Path
) -> None:
    """A marker rewritten over an earlier one by a writer killed halfway through: the reader
    gets the earlier record, byte for byte, and it still vouches for its file."""
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"segment bytes")
    st = os.stat(wal)
    markers = Markers(root)
    markers.record(SEGMENT, SHA, st)
    old = Path(SpoolLayout(root).marker(SEGMENT)).read_bytes()
    writer = _python(_CRASH_REWRITING_MARKER, str(root), str(wal))
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL, (out, err)
    assert [p for p in root.rglob(".*") if p.is_file()], "the writer died before writing"
    assert Path(SpoolLayout(root).marker(SEGMENT)).read_bytes() == old == marker_record(SHA, st)
    assert markers.consume(SEGMENT, st)


_REWRITE_LOOP = """
    import os, sys
    from cloudbm.localstate import SpoolLayout, ask
    from cloudbm.fsutil import write_private

    layout, records = SpoolLayout(sys.argv[1]), sys.argv[2:]
    print("ready", flush=True)
    for n in range(2000):
        record = records[n % len(records)]
        write_private(layout.marker("000000010000000000000005"), record.encode())
        ask(layout, record[:24], missed=bool(n % 2), asked_ns=n + 1)
"""


def test_a_reader_in_another_process_sees_whole_records_only_while_they_are_rewritten(
    root: Path, tmp_path: Path
) -> None:
    """Markers and the want file rewritten by one process, read all the while by another:
    every read is an earlier record or the next one, whole, never a mix of both."""
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"wal")
    st = os.stat(wal)
    layout = Markers(root).layout
    records = [marker_record(c * 64, st).decode() for c in "0123456789abcdef"]
    writer = _python(_REWRITE_LOOP, str(root), *records)
    try:
        assert writer.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        reads = 0
        while writer.poll() is None:
            text = localstate.read_marker(layout.marker(SEGMENT))
            if text is not None:
                assert text in records and marker_matches(text, st), repr(text)
                reads += 1
            name, asked, missed = read_want(layout)
            if name is not None:
                assert name == records[(asked - 1) % len(records)][:24], (name, asked)
                assert missed == bool((asked - 1) % 2)
    finally:
        _out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert reads > 0


# --- the want file and miss records ----------------------------------------------------------


def test_the_want_file_says_what_recovery_asked_for_when_and_whether_it_missed(
    root: Path,
) -> None:
    assert want_record(SEGMENT, True, 5) == f"{SEGMENT}\nmissed\n5\n".encode()
    assert parse_want(f"{SEGMENT}\nmissed\n5\n", 99) == (SEGMENT, 5, True)
    assert parse_want(f"{SEGMENT}\n\n7\n", 99) == (SEGMENT, 7, False)
    # a request without its time (an older writer, or cut short): the file's own time
    assert parse_want(f"{SEGMENT}\n", 99) == (SEGMENT, 99, False)
    assert parse_want("", 99) == (None, 99, False)
    layout = SpoolLayout(root)
    assert read_want(layout) == (None, 0, False)
    asked = localstate.ask(layout, SEGMENT, missed=True)
    assert read_want(layout) == (SEGMENT, asked, True)
    assert localstate.ask(layout, "00000002.history", asked_ns=123) == 123
    assert read_want(layout) == ("00000002.history", 123, False)


def test_a_miss_record_carries_the_time_of_the_request_that_got_the_404(root: Path) -> None:
    """At nanosecond precision, whatever the file system's own timestamps, and one record
    per verdict: a 404, a failure, a recovery session's own history miss."""
    layout = Spool(root).layout  # the spool makes its directories
    sent = 1_700_000_000_123_456_789
    assert miss_seen_ns(layout, SEGMENT) is None
    record_miss(layout, SEGMENT, when_ns=sent)
    assert miss_seen_ns(layout, SEGMENT, MISS_ANY) == sent
    assert os.path.exists(f"{root}/absent/{SEGMENT}@any")
    assert seen_since(layout, SEGMENT, MISS_ANY, sent)
    assert not seen_since(layout, SEGMENT, MISS_ANY, sent + 1), "an older answer is stale"
    assert miss_seen_ns(layout, SEGMENT, MISS_FAILED) is None
    record_miss(layout, SEGMENT, MISS_FAILED)
    assert (miss_seen_ns(layout, SEGMENT, MISS_FAILED) or 0) > sent
    record_miss(layout, "00000002.history", "abc-123", when_ns=sent)
    assert miss_seen_ns(layout, "00000002.history", "abc-123") == sent
    assert miss_seen_ns(layout, "00000002.history", MISS_ANY) is None


# --- modes -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
def test_private_files_are_0600_and_directories_0700_whatever_the_umask(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _mode(root) == _mode(root.parent) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert fsutil.private_dir(loose) == str(loose)
    assert _mode(loose) == 0o700, "a directory of ours that is too open is tightened"
    old = loose / "old"
    old.write_bytes(b"old")
    old.chmod(0o644)
    fsutil.write_private(old, b"new")
    assert (old.read_bytes(), _mode(old)) == (b"new", 0o600)
    stale_tmp = loose / f".again.{os.getpid()}.tmp"  # a temporary file a crash left, 0644
    stale_tmp.write_bytes(b"x")
    stale_tmp.chmod(0o644)
    fsutil.write_private(loose / "again", b"again")
    assert _mode(loose / "again") == 0o600
    fsutil.touch_private(loose / "touched", 5)
    assert (_mode(loose / "touched"), os.stat(loose / "touched").st_mtime_ns) == (0o600, 5)
    fsutil.write_durably(loose / "durable", b"durable")
    assert _mode(loose / "durable") == 0o600
    # moved across file systems: copied through a private temporary file
    real_replace = os.replace

    def cross_device(src: str, dest: str) -> None:
        if os.path.basename(src) == "spooled":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dest)

    (loose / "spooled").write_bytes(b"wal")
    monkeypatch.setattr(os, "replace", cross_device)
    fsutil.move_durably(loose / "spooled", loose / "moved")
    assert not (loose / "spooled").exists()
    assert ((loose / "moved").read_bytes(), _mode(loose / "moved")) == (b"wal", 0o600)
    assert sorted(p.name for p in loose.iterdir() if p.name.startswith(".")) == []


# --- locks -----------------------------------------------------------------------------------

_HOLD = """
    import sys
    from cloudbm.localstate import take_lock

    fd = take_lock(sys.argv[1], sys.argv[2])
    print("won" if fd is not None else "lost", flush=True)
    if fd is not None:
        sys.stdin.read()  # hold it until told to go
"""


def test_of_processes_contending_for_a_worker_lock_exactly_one_wins(root: Path) -> None:
    lock = SpoolLayout(root).prefetch_lock
    contenders = [_python(_HOLD, lock, f"{n} 300\n") for n in range(4)]
    try:
        results = [p.stdout.readline().strip() for p in contenders]  # type: ignore[union-attr]
        assert sorted(results) == ["lost", "lost", "lost", "won"], results
        assert lock_is_held(lock)
        assert take_lock(lock) is None, "this process got a lock another holds"
        winner = results.index("won")
        assert worker_timeout(lock) == 300.0
        assert Path(lock).read_text() == f"{winner} 300\n"
    finally:
        for p in contenders:
            p.communicate(timeout=30)
    assert not lock_is_held(lock), "the lock outlived its holder"
    fd = take_lock(lock)
    assert fd is not None
    os.close(fd)


def test_a_lock_whose_holder_died_is_free_at_once(root: Path) -> None:
    """No stale lock: the kernel drops a flock with its holder, whatever the file says."""
    lock = SpoolLayout(root).push_lock
    holder = _python(_HOLD, lock, "4242 30\n")
    try:
        assert holder.stdout.readline().strip() == "won"  # type: ignore[union-attr]
        assert lock_is_held(lock)
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert Path(lock).read_text() == "4242 30\n", "the dead holder's note stays"
    assert not lock_is_held(lock)
    fd = take_lock(lock, "1 5\n")
    assert fd is not None
    try:
        assert (Path(lock).read_text(), worker_timeout(lock), _mode(lock)) == ("1 5\n", 5.0, 0o600)
    finally:
        os.close(fd)


_PROBE = """
    import sys
    from cloudbm.localstate import lock_is_held, take_lock

    held = lock_is_held(sys.argv[1])
    fd = take_lock(sys.argv[1], "probe\\n")
    print("held" if held else "free", "won" if fd is not None else "lost", flush=True)
"""


def test_another_process_sees_a_lock_this_process_holds_and_takes_it_once_released(
    root: Path,
) -> None:
    """The fast path and the commands probe a worker's lock from other processes: the probe
    tells a held lock from a free one and never takes it from its holder."""
    lock = SpoolLayout(root).push_lock
    fd = take_lock(lock, "7 60\n")
    assert fd is not None
    try:
        probe = _python(_PROBE, lock)
        out, err = probe.communicate(timeout=60)
        assert (probe.returncode, out.split()) == (0, ["held", "lost"]), err
        assert lock_is_held(lock)
        assert Path(lock).read_text() == "7 60\n", "the loser wrote into the holder's lock"
    finally:
        os.close(fd)
    probe = _python(_PROBE, lock)
    out, err = probe.communicate(timeout=60)
    assert (probe.returncode, out.split()) == (0, ["free", "won"]), err
    assert not lock_is_held(lock), "the probe's lock outlived it"


def test_probing_a_lock_that_was_never_taken_creates_nothing(root: Path) -> None:
    lock = SpoolLayout(root).push_lock
    assert not lock_is_held(lock)
    assert not os.path.exists(lock)
    assert worker_timeout(lock) is None


# --- the bounded wait ------------------------------------------------------------------------


class _Clock:
    """A monotonic clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_bounded_wait_ends_at_its_deadline_and_never_sleeps_past_it() -> None:
    clock = _Clock()
    wait = BoundedWait(1.0, poll=0.3, clock=clock, sleep=clock.sleep)
    rounds = 0
    while wait.again():
        rounds += 1
    assert rounds == 4
    assert clock.sleeps == pytest.approx([0.3, 0.3, 0.3, 0.1])
    assert clock.now == pytest.approx(1001.0)
    assert wait.expired() and not wait.gone
    absolute = BoundedWait(deadline=clock.now - 1, poll=0.3, clock=clock, sleep=clock.sleep)
    assert not absolute.again() and clock.sleeps[4:] == []
    with pytest.raises(TypeError):
        BoundedWait(poll=0.1)


def test_a_bounded_wait_asks_whether_the_worker_lives_at_once_then_every_check() -> None:
    clock = _Clock()
    probes: list[float] = []

    def alive() -> bool:
        probes.append(clock.now)
        return True

    wait = BoundedWait(1.0, poll=0.01, alive=alive, clock=clock, sleep=clock.sleep)
    while wait.again():
        pass
    assert probes[0] == 1000.0, "the first probe is at once"
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(gap >= 0.1 - 1e-9 for gap in gaps), gaps
    assert len(probes) == 10


def test_a_bounded_wait_stops_at_once_when_the_worker_is_gone() -> None:
    clock = _Clock()
    answers = iter([True, False])
    wait = BoundedWait(
        10.0,
        poll=0.05,
        alive=lambda: next(answers),
        check_every=0.1,
        clock=clock,
        sleep=clock.sleep,
    )
    assert wait.again() and wait.again() and wait.again()  # probed at 0, sleeps until 0.1
    assert not wait.again()
    assert wait.gone and not wait.expired()
    assert len(clock.sleeps) == 3, "it slept after the worker was found gone"
    wait.alive = None  # the caller carries on without the worker, to the deadline
    while wait.again():
        assert not wait.gone
    assert wait.expired() and not wait.gone


# --- standard library only --------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cloudbm":
                found.update(f"cloudbm.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def test_local_state_and_the_fast_path_import_the_standard_library_only() -> None:
    package = Path(cloudbm.__file__).parent
    ours = {"cloudbm.localstate", "cloudbm.fsutil"}
    files = [*sorted((package / "localstate").glob("*.py")), package / "fsutil.py"]
    for path in [*files, package / "fastpath.py"]:
        for name in _imports(path):
            allowed = name.split(".")[0] in sys.stdlib_module_names or any(
                name == mine or name.startswith(f"{mine}.") for mine in ours
            )
            assert allowed, f"{path.relative_to(package)} imports {name}"


def test_the_entry_module_loads_only_the_fast_path_before_it_is_needed() -> None:
    """What every archive_command and restore_command call pays before it knows whether
    local state answers it: four small modules of cloudbm and no other module."""
    probe = _python(
        """
        import sys
        before = set(sys.modules)
        import cloudbm.entry
        print(" ".join(sorted(set(sys.modules) - before)))
        """
    )
    out, err = probe.communicate(timeout=60)
    assert probe.returncode == 0, err
    assert out.split() == ["cloudbm", "cloudbm.entry", "cloudbm.fastpath", "cloudbm.localstate"]
