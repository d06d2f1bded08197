"""The catalogue of backups in a repository: read in one paged listing plus parallel small
GETs; keep marks written as events; a backup removed manifest first."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudbm.catalog import BackupEntry, Manifest, entry_status, iso, pid_alive, utc_now
from cloudbm.errors import ObjectNotFoundError
from cloudbm.repository import layout
from cloudbm.repository.objects import Repository, read_whole

FETCH_THREADS = 16


def load_catalogue(repo: Repository) -> list[BackupEntry]:
    """Every backup in the repository with its status, ordered by start time."""
    present: dict[str, set[str]] = {}  # backup id -> the top-level objects it has
    newest_keep: dict[str, str] = {}  # keep events are written once; the newest is in force
    for info in repo.storage.list(layout.BACKUPS_PREFIX):
        backup_id, leaf = layout.split_backup_key(info.key)
        if not backup_id:
            continue
        names = present.setdefault(backup_id, set())
        if leaf and "/" not in leaf:
            names.add(leaf)  # only top-level objects matter here, not the data parts
        elif leaf.startswith(layout.KEEP_DIR) and info.key > newest_keep.get(backup_id, ""):
            newest_keep[backup_id] = info.key
    ids = sorted(present)
    wanted = [
        layout.backup_object(i, name)
        for i in ids
        for name in (layout.MANIFEST, *layout.RUN_RECORDS)
        if name in present[i]
    ]
    wanted += sorted(newest_keep.values())
    with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
        docs = dict(zip(wanted, pool.map(lambda k: _raw(repo, k), wanted), strict=True))
    host = socket.gethostname()
    entries: list[BackupEntry] = []
    for backup_id in ids:
        manifest_key = layout.manifest_key(backup_id)
        manifest_raw = docs.get(manifest_key)
        manifest = (
            Manifest.from_json(manifest_raw, f"{repo.storage.url}/{manifest_key}")
            if manifest_raw is not None
            else None
        )
        small = {
            name: _as_dict(docs.get(layout.backup_object(backup_id, name)))
            for name in layout.RUN_RECORDS
        }
        status = entry_status(present[backup_id], small[layout.STARTED], host, pid_alive)
        keep_doc = _as_dict(docs.get(newest_keep.get(backup_id, "")))
        keep = None
        if keep_doc and keep_doc.get("target") in ("full", "standalone"):
            keep = str(keep_doc["target"])
        entries.append(
            BackupEntry(
                backup_id=backup_id,
                status=status,
                manifest=manifest,
                started=small[layout.STARTED],
                failed=small[layout.FAILED],
                waiting=small[layout.WAITING],
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


def write_keep_mark(repo: Repository, backup_id: str, target: str) -> None:
    """A new keep event (written once; the newest by name is in force)."""
    now = utc_now()
    doc = {"target": target, "since": iso(now)}
    key = layout.keep_key(backup_id, now)
    repo.storage.put(key, (json.dumps(doc) + "\n").encode(), if_absent=True)


def remove_backup(repo: Repository, backup_id: str) -> None:
    """Remove a backup: its manifest first (from then on it is no longer DONE, so a crash
    midway leaves a visibly unfinished backup, never a DONE one with parts missing), then
    everything else under its prefix."""
    repo.storage.delete_many([layout.manifest_key(backup_id)])
    repo.storage.delete_many(
        info.key for info in repo.storage.list(layout.backup_prefix(backup_id))
    )
