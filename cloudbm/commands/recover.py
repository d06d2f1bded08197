"""`cloudbm recover [ID] DEST`: rebuild a data directory from a backup and configure PITR.

Order: check the target's syntax, resolve the backup, authenticate its summary against the
encrypted recovery object, check DEST and tablespace directories, check that the target lies
within what the backup and the archive can reach and that the archive holds every WAL segment
from the backup's start to the target (timeline-aware) — all before writing anything — then
download, authenticate, decompress and extract the parts in parallel, verifying each file's size
and SHA-256, then write backup_label, tablespace_map, the recovery settings and one signal file,
fsync everything written, and only then put global/pg_control in place: until that last rename
the directory cannot be started (PostgreSQL needs pg_control), so an interrupted recover never
leaves a cluster that would replay from the wrong checkpoint; `--delta` completes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudbm.catalog import (
    DONE,
    BackupEntry,
    Manifest,
    resolve,
)
from cloudbm.config import Settings
from cloudbm.errors import (
    CheckFailed,
    ConfigError,
    IntegrityError,
    NotFoundError,
)
from cloudbm.fsutil import fsync_dir
from cloudbm.logs import log
from cloudbm.pg import recovery_target, walnames
from cloudbm.pg.recovery_conf import (
    RecoveryConfig,
    RecoveryTarget,
    write_private_file,
    write_recovery,
)
from cloudbm.pg.recovery_conf import settings as recovery_settings
from cloudbm.progress import Progress, human_bytes
from cloudbm.repository import Repository, backup_reader, walreach
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.tarstream import FileRecord, TarExtractor, pending_path

if TYPE_CHECKING:
    from cloudbm.catalog import PartInfo

CONTROL_FILE = "global/pg_control"  # written last: its presence makes a directory startable
# Errors of the local filesystem (DEST full, read-only, not ours...), as opposed to the network
# errors an SDK may let through: those are the storage layer's to report.
_LOCAL_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.ENOTEMPTY,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EMLINK,
        errno.EFBIG,
        errno.EXDEV,
        errno.EBUSY,
        errno.ETXTBSY,
        errno.EMFILE,
        errno.ENFILE,
    }
)


@dataclass(frozen=True)
class RecoverOptions:
    backup_id: str | None
    dest: Path
    target: RecoveryTarget = field(default_factory=RecoveryTarget)
    tablespace_map: dict[str, str] = field(default_factory=dict)
    standby: bool = False
    delta: bool = False
    force: bool = False
    archive_mode_off: bool = False
    restore_command: str | None = None
    global_args: tuple[str, ...] = ()
    progress: bool = True


@dataclass
class RecoverResult:
    backup_id: str
    dest: str
    files_written: int
    files_kept: int
    files_removed: int
    bytes_written: int
    wal_checked: int
    target: dict[str, Any]
    start_command: str
    restore_command: str
    prefetching: bool = False  # a prefetch worker waits for PostgreSQL's first requests


def _choose_backup(
    entries: list[BackupEntry], backup_id: str | None, target: RecoveryTarget
) -> BackupEntry:
    """The backup named, or with none the newest DONE backup that can reach a time or LSN
    target (for other targets, the newest)."""
    if backup_id is not None:
        entry = resolve(entries, backup_id)
        if entry.status != DONE or entry.manifest is None:
            raise CheckFailed(
                f"backup {entry.backup_id} is {entry.status}, not DONE: it cannot be restored",
                hint="choose a DONE backup ('cloudbm backup-list')",
            )
        return entry
    finished = [e.manifest for e in entries if e.status == DONE and e.manifest is not None]
    finished.sort(key=lambda m: (m.begin_time, m.backup_id))
    if not finished:
        raise NotFoundError("there is no DONE backup", hint="run 'cloudbm backup-push'")
    if target.time is not None:
        when = recovery_target.parse_time(target.time)
        fit = [m for m in finished if recovery_target.earliest_time(m.end) <= when]
        if not fit:
            first = min(finished, key=lambda m: m.end)
            earliest = recovery_target.format_time(recovery_target.earliest_time(first.end))
            raise CheckFailed(
                f"no DONE backup ended before --target-time {target.time}: the earliest "
                f"reachable time is {earliest} (backup {first.backup_id})",
                hint="choose a later target",
            )
        finished = fit
    elif target.lsn is not None:
        lsn = recovery_target.parse_lsn(target.lsn)
        fit = [m for m in finished if walnames.parse_lsn(m.stop_lsn) <= lsn]
        if not fit:
            first = min(finished, key=lambda m: walnames.parse_lsn(m.stop_lsn))
            raise CheckFailed(
                f"no DONE backup ended before --target-lsn {target.lsn}: the earliest "
                f"reachable LSN is {first.stop_lsn} (backup {first.backup_id})",
                hint="choose a later target",
            )
        finished = fit
    chosen = finished[-1]
    return next(e for e in entries if e.manifest is chosen)


def _check_empty(path: Path, what: str, options: RecoverOptions) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (options.delta or options.force):
        raise ConfigError(
            f"{what} {path} is not empty",
            hint="choose an empty directory, or pass --delta to reuse matching files "
            "(--force to overwrite)",
        )


def _tablespace_locations(manifest: Manifest, options: RecoverOptions) -> dict[int, Path]:
    names = {t.name for t in manifest.tablespaces}
    unknown = set(options.tablespace_map) - names
    if unknown:
        raise ConfigError(
            f"--tablespace names {', '.join(sorted(unknown))}, which backup "
            f"{manifest.backup_id} does not have",
            hint=f"its tablespaces: {', '.join(sorted(names)) or 'none'}",
        )
    out: dict[int, Path] = {}
    for t in manifest.tablespaces:
        location = Path(options.tablespace_map.get(t.name, t.location))
        if not location.is_absolute():
            raise ConfigError(f"tablespace directory {location} must be an absolute path")
        out[t.oid] = location
    return out


def _default_restore_command(settings: Settings, options: RecoverOptions) -> str:
    exe = Path(sys.executable).parent / "cloudbm"
    program = str(exe) if exe.exists() else f"{sys.executable} -m cloudbm"
    args = " ".join(_shell_quote(a) for a in options.global_args)
    return f"{program} {args} wal-fetch %f %p".replace("  ", " ")


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def recover(settings: Settings, options: RecoverOptions) -> RecoverResult:
    """Restore a backup into options.dest and configure recovery."""
    target = recovery_target.normalise(options.target)  # before any I/O: usage errors first
    backup_id = options.backup_id
    if backup_id is not None and not backup_id.strip():
        raise ConfigError(
            f"the backup id {backup_id!r} is empty",
            hint="give a backup id, latest or oldest ('cloudbm backup-list'), or leave it out "
            "to let the target choose",
        )
    restore_command = options.restore_command or _default_restore_command(settings, options)
    config = RecoveryConfig(restore_command, target, options.standby, options.archive_mode_off)
    recovery_settings(config)  # every value PostgreSQL will read, checked before any I/O
    with settings.open_repository() as repo:
        return _recover(settings, repo, options, config)


@contextmanager
def _writing(roots: list[Path]) -> Iterator[None]:
    """Report the local filesystem refusing a write under `roots` (DEST full, read-only, not
    ours) as the usage error it is, not as a crash. Errors naming other files, and network
    errors an SDK let through, are not ours to reword."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _LOCAL_ERRNOS:
            raise
        if exc.filename is not None:
            name = os.path.abspath(os.fsdecode(exc.filename))
            if not any(name == str(r) or name.startswith(f"{r}/") for r in roots):
                raise
        where = f" {os.fsdecode(exc.filename)}" if exc.filename is not None else ""
        raise ConfigError(
            f"cannot write the restored cluster{where}: {exc.strerror or exc}",
            hint="free space or fix permissions, then run the same recover with --delta "
            "(the directory cannot be started until a recover completes)",
        ) from exc


def _recover(
    settings: Settings, repo: Repository, options: RecoverOptions, config: RecoveryConfig
) -> RecoverResult:
    """Every check, then the restore; nothing is written before the checks pass."""
    entry = _choose_backup(load_catalogue(repo), options.backup_id, config.target)
    manifest = entry.manifest
    assert manifest is not None
    recovery = backup_reader.recovery_object(repo, manifest)
    dest = options.dest.absolute()
    locations = _tablespace_locations(manifest, options)
    roots = [dest, *locations.values()]
    with _writing(roots):
        _check_empty(dest, "destination", options)
        for oid, location in locations.items():
            _check_empty(location, f"tablespace {oid} directory", options)
    target_tli, wal_checked, reach = walreach.check_wal(repo, manifest, config.target)
    log.info(
        "recovering backup %s (%s) into %s; WAL %s onward is in the archive",
        manifest.backup_id,
        human_bytes(manifest.size),
        dest,
        manifest.start_wal,
    )
    log.debug("%s", reach.explain())
    records, by_part = backup_reader.all_records(repo, manifest)
    if records.get(CONTROL_FILE) is None or records[CONTROL_FILE].kind != "file":
        raise IntegrityError(
            f"backup {manifest.backup_id} has no {CONTROL_FILE}",
            hint="it cannot be restored; restore another backup",
        )
    with _writing(roots):
        kept, removed, written = _restore(
            settings, repo, options, manifest, records, by_part, dest, locations
        )
        _configure(options, config, manifest, recovery, dest, locations)
        # Last: until pg_control is in place the directory cannot be started.
        _install_control(dest, manifest.backup_id)
    prefetching = _prefetch_ahead(settings, options, manifest.start_wal, dest)
    target = config.target
    kind = target.kind()
    return RecoverResult(
        backup_id=manifest.backup_id,
        dest=str(dest),
        files_written=written[0],
        files_kept=len(kept),
        files_removed=removed,
        bytes_written=written[1],
        wal_checked=wal_checked,
        target={
            "kind": kind or "latest",
            "value": getattr(target, kind) if kind and kind != "immediate" else None,
            "timeline": target_tli,
            "inclusive": target.inclusive,
            "action": target.action,
        },
        start_command=f"pg_ctl -D {dest} start  # with the binaries of {manifest.pg_version}",
        restore_command=config.restore_command,
        prefetching=prefetching,
    )


def _restore(
    settings: Settings,
    repo: Repository,
    options: RecoverOptions,
    manifest: Manifest,
    records: dict[str, FileRecord],
    by_part: dict[str, list[str]],
    dest: Path,
    locations: dict[int, Path],
) -> tuple[set[str], int, tuple[int, int]]:
    """Extract the parts into DEST (pg_control under its pending name); returns (archive
    paths kept by --delta, files removed, (files written, bytes written))."""

    def path_of(rel: str) -> Path:
        if rel.startswith("pg_tblspc/"):
            parts = rel.split("/", 2)
            oid = int(parts[1]) if parts[1].isdecimal() else None
            if oid in locations:
                return locations[oid] / parts[2] if len(parts) > 2 else locations[oid]
        return dest / rel

    kept: set[str] = set()
    removed = 0
    if options.delta and dest.exists():
        kept, removed = _delta_scan(dest, locations, records, path_of, settings.jobs)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    _withdraw_control(dest, kept)
    for location in locations.values():
        location.mkdir(mode=0o700, parents=True, exist_ok=True)

    total = sum(r.size for p, r in records.items() if r.kind == "file" and p not in kept)
    progress = Progress(f"recover {manifest.backup_id}", total, enabled=options.progress)
    phase = time.monotonic()
    written = _extract_parts(
        repo, manifest, records, by_part, kept, dest, path_of, progress, settings.jobs
    )
    progress.finish()
    log.info(
        "restored %d files (%s) in %.1fs, each checked against the manifest",
        written[0],
        human_bytes(written[1]),
        time.monotonic() - phase,
    )
    return kept, removed, written


def _configure(
    options: RecoverOptions,
    config: RecoveryConfig,
    manifest: Manifest,
    recovery: dict[str, Any],
    dest: Path,
    locations: dict[int, Path],
) -> None:
    """Tablespace links, backup_label, tablespace_map, recovery settings and signal file, all
    durable on return."""
    # pg_tblspc/<oid> -> location, and a tablespace_map consistent with it.
    tblspc = dest / "pg_tblspc"
    tblspc.mkdir(mode=0o700, exist_ok=True)
    for oid, location in locations.items():
        link = tblspc / str(oid)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        os.symlink(location, link)
    write_private_file(dest / "backup_label", str(recovery["backup_label"]))
    map_path = dest / "tablespace_map"
    if locations:
        write_private_file(map_path, "".join(f"{oid} {loc}\n" for oid, loc in locations.items()))
    else:
        map_path.unlink(missing_ok=True)
    note = f"written by cloudbm recover of backup {manifest.backup_id}"
    write_recovery(dest, config, note)
    _fsync_tree(dest, locations)


def _withdraw_control(dest: Path, kept: set[str]) -> None:
    """Before anything is written, make sure DEST holds no global/pg_control until the end: a
    pg_control the delta scan kept is moved to its pending name, any other is removed."""
    control = dest / CONTROL_FILE
    pending = Path(pending_path(control))
    if CONTROL_FILE in kept:
        os.replace(control, pending)
    else:
        control.unlink(missing_ok=True)
    if control.parent.is_dir():
        fsync_dir(control.parent)


def _install_control(dest: Path, backup_id: str) -> None:
    """The last write of a recover: pg_control in place, once everything else is durable."""
    control = dest / CONTROL_FILE
    pending = Path(pending_path(control))
    if not pending.is_file():
        raise IntegrityError(
            f"backup {backup_id}'s {CONTROL_FILE} was not restored",
            hint="run the same recover with --delta",
        )
    os.replace(pending, control)
    fsync_dir(control.parent)


PREFETCH_WAIT_FIRST = 120.0  # how long the worker recover starts waits for PostgreSQL


def _prefetch_ahead(settings: Settings, options: RecoverOptions, first: str, dest: Path) -> bool:
    """Start fetching the backup's first WAL segments for the restore_command PostgreSQL will
    run, so that its first calls are answered by a warm worker. Only when that command is
    cloudbm's own and will run as this user (PostgreSQL runs as the data directory's owner,
    never as root); the worker exits after PREFETCH_WAIT_FIRST seconds if nobody asks."""
    from cloudbm.errors import CloudbmError
    from cloudbm.localstate.workers import start_prefetch_ahead

    uid = os.geteuid()
    if options.restore_command or uid == 0 or dest.stat().st_uid != uid:
        return False
    if settings.wal_prefetch <= 0:
        return False
    try:
        start_prefetch_ahead(
            settings.spool_dir(), first, list(options.global_args), PREFETCH_WAIT_FIRST
        )
        return True
    except (CloudbmError, OSError) as exc:
        log.warning("could not start fetching WAL ahead of recovery: %s", exc)
        return False


def _delta_scan(
    dest: Path,
    locations: dict[int, Path],
    records: dict[str, FileRecord],
    path_of: Callable[[str], Path],
    jobs: int,
) -> tuple[set[str], int]:
    """Files already in place with the right size and SHA-256 are kept; files the backup
    lacks are removed. Returns (kept archive paths, files removed)."""
    wanted_files = {str(path_of(p)): p for p, r in records.items() if r.kind == "file"}
    wanted_dirs = {str(path_of(p)) for p, r in records.items() if r.kind == "dir"}

    def matches(item: tuple[str, str]) -> str | None:
        fs_path, rel = item
        rec = records[rel]
        try:
            if os.lstat(fs_path).st_size != rec.size:
                return None
            h = hashlib.sha256()
            with open(fs_path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            return None
        return rel if h.hexdigest() == rec.sha256 else None

    with ThreadPoolExecutor(max_workers=max(2, jobs)) as pool:
        kept = {r for r in pool.map(matches, wanted_files.items()) if r}
    removed = 0
    roots = [dest, *locations.values()]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                full = os.path.join(dirpath, name)
                if full not in wanted_files:
                    os.unlink(full)
                    removed += 1
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    os.unlink(full)  # pg_tblspc links are recreated
                elif full not in wanted_dirs and not os.listdir(full):
                    os.rmdir(full)
    return kept, removed


def _extract_parts(
    repo: Repository,
    manifest: Manifest,
    records: dict[str, FileRecord],
    by_part: dict[str, list[str]],
    kept: set[str],
    dest: Path,
    path_of: Callable[[str], Path],
    progress: Progress,
    jobs: int,
) -> tuple[int, int]:
    """Download and extract parts in parallel; returns (files written, bytes written)."""

    def one(part: PartInfo) -> tuple[int, int]:
        extractor = TarExtractor(
            dest,
            expected=records,
            path_map=path_of,
            skip=lambda rel: rel in kept,
            on_progress=progress.add,
            deferred=(CONTROL_FILE,),
        )
        with backup_reader.open_part(repo, manifest, part) as stream:
            try:
                written = extractor.extract(stream.tar)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"backup {manifest.backup_id}, object {repo.where(part.key)}: {exc}",
                    hint="the backup is damaged; restore another backup",
                ) from exc
            stream.finish()
        files = [r for r in written if r.kind == "file" and r.path not in kept]
        return len(files), sum(r.size for r in files)

    def fully_kept(part: PartInfo) -> bool:
        """Delta restore: a part whose files are all in place need not be downloaded."""
        return all(
            (p in kept) if records[p].kind == "file" else path_of(p).is_dir()
            for p in by_part[part.key]
        )

    todo = [p for p in manifest.parts if not kept or not fully_kept(p)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, todo))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _fsync_tree(dest: Path, locations: dict[int, Path]) -> None:
    """fsync every directory of the restored tree (files were fsynced as written)."""
    for root in [dest, *locations.values()]:
        for dirpath, _dirnames, _files in os.walk(root):
            fsync_dir(Path(dirpath))
    for parent in {dest.parent, *(p.parent for p in locations.values())}:
        fsync_dir(parent)
