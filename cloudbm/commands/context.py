"""Building the objects a command needs from Settings."""

from __future__ import annotations

import os
from pathlib import Path

from cloudbm.config import Settings
from cloudbm.localstate.spool import spool_root
from cloudbm.repository import Repository
from cloudbm.storage.base import Storage
from cloudbm.storage.retry import AppendOnlyStorage, RetryingStorage
from cloudbm.storage.url import open_storage


def open_repository(settings: Settings) -> Repository:
    """The server's repository over a retrying storage backend."""
    options = settings.storage_options()
    storage: Storage = RetryingStorage.from_options(
        open_storage(settings.repository, options), options
    )
    if settings.append_only:
        storage = AppendOnlyStorage(storage)
    return Repository(storage, settings)


def spool_dir(settings: Settings) -> Path:
    """Per-repository local state (locks, push markers, prefetched WAL), outside pg_wal."""
    return spool_root(settings.spool_directory, settings.server, settings.repository)


def pgdata_path(settings: Settings) -> Path:
    """The data directory: configured `pgdata`, else the current directory when it is one
    (archive_command and restore_command run with cwd = PGDATA)."""
    if settings.pgdata:
        return Path(settings.pgdata)
    cwd = Path(os.getcwd())
    if (cwd / "global" / "pg_control").exists():
        return cwd
    from cloudbm.errors import ConfigError

    raise ConfigError(
        "pgdata is not configured and the current directory is not a data directory",
        hint="set pgdata (or CLOUDBM_PGDATA, or --pgdata)",
    )
