"""Output of check, wal-verify, diagnose and metrics: the commands monitoring reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudbm.cli.output import emit, to_json, write
from cloudbm.errors import EXIT_CHECK_FAILED

if TYPE_CHECKING:
    from cloudbm.commands.check import CheckResult


def check(args: Any, results: dict[str, list[CheckResult]]) -> int:
    """OK/FAILED per line (exit 3 on a failure), the same as JSON, or Nagios plugin output
    and its own statuses."""
    from cloudbm.commands.check import as_json, nagios

    if args.nagios:
        text, status = nagios(results)
        write(text + "\n")
        return status
    failed = any(not r.ok for rs in results.values() for r in rs)
    lines = [r.line(server) for server, rs in results.items() for r in rs]
    emit(args, "\n".join(lines), {"ok": not failed, "servers": as_json(results)})
    return EXIT_CHECK_FAILED if failed else 0


def wal_verify(args: Any, report: dict[str, Any]) -> int:
    lines = [
        f"timeline {t}: {d['first']} .. {d['last']}, {d['segments']} segments, "
        + ("no gaps" if not d["gaps"] else f"{len(d['gaps'])} gap(s)")
        for t, d in report["timelines"].items()
    ]
    lines += [f"FAILED: {p}" for p in report["problems"]]
    lines.append("WAL archive OK" if report["ok"] else "WAL archive has problems")
    emit(args, "\n".join(lines), report)
    return 0 if report["ok"] else EXIT_CHECK_FAILED


def diagnose(args: Any, doc: dict[str, Any]) -> int:
    """Always JSON: it is meant to be attached to a bug report."""
    write(to_json(doc, default=str) + "\n")
    return 0


def metrics(args: Any, text: str) -> int:
    """Prometheus text format, whatever --json says."""
    write(text)
    return 0
