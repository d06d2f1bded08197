"""`cloudbm verify ID` and `cloudbm wal-verify`: integrity of a backup, continuity of the WAL.

verify downloads every part, authenticates and decompresses it, and checks every file's size
and SHA-256 against the backup's file lists, every stored object against the summary's digests,
and that the WAL needed for consistency is archived. It names each bad object (exit 5).

wal-verify walks the archive from the oldest DONE backup's start segment to the newest segment
of each timeline and reports gaps and timelines that no history file explains (exit 3).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudbm.catalog import DONE, resolve
from cloudbm.commands.catalogue import load_catalogue
from cloudbm.commands.context import open_repository
from cloudbm.commands.recover import HashingStream, recovery_object
from cloudbm.commands.wal_layout import WAL_PREFIX
from cloudbm.config import Settings
from cloudbm.errors import CloudbmError, IntegrityError, NotFoundError
from cloudbm.pg import timeline, walnames
from cloudbm.tarstream import FileRecord, TarExtractor


@dataclass
class VerifyReport:
    backup_id: str
    parts: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def verify_backup(settings: Settings, wanted: str) -> VerifyReport:
    """Check one backup end to end; IntegrityError (exit 5) naming every bad object."""
    from cloudbm.codec.envelope import DecodingReader, decode_bytes

    repo = open_repository(settings)
    try:
        entry = resolve(load_catalogue(repo), wanted)
        if entry.status != DONE or entry.manifest is None:
            raise IntegrityError(f"backup {entry.backup_id} is {entry.status}, not DONE")
        manifest = entry.manifest
        report = VerifyReport(manifest.backup_id)
        url = repo.storage.url
        try:
            recovery_object(repo, manifest)
        except CloudbmError as exc:
            report.problems.append(f"{url}/{manifest.recovery_key}: {exc}")
        for part in manifest.parts:
            report.parts += 1
            try:
                with repo.storage.get(part.files_key) as reader:
                    stored = reader.read()
                if hashlib.sha256(stored).hexdigest() != part.files_stored_sha256:
                    raise IntegrityError("its digest does not match the manifest")
                raw = decode_bytes(stored, name=part.files_key, keyring=repo.keyring())
                records = [FileRecord(**json.loads(line)) for line in raw.decode().splitlines()]
            except (CloudbmError, ValueError, TypeError) as exc:
                report.problems.append(f"{url}/{part.files_key}: {exc}")
                continue
            expected = {r.path: r for r in records if not r.missing}
            try:
                hashing = HashingStream(repo.storage.get(part.key))
                stream = DecodingReader(
                    hashing, name=part.key, keyring=repo.keyring(), hash_plaintext=False
                )
                with tempfile.TemporaryDirectory(prefix="cloudbm-verify-") as scratch:
                    seen = TarExtractor(
                        Path(scratch),
                        expected=expected,
                        strict=True,
                        verify_only=True,
                        fsync=False,
                    ).extract(stream)  # type: ignore[arg-type]
                while hashing.read(1 << 20):
                    pass
                stream.close()
                if hashing.sha.hexdigest() != part.stored_sha256:
                    raise IntegrityError("its digest does not match the manifest")
                absent = set(expected) - {r.path for r in seen}
                if absent:
                    raise IntegrityError(
                        f"{len(absent)} file(s) of its list are not in it, e.g. {min(absent)}"
                    )
                files = [r for r in seen if r.kind == "file"]
                report.files += len(files)
                report.bytes += sum(r.size for r in files)
            except CloudbmError as exc:
                report.problems.append(f"{url}/{part.key}: {exc}")
        archived = {info.key.rsplit("/", 1)[-1] for info in repo.storage.list(WAL_PREFIX)}
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
    finally:
        repo.storage.close()
    if report.problems:
        raise IntegrityError(
            f"backup {report.backup_id} is damaged: " + "; ".join(report.problems),
            hint="restore from another backup, and find what altered the repository",
        )
    return report


def wal_verify(settings: Settings) -> dict[str, Any]:
    """Gaps and unexplained timelines from the oldest DONE backup on (report["ok"] says
    whether there are none; report["problems"] lists them, one line each)."""
    repo = open_repository(settings)
    try:
        finished = [e for e in load_catalogue(repo) if e.status == DONE and e.manifest]
        names = {info.key.rsplit("/", 1)[-1] for info in repo.storage.list(WAL_PREFIX)}
        try:
            segment_size = repo.read_descriptor().wal_segment_size
        except NotFoundError:
            segment_size = walnames.DEFAULT_SEGMENT_SIZE
    finally:
        repo.storage.close()
    histories = {walnames.parse(n).timeline for n in names if n.endswith(".history")}
    by_tli: dict[int, list[int]] = {}
    for name in names:
        if len(name) == 24 and walnames.is_wal_name(name):
            parsed = walnames.parse(name)
            by_tli.setdefault(parsed.timeline, []).append(
                walnames.segment_number(parsed, segment_size)
            )
    start_name = finished[0].manifest.start_wal if finished and finished[0].manifest else None
    start_tli = walnames.parse(start_name).timeline if start_name else None
    start_no = (
        walnames.segment_number(walnames.parse(start_name), segment_size) if start_name else None
    )
    report: dict[str, Any] = {"from": start_name, "timelines": {}, "unexpected": [], "ok": True}
    for tli, numbers in sorted(by_tli.items()):
        numbers.sort()
        low = numbers[0]
        if start_no is not None and tli == start_tli:
            # Older segments serve no backup: continuity matters from the oldest one's start.
            numbers = [n for n in numbers if n >= start_no]
            if not numbers:
                continue
            low = start_no
        have = set(numbers)
        gaps = []
        run: list[int] = []
        for n in range(low, numbers[-1] + 1):
            if n in have:
                if run:
                    gaps.append(_gap(tli, run, segment_size))
                    run = []
            else:
                run.append(n)
        report["timelines"][str(tli)] = {
            "first": walnames.from_number(tli, low, segment_size),
            "last": walnames.from_number(tli, numbers[-1], segment_size),
            "segments": len(have),
            "gaps": gaps,
        }
        if gaps:
            report["ok"] = False
        if tli > 1 and tli not in histories:
            report["unexpected"].append(
                f"timeline {tli} has segments but no {walnames.history_name(tli)}"
            )
            report["ok"] = False
    report["problems"] = [
        f"timeline {t}: missing {', '.join(d['gaps'][:5])}"
        + (f" and {len(d['gaps']) - 5} more gaps" if len(d["gaps"]) > 5 else "")
        for t, d in report["timelines"].items()
        if d["gaps"]
    ] + report["unexpected"]
    return report


def _gap(tli: int, run: list[int], segment_size: int) -> str:
    first = walnames.from_number(tli, run[0], segment_size)
    if len(run) == 1:
        return first
    return f"{first}..{walnames.from_number(tli, run[-1], segment_size)}"
