"""Retention: which backups and which WAL files a policy keeps, and why; pure decisions.

Nothing here reads storage or the clock: `plan()` takes the catalogue, the archived WAL names,
the timeline histories, the settings and `now`, and returns a `Plan` whose every decision
carries its reason, so each rule is a table test and `--dry-run` prints what a run does.
One module per part of the decision:

- `policy`: `retention_policy`, `minimum_redundancy` and `wal_retention` parsed and checked;
- `backups`: `BackupInfo` and the keep/remove rules for backups, with their precedence;
- `wal`: the WAL sweep, per timeline, from what the kept backups need;
- `planner`: `plan()` and `Plan`, the three put together and explained.
"""

from cloudbm.retention.backups import (
    DEFAULT_UNFINISHED_GRACE,
    KEEP_FULL,
    KEEP_STANDALONE,
    Action,
    BackupDecision,
    BackupInfo,
)
from cloudbm.retention.planner import Plan, plan
from cloudbm.retention.policy import (
    DAYS_PER_MONTH,
    WAL_RETENTION_ALL,
    WAL_RETENTION_BACKUPS,
    WAL_RETENTION_CHOICES,
    Policy,
    RecoveryWindow,
    Redundancy,
    check_minimum_redundancy,
    parse_policy,
    parse_wal_retention,
)
from cloudbm.retention.wal import TimelineWal

__all__ = [
    "DAYS_PER_MONTH",
    "DEFAULT_UNFINISHED_GRACE",
    "KEEP_FULL",
    "KEEP_STANDALONE",
    "WAL_RETENTION_ALL",
    "WAL_RETENTION_BACKUPS",
    "WAL_RETENTION_CHOICES",
    "Action",
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
