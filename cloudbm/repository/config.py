"""RepositoryConfig: what the repository layer needs of the configuration, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _no_passphrase() -> bytes:
    from cloudbm.errors import ConfigError

    raise ConfigError("encryption = 'passphrase' needs a passphrase")


@dataclass(frozen=True)
class RepositoryConfig:
    """What the repository layer needs of the configuration: where, how objects are encoded,
    and with which key. `passphrase` is called only when a passphrase is needed."""

    url: str
    storage_options: Any = None  # StorageOptions; None: the backend's defaults
    append_only: bool = False
    compression: str = "zstd"
    compression_level: int | None = None
    wal_compression_level: int | None = 1
    encryption: str = "none"
    key_file: str | None = None
    public_key_file: str | None = None
    private_key_file: str | None = None
    passphrase: Callable[[], bytes] = _no_passphrase
