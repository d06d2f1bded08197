"""`cloudbm init`: bind a repository to one cluster and one key."""

from __future__ import annotations

from dataclasses import dataclass

from cloudbm.commands.context import open_repository, pgdata_path
from cloudbm.config import Settings
from cloudbm.logs import log
from cloudbm.pg import walnames
from cloudbm.pg.controlfile import read_identity
from cloudbm.repository import Descriptor, Repository


@dataclass(frozen=True)
class InitResult:
    descriptor: Descriptor
    created: bool
    url: str


def initialise_repository(settings: Settings, repo: Repository) -> tuple[Descriptor, bool]:
    """Create the descriptor from the data directory if absent (put-if-absent, so concurrent
    first pushes agree), then refuse a repository that belongs to another cluster."""
    identity = read_identity(pgdata_path(settings))
    scheme, key_id, kdf = repo.new_key_fields()
    desc = Descriptor(
        system_identifier=identity.system_identifier,
        pg_major=identity.major_version,
        wal_segment_size=identity.wal_segment_size or walnames.DEFAULT_SEGMENT_SIZE,
        encryption=scheme,
        key_id=key_id,
        kdf=kdf,
    )
    current, created = repo.create_descriptor(desc)
    if created:
        log.info(
            "initialised repository %s for system identifier %s (PostgreSQL %s)",
            repo.storage.url,
            desc.system_identifier,
            desc.pg_major,
        )
    repo.check_cluster(identity.system_identifier, identity.major_version)
    return current, created


def init(settings: Settings) -> InitResult:
    """Write the repository descriptor, or confirm an existing one belongs to this cluster
    and that the configured key is the repository's."""
    repo = open_repository(settings)
    try:
        desc, created = initialise_repository(settings, repo)
        repo.key_wrapper()
        return InitResult(desc, created, repo.storage.url)
    finally:
        repo.storage.close()
