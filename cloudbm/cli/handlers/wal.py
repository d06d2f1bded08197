"""wal-push and wal-fetch (archive_command and restore_command: one process per WAL segment,
so this module imports nothing at the top), and the workers they start.

They print nothing: PostgreSQL reads only their exit status. What they did goes to the debug
log (-v)."""

from __future__ import annotations

from cloudbm.cli.context import Args, global_args, remember_for_fast_path, settings
from cloudbm.logs import log


def wal_push(args: Args) -> int:
    from cloudbm.commands.wal_push import wal_push

    resolved = settings(args)
    remember_for_fast_path(args, resolved)
    result = wal_push(resolved, args.path, global_args(args))
    log.debug("archived %s (%d -> %d bytes)", result.name, result.size, result.stored)
    return 0


def wal_fetch(args: Args) -> int:
    from cloudbm.commands.wal_fetch import wal_fetch

    resolved = settings(args)
    remember_for_fast_path(args, resolved)
    source = wal_fetch(resolved, args.name, args.dest, global_args(args))
    log.debug("restored %s from %s", args.name, source)
    return 0


def wal_prefetch(args: Args) -> int:
    from cloudbm.commands.wal_fetch import prefetch_worker

    prefetch_worker(settings(args), wait_first=args.wait_first)
    return 0


def wal_push_ahead(args: Args) -> int:
    from pathlib import Path

    from cloudbm.commands.wal_push_ahead import push_ahead

    push_ahead(settings(args), Path(args.pg_wal), frozenset(args.skip))
    return 0
