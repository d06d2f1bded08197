"""Ages written the way Barman's configuration writes them ('2 DAYS', '36 HOURS', '1 WEEK')."""

from __future__ import annotations

from datetime import timedelta

from cloudbm.errors import ConfigError

UNIT_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """'2 DAYS', '36 HOURS', '1 WEEK' -> timedelta (last_backup_maximum_age)."""
    parts = text.strip().split()
    if len(parts) == 2 and parts[0].isdigit():
        unit = parts[1].lower().rstrip("s")
        if unit in UNIT_SECONDS:
            return timedelta(seconds=int(parts[0]) * UNIT_SECONDS[unit])
    raise ConfigError(
        f"last_backup_maximum_age {text!r} is not valid",
        hint="use a number and HOURS, DAYS or WEEKS, e.g. '2 DAYS'",
    )
