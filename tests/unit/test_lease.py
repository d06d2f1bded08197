"""The repository's backup lease: its pure decisions (table tests) and the lease class on a real
file:// repository, with time moved by backdating objects rather than by sleeping."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudbm.errors import TransientStorageError
from cloudbm.repository import Repository, RepositoryConfig
from cloudbm.repository.lease import (
    Lease,
    LeaseHeldError,
    LeaseLostError,
    LeaseRecord,
    LeaseSeen,
    ProcessIdentity,
    backup_lease,
    blocking_lease,
    expired,
    lapsed,
    next_number,
    owner_gone,
    process_start_ticks,
    read_listing,
    successor,
)
from cloudbm.storage.base import ObjectInfo
from cloudbm.storage.local import LocalStorage
from cloudbm.storage.retry import AppendOnlyStorage

T0 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
PREFIX = "locks/backup/"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- pure decisions --------------------------------------------------------------------------


def test_a_listing_groups_lease_objects_and_ignores_probes_and_strangers() -> None:
    infos = [
        ObjectInfo(f"{PREFIX}lease-0000000001.json", 10, modified=at(0)),
        ObjectInfo(f"{PREFIX}lease-0000000001.hb-00000001", 10, modified=at(5)),
        ObjectInfo(f"{PREFIX}lease-0000000001.hb-00000002", 10, modified=at(9)),
        ObjectInfo(f"{PREFIX}lease-0000000001.released", 10, modified=at(10)),
        ObjectInfo(f"{PREFIX}lease-0000000002.json", 10, modified=at(20)),
        ObjectInfo(f"{PREFIX}lease-0000000002.probe-abc-1", 10, modified=at(99)),
        ObjectInfo(f"{PREFIX}lease-12.json", 10, modified=at(99)),
        ObjectInfo(f"{PREFIX}notes.txt", 10, modified=at(99)),
    ]
    assert read_listing(PREFIX, infos) == {
        1: LeaseSeen(1, taken=at(0), last_heartbeat=at(9), released=True),
        2: LeaseSeen(2, taken=at(20)),  # a probe is no sign of life
    }


@pytest.mark.parametrize(
    ("leases", "blocking", "next_"),
    [
        ({}, None, 1),
        ({1: LeaseSeen(1, taken=at(0))}, 1, 2),
        ({1: LeaseSeen(1, taken=at(0), released=True)}, None, 2),
        # an older live-looking lease does not matter once a newer one exists
        ({1: LeaseSeen(1, taken=at(0)), 2: LeaseSeen(2, taken=at(5), released=True)}, None, 3),
        # traces without a lease object (a woken holder's late heartbeat) block nothing,
        # but their number is never reused
        ({3: LeaseSeen(3, last_heartbeat=at(1))}, None, 4),
        ({2: LeaseSeen(2, taken=at(0)), 3: LeaseSeen(3, last_heartbeat=at(1))}, 2, 4),
    ],
)
def test_which_lease_blocks_a_newcomer_and_which_number_it_takes(
    leases: dict[int, LeaseSeen], blocking: int | None, next_: int
) -> None:
    found = blocking_lease(leases)
    assert (found.number if found else None) == blocking
    assert next_number(leases) == next_


@pytest.mark.parametrize(
    ("seen", "now", "ttl", "is_expired"),
    [
        (LeaseSeen(1, taken=at(0)), at(29), 30, False),
        (LeaseSeen(1, taken=at(0)), at(30), 30, True),
        (LeaseSeen(1, taken=at(0), last_heartbeat=at(20)), at(45), 30, False),  # renewed
        (LeaseSeen(1, taken=at(0), last_heartbeat=at(20)), at(50), 30, True),
        # the storage clock behind the lease (granularity, skew between its nodes): not expired
        (LeaseSeen(1, taken=at(10)), at(0), 30, False),
        # no storage time to judge by: respected
        (LeaseSeen(1, taken=at(0)), None, 30, False),
        (LeaseSeen(1), at(100), 30, False),
    ],
)
def test_a_lease_expires_ttl_after_its_newest_sign_of_life_on_the_storage_clock(
    seen: LeaseSeen, now: datetime | None, ttl: float, is_expired: bool
) -> None:
    assert expired(seen, now, ttl) is is_expired


@pytest.mark.parametrize(
    ("mine", "leases", "later"),
    [
        (2, {2: LeaseSeen(2, taken=at(0))}, None),
        (2, {2: LeaseSeen(2, taken=at(0)), 3: LeaseSeen(3, taken=at(9))}, 3),
        (2, {3: LeaseSeen(3, taken=at(9)), 5: LeaseSeen(5, taken=at(19))}, 5),  # ours cleaned
        (2, {1: LeaseSeen(1, taken=at(0)), 2: LeaseSeen(2, taken=at(5))}, None),
        (2, {3: LeaseSeen(3, last_heartbeat=at(9))}, None),  # a trace, not a lease
    ],
)
def test_a_holder_has_lost_its_lease_once_a_later_one_was_taken(
    mine: int, leases: dict[int, LeaseSeen], later: int | None
) -> None:
    assert successor(mine, leases) == later


@pytest.mark.parametrize(
    ("since", "ttl", "gone"), [(0.0, 30, False), (29.9, 30, False), (30.0, 30, True)]
)
def test_a_holder_that_has_not_renewed_within_its_ttl_gives_up(
    since: float, ttl: float, gone: bool
) -> None:
    assert lapsed(since, ttl) is gone


HERE = ProcessIdentity("boot-a", "pid:[4026531836]", 1000)


@pytest.mark.parametrize(
    ("theirs", "ticks_now", "is_gone"),
    [
        (ProcessIdentity("boot-a", "pid:[4026531836]", 500), None, True),  # no such pid
        (ProcessIdentity("boot-a", "pid:[4026531836]", 500), 777, True),  # pid reused
        (ProcessIdentity("boot-a", "pid:[4026531836]", 500), 500, False),  # still running
        (ProcessIdentity("boot-b", "pid:[4026531836]", 500), None, False),  # another boot
        (ProcessIdentity("boot-a", "pid:[4026532000]", 500), None, False),  # a container
        (ProcessIdentity("", "", 0), None, False),  # not Linux: expiry only
    ],
)
def test_a_holder_is_known_gone_only_in_our_own_boot_and_pid_namespace(
    theirs: ProcessIdentity, ticks_now: int | None, is_gone: bool
) -> None:
    record = LeaseRecord(1, "o", "db1", 4242, "postgres", 30, "t", process=theirs)
    assert owner_gone(record, HERE, lambda pid: ticks_now) is is_gone


def test_an_unreadable_lease_record_still_blocks_with_an_unknown_owner() -> None:
    record = LeaseRecord.from_json(b"not json", 7)
    assert (record.lease, record.host, record.ttl) == (7, "?", 0.0)


# --- the lease on a real file:// repository --------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


@pytest.fixture
def leases() -> Iterator[list[Lease]]:
    made: list[Lease] = []
    yield made
    for lease in made:
        lease._stop.set()


def _lease(root: Path, made: list[Lease], ttl: float = 60, **kw: object) -> Lease:
    lease = Lease(LocalStorage(root), "backup", ttl=ttl, server="main", **kw)  # type: ignore[arg-type]
    made.append(lease)
    return lease


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "locks" / "backup").iterdir())


def _backdate(root: Path, seconds: float) -> None:
    """Every lease object `seconds` older: the storage's clock says that much time passed."""
    for path in (root / "locks" / "backup").iterdir():
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_one_holder_at_a_time_and_the_refusal_names_it(root: Path, leases: list[Lease]) -> None:
    first = _lease(root, leases)
    first.acquire()
    with pytest.raises(LeaseHeldError) as refused:
        _lease(root, leases).acquire()
    assert refused.value.holder is not None and refused.value.holder.pid == os.getpid()
    assert f"pid {os.getpid()}, lease 1" in str(refused.value)
    assert "expires 60s after its last heartbeat" in str(refused.value)
    record = json.loads((root / "locks/backup/lease-0000000001.json").read_bytes())
    assert record["owner"] == first.owner and record["ttl"] == 60 and record["server"] == "main"


def test_a_released_lease_is_taken_at_once_and_old_leases_are_cleaned_up(
    root: Path, leases: list[Lease]
) -> None:
    first = _lease(root, leases)
    first.acquire()
    first.renew()
    first.release()
    assert _names(root) == ["lease-0000000001.json", "lease-0000000001.released"]
    second = _lease(root, leases)
    second.acquire()
    assert second.number == 2
    assert _names(root) == ["lease-0000000002.json"]  # the newest lease is never removed


def test_an_expired_lease_is_taken_over_and_its_holder_finds_out(
    root: Path, leases: list[Lease]
) -> None:
    holder = _lease(root, leases, ttl=30)
    holder.acquire()
    holder.renew()
    _backdate(root, 29)  # only the storage's clock moves: the holder's own view is fresh
    contender = _lease(root, leases, ttl=30)
    contender.identity = ProcessIdentity("other-boot", "x", 1)  # another host: expiry only
    with pytest.raises(LeaseHeldError):
        contender.acquire()
    _backdate(root, 2)
    contender.acquire()
    assert contender.number == 2
    holder.renew()  # its next heartbeat looks for a successor
    with pytest.raises(LeaseLostError, match=r"taken over by .* lease 2"):
        holder.check()
    holder.release()  # a lost lease is not marked released
    assert "lease-0000000001.released" not in _names(root)


def test_a_lease_whose_process_is_gone_from_this_machine_is_taken_at_once(
    root: Path, leases: list[Lease]
) -> None:
    dead = _lease(root, leases)
    dead.identity = ProcessIdentity(dead.identity.boot_id, dead.identity.pid_ns, 1)  # not ours
    dead.acquire()
    dead._stop.set()  # crashed: no heartbeats, no release
    successor_ = _lease(root, leases)
    successor_.acquire()
    assert successor_.number == 2


def test_a_holder_that_cannot_renew_within_its_ttl_stops(root: Path, leases: list[Lease]) -> None:
    now = [1000.0]
    lease = _lease(root, leases, ttl=30, clock=lambda: now[0])
    lease.acquire()
    lease._stop.set()
    now[0] += 29
    lease.check()
    now[0] += 1
    with pytest.raises(LeaseLostError, match="not renewed for 30s"):
        lease.check()


def test_a_failed_heartbeat_is_retried_and_the_lease_kept(
    root: Path, leases: list[Lease], monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = _lease(root, leases, ttl=30)
    lease.acquire()
    lease._stop.set()

    def fail(*args: object, **kw: object) -> None:
        raise TransientStorageError("injected")

    monkeypatch.setattr(lease.storage, "put", fail)
    lease.renew()
    lease.check()  # one missed heartbeat is no loss


def test_a_verify_before_the_decisive_write_sees_a_successor(
    root: Path, leases: list[Lease]
) -> None:
    lease = _lease(root, leases)
    lease.acquire()
    lease._stop.set()
    # Someone else's lease 2, as an operator's broken clone or a paused pair would leave it.
    (root / "locks/backup/lease-0000000002.json").write_text('{"ttl": 60, "host": "db2"}')
    with pytest.raises(LeaseLostError, match="taken over by \\?@db2"):
        lease.verify()


def test_append_only_hosts_take_and_release_without_deleting(
    root: Path, leases: list[Lease]
) -> None:
    storage = AppendOnlyStorage(LocalStorage(root))
    for number in (1, 2):
        lease = Lease(storage, "backup", ttl=60, can_delete=False)
        leases.append(lease)
        lease.acquire()
        lease.renew()
        assert lease.number == number
        lease.release()
    assert _names(root) == [
        "lease-0000000001.hb-00000001",
        "lease-0000000001.json",
        "lease-0000000001.released",
        "lease-0000000002.hb-00000001",
        "lease-0000000002.json",
        "lease-0000000002.released",
    ]

    # Retention, with credentials that may delete, removes what those hosts left behind.
    cleaner = Lease(LocalStorage(root), "backup", ttl=60)
    assert cleaner.remove_superseded() == 3
    assert _names(root) == [
        "lease-0000000002.hb-00000001",
        "lease-0000000002.json",
        "lease-0000000002.released",
    ]
    assert cleaner.remove_superseded() == 0


def test_a_repositorys_backup_lease_is_the_backup_lock_in_its_storage(
    root: Path, leases: list[Lease]
) -> None:
    repo = Repository(LocalStorage(root), RepositoryConfig(url=f"file://{root}"))
    lease = backup_lease(repo, ttl=60, server="main", can_delete=False)
    leases.append(lease)
    lease.acquire()
    record = lease.record(1)
    assert record is not None and record.server == "main"
    lease.release()
    assert _names(root) == ["lease-0000000001.json", "lease-0000000001.released"]


def test_heartbeats_run_in_the_background(root: Path, leases: list[Lease]) -> None:
    lease = _lease(root, leases, ttl=0.4)
    lease.acquire()
    time.sleep(0.5)
    assert any(".hb-" in name for name in _names(root))
    lease.check()
    lease.release()


def test_a_killed_but_unreaped_process_counts_as_gone() -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert process_start_ticks(child.pid) is not None
        child.kill()
        time.sleep(0.2)  # a zombie until we wait for it
        assert Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] == "Z"
        assert process_start_ticks(child.pid) is None
    finally:
        child.wait()
