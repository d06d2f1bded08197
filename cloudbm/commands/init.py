"""`cloudbm init`: bind a repository to one cluster and one key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cloudbm.config import Settings
from cloudbm.errors import StorageError, StoragePermissionError, StorageUnavailableError
from cloudbm.logs import log
from cloudbm.pg.controlfile import read_identity
from cloudbm.repository import Descriptor
from cloudbm.storage.url import parse_url


@dataclass(frozen=True)
class InitResult:
    descriptor: Descriptor
    created: bool
    url: str


def create_local_directory(url: str) -> bool:
    """A file:// repository's directory, created 0700 when only it is missing (as pgBackRest's
    stanza-create does); a missing parent is more likely a typo, and is refused. True if
    created."""
    loc = parse_url(url)
    if loc.scheme != "file":
        return False
    path = Path(loc.path)
    if path.is_dir():
        return False
    if not path.parent.is_dir():
        raise StorageUnavailableError(
            f"repository directory {path} cannot be created: {path.parent} does not exist",
            hint="create the parent directory (owned by the postgres user) or fix 'repository'",
        )
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise StorageUnavailableError(
                f"repository {path} exists and is not a directory", hint="fix 'repository'"
            ) from None
        return False  # created by a concurrent init
    except PermissionError as exc:
        raise StoragePermissionError(
            f"cannot create repository directory {path}: {exc.strerror}",
            hint=f"create it as a user who may write to {path.parent}, owned by postgres",
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot create repository directory {path}: {exc.strerror}") from None
    os.chmod(path, 0o700)  # whatever the umask
    log.info("created repository directory %s (mode 0700)", path)
    return True


def init(settings: Settings) -> InitResult:
    """Write the repository descriptor, or confirm an existing one belongs to this cluster
    and that the configured key is the repository's. A file:// directory is created first."""
    read_identity(settings.pgdata_path())  # a bad pgdata must not leave a directory behind
    create_local_directory(settings.repository)
    with settings.open_repository() as repo:
        desc, created = repo.initialise_for(settings.pgdata_path())
        repo.key_wrapper()
        return InitResult(desc, created, repo.url)
