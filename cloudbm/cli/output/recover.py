"""Output of recover: what was restored, the recovery target, and the next step."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cloudbm.cli.output import emit

if TYPE_CHECKING:
    from cloudbm.commands.recover import RecoverResult


def recover(args: Any, result: RecoverResult) -> int:
    text = (
        f"recovered backup {result.backup_id} into {result.dest}: {result.files_written} files "
        f"written, {result.files_kept} kept, {result.files_removed} removed; "
        f"{result.wal_checked} WAL segments checked in the archive.\n"
        f"recovery target: {result.target['kind']}"
        + (f" {result.target['value']}" if result.target["value"] else "")
        + f", timeline {result.target['timeline']}\n"
        + (
            "WAL prefetch started for PostgreSQL's restore_command (it waits 2 minutes for the "
            "first request)\n"
            if result.prefetching
            else ""
        )
        + f"next: {result.start_command}"
    )
    emit(args, text, asdict(result))
    return 0
