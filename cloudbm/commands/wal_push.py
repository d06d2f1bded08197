"""`cloudbm wal-push PATH`: PostgreSQL's archive_command.

Contract: exit 0 only once the file is durably stored; never overwrite an archived file with
different content (put-if-absent, then compare plaintext SHA-256: equal is success, different
is exit 5); refuse segments from another cluster.

Push-ahead: PostgreSQL starts one process per segment and waits for it. One invocation
therefore also uploads up to `wal_push_ahead` other segments that archive_status marks
`.ready`, in parallel, and records a tool-private marker per segment in the spool directory
(outside pg_wal). When PostgreSQL later asks for such a segment, the invocation re-hashes the
file, finds it equal to the marker and returns at once. PostgreSQL's own `.ready`/`.done`
files are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cloudbm.commands.context import open_repository, spool_dir
from cloudbm.commands.hooks import run_hook
from cloudbm.commands.init import initialise_repository
from cloudbm.commands.wal_layout import wal_key
from cloudbm.config import Settings
from cloudbm.errors import (
    CloudbmError,
    ConfigError,
    ConflictError,
    ForeignClusterError,
    IntegrityError,
    NotFoundError,
    ObjectExistsError,
)
from cloudbm.pg import walnames
from cloudbm.pg.walfile import SegmentHeader, read_segment_header
from cloudbm.repository import Descriptor, Repository, sha256_hex

log = logging.getLogger("cloudbm")

MARKER_MAX_AGE = 24 * 3600.0


@dataclass(frozen=True)
class PushResult:
    name: str
    size: int
    stored: int  # bytes written to storage; 0 when already archived
    already_archived: bool = False


def _read_whole(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist",
            hint="archive_command gets %p, a path relative to the data directory",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a WAL file") from None
    except PermissionError:
        raise ConfigError(f"{path} cannot be read: permission denied") from None


class Markers:
    """Tool-private 'already archived' markers: <spool>/archived/<name> = {sha256, size}."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "archived"
        self.dir.mkdir(exist_ok=True, mode=0o700)

    def record(self, name: str, sha256: str, size: int) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps({"sha256": sha256, "size": size}))
        os.replace(tmp, self.dir / name)

    def consume(self, name: str, data: bytes) -> bool:
        """True if a marker says exactly these bytes were archived; the marker is removed."""
        path = self.dir / name
        try:
            marker = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        except ValueError:
            marker = {}
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return bool(marker.get("size") == len(data) and marker.get("sha256") == sha256_hex(data))

    def names(self) -> set[str]:
        return {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}

    def collect_garbage(self, pg_wal: Path) -> None:
        """Drop markers whose file left pg_wal, or that are older than a day."""
        now = time.time()
        for path in self.dir.iterdir():
            try:
                stale = now - path.stat().st_mtime > MARKER_MAX_AGE
                if stale or not (pg_wal / path.name).exists():
                    path.unlink()
            except FileNotFoundError:
                continue


class WalPusher:
    """Uploads WAL files of one data directory to one repository."""

    def __init__(self, settings: Settings, repo: Repository, pg_wal: Path) -> None:
        self.settings = settings
        self.repo = repo
        self.pg_wal = pg_wal
        self._descriptor: Descriptor | None = None

    def descriptor(self) -> Descriptor:
        """The repository descriptor, created from the data directory on first use."""
        if self._descriptor is None:
            try:
                self._descriptor = self.repo.read_descriptor()
            except NotFoundError:
                self._descriptor = initialise_repository(self.settings, self.repo)[0]
        return self._descriptor

    def validate(self, name: walnames.WalName, data: bytes) -> SegmentHeader | None:
        """Segments must come from the repository's cluster and be whole."""
        if not name.has_page_header:
            return None
        header = read_segment_header(data, name.name)
        desc = self.descriptor()
        if header.system_identifier != desc.system_identifier:
            raise ForeignClusterError(
                f"{name.name} belongs to the cluster with system identifier "
                f"{header.system_identifier}, but repository {self.repo.storage.url} holds "
                f"{desc.system_identifier}",
                hint="give each cluster its own repository prefix",
            )
        if name.kind is walnames.WalKind.SEGMENT and len(data) != header.segment_size:
            raise IntegrityError(
                f"{name.name} is {len(data)} bytes but its header says segments are "
                f"{header.segment_size} bytes",
                hint="the file is truncated or not a WAL segment",
            )
        return header

    def push(self, name: walnames.WalName, data: bytes) -> PushResult:
        """Validate and upload one file; identical re-pushes succeed, different ones fail."""
        header = self.validate(name, data)
        key = wal_key(name)
        sha = sha256_hex(data)
        meta = {"cloudbm-kind": name.kind.value}
        if header is not None:
            meta["cloudbm-wal-segment-size"] = str(header.segment_size)
        self.descriptor()
        try:
            stored = self.repo.put_bytes(key, data, if_absent=True, metadata=meta, sha256=sha).size
        except ObjectExistsError:
            existing = self.repo.plaintext_sha256(key)
            if existing == sha:
                log.info("%s was already archived with identical content", name.name)
                return PushResult(name.name, len(data), 0, already_archived=True)
            raise ConflictError(
                f"{name.name} is already archived in {self.repo.storage.url} with different "
                "content; the archived copy was left untouched",
                hint="two clusters may be writing to one repository; check the archive",
            ) from None
        return PushResult(name.name, len(data), stored)


def _hook_env(settings: Settings, name: str, path: Path, size: int) -> dict[str, str]:
    return {
        "CLOUDBM_SERVER": settings.server,
        "CLOUDBM_SEGMENT": name,
        "CLOUDBM_PATH": str(path),
        "CLOUDBM_SIZE": str(size),
        "CLOUDBM_COMPRESSION": settings.compression,
        "CLOUDBM_REPOSITORY": settings.repository,
    }


def _ready_candidates(pg_wal: Path, exclude: str, limit: int, skip: set[str]) -> list[str]:
    """Names marked .ready, history files first (as PostgreSQL 14+ archives them), then in
    name order; at most `limit`."""
    status = pg_wal / "archive_status"
    try:
        ready = [e.name[:-6] for e in os.scandir(status) if e.name.endswith(".ready")]
    except FileNotFoundError:
        return []
    names = [n for n in ready if n != exclude and n not in skip and walnames.is_wal_name(n)]
    names.sort(key=lambda n: (not n.endswith(".history"), n))
    return names[:limit]


def wal_push(settings: Settings, path_arg: str) -> PushResult:
    """archive_command entry point."""
    path = Path(path_arg)
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    name = walnames.parse(path.name)
    data = _read_whole(path)
    spool = spool_dir(settings)
    markers = Markers(spool)
    if markers.consume(name.name, data):
        log.debug("%s was pushed ahead by an earlier invocation", name.name)
        result = PushResult(name.name, len(data), 0, already_archived=True)
        _push_ahead_only(settings, path.parent, name.name, markers, spool)
        return result

    repo = open_repository(settings)
    pusher = WalPusher(settings, repo, path.parent)
    env = _hook_env(settings, name.name, path, len(data))
    run_hook(settings.pre_archive_script, "pre", env, fatal=True)
    with _PushAhead(settings, pusher, markers, spool) as ahead:
        ahead.start(name.name)
        try:
            result = pusher.push(name, data)
        except CloudbmError as exc:
            run_hook(
                settings.post_archive_script,
                "post",
                {**env, "CLOUDBM_ERROR": str(exc)},
                fatal=False,
            )
            raise
    run_hook(settings.post_archive_script, "post", {**env, "CLOUDBM_ERROR": ""}, fatal=False)
    return result


def _push_ahead_only(
    settings: Settings, pg_wal: Path, current: str, markers: Markers, spool: Path
) -> None:
    """Keep the window full after a marker hit, without touching storage if nothing is ready."""
    if settings.wal_push_ahead <= 0:
        return
    if not _ready_candidates(pg_wal, current, 1, markers.names()):
        return
    try:
        pusher = WalPusher(settings, open_repository(settings), pg_wal)
        with _PushAhead(settings, pusher, markers, spool) as ahead:
            ahead.start(current)
    except CloudbmError as exc:
        # The segment PostgreSQL asked for is archived; look-ahead is best effort.
        log.debug("push-ahead skipped: %s", exc)


class _PushAhead:
    """Uploads other .ready segments in parallel while the requested one uploads."""

    def __init__(
        self, settings: Settings, pusher: WalPusher, markers: Markers, spool: Path
    ) -> None:
        self.settings = settings
        self.pusher = pusher
        self.markers = markers
        self.lock_path = spool / "push.lock"
        self._lock_fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []

    def __enter__(self) -> _PushAhead:
        return self

    def start(self, current: str) -> None:
        limit = self.settings.wal_push_ahead
        if limit <= 0:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # another invocation is pushing ahead already
            return
        self._lock_fd = fd
        self.markers.collect_garbage(self.pusher.pg_wal)
        names = _ready_candidates(self.pusher.pg_wal, current, limit, self.markers.names())
        if not names:
            return
        self.pusher.descriptor()  # once, before threads race to create it
        self._pool = ThreadPoolExecutor(max_workers=max(2, self.settings.jobs) + 2)
        self._futures = [self._pool.submit(self._push_one, n) for n in names]

    def _push_one(self, file_name: str) -> None:
        path = self.pusher.pg_wal / file_name
        try:
            data = path.read_bytes()
            name = walnames.parse(file_name)
            env = _hook_env(self.settings, file_name, path, len(data))
            run_hook(self.settings.pre_archive_script, "pre", env, fatal=True)
            self.pusher.push(name, data)
            self.markers.record(file_name, sha256_hex(data), len(data))
            run_hook(
                self.settings.post_archive_script, "post", {**env, "CLOUDBM_ERROR": ""}, fatal=False
            )
        except FileNotFoundError:
            return  # archived and recycled meanwhile
        except CloudbmError as exc:
            # PostgreSQL will ask for this file itself and then see the error.
            log.debug("push-ahead of %s failed: %s", file_name, exc)

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
