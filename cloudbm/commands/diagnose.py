"""`cloudbm diagnose`: versions, configuration (secrets masked) and each server's status, as
JSON: what a bug report needs."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from cloudbm import __version__
from cloudbm.catalog import DONE
from cloudbm.config import Settings
from cloudbm.errors import CloudbmError
from cloudbm.repository.catalogue import load_catalogue

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
            with settings.open_repository() as repo:
                desc = repo.read_descriptor()
                entry["repository"] = desc.as_dict()
                entries = load_catalogue(repo)
            done = [e for e in entries if e.status == DONE]
            entry["backups"] = {
                s: sum(1 for e in entries if e.status == s)
                for s in sorted({e.status for e in entries})
            }
            entry["last_backup"] = done[-1].backup_id if done else None
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
