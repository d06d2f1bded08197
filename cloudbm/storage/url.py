"""Repository URL -> storage backend. Backend modules (and their SDKs) load only when chosen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cloudbm.errors import (
    ConfigError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)
from cloudbm.storage.base import Storage, StorageOptions

SCHEMES = ("file", "s3", "gs", "azure")


@dataclass(frozen=True)
class Location:
    """A parsed repository URL: scheme, bucket/container (empty for file://) and key prefix."""

    scheme: str
    bucket: str
    prefix: str
    path: str = ""  # file:// only: absolute directory

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


def parse_url(url: str) -> Location:
    """Parse `file:///dir`, a bare absolute path, `s3://bucket/prefix`, `gs://bucket/prefix`
    or `azure://container/prefix`."""
    if not url:
        raise ConfigError("repository URL is empty", hint="set 'repository' or pass --repo URL")
    if url.startswith("/"):
        url = "file://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"repository URL {url!r} has an unsupported scheme {parts.scheme!r}",
            hint="use file:///path, s3://bucket/prefix, gs://bucket/prefix or "
            "azure://container/prefix",
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"repository URL {url!r} names a host; file URLs need an absolute path",
                hint="write file:///absolute/path (three slashes)",
            )
        path = os.path.normpath(unquote(parts.path))
        if not path.startswith("/"):
            raise ConfigError(f"repository URL {url!r} must hold an absolute path")
        return Location("file", "", "", path)
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"repository URL {url!r} has no bucket/container name")
    prefix = unquote(parts.path).strip("/")
    return Location(scheme, bucket, prefix)


def open_storage(url: str, options: StorageOptions | None = None) -> Storage:
    """Open the backend for `url`. Only the chosen backend module (and its SDK) is imported."""
    loc = parse_url(url)
    opts = options or StorageOptions()
    if loc.scheme == "file":
        from cloudbm.storage.local import LocalStorage

        return LocalStorage(loc.path)
    if loc.scheme == "s3":
        from cloudbm.storage.s3 import S3Storage

        return S3Storage(loc.bucket, loc.prefix, opts)
    if loc.scheme == "gs":
        from cloudbm.storage.gcs import GCSStorage

        return GCSStorage(loc.bucket, loc.prefix, opts)
    from cloudbm.storage.azure import AzureStorage

    return AzureStorage(loc.bucket, loc.prefix, opts)


def create_repository_directory(url: str) -> bool:
    """A file:// repository's directory, created 0700 when only it is missing (as pgBackRest's
    stanza-create does); a missing parent is more likely a typo, and is refused. True if
    created."""
    from pathlib import Path

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
    from cloudbm.logs import log

    log.info("created repository directory %s (mode 0700)", path)
    return True
