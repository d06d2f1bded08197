"""`cloudbm init`: bind a repository to one cluster and one key."""

from __future__ import annotations

from dataclasses import dataclass

from cloudbm.config import Settings
from cloudbm.pg.controlfile import read_identity
from cloudbm.repository import Descriptor
from cloudbm.storage.url import create_repository_directory


@dataclass(frozen=True)
class InitResult:
    descriptor: Descriptor
    created: bool
    url: str


def init(settings: Settings) -> InitResult:
    """Write the repository descriptor, or confirm an existing one belongs to this cluster
    and that the configured key is the repository's. A file:// directory is created first."""
    read_identity(settings.pgdata_path())  # a bad pgdata must not leave a directory behind
    create_repository_directory(settings.repository)
    with settings.open_repository() as repo:
        desc, created = repo.initialise_for(settings.pgdata_path())
        repo.key_wrapper()
        return InitResult(desc, created, repo.url)
