"""The dispatch table: each command's name, help, arguments and handler.

Arguments and handler are named, not imported. The parser (cloudbm.cli.parser) looks up each
command's arguments in cloudbm.cli.arguments, which a call the hot-path parser read never
loads. A handler's module (cloudbm.cli.handlers.<group>, with its output module) loads only
when its command runs, and the command's own module only inside the handler: archive_command
and restore_command start a process per WAL segment, and load the wal handlers and nothing of
backup, recovery or retention.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


class Command:
    """One row of the table. A plain class: a NamedTuple costs every call of archive_command
    a class built by exec at import."""

    __slots__ = ("arguments", "handler", "help")

    def __init__(self, help: str | None, arguments: str, handler: str) -> None:
        self.help = help  # None: an internal worker, not listed in --help
        self.arguments = arguments  # a function in cloudbm.cli.arguments: (subparser) -> None
        self.handler = handler  # "group.function" in cloudbm.cli.handlers: (args) -> status


COMMANDS: dict[str, Command] = {
    "wal-push": Command(
        "archive one WAL file (archive_command = 'cloudbm wal-push %%p')",
        "wal_push",
        "wal.wal_push",
    ),
    "wal-fetch": Command(
        "restore one WAL file (restore_command = 'cloudbm wal-fetch %%f %%p')",
        "wal_fetch",
        "wal.wal_fetch",
    ),
    # Internal workers that wal-push and wal-fetch start.
    "wal-prefetch": Command(None, "wal_prefetch", "wal.wal_prefetch"),
    "wal-push-ahead": Command(None, "wal_push_ahead", "wal.wal_push_ahead"),
    "init": Command("bind the repository to this cluster and key", "nothing", "setup.init"),
    "check": Command(
        "health checks: OK/FAILED per line, exit 3 on failure", "check", "checks.check"
    ),
    "diagnose": Command(
        "versions, configuration (secrets masked), server status as JSON, for bug reports",
        "nothing",
        "checks.diagnose",
    ),
    "metrics": Command("Prometheus text-format metrics", "one_or_all_servers", "checks.metrics"),
    "retention": Command(
        "apply the retention policy (backups, then WAL)",
        "retention",
        "retention.retention",
    ),
    "delete": Command("remove one backup and the WAL only it needed", "delete", "retention.delete"),
    "keep": Command("keep a backup out of retention, or release it", "keep", "retention.keep"),
    "verify": Command(
        "download and check every part of a backup and its WAL",
        "one_backup",
        "backups.verify",
    ),
    "wal-verify": Command(
        "gaps and unexpected timelines in the WAL archive",
        "wal_verify",
        "checks.wal_verify",
    ),
    "recover": Command(
        "rebuild a data directory from a backup and configure point-in-time recovery",
        "recover",
        "recover.recover",
    ),
    "backup-push": Command(
        "take a base backup of the running cluster", "backup_push", "backups.backup_push"
    ),
    "backup-list": Command(
        "the backups in the repository", "one_or_all_servers", "backups.backup_list"
    ),
    "backup-show": Command("details of one backup", "one_backup", "backups.backup_show"),
    "keygen": Command("create a key file or an X25519 key pair", "keygen", "setup.keygen"),
    "list-servers": Command("configured servers", "nothing", "setup.list_servers"),
    "show-config": Command(
        "effective configuration for the server", "nothing", "setup.show_config"
    ),
}


def handler(name: str) -> Callable[[Any], int]:
    """The handler of command `name`, its module imported now."""
    from cloudbm.errors import CloudbmError

    if name not in COMMANDS:
        raise CloudbmError(f"unknown command {name}")
    group, _, function = COMMANDS[name].handler.partition(".")
    module = import_module(f"cloudbm.cli.handlers.{group}")
    found: Callable[[Any], int] = getattr(module, function)
    return found


def run(args: Any) -> int:
    """Run the parsed command; returns the exit status."""
    return handler(args.command)(args)
