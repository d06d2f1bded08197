"""`cloudbm wal-push PATH`: PostgreSQL's archive_command.

Contract: exit 0 only once the file is durably stored; never overwrite an archived file with
different content (put-if-absent, then compare plaintext SHA-256: equal is success, different
is exit 5); refuse anything that is not what its name says (a segment of another cluster,
another position or an unexplained timeline; a history or backup history file that does not
parse or fit its name): exit 5, nothing stored.

Push-ahead: PostgreSQL starts one process per file and waits for it. So an invocation makes
sure a background pusher runs (`cloudbm wal-push-ahead`, see wal_push_ahead.py) that uploads up
to `wal_push_ahead` files marked `.ready`, in parallel, with one storage client for all of them,
recording a tool-private marker (outside pg_wal) for each upload storage confirmed. The
invocation returns as soon as its own file has a marker that matches the file; if the pusher
cannot archive it (or is not running), the invocation uploads the file itself, and that upload
is what decides the exit status. PostgreSQL's `.ready`/`.done` files are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cloudbm.config import Settings
from cloudbm.errors import ConfigError
from cloudbm.localstate import lock_is_held
from cloudbm.localstate.spool import Markers, ready_files, spool_root
from cloudbm.localstate.wait import BoundedWait
from cloudbm.localstate.workers import spawn_worker
from cloudbm.logs import log
from cloudbm.pg import walnames

if TYPE_CHECKING:
    import subprocess

    from cloudbm.codec.envelope import EncodeParams
    from cloudbm.pg.timeline import Switch
    from cloudbm.pg.walfile import SegmentHeader
    from cloudbm.repository import Descriptor, Repository


POLL_SECONDS = 0.005
WAIT_FOR_PUSHER_SECONDS = 60.0


class PushResult(NamedTuple):
    name: str
    size: int
    stored: int  # bytes written to storage; 0 when already archived
    already_archived: bool = False


class WalPusher:
    """Uploads WAL files of one data directory to one repository."""

    def __init__(self, settings: Settings, repo: Repository, pg_wal: Path) -> None:
        self.settings = settings
        self.repo = repo
        self.pg_wal = pg_wal
        self._descriptor: Descriptor | None = None
        self._params: EncodeParams | None = None

    def descriptor(self) -> Descriptor:
        """The repository descriptor, created from the data directory on first use."""
        from cloudbm.errors import NotFoundError

        if self._descriptor is None:
            try:
                self._descriptor = self.repo.read_descriptor()
            except NotFoundError:
                self._descriptor = self.repo.initialise_for(self.settings.pgdata_path())[0]
        return self._descriptor

    def params(self) -> EncodeParams:
        if self._params is None:
            self._params = self.repo.encode_params(wal=True)
        return self._params

    def validate(self, name: walnames.WalName, data: bytes) -> dict[str, str]:
        """Refuse (exit 5) a file that is not what its name says; returns the object metadata
        that describes it (header facts, switch points), so wal-verify and retention can
        read them without decrypting."""
        if name.kind == walnames.WalKind.HISTORY:
            return {"cloudbm-switches": self._check_history(name, data)}
        if name.kind == walnames.WalKind.BACKUP:
            self._check_backup_history(name, data)
            return {}
        from cloudbm.pg.walfile import header_metadata

        return header_metadata(self._check_segment(name, data))

    def _check_segment(self, name: walnames.WalName, data: bytes) -> SegmentHeader:
        """The first page must come from the repository's cluster and be the start of the
        segment the name names (address, segment size, timeline); a segment must be whole."""
        from cloudbm.errors import ForeignClusterError, IntegrityError
        from cloudbm.pg import walfile

        header = walfile.read_segment_header(data, name.name)
        desc = self.descriptor()
        if header.system_identifier != desc.system_identifier:
            raise ForeignClusterError(
                f"{name.name} belongs to the cluster with system identifier "
                f"{header.system_identifier}, but repository {self.repo.storage.url} holds "
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
        from cloudbm.errors import IntegrityError, ObjectNotFoundError
        from cloudbm.pg import timeline
        from cloudbm.repository.layout import wal_key

        tli = name.timeline
        history = walnames.history_name(tli)
        try:
            data: bytes | None = (self.pg_wal / history).read_bytes()
        except OSError:
            data = None
        where = f"pg_wal/{history}"
        try:
            if data is not None:
                return timeline.read_history(data, tli)
            key = wal_key(walnames.parse(history))
            where = f"{self.repo.storage.url}/{key}"
            try:
                plain = self.repo.storage.head(key).metadata.get("cloudbm-switches")
            except ObjectNotFoundError:
                raise IntegrityError(
                    f"{name.name} was refused and nothing was stored: its first page belongs to "
                    f"timeline {page_tli}, older than {tli}, and {history} is neither in "
                    f"pg_wal nor archived, so nothing says timeline {tli} began in this segment",
                    hint=f"archive {history} first",
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
        from cloudbm.errors import IntegrityError
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
        from cloudbm.errors import IntegrityError
        from cloudbm.pg.walfile import backup_history_mismatch

        why = backup_history_mismatch(data, name, self.descriptor().wal_segment_size)
        if why is not None:
            raise IntegrityError(
                f"{name.name} was refused and nothing was stored: {why}",
                hint="PostgreSQL writes backup history files itself; archive only those",
            )

    def push(self, name: walnames.WalName, data: bytes, sha: str) -> PushResult:
        """Validate and upload one file; identical re-pushes succeed, different ones fail."""
        from cloudbm.errors import ConflictError, ObjectExistsError
        from cloudbm.repository.layout import wal_key

        meta = {"cloudbm-kind": name.kind, **self.validate(name, data)}
        key = wal_key(name)
        self.descriptor()
        try:
            stored = self.repo.put_bytes(
                key,
                data,
                if_absent=True,
                metadata=meta,
                sha256=sha,
                params=self.params(),
            ).size
        except ObjectExistsError:
            if self.repo.plaintext_sha256(key) == sha:
                log.info("%s was already archived with identical content", name.name)
                return PushResult(name.name, len(data), 0, already_archived=True)
            raise ConflictError(
                f"{name.name} is already archived in {self.repo.storage.url} with different "
                "content; the archived copy was left untouched",
                hint="two clusters may be writing to one repository; check the archive",
            ) from None
        return PushResult(name.name, len(data), stored)


def hook_env(settings: Settings, name: str, path: Path, size: int) -> dict[str, str]:
    return {
        "CLOUDBM_SERVER": settings.server,
        "CLOUDBM_SEGMENT": name,
        "CLOUDBM_PATH": str(path),
        "CLOUDBM_SIZE": str(size),
        "CLOUDBM_COMPRESSION": settings.compression,
        "CLOUDBM_REPOSITORY": settings.repository,
    }


def read_file(path: Path) -> tuple[bytes, os.stat_result]:
    """The whole file and its identity as read (PostgreSQL passes %p relative to PGDATA)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            st = os.fstat(fh.fileno())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist",
            hint="archive_command gets %p, a path relative to the data directory",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a WAL file") from None
    except PermissionError:
        raise ConfigError(f"{path} cannot be read: permission denied") from None
    return data, st


def ensure_pusher(
    settings: Settings,
    markers: Markers,
    pg_wal: Path,
    global_args: list[str],
    skip: str | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start the background pusher if files wait unmarked and none runs; it leaves `skip`
    (the file this call uploads itself) alone. Returns the process started (None if one was
    already running or nothing waits)."""
    if settings.wal_push_ahead <= 0 or lock_is_held(markers.lock):
        return None
    busy = markers.names() | ({skip} if skip else set())
    if not ready_files(pg_wal, busy, 1):
        return None
    command = ["wal-push-ahead", str(pg_wal), *(["--skip", skip] if skip else [])]
    return spawn_worker(markers.dir.parent, global_args, command)


def _wait_for_marker(
    markers: Markers, name: str, st: os.stat_result, started: subprocess.Popen[bytes] | None
) -> bool:
    """Wait while a pusher runs for it to archive `name`; True once a matching marker is
    consumed, False when the pusher stopped without it (or took too long)."""

    def alive() -> bool:
        return lock_is_held(markers.lock) or (started is not None and started.poll() is None)

    waiting = BoundedWait(WAIT_FOR_PUSHER_SECONDS, poll=POLL_SECONDS, alive=alive)
    while True:
        if markers.exists(name):
            return markers.consume(name, st)
        if markers.failed(name):
            return False
        if not waiting.again():
            # A pusher that stopped may have written the marker as it went.
            return waiting.gone and markers.exists(name) and markers.consume(name, st)


def wal_push(settings: Settings, path_arg: str, global_args: list[str]) -> PushResult:
    """archive_command entry point."""
    path = Path(path_arg)
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    name = walnames.parse(path.name)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    markers = Markers(spool_root(settings.spool_directory, settings.server, settings.repository))
    if st is not None and markers.consume(name.name, st):
        ensure_pusher(settings, markers, path.parent, global_args)
        return PushResult(name.name, st.st_size, 0, already_archived=True)
    if st is not None and settings.wal_push_ahead > 0:
        ready = path.parent / "archive_status" / f"{name.name}.ready"
        if lock_is_held(markers.lock) and ready.exists():
            # A running pusher takes this file up (or has it in flight already).
            if _wait_for_marker(markers, name.name, st, None):
                return PushResult(name.name, st.st_size, 0, already_archived=True)
        else:
            # No pusher: this call uploads its own file at once rather than wait for a new
            # process to start, and leaves the other waiting files to the pusher it starts.
            ensure_pusher(settings, markers, path.parent, global_args, skip=name.name)
    return push_one(settings, path, name)


def push_one(settings: Settings, path: Path, name: walnames.WalName) -> PushResult:
    """Upload one file in this process (hooks included); its outcome is the exit status."""
    markers_root = spool_root(settings.spool_directory, settings.server, settings.repository)
    Markers(markers_root).clear_failure(name.name)
    from cloudbm.errors import CloudbmError
    from cloudbm.hooks import run_hook
    from cloudbm.repository import sha256_hex

    data, _st = read_file(path)
    env = hook_env(settings, name.name, path, len(data))
    run_hook(settings.pre_archive_script, "pre", env, fatal=True)
    repo = settings.open_repository()
    try:
        result = WalPusher(settings, repo, path.parent).push(name, data, sha256_hex(data))
    except CloudbmError as exc:
        run_hook(
            settings.post_archive_script, "post", {**env, "CLOUDBM_ERROR": str(exc)}, fatal=False
        )
        raise
    finally:
        repo.storage.close()
    run_hook(settings.post_archive_script, "post", {**env, "CLOUDBM_ERROR": ""}, fatal=False)
    return result
