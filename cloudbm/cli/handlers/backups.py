"""backup-push, backup-list, backup-show and verify."""

from __future__ import annotations

from typing import Any

from cloudbm.cli.context import Args, each_server, settings, stop_cleanly_on_sigterm
from cloudbm.cli.output import backups as output


def backup_push(args: Args) -> int:
    import time

    from cloudbm.commands.backup_push import BackupOptions, backup_push

    stop_cleanly_on_sigterm()
    began = time.monotonic()
    manifest = backup_push(
        settings(args),
        BackupOptions(
            label=args.label,
            immediate_checkpoint=args.immediate_checkpoint,
            bandwidth_limit=args.bandwidth_limit,
            keep=args.keep,
            progress=not (args.no_progress or args.json or args.quiet),
        ),
    )
    return output.backup_push(args, manifest, time.monotonic() - began)


def backup_list(args: Args) -> int:
    from cloudbm.commands.backup_list import list_backups

    rows: list[dict[str, Any]] = []
    for server in each_server(args, args.target):
        rows += list_backups(server)
    return output.backup_list(args, rows)


def backup_show(args: Args) -> int:
    from cloudbm.commands.backup_list import show_backup

    return output.backup_show(args, show_backup(settings(args), args.backup_id))


def verify(args: Args) -> int:
    from cloudbm.commands.verify import verify_backup

    return output.verify(args, verify_backup(settings(args), args.backup_id))
