"""check, wal-verify, diagnose and metrics."""

from __future__ import annotations

from cloudbm.cli.context import Args, each_server, settings
from cloudbm.cli.output import checks as output


def check(args: Args) -> int:
    from cloudbm.commands.check import run_checks

    return output.check(args, {s.server: run_checks(s) for s in each_server(args, args.target)})


def wal_verify(args: Args) -> int:
    from cloudbm.commands.wal_verify import wal_verify

    return output.wal_verify(args, wal_verify(settings(args), deep=args.deep))


def diagnose(args: Args) -> int:
    """Every configured server, unless --server names one."""
    from cloudbm.commands.diagnose import diagnose

    return output.diagnose(args, diagnose(each_server(args, "all" if not args.server else None)))


def metrics(args: Args) -> int:
    from cloudbm.commands.metrics import metrics

    return output.metrics(args, metrics(each_server(args, args.target)))
