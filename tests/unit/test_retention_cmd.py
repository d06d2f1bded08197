"""The retention command over a local repository: what it refuses to plan, and how it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudbm.commands.retention import retention
from cloudbm.config import Settings
from cloudbm.errors import EXIT_INTEGRITY, IntegrityError
from cloudbm.repository import Descriptor


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "repo").mkdir()
    settings = Settings(
        repository=f"file://{tmp_path / 'repo'}",
        spool_directory=str(tmp_path / "spool"),
        retention_policy="REDUNDANCY 1",
    )
    with settings.open_repository() as repo:
        repo.create_descriptor(Descriptor(1234, 16, 16 * 1024 * 1024))
    return settings


def test_a_history_that_does_not_parse_stops_the_plan_and_is_named(settings: Settings) -> None:
    with settings.open_repository() as repo:
        repo.put_bytes("wal/00000005.history", b"this is not a timeline history\n")
    with pytest.raises(IntegrityError) as caught:
        retention(settings, dry_run=True)
    assert caught.value.exit_code == EXIT_INTEGRITY
    assert "wal/00000005.history is not a valid timeline history" in caught.value.message
    assert caught.value.hint == (
        "run 'cloudbm wal-verify'; retention removes nothing while a timeline's history is unknown"
    )


def test_an_empty_repository_plans_nothing(settings: Settings) -> None:
    applied = retention(settings, dry_run=False)
    assert applied.backups_removed == [] and applied.wal_removed == 0
