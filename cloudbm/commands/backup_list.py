"""`cloudbm backup-list` and `cloudbm backup-show ID`: the catalogue, as a DBA reads it."""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict
from typing import Any

from cloudbm.catalog import BackupEntry, resolve
from cloudbm.config import Settings
from cloudbm.progress import human_bytes
from cloudbm.repository import wal as wal_archive
from cloudbm.repository.catalogue import load_catalogue


def _wal_since(entry: BackupEntry, wal: list[tuple[str, int]], names: list[str]) -> int | None:
    """Stored bytes of WAL archived on the backup's timeline from its start segment on."""
    m = entry.manifest
    if m is None:
        return None
    start = bisect.bisect_left(names, m.start_wal)
    return sum(size for name, size in wal[start:] if name[:8] >= m.start_wal[:8])


def list_backups(settings: Settings) -> list[dict[str, Any]]:
    """One row per backup, oldest first."""
    with settings.open_repository() as repo:
        entries = load_catalogue(repo)
        wal = wal_archive.segment_sizes(repo) if any(e.manifest for e in entries) else []
    names = [n for n, _ in wal]
    rows = []
    for e in entries:
        m = e.manifest
        rows.append(
            {
                "server": settings.server,
                "backup_id": e.backup_id,
                "status": e.status,
                "begin_time": e.begin_time,
                "end_time": m.end_time if m else None,
                "size": m.size if m else None,
                "stored_size": m.stored_size if m else None,
                "wal_size_since": _wal_since(e, wal, names),
                "timeline": m.timeline if m else None,
                "keep": e.keep,
                "label": m.label if m else (e.started or {}).get("label"),
                "error": (e.failed or {}).get("error"),
            }
        )
    return rows


def _fmt(n: int | None) -> str:
    return "-" if n is None else human_bytes(n)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table like Barman's list-backups."""
    header = (
        "SERVER",
        "BACKUP ID",
        "STATUS",
        "BEGIN",
        "END",
        "SIZE",
        "STORED",
        "WAL SINCE",
        "TLI",
        "KEEP",
    )
    table = [header]
    for r in rows:
        table.append(
            (
                r["server"],
                r["backup_id"],
                r["status"],
                r["begin_time"] or "-",
                r["end_time"] or "-",
                _fmt(r["size"]),
                _fmt(r["stored_size"]),
                _fmt(r["wal_size_since"]),
                str(r["timeline"] or "-"),
                r["keep"] or "-",
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['backup_id']} failed: {r['error']}")
    return "\n".join(lines)


def show_backup(settings: Settings, wanted: str) -> dict[str, Any]:
    """Everything the summary holds about one backup (plus status objects)."""
    with settings.open_repository() as repo:
        entry = resolve(load_catalogue(repo), wanted)
    doc: dict[str, Any] = {"backup_id": entry.backup_id, "status": entry.status, "keep": entry.keep}
    if entry.manifest:
        doc.update(asdict(entry.manifest))
        doc["wal_needed_for_consistency"] = [entry.manifest.start_wal, entry.manifest.stop_wal]
    for name, value in (
        ("started", entry.started),
        ("waiting", entry.waiting),
        ("failed", entry.failed),
    ):
        if value:
            doc[name] = value
    return doc


def format_show(doc: dict[str, Any]) -> str:
    """Human-readable backup-show."""
    if "parts" not in doc:
        return json.dumps(doc, indent=2, sort_keys=True)
    lines = [
        f"Backup {doc['backup_id']} ({doc['status']})",
        f"  Server:             {doc['server']}",
        f"  Label:              {doc['label']}",
        f"  PostgreSQL:         {doc['pg_version']} (system identifier {doc['system_identifier']})",
        f"  Begin / end:        {doc['begin_time']} / {doc['end_time']}",
        f"  Taken from:         {doc['backup_from']}",
        f"  Timeline:           {doc['timeline']}",
        f"  Start / stop LSN:   {doc['start_lsn']} / {doc['stop_lsn']}",
        f"  WAL for consistency: {doc['start_wal']} .. {doc['stop_wal']}",
        f"  Size:               {human_bytes(doc['size'])} in {doc['file_count']} files",
        f"  Stored:             {human_bytes(doc['stored_size'])} in {len(doc['parts'])} part(s)"
        f" ({doc['compression']}, encryption {doc['encryption']}"
        + (f", key {doc['key_id']})" if doc.get("key_id") else ")"),
        f"  Keep:               {doc.get('keep') or 'no'}",
    ]
    if doc["tablespaces"]:
        lines.append("  Tablespaces:")
        for t in doc["tablespaces"]:
            lines.append(f"    {t['name']} (oid {t['oid']}): {t['location']}")
    else:
        lines.append("  Tablespaces:        none")
    return "\n".join(lines)
