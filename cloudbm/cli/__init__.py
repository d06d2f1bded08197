"""The command line: argv to a command call, its output, and its exit status.

- cloudbm.cli.parser: argparse, built from the dispatch table; global options before or after
  the command. Loaded only when the hot-path parser (cloudbm.fastpath) does not recognise the
  call, as `[global flags] wal-push PATH` and `wal-fetch NAME DEST` are.
- cloudbm.cli.dispatch: the table, command name -> help, arguments, handler.
- cloudbm.cli.handlers.<group>: one handler per command; it calls the command in
  cloudbm.commands (imported inside the handler) and hands the result to
- cloudbm.cli.output.<group>: the one place each command's result is printed, text or --json.

`main` below is the one place where errors become exit statuses. cloudbm.entry is the only
importer of this package: library code never reaches up to the command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace

from cloudbm.cli.context import Args, Terminated, settings
from cloudbm.cli.dispatch import run
from cloudbm.cli.output import EXIT_STDOUT_CLOSED, StdoutClosed, detach_stdout
from cloudbm.errors import EXIT_USAGE, CloudbmError, ConfigError, NotFoundError
from cloudbm.logs import configure as configure_logs
from cloudbm.logs import log

__all__ = ["main"]

DEFAULT_FETCH_ERROR_EXIT = 126
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug


def parse_hot(argv: Sequence[str]) -> SimpleNamespace | None:
    """`[global flags] wal-push PATH` / `wal-fetch NAME DEST` without argparse, whose import
    alone costs more than a call served from local state; None for anything else."""
    from cloudbm.fastpath import parse_hot as parse

    parsed = parse(list(argv))
    return None if parsed is None else SimpleNamespace(**parsed)


def parse(argv: Sequence[str]) -> Args:
    """The parsed command line; UsageError (a ConfigError) if it is wrong."""
    hot = parse_hot(argv)
    if hot is not None:
        return hot
    from cloudbm.cli.parser import parse_args

    return parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cloudbm` console script (after the fast path)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_fetch = "wal-fetch" in argv
    try:
        args = parse(argv)
    except ConfigError as exc:
        print(f"cloudbm: {exc}", file=sys.stderr)
        return _fetch_error_exit() if is_fetch else EXIT_USAGE
    except SystemExit as done:  # --help, --version: printed, now flush while we can handle it
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            detach_stdout()
            return EXIT_STDOUT_CLOSED
        raise done from None
    except BrokenPipeError:  # parsing touches no storage: this is --help into a closed pipe
        detach_stdout()
        return EXIT_STDOUT_CLOSED
    configure_logs(verbose=args.verbose, quiet=args.quiet, command=args.command)
    try:
        return run(args)
    except StdoutClosed:
        detach_stdout()
        return EXIT_STDOUT_CLOSED
    except NotFoundError as exc:
        # For wal-fetch a miss is routine (the end of the archive), not an error.
        if args.command == "wal-fetch":
            log.debug("%s", exc)
        else:
            log.error("%s", exc)
        return exc.exit_code
    except CloudbmError as exc:
        log.error("%s", exc)
        if args.command == "wal-fetch":
            return _fetch_code(args)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated as exc:
        log.error("%s", exc)
        return EXIT_TERMINATED
    except Exception as exc:  # a bug: say so in one line, keep the traceback for -v
        log.error("unexpected %s: %s (run with -v for details)", type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        if args.command == "wal-fetch":
            return _fetch_code(args)
        return EXIT_SOFTWARE


def _fetch_error_exit() -> int:
    """Exit status for wal-fetch failures, readable even when the configuration is broken."""
    raw = os.environ.get("CLOUDBM_FETCH_ERROR_EXIT_CODE", "")
    return int(raw) if raw.isdigit() and 126 <= int(raw) <= 255 else DEFAULT_FETCH_ERROR_EXIT


def _fetch_code(args: Args) -> int:
    try:
        return int(settings(args).fetch_error_exit_code)
    except Exception:
        return _fetch_error_exit()
