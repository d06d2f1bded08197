"""`cloudbm wal-verify`: is the archived WAL continuous from the oldest backup on? (exit 3
when not; the report names each gap, unexplained timeline and misnamed object)."""

from __future__ import annotations

from typing import Any

from cloudbm.config import Settings
from cloudbm.repository.walcheck import wal_report


def wal_verify(settings: Settings, *, deep: bool = False) -> dict[str, Any]:
    """The continuity report of this server's archive (see repository.walcheck.wal_report)."""
    with settings.open_repository() as repo:
        return wal_report(repo, jobs=settings.jobs, deep=deep)
