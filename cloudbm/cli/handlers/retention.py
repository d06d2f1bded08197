"""retention, delete and keep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudbm.cli.context import Args, each_server, settings
from cloudbm.cli.output import retention as output

if TYPE_CHECKING:
    from cloudbm.commands.retention import Applied


def retention(args: Args) -> int:
    from cloudbm.commands.retention import retention

    applied: list[tuple[str, Applied]] = []
    for server in each_server(args, args.target):
        applied.append((server.server, retention(server, dry_run=args.dry_run)))
    return output.retention(args, applied)


def delete(args: Args) -> int:
    from cloudbm.commands.retention import delete

    return output.delete(args, delete(settings(args), args.backup_id, force=args.force))


def keep(args: Args) -> int:
    from cloudbm.commands.retention import keep

    kept = keep(settings(args), args.backup_id, target=args.target, release=args.release)
    return output.keep(args, kept)
