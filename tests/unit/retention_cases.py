"""Builders shared by the retention tests: backups by age and WAL range, and one-call plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cloudbm import retention
from cloudbm.catalog import DONE
from cloudbm.pg import walnames
from cloudbm.pg.timeline import Switch
from cloudbm.retention import BackupInfo, parse_policy

SEG = 16 << 20
NOW = datetime(2026, 11, 8, tzinfo=UTC)
SYS = "7300000000000000001"


def seg(tli: int, n: int) -> str:
    return walnames.from_number(tli, n, SEG)


def backup(
    backup_id: str,
    begin: datetime | str,
    *,
    status: str = DONE,
    minutes: int = 30,
    tli: int = 1,
    start: int = 0,
    stop: int | None = None,
    keep: str | None = None,
    system: str = SYS,
) -> BackupInfo:
    """A backup that began at `begin`, ran `minutes`, and used WAL segments start..stop."""
    began = datetime.fromisoformat(begin) if isinstance(begin, str) else begin
    if began.tzinfo is None:
        began = began.replace(tzinfo=UTC)
    done = status == DONE
    return BackupInfo(
        backup_id=backup_id,
        status=status,
        begin=began,
        end=began + timedelta(minutes=minutes) if done else None,
        system_identifier=system,
        timeline=tli if done else None,
        start_lsn=start * SEG + 0x28 if done else None,
        start_wal=seg(tli, start) if done else None,
        stop_wal=seg(tli, start if stop is None else stop) if done else None,
        keep=keep,
    )


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def run(
    backups: list[BackupInfo],
    policy: str,
    minimum_redundancy: int = 0,
    wal: list[str] | None = None,
    histories: dict[int, list[Switch]] | None = None,
    **kw: Any,
) -> retention.Plan:
    return retention.plan(
        backups,
        wal or [],
        histories or {},
        parse_policy(policy),
        minimum_redundancy,
        NOW,
        SEG,
        **kw,
    )


def actions(p: retention.Plan) -> dict[str, str]:
    return {d.backup_id: d.action for d in p.backups}


def lines(p: retention.Plan) -> dict[str, str]:
    return {d.backup_id: d.line() for d in p.backups}
