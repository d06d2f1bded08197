"""Retention settings: every accepted policy spelling, one-line errors naming the rest."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cloudbm import retention
from cloudbm.errors import EXIT_USAGE, ConfigError
from cloudbm.retention import RecoveryWindow, Redundancy, parse_policy


@pytest.mark.parametrize(
    ("text", "policy", "days"),
    [
        ("REDUNDANCY 3", Redundancy(3), None),
        ("  redundancy    1  ", Redundancy(1), None),
        ("Redundancy 012", Redundancy(12), None),
        ("RECOVERY WINDOW OF 7 DAYS", RecoveryWindow(7, "DAYS"), 7),
        ("recovery   window of 1 day", RecoveryWindow(1, "DAYS"), 1),
        ("Recovery Window Of 2 Weeks", RecoveryWindow(2, "WEEKS"), 14),
        ("RECOVERY WINDOW OF 3 MONTHS", RecoveryWindow(3, "MONTHS"), 90),
        ("\tRECOVERY WINDOW OF 1 MONTH\n", RecoveryWindow(1, "MONTHS"), 30),
    ],
)
def test_policies_parse(text: str, policy: retention.Policy, days: int | None) -> None:
    parsed = parse_policy(text)
    assert parsed == policy
    if days is not None:
        assert isinstance(parsed, RecoveryWindow)
        assert parsed.length == timedelta(days=days)
    assert parse_policy(str(parsed)) == parsed  # str() is the canonical form


@pytest.mark.parametrize(
    "text",
    [
        "",
        "REDUNDANCY",
        "REDUNDANCY 0",
        "REDUNDANCY -1",
        "REDUNDANCY 2 DAYS",
        "REDUNDANCY two",
        "REDUNDANCY \uff13",  # a full-width digit is not a number here
        "RECOVERY WINDOW OF 0 DAYS",
        "RECOVERY WINDOW 7 DAYS",
        "RECOVERY WINDOW OF 7 YEARS",
        "RECOVERY WINDOW OF 7",
        "KEEP 7 DAYS",
        "REDUNDANCY 2\nREDUNDANCY 3",
    ],
)
def test_bad_policies_are_one_line_config_errors_naming_the_text(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(text) in message
    assert "REDUNDANCY n" in message and "RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS" in message
    assert caught.value.exit_code == EXIT_USAGE


def test_wal_retention_and_minimum_redundancy_are_validated() -> None:
    assert retention.parse_wal_retention(" Backups ") == "backups"
    assert retention.parse_wal_retention("ALL") == "all"
    with pytest.raises(ConfigError, match="'none'"):
        retention.parse_wal_retention("none")
    assert retention.check_minimum_redundancy(0) == 0
    for bad in (-1, True):
        with pytest.raises(ConfigError, match="minimum_redundancy"):
            retention.check_minimum_redundancy(bad)
