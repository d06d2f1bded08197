"""Checks shared by backup tests: decode a backup back and compare it with its manifest and the
data directory it came from."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cloudbm.catalog import Manifest
from cloudbm.config import load_settings
from cloudbm.pg import datadir
from cloudbm.repository import Repository, backup_reader
from cloudbm.repository.layout import manifest_key
from cloudbm.tarstream import FileRecord, TarExtractor


def open_repo(config: Path) -> Repository:
    return load_settings(config_path=str(config)).open_repository()


def load_manifest(repo: Repository, backup_id: str) -> Manifest:
    with repo.storage.get(manifest_key(backup_id)) as reader:
        return Manifest.from_json(reader.read(), backup_id)


def file_records(repo: Repository, manifest: Manifest) -> dict[str, FileRecord]:
    """Every record of the backup, files that vanished while it ran included (each list
    checked against the manifest)."""
    records: dict[str, FileRecord] = {}
    for part in manifest.parts:
        for rec in backup_reader.file_list(repo, manifest, part):
            records[rec.path] = rec
    return records


def decode_all_parts(repo: Repository, manifest: Manifest) -> dict[str, FileRecord]:
    """Extract every part into a scratch directory, verifying each file's size and SHA-256
    against the manifest's records and each part's stored bytes against the manifest's digest;
    returns the records."""
    records = file_records(repo, manifest)
    expected = {p: r for p, r in records.items() if not r.missing}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        for part in manifest.parts:
            with backup_reader.open_part(repo, manifest, part) as stream:
                TarExtractor(Path(scratch), expected=expected, fsync=False).extract(stream.tar)
                stream.finish()
    return records


def check_against_datadir(
    records: dict[str, FileRecord], pgdata: Path, major: int, stable: set[str]
) -> None:
    """Every file that existed throughout the backup and is not excluded is in the manifest;
    excluded ones are absent."""
    in_backup = {p for p, r in records.items() if r.kind == "file" and not r.missing}
    for rel in stable:
        assert rel in in_backup, f"{rel} missing from the backup"
    for rel in in_backup:
        assert not datadir.is_excluded(rel, major), f"{rel} should have been excluded"
    for excluded in ("postmaster.pid", "postmaster.opts"):
        assert excluded not in in_backup
    assert not any(p.startswith("pg_wal/") and records[p].kind == "file" for p in in_backup)
    assert "global/pg_control" in in_backup


def stable_files(pgdata: Path, major: int, spaces: list[datadir.Tablespace]) -> set[str]:
    return {
        e.path for e in datadir.walk(pgdata, major=major, tablespaces=spaces) if e.kind == "file"
    }
