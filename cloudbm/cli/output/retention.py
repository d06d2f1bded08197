"""Output of retention, delete and keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudbm.cli.output import emit

if TYPE_CHECKING:
    from cloudbm.commands.retention import Applied


def retention(args: Any, applied_per_server: list[tuple[str, Applied]]) -> int:
    """Each server's plan explained, then what was removed (or that nothing was)."""
    docs: list[dict[str, Any]] = []
    texts: list[str] = []
    for server, applied in applied_per_server:
        texts += applied.plan.explain()
        texts.append(
            "dry run: nothing removed"
            if applied.dry_run
            else f"removed {len(applied.backups_removed)} backup(s) and "
            f"{applied.wal_removed} WAL file(s)"
        )
        docs.append(
            {
                "server": server,
                "dry_run": applied.dry_run,
                "plan": applied.plan.explain(),
                "backups_removed": applied.backups_removed,
                "wal_removed": applied.wal_removed,
            }
        )
    emit(args, "\n".join(texts), {"servers": docs})
    return 0


def delete(args: Any, applied: Applied) -> int:
    emit(
        args,
        f"deleted backup {applied.backups_removed[0]} and {applied.wal_removed} "
        "WAL file(s) no other backup needs",
        {"deleted": applied.backups_removed, "wal_removed": applied.wal_removed},
    )
    return 0


def keep(args: Any, kept: str) -> int:
    verb = "released" if args.release else f"kept ({args.target})"
    emit(
        args,
        f"backup {kept} {verb}",
        {"backup_id": kept, "keep": None if args.release else args.target},
    )
    return 0
