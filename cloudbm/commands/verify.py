"""`cloudbm verify ID`: the integrity of a backup.

verify downloads every part, authenticates and decompresses it, and checks every file's size
and SHA-256 against the backup's file lists, every stored object against the summary's digests,
and that the WAL needed for consistency is archived. It names each bad object (exit 5). Only
bytes that arrived whole and failed a check are damage: an object storage could not deliver
after the retries is reported as a storage error (exit 4), never as damage; both are named when
both happen (exit 5).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cloudbm.catalog import DONE, Manifest, PartInfo, resolve
from cloudbm.config import Settings
from cloudbm.errors import (
    EXIT_STORAGE,
    CloudbmError,
    IntegrityError,
    StorageError,
)
from cloudbm.pg import timeline, walnames
from cloudbm.repository import Repository, backup_reader, wal
from cloudbm.repository.backup_reader import BackupObjectError
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.layout import WAL_PREFIX
from cloudbm.tarstream import TarExtractor


@dataclass
class VerifyReport:
    backup_id: str
    parts: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # damage: bytes that failed a check
    unreadable: list[str] = field(default_factory=list)  # storage errors after the retries

    def note(self, where: str, exc: Exception, *, named: bool = True) -> None:
        """File a failure under damage or, for storage that did not deliver, unreadable (a
        missing object is damage: a DONE backup's objects exist). `named=False`: `where`
        already names the object, so a mismatch is told by its reason alone."""
        if isinstance(exc, StorageError) and exc.exit_code == EXIT_STORAGE:
            self.unreadable.append(f"{where}: {exc}")
        elif isinstance(exc, BackupObjectError) and not named:
            self.problems.append(f"{where}: {exc.reason}")
        else:
            self.problems.append(f"{where}: {exc}")


def verify_backup(settings: Settings, wanted: str) -> VerifyReport:
    """Check one backup end to end; IntegrityError (exit 5) naming every bad object, or
    StorageError (exit 4) when nothing read was bad but some objects could not be read."""
    with settings.open_repository() as repo:
        entry = resolve(load_catalogue(repo), wanted)
        if entry.status != DONE or entry.manifest is None:
            raise IntegrityError(f"backup {entry.backup_id} is {entry.status}, not DONE")
        manifest = entry.manifest
        report = VerifyReport(manifest.backup_id)
        try:
            backup_reader.recovery_object(repo, manifest)
        except CloudbmError as exc:
            report.note(repo.where(manifest.recovery_key), exc)
        for part in manifest.parts:
            report.parts += 1
            _verify_part(repo, manifest, part, report)
        _verify_wal(repo, manifest, report)
    unread = ""
    if report.unreadable:
        unread = (
            f"{len(report.unreadable)} object(s) could not be read (storage errors after the "
            "retries; not judged): " + "; ".join(report.unreadable)
        )
    if report.problems:
        raise IntegrityError(
            f"backup {report.backup_id} is damaged: "
            + "; ".join(report.problems)
            + (f"; and {unread}" if unread else ""),
            hint="restore from another backup, and find what altered the repository",
        )
    if unread:
        raise StorageError(
            f"backup {report.backup_id} could not be verified whole: {unread}; everything "
            "that was read matched the manifest",
            hint="check the storage and the network, then run verify again",
        )
    return report


def _verify_part(
    repo: Repository, manifest: Manifest, part: PartInfo, report: VerifyReport
) -> None:
    """A part's file list, then every file of the part against it, and the stored bytes of
    both against the manifest."""
    try:
        records = backup_reader.file_list(repo, manifest, part)
    except CloudbmError as exc:
        report.note(repo.where(part.files_key), exc, named=False)
        return
    expected = {r.path: r for r in records if not r.missing}
    try:
        with backup_reader.open_part(repo, manifest, part) as stream:
            with tempfile.TemporaryDirectory(prefix="cloudbm-verify-") as scratch:
                seen = TarExtractor(
                    Path(scratch),
                    expected=expected,
                    strict=True,
                    verify_only=True,
                    fsync=False,
                ).extract(stream.tar)
            stream.finish()
        absent = set(expected) - {r.path for r in seen}
        if absent:
            raise IntegrityError(
                f"{len(absent)} file(s) of its list are not in it, e.g. {min(absent)}"
            )
        files = [r for r in seen if r.kind == "file"]
        report.files += len(files)
        report.bytes += sum(r.size for r in files)
    except CloudbmError as exc:
        report.note(repo.where(part.key), exc, named=False)


def _verify_wal(repo: Repository, manifest: Manifest, report: VerifyReport) -> None:
    """The WAL from the backup's start to its stop (what consistency needs) is archived."""
    try:
        archived = set(wal.listed_names(repo))
    except StorageError as exc:
        report.note(f"{repo.where(WAL_PREFIX)} (listing)", exc)
        return
    _names, gaps = timeline.needed_segments(
        walnames.parse_lsn(manifest.start_lsn),
        walnames.parse_lsn(manifest.stop_lsn),
        manifest.timeline,
        {},
        manifest.wal_segment_size,
        archived,
    )
    for gap in gaps:
        report.problems.append(f"WAL {gap} needed for consistency is not archived")
