"""`cloudbm check`, `cloudbm diagnose`, `cloudbm metrics`: is the repository healthy, and why not.

check runs every check and reports each as one OK/FAILED line (or Nagios plugin output, or
JSON); any failure is exit 3. diagnose gathers what a bug report needs. metrics prints
Prometheus text-format gauges for the node-exporter textfile collector.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cloudbm import __version__
from cloudbm.catalog import DONE, BackupEntry, parse_iso, utc_now
from cloudbm.config import Settings
from cloudbm.durations import parse_age
from cloudbm.errors import CloudbmError, NotFoundError, ObjectNotFoundError
from cloudbm.pg import walnames
from cloudbm.repository import Repository
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.layout import WAL_PREFIX, wal_key

PROBE_PREFIX = "check/probe-"


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
    try:
        results += _repository_checks(settings, repo)
        if settings.conninfo:
            results += _postgres_checks(settings, repo)
    finally:
        repo.storage.close()
    return results


def _repository_checks(settings: Settings, repo: Repository) -> list[CheckResult]:
    out = []

    def reachable() -> str:
        desc = repo.read_descriptor()
        return f"descriptor for system identifier {desc.system_identifier}"

    out.append(_run("repository reachable and initialised", reachable))

    def writable() -> str:
        # A new name each time, written once: works with write-once buckets and with
        # credentials that may create but not overwrite or delete.
        import socket

        key = f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        payload = f"{__version__} {time.time()}".encode()
        repo.storage.put(key, payload, if_absent=True)
        with repo.storage.get(key) as reader:
            if reader.read() != payload:
                raise NotFoundError("the probe object read back differently")
        if not settings.append_only:
            repo.storage.delete_many([key])
        return f"wrote and read back {key}"

    out.append(_run("repository writable", writable))
    try:
        entries = load_catalogue(repo)
    except CloudbmError as exc:
        return [*out, CheckResult("backup catalogue", False, str(exc))]
    done = [e for e in entries if e.status == DONE and e.manifest]
    out.append(_run("last backup age", lambda: _last_backup(settings, done)))
    out.append(_run("minimum redundancy", lambda: _redundancy(settings, done)))
    out.append(_run("WAL continuity", lambda: _continuity(settings)))
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


def _continuity(settings: Settings) -> str:
    from cloudbm.commands.verify import wal_verify
    from cloudbm.errors import CheckFailed

    report = wal_verify(settings)
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
                try:
                    repo.storage.head(wal_key(walnames.parse(last)))
                    in_repository = True
                except ObjectNotFoundError:
                    in_repository = False
            problem = check_verdict(stats, in_repository, repo.storage.url)
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


# --- diagnose ---------------------------------------------------------------------------------


SECRET_HINTS = ("pass", "secret", "key_file", "private", "connection_string", "token")


def _masked(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.as_dict().items():
        if value and any(h in key for h in SECRET_HINTS):
            out[key] = "***" if "file" not in key else f"{value} (path only)"
        elif key == "conninfo" and value:
            out[key] = " ".join(
                "password=***" if p.startswith("password=") else p for p in str(value).split()
            )
        else:
            out[key] = value
    return out


def diagnose(servers: list[Settings]) -> dict[str, Any]:
    """Versions, configuration (secrets masked) and each server's status: a bug report."""
    from importlib import metadata

    versions: dict[str, str | None] = {"cloudbm": __version__, "python": sys.version.split()[0]}
    for dist in (
        "boto3",
        "botocore",
        "google-cloud-storage",
        "azure-storage-blob",
        "cryptography",
        "zstandard",
        "lz4",
        "psycopg",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    report: dict[str, Any] = {
        "versions": versions,
        "platform": platform.platform(),
        "environment": sorted(k for k in os.environ if k.startswith("CLOUDBM_")),
        "servers": {},
    }
    for settings in servers:
        entry: dict[str, Any] = {"configuration": _masked(settings)}
        try:
            repo = settings.open_repository()
            try:
                desc = repo.read_descriptor()
                entry["repository"] = desc.as_dict()
                entries = load_catalogue(repo)
                done = [e for e in entries if e.status == DONE]
                entry["backups"] = {
                    s: sum(1 for e in entries if e.status == s)
                    for s in sorted({e.status for e in entries})
                }
                entry["last_backup"] = done[-1].backup_id if done else None
            finally:
                repo.storage.close()
        except CloudbmError as exc:
            entry["error"] = str(exc)
        if settings.conninfo:
            try:
                from cloudbm.pg.session import BackupSession

                session = BackupSession(settings.conninfo)
                try:
                    entry["postgresql"] = session.info().version
                finally:
                    session.close()
            except CloudbmError as exc:
                entry["postgresql_error"] = str(exc)
        report["servers"][settings.server] = entry
    return report


# --- metrics ----------------------------------------------------------------------------------


def metrics(servers: list[Settings]) -> str:
    """Prometheus text format for the node-exporter textfile collector."""
    rows: dict[str, list[str]] = {
        "cloudbm_last_backup_age_seconds": [],
        "cloudbm_last_backup_size_bytes": [],
        "cloudbm_last_backup_stored_bytes": [],
        "cloudbm_backups": [],
        "cloudbm_last_archived_wal_age_seconds": [],
        "cloudbm_archive_failures_total": [],
        "cloudbm_repository_bytes": [],
        "cloudbm_up": [],
    }
    helps = {
        "cloudbm_last_backup_age_seconds": "Seconds since the newest DONE backup ended.",
        "cloudbm_last_backup_size_bytes": "Bytes of the files in the newest DONE backup.",
        "cloudbm_last_backup_stored_bytes": "Bytes the newest DONE backup occupies in storage.",
        "cloudbm_backups": "Backups in the repository, by status.",
        "cloudbm_last_archived_wal_age_seconds": "Seconds since the newest WAL object was stored.",
        "cloudbm_archive_failures_total": "pg_stat_archiver.failed_count (needs conninfo).",
        "cloudbm_repository_bytes": "Bytes stored in the repository.",
        "cloudbm_up": "1 if the repository could be read.",
    }
    now = utc_now()
    for settings in servers:
        label = f'server="{settings.server}"'
        try:
            repo = settings.open_repository()
            try:
                entries = load_catalogue(repo)
                total = 0
                newest_wal = None
                for info in repo.storage.list(""):
                    total += info.size
                    if info.key.startswith(WAL_PREFIX) and info.modified is not None:
                        name = info.key.rsplit("/", 1)[-1]
                        if walnames.is_wal_name(name) and (
                            newest_wal is None or info.modified > newest_wal
                        ):
                            newest_wal = info.modified
            finally:
                repo.storage.close()
        except CloudbmError:
            rows["cloudbm_up"].append(f"cloudbm_up{{{label}}} 0")
            continue
        rows["cloudbm_up"].append(f"cloudbm_up{{{label}}} 1")
        rows["cloudbm_repository_bytes"].append(f"cloudbm_repository_bytes{{{label}}} {total}")
        for status in sorted({e.status for e in entries}):
            count = sum(1 for e in entries if e.status == status)
            rows["cloudbm_backups"].append(f'cloudbm_backups{{{label},status="{status}"}} {count}')
        done = [e for e in entries if e.status == DONE and e.manifest]
        if done and done[-1].manifest:
            m = done[-1].manifest
            age = (now - parse_iso(m.end_time)).total_seconds()
            rows["cloudbm_last_backup_age_seconds"].append(
                f"cloudbm_last_backup_age_seconds{{{label}}} {age:.0f}"
            )
            rows["cloudbm_last_backup_size_bytes"].append(
                f"cloudbm_last_backup_size_bytes{{{label}}} {m.size}"
            )
            rows["cloudbm_last_backup_stored_bytes"].append(
                f"cloudbm_last_backup_stored_bytes{{{label}}} {m.stored_size}"
            )
        if newest_wal is not None:
            rows["cloudbm_last_archived_wal_age_seconds"].append(
                f"cloudbm_last_archived_wal_age_seconds{{{label}}} "
                f"{(now - newest_wal).total_seconds():.0f}"
            )
        if settings.conninfo:
            try:
                from cloudbm.pg.session import BackupSession

                session = BackupSession(settings.conninfo)
                try:
                    ((failed,),) = session.execute("SELECT failed_count FROM pg_stat_archiver")
                finally:
                    session.close()
                rows["cloudbm_archive_failures_total"].append(
                    f"cloudbm_archive_failures_total{{{label}}} {int(failed)}"
                )
            except CloudbmError:
                pass
    out: list[str] = []
    for name, samples in rows.items():
        if not samples:
            continue
        kind = "counter" if name.endswith("_total") else "gauge"
        out += [f"# HELP {name} {helps[name]}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(out) + "\n"
