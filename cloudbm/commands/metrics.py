"""`cloudbm metrics`: Prometheus text-format gauges for the node-exporter textfile collector."""

from __future__ import annotations

from cloudbm.catalog import DONE, parse_iso, utc_now
from cloudbm.config import Settings
from cloudbm.errors import CloudbmError
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.usage import usage


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
            with settings.open_repository() as repo:
                entries = load_catalogue(repo)
                stored = usage(repo)
        except CloudbmError:
            rows["cloudbm_up"].append(f"cloudbm_up{{{label}}} 0")
            continue
        rows["cloudbm_up"].append(f"cloudbm_up{{{label}}} 1")
        rows["cloudbm_repository_bytes"].append(
            f"cloudbm_repository_bytes{{{label}}} {stored.stored_bytes}"
        )
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
        if stored.newest_wal is not None:
            rows["cloudbm_last_archived_wal_age_seconds"].append(
                f"cloudbm_last_archived_wal_age_seconds{{{label}}} "
                f"{(now - stored.newest_wal).total_seconds():.0f}"
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
