"""Retention settings parsed and checked: the policy, `minimum_redundancy`, `wal_retention`.

One parser per setting, used both where the configuration is loaded (a bad value is refused
when the file is read) and by the planner (a bad value is refused whoever calls it), each with
a one-line ConfigError naming the value and what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from cloudbm.errors import ConfigError

WAL_RETENTION_BACKUPS = "backups"
WAL_RETENTION_ALL = "all"
WAL_RETENTION_CHOICES = (WAL_RETENTION_BACKUPS, WAL_RETENTION_ALL)

DAYS_PER_MONTH = 30  # a fixed month: a window must not change length with the calendar


@dataclass(frozen=True)
class Redundancy:
    """`REDUNDANCY n`: keep the n newest DONE backups."""

    count: int

    def __str__(self) -> str:
        return f"REDUNDANCY {self.count}"


@dataclass(frozen=True)
class RecoveryWindow:
    """`RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`: recovery to any point of the last n units."""

    count: int
    unit: Literal["DAYS", "WEEKS", "MONTHS"]

    @property
    def length(self) -> timedelta:
        per = {"DAYS": 1, "WEEKS": 7, "MONTHS": DAYS_PER_MONTH}[self.unit]
        return timedelta(days=self.count * per)

    @property
    def label(self) -> str:
        """'7-day window', as plan reasons say it."""
        return f"{self.count}-{self.unit[:-1].lower()} window"

    def __str__(self) -> str:
        return f"RECOVERY WINDOW OF {self.count} {self.unit}"


Policy = Redundancy | RecoveryWindow

_ACCEPTED = "'REDUNDANCY n' or 'RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS' with n >= 1"
_REDUNDANCY = re.compile(r"\s*REDUNDANCY\s+([0-9]+)\s*", re.IGNORECASE | re.ASCII)
_WINDOW = re.compile(
    r"\s*RECOVERY\s+WINDOW\s+OF\s+([0-9]+)\s+(DAY|WEEK|MONTH)S?\s*", re.IGNORECASE | re.ASCII
)


def parse_policy(text: str) -> Policy:
    """`retention_policy` text -> Policy; ConfigError (one line, naming the text) otherwise."""
    if m := _REDUNDANCY.fullmatch(text):
        count = int(m[1])
        if count >= 1:
            return Redundancy(count)
    elif m := _WINDOW.fullmatch(text):
        count = int(m[1])
        if count >= 1:
            unit = m[2].upper()
            if unit == "DAY":
                return RecoveryWindow(count, "DAYS")
            if unit == "WEEK":
                return RecoveryWindow(count, "WEEKS")
            return RecoveryWindow(count, "MONTHS")
    # repr() keeps a stray newline or tab in the value from breaking the one-line message.
    raise ConfigError(f"retention_policy {text!r} is not valid: expected {_ACCEPTED}")


def parse_wal_retention(text: str) -> str:
    """`wal_retention`: 'backups' (remove WAL no kept backup needs) or 'all' (never remove WAL)."""
    value = text.strip().lower()
    if value not in WAL_RETENTION_CHOICES:
        raise ConfigError(
            f"wal_retention {text!r} is not valid: expected 'backups' (default) or 'all'"
        )
    return value


def check_minimum_redundancy(value: int) -> int:
    """`minimum_redundancy` must be a whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"minimum_redundancy {value!r} is not valid: expected an integer >= 0")
    return value
