"""Argument parsing: argparse for every command, built from the dispatch table.

Global options are accepted before the command and after it (`cloudbm --json backup-list` and
`cloudbm backup-list --json` are the same call). Each command's parser knows them under
`after_<name>` destinations, merged into the global ones once parsing is done, so that a flag
given in both places counts as argparse counts a repeated flag: -v adds up, a value given later
wins. --version and --help stay where argparse puts them.

argparse is imported only here, and this module only when the hot-path parser (cloudbm.fastpath)
did not recognise the call: its import alone costs more than a call served from local state.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from cloudbm import __version__
from cloudbm.cli import arguments
from cloudbm.cli.dispatch import COMMANDS
from cloudbm.errors import ConfigError

AFTER = "after_"


class UsageError(ConfigError):
    """The command line is wrong: one line, exit 2 (wal-fetch: its fetch error status)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so wal-fetch can map usage errors too."""

    def error(self, message: str) -> NoReturn:
        # The CLI prefixes every error with "cloudbm: "; a subcommand's parser names its
        # command. argparse's list of choices would also name the internal workers.
        command = self.prog.removeprefix("cloudbm").strip()
        if message.startswith("argument COMMAND: invalid choice:"):
            wanted = message.split("'")[1] if message.count("'") >= 2 else ""
            raise UsageError(
                f"unknown command {wanted!r}", hint="'cloudbm --help' lists the commands"
            )
        where = f"{command}: " if command else ""
        see = f"cloudbm {command} --help" if command else "cloudbm --help"
        raise UsageError(f"{where}{message}", hint=f"see '{see}'")


def _global_options(p: argparse.ArgumentParser | Any, prefix: str = "") -> None:
    """--config, --server, --repo, --pgdata, --json, -v, -q; after a command (prefix set) under
    their own destinations, absent unless given."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if prefix else {}
    p.add_argument(
        "--config",
        dest=prefix + "config",
        metavar="CONFIG",
        help="configuration file (default $CLOUDBM_CONFIG, then /etc/cloudbm/cloudbm.toml)",
        **extra,
    )
    p.add_argument(
        "--server",
        dest=prefix + "server",
        metavar="SERVER",
        help="server section to use (default: the only one)",
        **extra,
    )
    p.add_argument(
        "--repo",
        dest=prefix + "repository",
        metavar="REPOSITORY",
        help="repository URL (file:///dir, s3://, gs://, azure://)",
        **extra,
    )
    p.add_argument(
        "--pgdata",
        dest=prefix + "pgdata",
        metavar="PGDATA",
        help="the cluster's data directory",
        **extra,
    )
    p.add_argument(
        "--json", dest=prefix + "json", action="store_true", help="machine-readable output", **extra
    )
    p.add_argument(
        "-v", "--verbose", dest=prefix + "verbose", action="count", **(extra or {"default": 0})
    )
    p.add_argument("-q", "--quiet", dest=prefix + "quiet", action="store_true", **extra)


GLOBAL_DESTS = ("config", "server", "repository", "pgdata", "json", "verbose", "quiet")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cloudbm",
        description="Keeps PostgreSQL recoverable from cloud object storage.",
    )
    parser.add_argument("--version", action="version", version=f"cloudbm {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, command in COMMANDS.items():
        if command.help is None:  # an internal worker: not listed
            p = sub.add_parser(name)
        else:
            p = sub.add_parser(name, help=command.help)
        getattr(arguments, command.arguments)(p)
        _global_options(
            p.add_argument_group("global options (also accepted before the command)"), AFTER
        )
    return parser


def merge_global_options(args: argparse.Namespace) -> argparse.Namespace:
    """Fold the global options given after the command into those given before it."""
    given = vars(args)
    for dest in GLOBAL_DESTS:
        if AFTER + dest not in given:
            continue
        after = given.pop(AFTER + dest)
        if dest == "verbose":
            given[dest] += after
        elif dest in ("json", "quiet"):
            given[dest] = given[dest] or after
        else:
            given[dest] = after
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The full command line, or UsageError. --help and --version print and raise SystemExit."""
    return merge_global_options(build_parser().parse_args(list(argv)))
