"""The WAL archive in the repository: listing it, asking for one file, reading histories,
storing and removing files. Keys come from layout; every command asks here instead of listing
`wal/` or putting objects there itself.

archive_command imports this module for every WAL segment (restore_command for every fetch
the prefetch worker does not answer): what only history files need (cloudbm.pg.timeline) is
imported by the functions that read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cloudbm.errors import (
    ConflictError,
    ForeignClusterError,
    IntegrityError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from cloudbm.logs import log
from cloudbm.pg import walnames
from cloudbm.repository.layout import WAL_PREFIX, wal_key, wal_leaf
from cloudbm.repository.objects import Repository
from cloudbm.storage.base import ObjectInfo

if TYPE_CHECKING:
    from cloudbm.codec.envelope import EncodeParams
    from cloudbm.pg.timeline import Switch
    from cloudbm.pg.walfile import SegmentHeader
    from cloudbm.repository.descriptor import Descriptor

# A history's switch points in plain metadata (written by wal-push), so a host with only the
# public key can still plan retention and check continuity.
META_SWITCHES = "cloudbm-switches"
# What kind of WAL file an object holds (walnames.WalKind), in plain metadata.
META_KIND = "cloudbm-kind"


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
    """The WAL file `name`, decoded and checked against its recorded digest;
    ObjectNotFoundError if it is not archived."""
    data, _ = repo.get_bytes(key_of(name))
    return data


def history(repo: Repository, name: str, *, metadata_first: bool = True) -> list[Switch]:
    """The switch points of the history file `name`: from the plain metadata wal-push wrote
    when `metadata_first` (no key needed), else by decoding it. IntegrityError names the
    object when it is not a history of its timeline."""
    from cloudbm.pg import timeline

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


# --- archiving --------------------------------------------------------------------------------


class Archived:
    """What storing one WAL file did. (A plain class: wal-push imports this module once per
    segment, and a NamedTuple is built by exec at import.)"""

    __slots__ = ("already_archived", "stored")

    def __init__(self, stored: int, already_archived: bool = False) -> None:
        self.stored = stored  # bytes written to storage; 0 when it was archived already
        self.already_archived = already_archived


class WalArchiver:
    """Stores the WAL files of one data directory in one repository.

    Contract: nothing is stored for a file that is not what its name says (a segment of
    another cluster, another position or an unexplained timeline; a history or backup history
    file that does not parse or fit its name): IntegrityError (exit 5). A file is put only if
    absent: an archived copy with the same plaintext SHA-256 is success, a different one is
    ConflictError and stays untouched.

    `pg_wal` is where PostgreSQL writes the history a new timeline's first segment needs;
    `pgdata` gives the data directory, asked only when the repository has no descriptor yet
    (the first push creates it from the cluster's control file).
    """

    def __init__(self, repo: Repository, pg_wal: Path, pgdata: Callable[[], str | Path]) -> None:
        self.repo = repo
        self.pg_wal = pg_wal
        self._pgdata = pgdata
        self._descriptor: Descriptor | None = None
        self._params: EncodeParams | None = None

    def descriptor(self) -> Descriptor:
        """The repository descriptor, created from the data directory on first use."""
        if self._descriptor is None:
            try:
                self._descriptor = self.repo.read_descriptor()
            except NotFoundError:
                self._descriptor = self.repo.initialise_for(self._pgdata())[0]
        return self._descriptor

    def params(self) -> EncodeParams:
        if self._params is None:
            self._params = self.repo.encode_params(wal=True)
        return self._params

    def push(self, name: walnames.WalName, data: bytes, sha256: str) -> Archived:
        """Validate and store one file (`sha256`: its plaintext digest); identical re-pushes
        succeed, different ones fail."""
        meta = {META_KIND: name.kind, **self.validate(name, data)}
        key = wal_key(name)
        self.descriptor()
        try:
            stored = self.repo.put_bytes(
                key,
                data,
                if_absent=True,
                metadata=meta,
                sha256=sha256,
                params=self.params(),
            ).size
        except ObjectExistsError:
            if self.repo.plaintext_sha256(key) == sha256:
                log.info("%s was already archived with identical content", name.name)
                return Archived(0, already_archived=True)
            raise ConflictError(
                f"{name.name} is already archived in {self.repo.url} with different "
                "content; the archived copy was left untouched",
                hint="two clusters may be writing to one repository; check the archive",
            ) from None
        return Archived(stored)

    def validate(self, name: walnames.WalName, data: bytes) -> dict[str, str]:
        """Refuse (exit 5) a file that is not what its name says; returns the object metadata
        that describes it (header facts, switch points), so wal-verify and retention can
        read them without decrypting."""
        if name.kind == walnames.WalKind.HISTORY:
            return {META_SWITCHES: self._check_history(name, data)}
        if name.kind == walnames.WalKind.BACKUP:
            self._check_backup_history(name, data)
            return {}
        from cloudbm.pg.walfile import header_metadata

        return header_metadata(self._check_segment(name, data))

    def _check_segment(self, name: walnames.WalName, data: bytes) -> SegmentHeader:
        """The first page must come from the repository's cluster and be the start of the
        segment the name names (address, segment size, timeline); a segment must be whole."""
        from cloudbm.pg import walfile

        header = walfile.read_segment_header(data, name.name)
        desc = self.descriptor()
        if header.system_identifier != desc.system_identifier:
            raise ForeignClusterError(
                f"{name.name} belongs to the cluster with system identifier "
                f"{header.system_identifier}, but repository {self.repo.url} holds "
                f"{desc.system_identifier}",
                hint="give each cluster its own repository prefix",
            )
        why = walfile.name_mismatch(header, name)
        if why is None and header.timeline < name.timeline:
            # Only the segment where a timeline began starts with an ancestor's page.
            switches = self._history_for(name, header.timeline)
            why = walfile.ancestor_mismatch(header, name, switches)
        if why is not None:
            raise IntegrityError(
                f"{name.name} was refused and nothing was stored: {why}",
                hint="archive each WAL file under the name PostgreSQL gave it (%p)",
            )
        size = header.segment_size
        whole = len(data) == size if name.kind == walnames.WalKind.SEGMENT else len(data) <= size
        if not whole:
            raise IntegrityError(
                f"{name.name} is {len(data)} bytes but its header says segments are {size} bytes",
                hint="the file is truncated or not a WAL segment",
            )
        return header

    def _history_for(self, name: walnames.WalName, page_tli: int) -> list[Switch]:
        """Switch points of `name`'s timeline, to place a first page from timeline `page_tli`:
        from pg_wal (PostgreSQL writes the history before the timeline's first segment), else
        from the archive (its metadata, else its content)."""
        from cloudbm.pg import timeline

        tli = name.timeline
        history_name = walnames.history_name(tli)
        try:
            data: bytes | None = (self.pg_wal / history_name).read_bytes()
        except OSError:
            data = None
        where = f"pg_wal/{history_name}"
        try:
            if data is not None:
                return timeline.read_history(data, tli)
            key = key_of(history_name)
            where = self.repo.where(key)
            try:
                plain = self.repo.storage.head(key).metadata.get(META_SWITCHES)
            except ObjectNotFoundError:
                raise IntegrityError(
                    f"{name.name} was refused and nothing was stored: its first page belongs to "
                    f"timeline {page_tli}, older than {tli}, and {history_name} is neither in "
                    f"pg_wal nor archived, so nothing says timeline {tli} began in this segment",
                    hint=f"archive {history_name} first",
                ) from None
            if plain:
                return timeline.parse_switches(plain, tli)
            return timeline.read_history(self.repo.get_bytes(key)[0], tli)
        except timeline.HistoryError as exc:
            raise IntegrityError(
                f"{name.name} was refused and nothing was stored: it needs {where} to be "
                f"checked, and that is not a valid history of timeline {tli}: {exc}"
            ) from None

    def _check_history(self, name: walnames.WalName, data: bytes) -> str:
        """A history file must parse as PostgreSQL writes it and fit its name; returns its
        switch points as metadata ("parent:lsn,...", read by retention on hosts that hold only
        the public key)."""
        from cloudbm.pg import timeline

        try:
            switches = timeline.read_history(data, name.timeline)
        except timeline.HistoryError as exc:
            raise IntegrityError(
                f"{name.name} was refused and nothing was stored: it is not a history file of "
                f"timeline {name.timeline}: {exc}",
                hint="PostgreSQL writes history files itself; archive only those",
            ) from None
        return timeline.format_switches(switches)

    def _check_backup_history(self, name: walnames.WalName, data: bytes) -> None:
        """A backup history file must describe the backup start its name gives."""
        from cloudbm.pg.walfile import backup_history_mismatch

        why = backup_history_mismatch(data, name, self.descriptor().wal_segment_size)
        if why is not None:
            raise IntegrityError(
                f"{name.name} was refused and nothing was stored: {why}",
                hint="PostgreSQL writes backup history files itself; archive only those",
            )
