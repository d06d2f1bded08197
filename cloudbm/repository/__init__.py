"""The repository layer: everything cloudbm stores, said in the repository's own terms.

    layout      every object key, defined once
    config      RepositoryConfig: what the layer needs of the configuration
    descriptor  cloudbm.json: which cluster and key the repository belongs to
    crypto      which key encrypts, which keys decrypt
    objects     Repository and open_repository: envelope-coded objects over a storage backend
    catalogue   the backups in a repository, read in one listing; keep marks; removal
    lease       one backup-push per server at a time, through the storage itself
    upload      streamed puts retried from their source
    backup_writer  a backup's objects written: run records, parts, file lists, manifest
    backup_reader  a backup's objects read back, each checked against the manifest
    wal         the WAL archive: WalArchiver, listing, reading, histories, removal
    walcheck    the archive's continuity (wal-verify, check)
    walreach    what WAL a recovery from one backup can reach (recover)
    probe       check's write probe
    usage       bytes stored and the newest WAL, from one listing (metrics)

Commands use this layer, never storage or the codec directly, for anything it can say in one
call. This package imports only `objects` (and what it needs): archive_command imports it for
every WAL segment, and the rest is imported by the commands that use it.
"""

from cloudbm.repository.config import RepositoryConfig
from cloudbm.repository.descriptor import Descriptor
from cloudbm.repository.objects import (
    META_SHA256,
    META_SIZE,
    Repository,
    StoredBlob,
    open_repository,
    read_whole,
    sha256_hex,
)

__all__ = [
    "META_SHA256",
    "META_SIZE",
    "Descriptor",
    "Repository",
    "RepositoryConfig",
    "StoredBlob",
    "open_repository",
    "read_whole",
    "sha256_hex",
]
