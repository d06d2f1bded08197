"""How a base backup is cut into parts."""

from __future__ import annotations


def test_backup_parts_are_balanced_across_jobs_within_the_configured_size() -> None:
    from cloudbm.commands.backup_push import balanced_part_size

    gib, mib = 1 << 30, 1 << 20
    assert balanced_part_size(gib, 1500 * mib, 2) == 1500 * mib // 8
    assert balanced_part_size(gib, 100 * gib, 2) == gib  # large databases: the configured size
    assert balanced_part_size(gib, 10 * mib, 2) == 64 * mib  # tiny ones: one small part
    assert balanced_part_size(4 * mib, 10 * gib, 2) == 4 * mib  # never above the configured
