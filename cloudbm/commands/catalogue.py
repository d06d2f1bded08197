"""Reading the catalogue from a repository: one paged listing plus parallel small GETs."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudbm.catalog import (
    BACKUPS_PREFIX,
    BackupEntry,
    Manifest,
    backup_prefix,
    entry_status,
    pid_alive,
)
from cloudbm.errors import ObjectNotFoundError
from cloudbm.repository import Repository, read_whole

FETCH_THREADS = 16
SMALL_OBJECTS = ("started.json", "failed.json", "waiting.json")


def load_catalogue(repo: Repository) -> list[BackupEntry]:
    """Every backup in the repository with its status, ordered by start time."""
    keys: set[str] = set()
    ids: set[str] = set()
    newest_keep: dict[str, str] = {}  # keep events are written once; the newest is in force
    for info in repo.storage.list(BACKUPS_PREFIX):
        rest = info.key[len(BACKUPS_PREFIX) :]
        backup_id, _, leaf = rest.partition("/")
        if backup_id and leaf and "/" not in leaf:
            keys.add(info.key)  # only top-level objects matter here, not the data parts
        elif leaf.startswith("keep/") and info.key > newest_keep.get(backup_id, ""):
            newest_keep[backup_id] = info.key
        if backup_id:
            ids.add(backup_id)
    wanted = [
        backup_prefix(i) + name
        for i in sorted(ids)
        for name in ("manifest.json", *SMALL_OBJECTS)
        if backup_prefix(i) + name in keys
    ]
    wanted += sorted(newest_keep.values())
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        docs = dict(zip(wanted, pool.map(lambda k: _raw(repo, k), wanted), strict=True))
    host = socket.gethostname()
    entries: list[BackupEntry] = []
    for backup_id in sorted(ids):
        prefix = backup_prefix(backup_id)
        manifest_raw = docs.get(prefix + "manifest.json")
        manifest = (
            Manifest.from_json(manifest_raw, f"{repo.storage.url}/{prefix}manifest.json")
            if manifest_raw is not None
            else None
        )
        small = {name: _as_dict(docs.get(prefix + name)) for name in SMALL_OBJECTS}
        status = entry_status(backup_id, keys, small["started.json"], host, pid_alive)
        keep_doc = _as_dict(docs.get(newest_keep.get(backup_id, "")))
        keep = None
        if keep_doc and keep_doc.get("target") in ("full", "standalone"):
            keep = str(keep_doc["target"])
        entries.append(
            BackupEntry(
                backup_id=backup_id,
                status=status,
                manifest=manifest,
                started=small["started.json"],
                failed=small["failed.json"],
                waiting=small["waiting.json"],
                keep=keep,
            )
        )
    return sorted(entries, key=BackupEntry.sort_key)


def _raw(repo: Repository, key: str) -> bytes | None:
    """The whole object, or None if it is gone (deleted since the listing)."""
    try:
        return read_whole(repo.storage, key)[0]
    except ObjectNotFoundError:
        return None


def _as_dict(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"error": "not valid JSON"}
    return data if isinstance(data, dict) else None


def wal_sizes_by_segment(repo: Repository) -> list[tuple[str, int]]:
    """(segment name, stored size) of every archived WAL segment, sorted by name."""
    out: list[tuple[str, int]] = []
    for info in repo.storage.list("wal/"):
        name = info.key.rsplit("/", 1)[-1]
        if len(name) == 24:
            out.append((name, info.size))
    out.sort()
    return out
