"""Retention planning (being split into modules)."""

from cloudbm.retention.planner import (
    DAYS_PER_MONTH,
    KEEP_FULL,
    KEEP_STANDALONE,
    WAL_RETENTION_ALL,
    WAL_RETENTION_BACKUPS,
    BackupDecision,
    BackupInfo,
    Plan,
    Policy,
    RecoveryWindow,
    Redundancy,
    TimelineWal,
    check_minimum_redundancy,
    parse_policy,
    parse_wal_retention,
    plan,
)

__all__ = [
    "DAYS_PER_MONTH",
    "KEEP_FULL",
    "KEEP_STANDALONE",
    "WAL_RETENTION_ALL",
    "WAL_RETENTION_BACKUPS",
    "BackupDecision",
    "BackupInfo",
    "Plan",
    "Policy",
    "RecoveryWindow",
    "Redundancy",
    "TimelineWal",
    "check_minimum_redundancy",
    "parse_policy",
    "parse_wal_retention",
    "plan",
]
