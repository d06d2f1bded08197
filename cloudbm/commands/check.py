"""`cloudbm check`: is the repository healthy, and if not, why not.

Every check is reported as one OK/FAILED line (or Nagios plugin output, or JSON); any failure
is exit 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cloudbm.catalog import DONE, BackupEntry, parse_iso, utc_now
from cloudbm.config import Settings
from cloudbm.durations import parse_age
from cloudbm.errors import CloudbmError
from cloudbm.pg import walnames
from cloudbm.repository import Repository, wal
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.probe import write_probe


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self, server: str) -> str:
        return f"{server}: {self.name}: {'OK' if self.ok else 'FAILED'} ({self.detail})"


def _run(name: str, fn: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, fn())
    except CloudbmError as exc:
        return CheckResult(name, False, str(exc))
    except Exception as exc:  # a check must report, not crash the others
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}")


def run_checks(settings: Settings) -> list[CheckResult]:
    """Every check for one server, in a fixed order."""
    results: list[CheckResult] = [CheckResult("configuration", True, settings.source)]
    try:
        repo = settings.open_repository()
    except CloudbmError as exc:
        return [*results, CheckResult("repository reachable", False, str(exc))]
    with repo:
        results += _repository_checks(settings, repo)
        if settings.conninfo:
            results += _postgres_checks(settings, repo)
    return results


def _repository_checks(settings: Settings, repo: Repository) -> list[CheckResult]:
    out = []

    def reachable() -> str:
        desc = repo.read_descriptor()
        return f"descriptor for system identifier {desc.system_identifier}"

    out.append(_run("repository reachable and initialised", reachable))

    def writable() -> str:
        key = write_probe(repo, remove=not settings.append_only)
        return f"wrote and read back {key}"

    out.append(_run("repository writable", writable))
    try:
        entries = load_catalogue(repo)
    except CloudbmError as exc:
        return [*out, CheckResult("backup catalogue", False, str(exc))]
    done = [e for e in entries if e.status == DONE and e.manifest]
    out.append(_run("last backup age", lambda: _last_backup(settings, done)))
    out.append(_run("minimum redundancy", lambda: _redundancy(settings, done)))
    out.append(_run("WAL continuity", lambda: _continuity(settings, repo)))
    return out


def _last_backup(settings: Settings, done: list[BackupEntry]) -> str:
    from cloudbm.errors import CheckFailed

    if not done:
        raise CheckFailed("no DONE backup", hint="run 'cloudbm backup-push'")
    last = done[-1]
    assert last.manifest is not None
    age = utc_now() - parse_iso(last.manifest.end_time)
    hours = age.total_seconds() / 3600
    if settings.last_backup_maximum_age:
        limit = parse_age(settings.last_backup_maximum_age)
        if age > limit:
            raise CheckFailed(
                f"the last DONE backup {last.backup_id} is {hours:.1f} hours old, more than "
                f"last_backup_maximum_age ({settings.last_backup_maximum_age})"
            )
    return f"{last.backup_id}, {hours:.1f} hours old"


def _redundancy(settings: Settings, done: list[BackupEntry]) -> str:
    from cloudbm.errors import CheckFailed

    if len(done) < settings.minimum_redundancy:
        raise CheckFailed(
            f"{len(done)} DONE backup(s), fewer than minimum_redundancy "
            f"{settings.minimum_redundancy}"
        )
    return f"{len(done)} DONE backup(s), minimum {settings.minimum_redundancy}"


def _continuity(settings: Settings, repo: Repository) -> str:
    from cloudbm.errors import CheckFailed
    from cloudbm.repository.walcheck import wal_report

    report = wal_report(repo, jobs=settings.jobs)
    if not report["ok"]:
        raise CheckFailed("; ".join(report["problems"]))
    segments = sum(int(t["segments"]) for t in report["timelines"].values())
    return f"no gaps in {segments} segments since {report['from'] or 'the first archived'}"


def _postgres_checks(settings: Settings, repo: Repository) -> list[CheckResult]:
    from cloudbm.errors import CheckFailed
    from cloudbm.pg.archiver import archiver_runs_here, check_verdict
    from cloudbm.pg.session import BackupSession

    try:
        session = BackupSession(settings.conninfo)
    except CloudbmError as exc:
        return [CheckResult("PostgreSQL reachable", False, str(exc))]
    out = [CheckResult("PostgreSQL reachable", True, "connected")]
    try:
        info = session.info()

        def wal_level() -> str:
            if info.wal_level not in ("replica", "logical"):
                raise CheckFailed(f"wal_level is {info.wal_level}", hint="set it to replica")
            return info.wal_level

        def archive_mode() -> str:
            if info.archive_mode == "off":
                raise CheckFailed("archive_mode is off")
            return info.archive_mode

        def archive_command() -> str:
            if "cloudbm" not in info.archive_command or "wal-push" not in info.archive_command:
                raise CheckFailed(
                    f"archive_command is {info.archive_command!r}",
                    hint="set archive_command = 'cloudbm wal-push %p'",
                )
            return info.archive_command

        def identity() -> str:
            repo.check_cluster(info.system_identifier, info.major)
            return f"system identifier {info.system_identifier}, PostgreSQL {info.major}"

        def archiver() -> str:
            if not archiver_runs_here(info.archive_mode, info.in_recovery):
                return "a standby with archive_mode = on: its primary archives"
            # Statistics first, then the repository: what PostgreSQL reports archived must
            # already be stored, so a later look that misses it proves it went elsewhere.
            stats = session.archiver()
            last = stats.last_archived_wal
            in_repository = None
            if last and walnames.is_wal_name(last):
                in_repository = wal.is_archived(repo, last)
            problem = check_verdict(stats, in_repository, repo.url)
            if problem:
                raise CheckFailed(
                    problem,
                    hint="see the server log for the archive_command's error"
                    if stats.failing
                    else "set archive_command = 'cloudbm wal-push %p' with this server's "
                    "configuration; right after a change this clears at the next WAL switch",
                )
            age = stats.last_archived_age
            age_text = "never" if age is None else f"{age:.0f}s ago"
            return (
                f"{stats.archived_count} archived, {stats.failed_count} failed, "
                f"last {last or '-'} {age_text}"
            )

        for name, fn in (
            ("wal_level", wal_level),
            ("archive_mode", archive_mode),
            ("archive_command", archive_command),
            ("cluster matches repository", identity),
            ("archiver", archiver),
        ):
            out.append(_run(name, fn))
    finally:
        session.close()
    return out


def nagios(server_results: dict[str, list[CheckResult]]) -> tuple[str, int]:
    """Nagios plugin output (one status line, then details) and its status (0 OK, 2 CRITICAL)."""
    failed = [(s, r) for s, rs in server_results.items() for r in rs if not r.ok]
    total = sum(len(rs) for rs in server_results.values())
    if failed:
        head = f"CLOUDBM CRITICAL - {len(failed)} of {total} checks failed: " + ", ".join(
            f"{s}: {r.name}" for s, r in failed
        )
    else:
        head = f"CLOUDBM OK - {total} checks passed on {len(server_results)} server(s)"
    lines = [head] + [r.line(s) for s, rs in server_results.items() for r in rs]
    return "\n".join(lines), 2 if failed else 0


def as_json(server_results: dict[str, list[CheckResult]]) -> dict[str, Any]:
    return {s: [asdict(r) for r in rs] for s, rs in server_results.items()}
