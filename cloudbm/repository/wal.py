"""The WAL archive in the repository: listing it, asking for one file, reading histories,
removing files. Keys come from layout; every command asks here instead of listing `wal/`."""

from __future__ import annotations

from collections.abc import Iterable

from cloudbm.errors import IntegrityError, ObjectNotFoundError
from cloudbm.pg import timeline, walnames
from cloudbm.repository.layout import WAL_PREFIX, wal_key, wal_leaf
from cloudbm.repository.objects import Repository
from cloudbm.storage.base import ObjectInfo

# A history's switch points in plain metadata (written by wal-push), so a host with only the
# public key can still plan retention and check continuity.
META_SWITCHES = "cloudbm-switches"


def key_of(name: str) -> str:
    """The key of the WAL file `name` (a segment, partial, history or backup history file)."""
    return wal_key(walnames.parse(name))


def listing(repo: Repository) -> dict[str, ObjectInfo]:
    """The archive's WAL files by name (anything else under wal/ is not ours to judge)."""
    out: dict[str, ObjectInfo] = {}
    for info in repo.storage.list(WAL_PREFIX):
        name = wal_leaf(info.key)
        if walnames.is_wal_name(name):
            out[name] = info
    return out


def listed_names(repo: Repository) -> list[str]:
    """The name of every object under wal/, in listing order, whether or not it is WAL."""
    return [wal_leaf(info.key) for info in repo.storage.list(WAL_PREFIX)]


def segment_sizes(repo: Repository) -> list[tuple[str, int]]:
    """(segment name, stored size) of every archived WAL segment, sorted by name."""
    out = [
        (name, info.size)
        for name, info in listing(repo).items()
        if walnames.parse(name).kind == walnames.WalKind.SEGMENT
    ]
    out.sort()
    return out


def is_archived(repo: Repository, name: str) -> bool:
    """Whether the WAL file `name` is in the archive (a HEAD; storage errors are raised)."""
    try:
        repo.storage.head(key_of(name))
    except ObjectNotFoundError:
        return False
    return True


def read(repo: Repository, name: str) -> bytes:
    """The WAL file `name`, decoded and checked against its recorded digest."""
    data, _ = repo.get_bytes(key_of(name))
    return data


def history(repo: Repository, name: str, *, metadata_first: bool = True) -> list[timeline.Switch]:
    """The switch points of the history file `name`: from the plain metadata wal-push wrote
    when `metadata_first` (no key needed), else by decoding it. IntegrityError names the
    object when it is not a history of its timeline."""
    tli = walnames.parse(name).timeline
    key = key_of(name)
    try:
        plain = repo.storage.head(key).metadata.get(META_SWITCHES) if metadata_first else None
        if plain:
            return timeline.parse_switches(plain, tli)
        raw, _ = repo.get_bytes(key)
        return timeline.read_history(raw, tli)
    except timeline.HistoryError as exc:
        raise IntegrityError(
            f"{repo.where(key)} is not a valid timeline history: {exc}",
            hint="run 'cloudbm wal-verify'",
        ) from None


def remove(repo: Repository, names: Iterable[str]) -> int:
    """Delete the WAL files `names` (anything not named like WAL is skipped); returns how many
    names were given."""
    given = list(names)
    repo.storage.delete_many(key_of(n) for n in given if walnames.is_wal_name(n))
    return len(given)
