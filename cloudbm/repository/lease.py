"""A lease in the repository: one holder at a time of an activity (a base backup), whichever
host, OS user or spool directory runs it.

The storage protocol has put-if-absent, get, head, list and delete, but no overwrite-if-match,
and a repository may be write-once (Object Lock): so nothing here is ever rewritten. Leases are
numbered objects, taken with put-if-absent; the holder proves it is alive with new heartbeat
objects; a successor takes lease n+1 once lease n is released, or its newest sign of life is
older than the holder's TTL. Layout under `locks/<name>/` (docs/format.md):

    lease-NNNNNNNNNN.json            who took lease N (plain JSON)
    lease-NNNNNNNNNN.hb-MMMMMMMM     heartbeat M of lease N
    lease-NNNNNNNNNN.released        lease N was given up on a clean finish
    lease-NNNNNNNNNN.probe-TOKEN     a contender's clock probe while it judged lease N

Ages are measured with the storage's own timestamps (ObjectInfo.modified of the lease, its
heartbeats and a probe object the contender writes), never by comparing host clocks. A holder
counts its own TTL from the start of its last successful heartbeat on its monotonic clock, and
stops as soon as it has not renewed within the TTL or sees a later lease: a holder paused past
its TTL (SIGSTOP, a frozen VM) finds it was superseded and gives up instead of finishing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cloudbm import __version__
from cloudbm.errors import (
    CheckFailed,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
)
from cloudbm.logs import log
from cloudbm.repository.layout import LEASE_NUMBER_DIGITS, lease_key, lock_prefix
from cloudbm.storage.base import ObjectInfo, Storage

if TYPE_CHECKING:
    from cloudbm.repository.objects import Repository

BACKUP_LEASE = "backup"  # one backup-push per server at a time
LEASE_FORMAT = 1
# Rounds of look-and-take before giving up on a lease that keeps changing hands.
ACQUIRE_ROUNDS = 5
# Heartbeats per TTL: three may fail (or be late) before the lease lapses.
BEATS_PER_TTL = 4


class LeaseHeldError(CheckFailed):
    """Another live holder has the lease."""

    def __init__(self, message: str, *, holder: LeaseRecord | None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.holder = holder


class LeaseLostError(CheckFailed):
    """This process held the lease and no longer does (taken over, or not renewed in time)."""


# --- what the objects say (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """Enough to tell, on the same machine and pid namespace, whether a process still runs."""

    boot_id: str = ""
    pid_ns: str = ""
    start_ticks: int = 0


@dataclass(frozen=True)
class LeaseRecord:
    """lease-N.json: who took lease N."""

    lease: int
    owner: str
    host: str
    pid: int
    user: str
    ttl: float
    taken: str  # the holder's clock, for people: ages are judged with storage timestamps
    server: str = ""
    process: ProcessIdentity = field(default_factory=ProcessIdentity)
    cloudbm_version: str = __version__
    format_version: int = LEASE_FORMAT

    def to_json(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "lease": self.lease,
            "owner": self.owner,
            "server": self.server,
            "host": self.host,
            "pid": self.pid,
            "user": self.user,
            "ttl": self.ttl,
            "taken": self.taken,
            "process": {
                "boot_id": self.process.boot_id,
                "pid_ns": self.process.pid_ns,
                "start_ticks": self.process.start_ticks,
            },
            "cloudbm_version": self.cloudbm_version,
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, number: int) -> LeaseRecord:
        """Lenient: a record nobody can read still blocks (with unknown owner) until it expires."""
        try:
            doc = json.loads(raw)
            proc = doc.get("process") or {}
            return cls(
                lease=int(doc.get("lease", number)),
                owner=str(doc.get("owner", "")),
                host=str(doc.get("host", "?")),
                pid=int(doc.get("pid", 0)),
                user=str(doc.get("user", "?")),
                ttl=float(doc["ttl"]),
                taken=str(doc.get("taken", "")),
                server=str(doc.get("server", "")),
                process=ProcessIdentity(
                    str(proc.get("boot_id", "")),
                    str(proc.get("pid_ns", "")),
                    int(proc.get("start_ticks", 0)),
                ),
                cloudbm_version=str(doc.get("cloudbm_version", "")),
                format_version=int(doc.get("format_version", LEASE_FORMAT)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(number, "", "?", 0, "?", 0.0, "")

    def describe(self) -> str:
        return f"{self.user}@{self.host} pid {self.pid}, lease {self.lease} taken {self.taken}"


@dataclass(frozen=True)
class LeaseSeen:
    """What one listing shows of lease N (storage timestamps)."""

    number: int
    taken: datetime | None = None  # when the lease object was stored; None: no lease object
    last_heartbeat: datetime | None = None
    released: bool = False

    @property
    def last_alive(self) -> datetime | None:
        """The newest sign of life the storage recorded for this lease."""
        signs = [t for t in (self.taken, self.last_heartbeat) if t is not None]
        return max(signs) if signs else None


def parse_key(prefix: str, key: str) -> tuple[int, str] | None:
    """(lease number, suffix) of a key under `prefix`, or None for anything else."""
    name = key[len(prefix) :] if key.startswith(prefix) else ""
    head = "lease-"
    digits = name[len(head) : len(head) + LEASE_NUMBER_DIGITS]
    if not name.startswith(head) or len(digits) != LEASE_NUMBER_DIGITS or not digits.isdigit():
        return None
    return int(digits), name[len(head) + LEASE_NUMBER_DIGITS :]


def read_listing(prefix: str, infos: Iterable[ObjectInfo]) -> dict[int, LeaseSeen]:
    """Group a listing of `prefix` by lease number. Probes are not signs of life."""
    seen: dict[int, LeaseSeen] = {}
    for info in infos:
        parsed = parse_key(prefix, info.key)
        if parsed is None:
            continue
        number, suffix = parsed
        cur = seen.get(number) or LeaseSeen(number)
        if suffix == ".json":
            cur = LeaseSeen(number, info.modified, cur.last_heartbeat, cur.released)
        elif suffix.startswith(".hb-") and info.modified is not None:
            newest = max(info.modified, cur.last_heartbeat or info.modified)
            cur = LeaseSeen(number, cur.taken, newest, cur.released)
        elif suffix == ".released":
            cur = LeaseSeen(number, cur.taken, cur.last_heartbeat, True)
        seen[number] = cur
    return seen


def keys_below(prefix: str, infos: Iterable[ObjectInfo], below: int) -> list[str]:
    """Keys of every lease numbered below `below`: what a cleanup may remove."""
    return [
        info.key
        for info in infos
        if (parsed := parse_key(prefix, info.key)) is not None and parsed[0] < below
    ]


def next_number(leases: Mapping[int, LeaseSeen]) -> int:
    """Numbers only grow: one above anything that left a trace."""
    return max(leases, default=0) + 1


def blocking_lease(leases: Mapping[int, LeaseSeen]) -> LeaseSeen | None:
    """The lease a newcomer must respect: the newest lease object, unless it was released.
    (Traces without a lease object, such as a late heartbeat of a cleaned-up lease, hold
    nothing.)"""
    taken = [n for n, seen in leases.items() if seen.taken is not None]
    if not taken:
        return None
    newest = leases[max(taken)]
    return None if newest.released else newest


def expired(lease: LeaseSeen, storage_now: datetime | None, ttl: float) -> bool:
    """True once the storage's clock is `ttl` past the lease's newest sign of life. Without a
    storage time we cannot tell, and a lease we cannot judge is respected."""
    alive = lease.last_alive
    if storage_now is None or alive is None:
        return False
    return (storage_now - alive).total_seconds() >= ttl


def successor(mine: int, leases: Mapping[int, LeaseSeen]) -> int | None:
    """A later lease that was taken, if any: whoever holds `mine` has lost it."""
    later = [n for n, seen in leases.items() if n > mine and seen.taken is not None]
    return max(later) if later else None


def lapsed(since_renewed: float, ttl: float) -> bool:
    """The holder's own view: not renewed within the TTL means others may have taken over."""
    return since_renewed >= ttl


def same_process_space(theirs: ProcessIdentity, ours: ProcessIdentity) -> bool:
    """Their pid means the same process to us: same boot of the same kernel, same pid
    namespace (a container sharing the host name has another)."""
    return bool(theirs.boot_id and theirs.pid_ns) and (
        (theirs.boot_id, theirs.pid_ns) == (ours.boot_id, ours.pid_ns)
    )


def owner_gone(
    record: LeaseRecord, ours: ProcessIdentity, start_ticks_of: Callable[[int], int | None]
) -> bool:
    """True only when we can be sure the holder's process no longer exists."""
    if not same_process_space(record.process, ours) or record.pid <= 0:
        return False
    return start_ticks_of(record.pid) != record.process.start_ticks


# --- this machine ------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22); None if it is
    gone or a zombie (killed, not yet reaped: an init that reaps slowly keeps those around)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def this_process() -> ProcessIdentity:
    boot_id = pid_ns = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as fh:
        boot_id = fh.read().strip()
    with contextlib.suppress(OSError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return ProcessIdentity(boot_id, pid_ns, process_start_ticks(os.getpid()) or 0)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the lease -----------------------------------------------------------------------------


class Lease:
    """Take, keep (heartbeats in a thread) and give back lease `name` in `storage`."""

    def __init__(
        self,
        storage: Storage,
        name: str,
        *,
        ttl: float,
        server: str = "",
        can_delete: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.prefix = lock_prefix(name)
        self.ttl = ttl
        self.server = server
        self.can_delete = can_delete
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self.identity = this_process()
        self.number: int | None = None
        self._renewed = 0.0
        self._beats = 0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probes = 0
        self._taken_at = 0.0

    # -- looking ----------------------------------------------------------------------------

    def look(self) -> dict[int, LeaseSeen]:
        return read_listing(self.prefix, self.storage.list(self.prefix))

    def record(self, number: int) -> LeaseRecord | None:
        """The lease object's content; None when it is gone (cleaned up since the listing)."""
        try:
            with self.storage.get(lease_key(self.prefix, number)) as reader:
                return LeaseRecord.from_json(reader.read(), number)
        except ObjectNotFoundError:
            return None

    def storage_now(self, judged: int) -> datetime | None:
        """The storage's clock: the time it records for a probe object we write now."""
        self._probes += 1
        key = lease_key(self.prefix, judged, f".probe-{self.owner}-{self._probes}")
        with contextlib.suppress(ObjectExistsError):  # a retried put of our own probe
            self.storage.put(key, b"{}\n", if_absent=True)
        try:
            return self.storage.head(key).modified
        finally:
            if self.can_delete:
                with contextlib.suppress(StorageError):
                    self.storage.delete_many([key])

    # -- taking -----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeldError naming its live holder."""
        for _ in range(ACQUIRE_ROUNDS):
            leases = self.look()
            held = blocking_lease(leases)
            if held is not None:
                try:
                    self._judge(held)
                except ObjectNotFoundError:
                    continue  # cleaned up under us: someone else just took over; look again
            number = next_number(leases)
            if not self._take(number):
                continue
            later = successor(number, self.look())
            if later is not None:
                continue  # we looked at an old listing; the later lease decides, next round
            self.number = number
            self._renewed = self._taken_at
            self._cleanup(below=number)
            self._thread = threading.Thread(
                target=self._heartbeats, name="cloudbm-lease", daemon=True
            )
            self._thread.start()
            return
        raise LeaseHeldError(
            f"the {self.prefix} lease kept changing hands; gave up after {ACQUIRE_ROUNDS} tries",
            holder=None,
            hint="try again",
        )

    def _judge(self, held: LeaseSeen) -> None:
        """Return if `held` may be taken over; raise LeaseHeldError if it must be respected."""
        record = self.record(held.number)
        if record is None:
            raise ObjectNotFoundError(f"lease {held.number} vanished")
        ttl = record.ttl if record.ttl > 0 else self.ttl
        if owner_gone(record, self.identity, process_start_ticks):
            log.warning(
                "taking over lease %d: its holder (%s) is gone", held.number, record.describe()
            )
            return
        now = self.storage_now(held.number)
        if expired(held, now, ttl):
            log.warning(
                "taking over lease %d: no heartbeat from %s for %ds (ttl %ds)",
                held.number,
                record.describe(),
                _age(held, now),
                ttl,
            )
            return
        raise LeaseHeldError(
            f"{record.describe()}, last heartbeat {_age(held, now)}s ago",
            holder=record,
            hint=f"expires {ttl:.0f}s after its last heartbeat",
        )

    def _take(self, number: int) -> bool:
        """put-if-absent of lease `number`; True if it is ours."""
        record = LeaseRecord(
            lease=number,
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            user=_user(),
            ttl=self.ttl,
            taken=_now_iso(),
            server=self.server,
            process=self.identity,
        )
        self._taken_at = self.clock()
        try:
            self.storage.put(lease_key(self.prefix, number), record.to_json(), if_absent=True)
            return True
        except ObjectExistsError:
            # Ours after all if a dropped response made the retry find our own write.
            stored = self.record(number)
            return stored is not None and stored.owner == self.owner

    def _cleanup(self, below: int) -> None:
        """Remove the objects of earlier leases (never the newest: numbers must keep growing)."""
        if not self.can_delete:
            return
        try:
            self.storage.delete_many(keys_below(self.prefix, self.storage.list(self.prefix), below))
        except StorageError as exc:
            log.warning("could not remove old lease objects (%s); the next backup will", exc)

    def remove_superseded(self) -> int:
        """Remove the objects of every lease but the newest (retention runs this: hosts that
        may not delete leave them behind). Returns how many objects were removed."""
        infos = list(self.storage.list(self.prefix))
        newest = max(read_listing(self.prefix, infos), default=None)
        if newest is None or not self.can_delete:
            return 0
        old = keys_below(self.prefix, infos, newest)
        self.storage.delete_many(old)
        return len(old)

    # -- keeping ----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        interval = self.ttl / BEATS_PER_TTL
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # keep beating: a dead thread would lapse the lease
                log.warning(
                    "lease %s: heartbeat failed (%s: %s)", self.number, type(exc).__name__, exc
                )
            if self._lost is not None:
                return

    def renew(self) -> None:
        """One heartbeat and one look for a successor (the heartbeat thread calls this)."""
        assert self.number is not None
        started = self.clock()
        self._beats += 1
        key = lease_key(self.prefix, self.number, f".hb-{self._beats:08d}")
        try:
            with contextlib.suppress(ObjectExistsError):  # our own write, retried
                self.storage.put(key, f'{{"time": "{_now_iso()}"}}\n'.encode(), if_absent=True)
            self._renewed = started
        except StorageError as exc:
            log.warning("lease %d: heartbeat failed (%s); retrying", self.number, exc)
        try:
            self._check_successor(self.look())
        except StorageError as exc:
            log.warning("lease %d: could not look for a successor (%s)", self.number, exc)
        if self._lost is None and lapsed(self.clock() - self._renewed, self.ttl):
            self._lost = (
                f"lease {self.number} was not renewed for {self.clock() - self._renewed:.0f}s "
                f"(ttl {self.ttl:.0f}s) and may have been taken over"
            )

    def _check_successor(self, leases: Mapping[int, LeaseSeen]) -> None:
        assert self.number is not None
        later = successor(self.number, leases)
        if later is not None and self._lost is None:
            who = self.record(later)
            self._lost = f"lease {self.number} was taken over by " + (
                who.describe() if who else f"lease {later}"
            )

    def check(self) -> None:
        """Raise LeaseLostError if the lease is known lost or has lapsed (no I/O)."""
        if self.number is None:
            return
        if self._lost is None and lapsed(self.clock() - self._renewed, self.ttl):
            self._lost = (
                f"lease {self.number} was not renewed for {self.clock() - self._renewed:.0f}s "
                f"(ttl {self.ttl:.0f}s) and may have been taken over"
            )
        if self._lost is not None:
            raise LeaseLostError(self._lost, hint="another run took over; see backup-list")

    def verify(self) -> None:
        """A fresh look before a decisive write: still ours, with no successor."""
        self.check()
        self._check_successor(self.look())
        self.check()

    # -- giving back ------------------------------------------------------------------------

    def release(self) -> None:
        """Stop heartbeats; mark the lease released unless it was lost; drop our heartbeats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=min(self.ttl, 10.0))
        number, self.number = self.number, None
        if number is None or self._lost is not None:
            return
        try:
            with contextlib.suppress(ObjectExistsError):
                self.storage.put(
                    lease_key(self.prefix, number, ".released"),
                    f'{{"owner": "{self.owner}", "time": "{_now_iso()}"}}\n'.encode(),
                    if_absent=True,
                )
        except StorageError as exc:
            log.warning(
                "lease %d: could not mark it released (%s); it expires instead", number, exc
            )
            return
        if self.can_delete:
            beats = lease_key(self.prefix, number, ".hb-")
            with contextlib.suppress(StorageError):
                self.storage.delete_many(info.key for info in self.storage.list(beats))

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def backup_lease(
    repo: Repository, *, ttl: float, server: str = "", can_delete: bool = True
) -> Lease:
    """The lease that lets one backup-push per server run at a time, in `repo`'s storage."""
    return Lease(repo.storage, BACKUP_LEASE, ttl=ttl, server=server, can_delete=can_delete)


def _age(lease: LeaseSeen, now: datetime | None) -> int:
    alive = lease.last_alive
    if now is None or alive is None:
        return 0
    return max(0, int((now - alive).total_seconds()))


__all__ = [
    "BACKUP_LEASE",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "LeaseRecord",
    "LeaseSeen",
    "ProcessIdentity",
    "backup_lease",
    "blocking_lease",
    "expired",
    "lapsed",
    "next_number",
    "owner_gone",
    "read_listing",
    "same_process_space",
    "successor",
]
