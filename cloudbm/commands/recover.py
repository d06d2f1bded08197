"""`cloudbm recover [ID] DEST`: rebuild a data directory from a backup and configure PITR.

Order: resolve the backup, authenticate its summary against the encrypted recovery object,
check DEST and tablespace directories, check that the archive holds every WAL segment from the
backup's start to the target (timeline-aware) — all before writing anything — then download,
authenticate, decompress and extract the parts in parallel, verifying each file's size and
SHA-256, then write backup_label, tablespace_map, the recovery settings and one signal file, and
fsync everything written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cloudbm.catalog import (
    DONE,
    BackupEntry,
    Manifest,
    resolve,
)
from cloudbm.commands.catalogue import load_catalogue
from cloudbm.commands.context import open_repository
from cloudbm.commands.progress import Progress, human_bytes
from cloudbm.commands.wal_layout import WAL_PREFIX, wal_key
from cloudbm.config import Settings
from cloudbm.errors import (
    CheckFailed,
    ConfigError,
    IntegrityError,
    NotFoundError,
)
from cloudbm.logs import log
from cloudbm.pg import timeline, walnames
from cloudbm.pg.recovery_conf import (
    RecoveryConfig,
    RecoveryTarget,
    write_private_file,
    write_recovery,
)
from cloudbm.repository import Repository
from cloudbm.tarstream import FileRecord, TarExtractor


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


class HashingStream:
    """Hashes the stored bytes of a part as they are downloaded."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._inner.read(n)
        self.sha.update(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()


def _choose_backup(entries: list[BackupEntry], options: RecoverOptions) -> BackupEntry:
    if options.backup_id:
        entry = resolve(entries, options.backup_id)
        if entry.status != DONE or entry.manifest is None:
            raise CheckFailed(
                f"backup {entry.backup_id} is {entry.status}, not DONE: it cannot be restored",
                hint="choose a DONE backup ('cloudbm backup-list')",
            )
        return entry
    finished = [e for e in entries if e.status == DONE and e.manifest is not None]
    t = options.target
    if t.time is not None:
        when = _parse_target_time(t.time)
        finished = [e for e in finished if e.manifest is not None and e.manifest.end <= when]
        if not finished:
            raise NotFoundError(
                f"no DONE backup ended before {t.time}",
                hint="choose a later target, or an older backup explicitly",
            )
    elif t.lsn is not None:
        target_lsn = walnames.parse_lsn(t.lsn)
        finished = [
            e
            for e in finished
            if e.manifest is not None and walnames.parse_lsn(e.manifest.stop_lsn) <= target_lsn
        ]
        if not finished:
            raise NotFoundError(f"no DONE backup ended before LSN {t.lsn}")
    if not finished:
        raise NotFoundError("there is no DONE backup", hint="run 'cloudbm backup-push'")
    return finished[-1]


def _parse_target_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace(" ", "T", 1).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--target-time {text!r} is not a timestamp",
            hint="use ISO 8601 with a time zone, e.g. 2026-11-22 10:15:00+00",
        ) from None
    if value.tzinfo is None:
        raise ConfigError(
            f"--target-time {text!r} has no time zone",
            hint="add one (e.g. +00): PostgreSQL would otherwise read it in its own time zone",
        )
    return value


def recovery_object(repo: Repository, manifest: Manifest) -> dict[str, Any]:
    """Decode the recovery object and check that it and the summary pin each other."""
    from cloudbm.codec.envelope import decode_bytes

    with repo.storage.get(manifest.recovery_key) as reader:
        stored = reader.read()
    if hashlib.sha256(stored).hexdigest() != manifest.recovery_stored_sha256:
        raise IntegrityError(
            f"{manifest.recovery_key} does not match the manifest of backup {manifest.backup_id}",
            hint="the repository was modified; run 'cloudbm verify'",
        )
    raw = decode_bytes(stored, name=manifest.recovery_key, keyring=repo.keyring())
    doc: dict[str, Any] = json.loads(raw)
    if doc.get("manifest_sha256") != manifest.canonical_sha256():
        raise IntegrityError(
            f"the manifest of backup {manifest.backup_id} was altered after it was written",
            hint="do not trust this backup; run 'cloudbm verify'",
        )
    if not str(doc.get("backup_label") or "").strip():
        raise IntegrityError(
            f"backup {manifest.backup_id} has no backup_label",
            hint="restoring without it would silently corrupt the cluster",
        )
    return doc


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


def _histories(repo: Repository, names: set[str]) -> dict[int, list[timeline.Switch]]:
    out: dict[int, list[timeline.Switch]] = {}
    for name in sorted(n for n in names if n.endswith(".history")):
        raw, _ = repo.get_bytes(wal_key(walnames.parse(name)))
        out[walnames.parse(name).timeline] = timeline.parse_history(raw.decode())
    return out


def check_wal(repo: Repository, manifest: Manifest, target: RecoveryTarget) -> tuple[int, int]:
    """Every segment from the backup's start to the target must be archived (following the
    timeline history to the target timeline). Returns (target timeline, segments checked)."""
    archived = {info.key.rsplit("/", 1)[-1] for info in repo.storage.list(WAL_PREFIX)}
    histories = _histories(repo, archived)
    start = walnames.parse_lsn(manifest.start_lsn)
    stop = walnames.parse_lsn(manifest.stop_lsn)
    size = manifest.wal_segment_size
    if target.timeline == "latest":
        # As PostgreSQL does: the newest timeline in the archive, reachable or not.
        tli = max([manifest.timeline, *histories])
        if not timeline.reachable(manifest.timeline, start, tli, histories):
            raise CheckFailed(
                f"the newest timeline in the archive, {tli}, branched off before backup "
                f"{manifest.backup_id} started, so PostgreSQL could not follow it",
                hint="pass --target-tli with the timeline to recover along (e.g. current)",
            )
    elif target.timeline == "current":
        tli = manifest.timeline
    else:
        tli = int(target.timeline)
        if tli != manifest.timeline and tli not in histories:
            raise NotFoundError(
                f"timeline {tli} has no history file ({walnames.history_name(tli)}) in the archive",
                hint="choose an archived timeline or 'latest'",
            )
        if not timeline.reachable(manifest.timeline, start, tli, histories):
            raise CheckFailed(
                f"timeline {tli} branched off before backup {manifest.backup_id} started",
                hint="choose an older backup for that timeline",
            )
    # Consistency needs start..stop; the target may need more.
    end_lsn: int | None = None
    if target.immediate:
        end_lsn = stop
    elif target.lsn is not None:
        end_lsn = max(walnames.parse_lsn(target.lsn), stop)
    names, gaps = timeline.needed_segments(start, end_lsn, tli, histories, size, archived)
    consistency, cgaps = timeline.needed_segments(
        start, stop, manifest.timeline, {}, size, archived
    )
    gaps = cgaps + [g for g in gaps if g not in cgaps]
    if gaps:
        listed = "; ".join(str(g) for g in gaps[:5])
        more = f" and {len(gaps) - 5} more gaps" if len(gaps) > 5 else ""
        raise NotFoundError(
            f"the archive lacks WAL that recovery from backup {manifest.backup_id} needs: "
            f"{listed}{more}",
            hint="nothing was written; restore the missing segments or choose another backup "
            "or target",
        )
    return tli, len(set(names) | set(consistency))


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
    repo = open_repository(settings)
    try:
        return _recover(settings, repo, options)
    finally:
        repo.storage.close()


def _recover(settings: Settings, repo: Repository, options: RecoverOptions) -> RecoverResult:
    entry = _choose_backup(load_catalogue(repo), options)
    manifest = entry.manifest
    assert manifest is not None
    recovery = recovery_object(repo, manifest)
    dest = options.dest.absolute()
    _check_empty(dest, "destination", options)
    locations = _tablespace_locations(manifest, options)
    for oid, location in locations.items():
        _check_empty(location, f"tablespace {oid} directory", options)
    target_tli, wal_checked = check_wal(repo, manifest, options.target)
    log.info(
        "recovering backup %s (%s) into %s; WAL %s onward is in the archive",
        manifest.backup_id,
        human_bytes(manifest.size),
        dest,
        manifest.start_wal,
    )

    def path_of(rel: str) -> Path:
        if rel.startswith("pg_tblspc/"):
            parts = rel.split("/", 2)
            oid = int(parts[1])
            if oid in locations:
                return locations[oid] / parts[2] if len(parts) > 2 else locations[oid]
        return dest / rel

    records, by_part = all_records(repo, manifest)
    kept: set[str] = set()
    removed = 0
    if options.delta and dest.exists():
        kept, removed = _delta_scan(dest, locations, records, path_of, settings.jobs)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
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
    label_path = dest / "backup_label"
    write_private_file(label_path, str(recovery["backup_label"]))
    map_path = dest / "tablespace_map"
    if locations:
        write_private_file(map_path, "".join(f"{oid} {loc}\n" for oid, loc in locations.items()))
    else:
        map_path.unlink(missing_ok=True)
    restore_command = options.restore_command or _default_restore_command(settings, options)
    target = options.target
    note = f"written by cloudbm recover of backup {manifest.backup_id}"
    write_recovery(
        dest,
        RecoveryConfig(restore_command, target, options.standby, options.archive_mode_off),
        note,
    )
    _fsync_tree(dest, locations)
    prefetching = _prefetch_ahead(settings, options, manifest.start_wal, dest)
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
        restore_command=restore_command,
        prefetching=prefetching,
    )


PREFETCH_WAIT_FIRST = 120.0  # how long the worker recover starts waits for PostgreSQL


def _prefetch_ahead(settings: Settings, options: RecoverOptions, first: str, dest: Path) -> bool:
    """Start fetching the backup's first WAL segments for the restore_command PostgreSQL will
    run, so that its first calls are answered by a warm worker. Only when that command is
    cloudbm's own and will run as this user (PostgreSQL runs as the data directory's owner,
    never as root); the worker exits after PREFETCH_WAIT_FIRST seconds if nobody asks."""
    from cloudbm.commands.wal_fetch import start_prefetch_ahead
    from cloudbm.errors import CloudbmError

    uid = os.geteuid()
    if options.restore_command or uid == 0 or dest.stat().st_uid != uid:
        return False
    try:
        return start_prefetch_ahead(settings, first, list(options.global_args), PREFETCH_WAIT_FIRST)
    except (CloudbmError, OSError) as exc:
        log.warning("could not start fetching WAL ahead of recovery: %s", exc)
        return False


def all_records(
    repo: Repository, manifest: Manifest
) -> tuple[dict[str, FileRecord], dict[str, list[str]]]:
    """Every record of the backup (each list checked against the manifest's digest), and the
    archive paths each part holds."""

    def load(part: Any) -> list[FileRecord]:
        with repo.storage.get(part.files_key) as reader:
            stored = reader.read()
        if hashlib.sha256(stored).hexdigest() != part.files_stored_sha256:
            raise IntegrityError(
                f"{repo.storage.url}/{part.files_key} does not match backup "
                f"{manifest.backup_id}'s manifest",
                hint="the object is corrupt or was replaced; run 'cloudbm verify'",
            )
        from cloudbm.codec.envelope import decode_bytes

        raw = decode_bytes(stored, name=part.files_key, keyring=repo.keyring())
        return [FileRecord(**json.loads(line)) for line in raw.decode().splitlines()]

    records: dict[str, FileRecord] = {}
    by_part: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for part, recs in zip(manifest.parts, pool.map(load, manifest.parts), strict=True):
            by_part[part.key] = [r.path for r in recs if not r.missing]
            for r in recs:
                if not r.missing:
                    records[r.path] = r
    return records, by_part


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
    from cloudbm.codec.envelope import DecodingReader

    def one(part: Any) -> tuple[int, int]:
        reader = repo.storage.get(part.key)
        hashing = HashingStream(reader)
        # Every file is checked against the manifest's SHA-256 as it is written, and the
        # stored bytes against the part's: a third hash over the whole tar would add nothing.
        stream = DecodingReader(
            hashing, name=part.key, keyring=repo.keyring(), hash_plaintext=False
        )
        extractor = TarExtractor(
            dest,
            expected=records,
            path_map=path_of,
            skip=lambda rel: rel in kept,
            on_progress=progress.add,
        )
        try:
            try:
                written = extractor.extract(stream)  # type: ignore[arg-type]
            except IntegrityError as exc:
                raise IntegrityError(
                    f"backup {manifest.backup_id}, object {repo.storage.url}/{part.key}: {exc}",
                    hint="the backup is damaged; restore another backup",
                ) from exc
            while hashing.read(1 << 20):
                pass
        finally:
            stream.close()
        if hashing.sha.hexdigest() != part.stored_sha256:
            raise IntegrityError(
                f"{repo.storage.url}/{part.key} does not match backup {manifest.backup_id}'s "
                "manifest",
                hint="the object is corrupt or was replaced; restore another backup",
            )
        files = [r for r in written if r.kind == "file" and r.path not in kept]
        return len(files), sum(r.size for r in files)

    def fully_kept(part: Any) -> bool:
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
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for parent in {dest.parent, *(p.parent for p in locations.values())}:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
