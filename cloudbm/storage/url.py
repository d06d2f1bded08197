"""Repository URL -> storage backend. Backend modules (and their SDKs) load only when chosen."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cloudbm.errors import ConfigError
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
