"""`cloudbm backup-push`: a base backup of the running cluster into the repository.

Order of writes (a crash at any point leaves a complete backup or a visibly unfinished one):
started.json, the data parts (each followed by its file list), waiting.json, the recovery
object (backup_label, tablespace_map), manifest.json last. A failed run writes failed.json.

Parts are tar streams built on demand from the data directory, piped through compression and
encryption straight into storage; `jobs` parts are in flight at once, and global/pg_control is
read only after every other part is stored.

The objects themselves are written by the repository layer (repository/backup_writer.py);
this module orchestrates: the PostgreSQL session, planning the parts, progress, hooks, the
lease and the wait for WAL.

One backup per server at a time, across hosts, OS users and spool directories: once the checks
pass, and before a backup id is claimed, the run takes the repository's backup lease
(repository/lease.py); it holds it to the end, and stops if another run takes it over
(docs/backup.md).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudbm import __version__
from cloudbm.catalog import (
    DONE,
    Manifest,
    PartInfo,
    StartedRecord,
    TablespaceRecord,
    iso,
    new_backup_id,
    utc_now,
)
from cloudbm.config import Settings
from cloudbm.errors import CheckFailed, CloudbmError, NotFoundError, StorageError
from cloudbm.hooks import run_hook
from cloudbm.logs import log
from cloudbm.pg import datadir, walnames
from cloudbm.pg.archiver import ArchiverStats, archiver_runs_here, wait_verdict
from cloudbm.pg.session import BackupSession, ServerInfo, parse_backup_label
from cloudbm.progress import Progress, RateLimiter, human_bytes
from cloudbm.repository import Repository
from cloudbm.repository import wal as wal_archive
from cloudbm.repository.backup_writer import BackupWriter
from cloudbm.repository.catalogue import load_catalogue, write_keep_mark
from cloudbm.repository.layout import backup_prefix
from cloudbm.repository.lease import Lease, LeaseHeldError, backup_lease
from cloudbm.tarstream import TarPartReader, plan_parts

CONTROL_FILE = "global/pg_control"
WAL_POLL_SECONDS = 1.0
WAL_POLL_FIRST = 0.05  # the stop segment usually arrives within a wal-push or two
# A verdict from pg_stat_archiver (failing, or archiving elsewhere) must hold this long before
# the wait gives up: it outlasts a statistics delay and a storage blip, not a slow archiver.
ARCHIVE_VERDICT_GRACE = 3.0
# How often a long part upload is interrupted to see whether the lease still holds.
LEASE_CHECK_SECONDS = 1.0


MIN_BALANCED_PART = 64 * 1024 * 1024


def balanced_part_size(configured: int, total: int, jobs: int) -> int:
    """Parts of at most `configured` bytes, but small enough that `jobs` uploads stay busy to
    the end: a 1.5 GB database in two 1 GiB-ish parts would leave one core idle for a third of
    the run. At least four parts per job, never below 64 MiB (or the configured size)."""
    return max(min(configured, MIN_BALANCED_PART), min(configured, total // (4 * max(1, jobs))))


class BackupRunningError(CheckFailed):
    """Another backup-push of the same server holds the repository's backup lease."""


@dataclass(frozen=True)
class BackupOptions:
    label: str | None = None
    immediate_checkpoint: bool | None = None
    bandwidth_limit: int | None = None
    keep: str | None = None
    progress: bool = True


class ArchiverWatch:
    """pg_stat_archiver seen from the backup's session, to stop waiting for WAL that will not
    come (docs/backup.md). Only where this server's own archiver archives."""

    def __init__(self, session: BackupSession, info: ServerInfo) -> None:
        self.session: BackupSession | None = session
        if not archiver_runs_here(info.archive_mode, info.in_recovery):
            self.session = None
        self.failed_before = 0
        if self.session is not None:
            stats = self.stats()
            self.failed_before = stats.failed_count if stats else 0

    def stats(self) -> ArchiverStats | None:
        if self.session is None:
            return None
        try:
            return self.session.archiver()
        except CheckFailed as exc:  # the backup may still complete: only stop judging
            log.warning("cannot read pg_stat_archiver (%s); waiting without it", exc)
            self.session = None
            return None


class BackupRun:
    """State of one backup-push run."""

    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        options: BackupOptions,
        lease: Lease | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.options = options
        self.lease = lease
        self.writer = BackupWriter(repo, threads=settings.jobs)
        self.limiter = RateLimiter(
            options.bandwidth_limit if options.bandwidth_limit else settings.bandwidth_limit
        )

    @property
    def backup_id(self) -> str:
        """The id this run claimed ("" before started.json is written)."""
        return self.writer.backup_id

    # -- parts ---------------------------------------------------------------------------------

    def upload_part(self, number: int, files: list[datadir.Entry], progress: Progress) -> PartInfo:
        """Stream one tar part into storage; retried from the files on transient failure."""
        planned = sum(f.size for f in files) + 1024 * (len(files) + 2)
        return self.writer.write_part(
            number,
            lambda: TarPartReader(files),
            size_hint=planned + planned // 16 + (1 << 20),
            on_plaintext=progress.add,
            on_stored=self.limiter,
        )

    def copy_files(
        self, pgdata: Path, info: ServerInfo, spaces: list[datadir.Tablespace]
    ) -> tuple[list[PartInfo], int]:
        """Walk, group and upload; returns parts and the bytes of files backed up."""
        excludes = []
        spool = Path(self.settings.spool_directory).resolve()
        if spool.is_relative_to(pgdata.resolve()):
            excludes.append(str(spool))
        total = sum(
            e.size
            for e in datadir.walk(
                pgdata, major=info.major, tablespaces=spaces, extra_excludes=excludes
            )
            if e.kind == "file"
        )
        progress = Progress(f"backup {self.backup_id}", total, enabled=self.options.progress)
        entries = datadir.walk(
            pgdata, major=info.major, tablespaces=spaces, extra_excludes=excludes
        )
        jobs = max(1, self.settings.jobs)
        parts: dict[int, PartInfo] = {}
        size = 0
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cloudbm-part") as pool:
            pending: set[Future[PartInfo]] = set()
            futures: dict[Future[PartInfo], int] = {}
            planned = plan_parts(
                entries, target_size=balanced_part_size(self.settings.backup_part_size, total, jobs)
            )
            for number, files in enumerate(planned, start=1):
                size += sum(f.size for f in files if f.kind == "file")
                if any(f.path == CONTROL_FILE for f in files):
                    # pg_control goes last: only after every other part is stored.
                    self._drain(pending, futures, parts, until=0)
                fut = pool.submit(self.upload_part, number, files, progress)
                pending.add(fut)
                futures[fut] = number
                self._drain(pending, futures, parts, until=jobs)
            self._drain(pending, futures, parts, until=0)
        progress.finish()
        return [parts[n] for n in sorted(parts)], size

    def _drain(
        self,
        pending: set[Future[PartInfo]],
        futures: dict[Future[PartInfo], int],
        parts: dict[int, PartInfo],
        until: int,
    ) -> None:
        """Wait until at most `until` uploads are pending; the first failure is raised, and a
        lost lease stops the run between parts."""
        while len(pending) > until:
            finished, _ = wait(pending, timeout=LEASE_CHECK_SECONDS, return_when=FIRST_EXCEPTION)
            for fut in finished:
                pending.discard(fut)
                parts[futures[fut]] = fut.result()
            self.check_lease()

    def check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    # -- WAL -----------------------------------------------------------------------------------

    def wait_for_wal(
        self,
        first: str,
        last: str,
        segment_size: int,
        timeout: float,
        watch: ArchiverWatch | None = None,
    ) -> None:
        """Every segment from `first` to `last` must be in the archive before the backup is
        DONE (a standby's stop call does not wait; a primary's may be told not to).

        A transient storage error is a reason to look again, until `timeout`; a permanent one
        fails at once. `watch` ends the wait early when pg_stat_archiver proves the WAL will
        not come: the archiver is failing, or it archived past a segment this repository lacks.
        """
        needed = [first]
        if last != first:
            start = walnames.segment_number(walnames.parse(first), segment_size)
            end = walnames.segment_number(walnames.parse(last), segment_size)
            tli = walnames.parse(first).timeline
            needed = [walnames.from_number(tli, n, segment_size) for n in range(start, end + 1)]
        deadline = time.monotonic() + timeout
        missing = list(needed)
        pause = WAL_POLL_FIRST
        judged_at: float | None = None
        while True:
            self.check_lease()
            # Statistics first, then the repository: a segment reported archived must already
            # be stored, so a later look that misses it proves it went elsewhere.
            stats = watch.stats() if watch else None
            missing, failure = self._look(missing)
            if not missing:
                return
            verdict = None
            if stats is not None and watch is not None:
                verdict = wait_verdict(
                    stats,
                    failed_before=watch.failed_before,
                    missing=missing[0],
                    missing_confirmed=failure is None,
                    segment_size=segment_size,
                    repository=self.repo.url,
                )
            now = time.monotonic()
            judged_at = (judged_at or now) if verdict else None
            if verdict and judged_at is not None and now - judged_at >= ARCHIVE_VERDICT_GRACE:
                raise CheckFailed(
                    f"backup {self.backup_id} cannot complete: {verdict}",
                    hint="fix archive_command (cloudbm wal-push %p with this server's "
                    "configuration); 'cloudbm check' shows the archiver's state",
                )
            if now >= deadline:
                if failure is not None:
                    raise type(failure)(
                        f"WAL {missing[0]} needed by backup {self.backup_id}: the repository "
                        f"could not be read for {timeout:.0f}s ({failure.message})",
                        hint=failure.hint,
                    )
                raise CheckFailed(
                    f"WAL {missing[0]} (and {len(missing) - 1} more) needed by backup "
                    f"{self.backup_id} did not reach the archive within {timeout:.0f}s",
                    hint="check archive_command and pg_stat_archiver; on a standby, the "
                    "primary must switch WAL (archive_timeout) or use archive_mode=always",
                )
            time.sleep(pause)
            pause = min(WAL_POLL_SECONDS, pause * 2)

    def _look(self, missing: list[str]) -> tuple[list[str], StorageError | None]:
        """The segments of `missing` still absent, and the transient error that cut this look
        short (None when the repository answered for each)."""
        for i, name in enumerate(missing):
            try:
                if not wal_archive.is_archived(self.repo, name):
                    return missing[i:], None
            except StorageError as exc:
                if not exc.retryable:
                    raise
                log.warning(
                    "backup %s: looking for WAL %s failed (%s); retrying until wal_wait_timeout",
                    self.backup_id,
                    name,
                    exc,
                )
                return missing[i:], exc
        return [], None


def _hook_env(
    settings: Settings, run: BackupRun, previous: str, status: str, error: str
) -> dict[str, str]:
    return {
        "CLOUDBM_SERVER": settings.server,
        "CLOUDBM_BACKUP_ID": run.backup_id,
        "CLOUDBM_BACKUP_DIR": f"{settings.repository.rstrip('/')}/{backup_prefix(run.backup_id)}",
        "CLOUDBM_PREVIOUS_ID": previous,
        "CLOUDBM_STATUS": status,
        "CLOUDBM_ERROR": error,
    }


def backup_push(settings: Settings, options: BackupOptions) -> Manifest:
    """Take a base backup; returns the manifest of the DONE backup."""
    with settings.open_repository() as repo:
        lease = backup_lease(
            repo,
            ttl=settings.backup_lease_ttl,
            server=settings.server,
            can_delete=not settings.append_only,
        )
        try:
            return _backup(settings, repo, options, lease)
        finally:
            lease.release()


def _take_lease(settings: Settings, lease: Lease) -> None:
    try:
        lease.acquire()
    except LeaseHeldError as exc:
        raise BackupRunningError(
            f"another backup-push of server {settings.server!r} is running ({exc.message})",
            hint="wait for it to finish: one backup per server runs at a time; a run that "
            "died leaves a lease that "
            + (exc.hint or "expires after backup_lease_ttl without a heartbeat"),
        ) from None


def _backup(
    settings: Settings, repo: Repository, options: BackupOptions, lease: Lease | None = None
) -> Manifest:
    session = BackupSession(settings.conninfo)
    run = BackupRun(settings, repo, options, lease)
    started = False
    stopped = False
    previous = ""
    try:
        info = session.info()
        session.check(info)
        pgdata = Path(settings.pgdata or info.data_directory)
        if settings.pgdata is None:
            settings = _with_pgdata(settings, info.data_directory)
            run.settings = settings
        try:
            repo.check_cluster(info.system_identifier, info.major)
        except NotFoundError:
            repo.initialise_for(settings.pgdata_path())
            repo.check_cluster(info.system_identifier, info.major)
        identity_file = pgdata / "global" / "pg_control"
        if not identity_file.exists():
            raise CheckFailed(
                f"{pgdata} is not the server's data directory (no global/pg_control)",
                hint="run backup-push on the database host, with pgdata set",
            )
        repo.key_wrapper()
        if lease is not None:
            # Only now, in a repository known to be this cluster's, and before anything starts.
            _take_lease(settings, lease)
        finished = [e for e in load_catalogue(repo) if e.status == DONE]
        previous = finished[-1].backup_id if finished else ""
        begin = utc_now()
        backup_id = new_backup_id(begin)
        label = options.label or f"cloudbm backup {backup_id}"
        run.writer.claim(
            StartedRecord(
                backup_id,
                settings.server,
                label,
                iso(begin),
                system_identifier=str(info.system_identifier),
            )
        )
        run_hook(
            settings.pre_backup_script,
            "pre",
            _hook_env(settings, run, previous, "STARTED", ""),
            fatal=True,
        )
        spaces_info = session.tablespaces()
        spaces = [datadir.Tablespace(t.oid, t.name, t.location) for t in spaces_info]
        fast = (
            settings.immediate_checkpoint
            if options.immediate_checkpoint is None
            else options.immediate_checkpoint
        )
        log.info(
            "backup %s: starting (%s checkpoint)", run.backup_id, "immediate" if fast else "spread"
        )
        watch = ArchiverWatch(session, info)  # its failure count before the backup began
        phase = time.monotonic()
        start = session.start_backup(label, fast, info)
        started = True
        session.start_keepalive()
        log.info("backup %s: checkpoint done in %.1fs", run.backup_id, time.monotonic() - phase)
        phase = time.monotonic()
        parts, size = run.copy_files(pgdata, info, spaces)
        log.info(
            "backup %s: %d part(s) stored in %.1fs",
            run.backup_id,
            len(parts),
            time.monotonic() - phase,
        )
        # PostgreSQL's own wait polls once a second and only sees archive_status; polling
        # the repository for the stop segment is both quicker and the real proof.
        stop = session.stop_backup(info, wait_for_archive=False)
        stopped = True
        label_info = parse_backup_label(stop.backup_label)
        timeline = label_info.start_timeline
        segment_size = info.wal_segment_size
        start_wal = label_info.start_wal
        stop_wal = walnames.lsn_to_segment(timeline, max(stop.lsn - 1, start.lsn), segment_size)
        run.writer.write_waiting(walnames.format_lsn(stop.lsn), stop_wal)
        if info.in_recovery:
            log.info("backup %s: waiting for %s to reach the archive", run.backup_id, stop_wal)
        phase = time.monotonic()
        run.wait_for_wal(start_wal, stop_wal, segment_size, settings.wal_wait_timeout, watch)
        log.info(
            "backup %s: WAL up to %s archived %.1fs after the stop",
            run.backup_id,
            stop_wal,
            time.monotonic() - phase,
        )
        if lease is not None:
            lease.verify()  # the manifest makes the backup DONE: only while the lease holds
        manifest = _write_manifest(
            run,
            info,
            label,
            begin,
            parts,
            size,
            spaces_info,
            start_wal,
            stop_wal,
            timeline,
            start.lsn,
            stop,
            label_info.backup_from,
        )
        if options.keep:
            write_keep_mark(repo, run.backup_id, options.keep)
        run_hook(
            settings.post_backup_script,
            "post",
            _hook_env(settings, run, previous, DONE, ""),
            fatal=False,
        )
        return manifest
    except BaseException as exc:
        message = str(exc) if isinstance(exc, CloudbmError) else f"{type(exc).__name__}: {exc}"
        if started and not stopped:
            with contextlib.suppress(CloudbmError):
                session.stop_backup(info, wait_for_archive=False)
        if run.backup_id:
            with contextlib.suppress(CloudbmError):
                run.writer.write_failed(message)
            run_hook(
                settings.post_backup_script,
                "post",
                _hook_env(settings, run, previous, "FAILED", message),
                fatal=False,
            )
        raise
    finally:
        session.close()


def _with_pgdata(settings: Settings, pgdata: str) -> Settings:
    return settings.replace(pgdata=pgdata)


def _write_manifest(
    run: BackupRun,
    info: ServerInfo,
    label: str,
    begin: Any,
    parts: list[PartInfo],
    size: int,
    spaces: list[Any],
    start_wal: str,
    stop_wal: str,
    timeline: int,
    start_lsn: int,
    stop: Any,
    backup_from: str,
) -> Manifest:
    """The summary of the backup, written with its recovery object (each pinning the other);
    the writer fills in the key and recovery fields."""
    draft = Manifest(
        backup_id=run.backup_id,
        server=run.settings.server,
        label=label,
        begin_time=iso(begin),
        end_time=iso(utc_now()),
        start_lsn=walnames.format_lsn(start_lsn),
        stop_lsn=walnames.format_lsn(stop.lsn),
        start_wal=start_wal,
        stop_wal=stop_wal,
        timeline=timeline,
        backup_from=backup_from,
        pg_version=info.version.split(" on ")[0],
        pg_version_num=info.version_num,
        system_identifier=str(info.system_identifier),
        wal_segment_size=info.wal_segment_size,
        size=size,
        tar_size=sum(p.tar_size for p in parts),
        stored_size=sum(p.stored_size + p.files_stored_size for p in parts),
        file_count=sum(p.file_count for p in parts),
        parts=tuple(parts),
        tablespaces=tuple(TablespaceRecord(t.oid, t.name, t.location) for t in spaces),
        compression=run.settings.compression,
        encryption="",
        key_id=None,
        recovery_key="",
        recovery_stored_sha256="",
        cloudbm_version=__version__,
    )
    return run.writer.write_manifest(
        draft, backup_label=stop.backup_label, tablespace_map=stop.tablespace_map
    )


def summary_line(m: Manifest, elapsed: float) -> str:
    ratio = 100.0 * m.stored_size / max(m.size, 1)
    return (
        f"backup {m.backup_id} DONE: {human_bytes(m.size)} in {m.file_count} files, "
        f"{len(m.parts)} part(s), stored {human_bytes(m.stored_size)} ({ratio:.0f}%), "
        f"{elapsed:.1f}s, WAL {m.start_wal}..{m.stop_wal} (timeline {m.timeline})"
    )
