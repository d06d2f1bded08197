"""RepositoryConfig: what the repository layer needs of the configuration, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _no_passphrase() -> bytes:
    from cloudbm.errors import ConfigError

    raise ConfigError("encryption = 'passphrase' needs a passphrase")


class RepositoryConfig:
    """What the repository layer needs of the configuration: where, how objects are encoded,
    and with which key. `passphrase` is called only when a passphrase is needed.

    A plain class, read-only by convention, rather than a dataclass: archive_command builds
    one per WAL segment, and a dataclass is built by exec at import.
    """

    __slots__ = (
        "append_only",
        "compression",
        "compression_level",
        "encryption",
        "key_file",
        "passphrase",
        "private_key_file",
        "public_key_file",
        "storage_options",
        "url",
        "wal_compression_level",
    )

    def __init__(
        self,
        url: str,
        storage_options: Any = None,  # StorageOptions; None: the backend's defaults
        append_only: bool = False,
        compression: str = "zstd",
        compression_level: int | None = None,
        wal_compression_level: int | None = 1,
        encryption: str = "none",
        key_file: str | None = None,
        public_key_file: str | None = None,
        private_key_file: str | None = None,
        passphrase: Callable[[], bytes] = _no_passphrase,
    ) -> None:
        self.url = url
        self.storage_options = storage_options
        self.append_only = append_only
        self.compression = compression
        self.compression_level = compression_level
        self.wal_compression_level = wal_compression_level
        self.encryption = encryption
        self.key_file = key_file
        self.public_key_file = public_key_file
        self.private_key_file = private_key_file
        self.passphrase = passphrase

    def __repr__(self) -> str:
        return f"RepositoryConfig(url={self.url!r}, encryption={self.encryption!r})"
