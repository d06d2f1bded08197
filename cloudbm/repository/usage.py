"""What a repository occupies, in one listing of everything in it: its stored bytes and when
the newest WAL file was stored (what `cloudbm metrics` reports)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cloudbm.pg import walnames
from cloudbm.repository.layout import WAL_PREFIX, wal_leaf
from cloudbm.repository.objects import Repository


@dataclass(frozen=True)
class Usage:
    stored_bytes: int  # every object in the repository
    newest_wal: datetime | None  # when the newest WAL file was stored, if the backend says


def usage(repo: Repository) -> Usage:
    """The repository's stored bytes and its newest WAL file's time, from one listing."""
    total = 0
    newest_wal: datetime | None = None
    for info in repo.storage.list(""):
        total += info.size
        when = info.modified
        if when is None or not info.key.startswith(WAL_PREFIX):
            continue
        if walnames.is_wal_name(wal_leaf(info.key)) and (newest_wal is None or when > newest_wal):
            newest_wal = when
    return Usage(total, newest_wal)
