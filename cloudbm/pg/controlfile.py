"""What a data directory says about its cluster: system identifier, major version, segment size."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cloudbm.errors import ConfigError
from cloudbm.pg import walnames


@dataclass(frozen=True)
class ClusterIdentity:
    system_identifier: int
    major_version: int
    catalog_version: int
    wal_segment_size: int | None


def read_identity(pgdata: str | Path) -> ClusterIdentity:
    """Read global/pg_control (system identifier, catalog version) and PG_VERSION.

    The WAL segment size is taken from the files in pg_wal (every segment file there has it),
    which avoids parsing the version-dependent tail of pg_control.
    """
    root = Path(pgdata)
    try:
        raw = (root / "global" / "pg_control").read_bytes()[:16]
        version_text = (root / "PG_VERSION").read_text().strip()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{root} is not a PostgreSQL data directory ({exc.filename} is missing)",
            hint="set pgdata to the cluster's data directory",
        ) from None
    except PermissionError as exc:
        raise ConfigError(f"cannot read {exc.filename}: permission denied") from None
    if len(raw) < 16:
        raise ConfigError(f"{root}/global/pg_control is truncated")
    sysid, _ctl_version, catversion = struct.unpack("<QII", raw)
    try:
        major = int(version_text.split(".")[0])
    except ValueError:
        raise ConfigError(f"{root}/PG_VERSION holds {version_text!r}, not a version") from None
    return ClusterIdentity(sysid, major, catversion, _segment_size_from_pg_wal(root / "pg_wal"))


def _segment_size_from_pg_wal(pg_wal: Path) -> int | None:
    try:
        with os.scandir(pg_wal) as entries:
            for entry in entries:
                if len(entry.name) == 24 and walnames.is_wal_name(entry.name):
                    size = entry.stat().st_size
                    if size and not size & (size - 1):
                        return size
    except OSError:
        return None
    return None
