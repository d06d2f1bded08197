"""Standard output of the CLI: the one writer every command's output goes through.

Each command's result is printed, as text or as `--json`, by one function in this package (one
module per group of commands). Writes happen now, not at exit, so that a reader that went away
(`cloudbm backup-list | head`) is noticed while the CLI can still turn it into status 141.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Output to a pipe whose reader has gone (`cloudbm backup-list | head`): the status a shell
# reports for a program that SIGPIPE ended (128 + 13), without a word on stderr.
EXIT_STDOUT_CLOSED = 141


class StdoutClosed(Exception):
    """Standard output is a pipe nobody reads any more (never a storage connection's EPIPE:
    only writes to sys.stdout raise it)."""


def write(text: str) -> None:
    """Write to standard output now (not at exit, where a closed pipe can no longer be
    handled)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def emit(args: Any, text: str, data: dict[str, Any]) -> None:
    """`data` as indented JSON with --json, else `text` (nothing when it is empty)."""
    if args.json:
        write(to_json(data) + "\n")
    elif text:
        write(text + "\n")


def to_json(data: Any, **options: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True, **options)


def detach_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's final flush of what is still
    buffered fails no more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
