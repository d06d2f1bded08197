"""The repository: a storage location plus its descriptor, keys and object envelope.

Storage moves bytes; this layer adds what every object cloudbm writes needs: the envelope
(compression, encryption bound to the object's name), plaintext size/SHA-256 in metadata, and
the descriptor `cloudbm.json` that binds the location to one cluster and one key. It is given a
RepositoryConfig, never the whole Settings, and it is a context manager that closes its storage:

    with open_repository(settings.repository_config()) as repo:
        catalogue = load_catalogue(repo)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cloudbm.errors import (
    IntegrityError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientStorageError,
)
from cloudbm.logs import log
from cloudbm.repository.config import RepositoryConfig
from cloudbm.repository.descriptor import Descriptor
from cloudbm.repository.layout import DESCRIPTOR_KEY
from cloudbm.storage.base import Closing, ObjectInfo, Storage

if TYPE_CHECKING:
    from cloudbm.codec.envelope import EncodeParams
    from cloudbm.codec.keys import Keyring, KeyWrapper

META_SHA256 = "cloudbm-sha256"
META_SIZE = "cloudbm-size"


def open_repository(config: RepositoryConfig) -> Repository:
    """The repository at `config.url` over a retrying storage backend (append-only when so
    configured). Use it as a context manager: leaving it closes the storage."""
    from cloudbm.storage.base import StorageOptions
    from cloudbm.storage.retry import AppendOnlyStorage, RetryingStorage
    from cloudbm.storage.url import open_storage

    options = config.storage_options or StorageOptions()
    storage: Storage = RetryingStorage.from_options(open_storage(config.url, options), options)
    if config.append_only:
        storage = AppendOnlyStorage(storage)
    return Repository(storage, config)


class StoredBlob:
    """What an encoded object occupies in storage (its digest computed only if asked for:
    WAL pushes never need it)."""

    def __init__(self, size: int, blob: bytes) -> None:
        self.size = size
        self._blob = blob

    @property
    def sha256(self) -> str:
        return sha256_hex(self._blob)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_whole(storage: Storage, key: str) -> tuple[bytes, ObjectInfo]:
    """All of `key` and what the response said of it. Fewer (or more) bytes than the object's
    size are a transient storage error: what gets judged (parsed, decrypted, hashed) is only
    ever a whole object, so a network fault is never reported as a corrupt one."""
    with storage.get(key) as reader:
        blob = reader.read()
        info = reader.info
    if len(blob) != info.size:
        raise TransientStorageError(
            f"get {storage.url}/{key}: received {len(blob)} of its {info.size} bytes",
            hint="the network or the storage service cut the download; retry",
        )
    return blob, info


class Repository(Closing):
    """Objects of one server's repository, encoded and decoded through the envelope."""

    def __init__(self, storage: Storage, config: RepositoryConfig) -> None:
        self.storage = storage
        self.config = config
        self._descriptor: Descriptor | None = None
        self._wrapper: KeyWrapper | None = None
        self._keyring: Keyring | None = None

    def close(self) -> None:
        self.storage.close()

    @property
    def url(self) -> str:
        return self.storage.url

    def where(self, key: str) -> str:
        """`key` as a user finds it: the repository URL and the key."""
        return f"{self.storage.url}/{key}"

    # -- descriptor ----------------------------------------------------------------------------

    def read_descriptor(self) -> Descriptor:
        """The descriptor; NotFoundError if the repository was never initialised."""
        if self._descriptor is None:
            try:
                raw, _ = read_whole(self.storage, DESCRIPTOR_KEY)
            except ObjectNotFoundError:
                raise NotFoundError(
                    f"repository {self.storage.url} is not initialised",
                    hint="run 'cloudbm init' on the database host",
                ) from None
            self._descriptor = Descriptor.from_json(raw, f"{self.storage.url}/{DESCRIPTOR_KEY}")
        return self._descriptor

    def create_descriptor(self, descriptor: Descriptor) -> tuple[Descriptor, bool]:
        """Write the descriptor if absent. Returns (the descriptor in force, created?)."""
        try:
            self.storage.put(DESCRIPTOR_KEY, descriptor.to_json(), if_absent=True)
        except ObjectExistsError:
            self._descriptor = None
            return self.read_descriptor(), False
        self._descriptor = descriptor
        return descriptor, True

    def check_cluster(self, system_identifier: int, pg_major: int | None = None) -> Descriptor:
        """Refuse to mix clusters in one repository (two servers or a pg_upgrade'd cluster)."""
        desc = self.read_descriptor()
        desc.check_cluster(self.storage.url, system_identifier, pg_major)
        return desc

    def initialise(self, descriptor: Descriptor) -> tuple[Descriptor, bool]:
        """Write `descriptor` if there is none (put-if-absent, so concurrent first pushes
        agree), then refuse a repository that belongs to another cluster. Returns (the
        descriptor in force, created?)."""
        current, created = self.create_descriptor(descriptor)
        if created:
            log.info(
                "initialised repository %s for system identifier %s (PostgreSQL %s)",
                self.storage.url,
                descriptor.system_identifier,
                descriptor.pg_major,
            )
        current.check_cluster(self.storage.url, descriptor.system_identifier, descriptor.pg_major)
        return current, created

    def initialise_for(self, pgdata: str | Path) -> tuple[Descriptor, bool]:
        """initialise() for the cluster whose data directory is `pgdata`, with the configured
        key."""
        from cloudbm.pg.controlfile import read_identity

        return self.initialise(Descriptor.for_cluster(read_identity(pgdata), self.new_key_fields()))

    # -- keys ------------------------------------------------------------------------------------

    def new_key_fields(self) -> tuple[str, str | None, dict[str, Any] | None]:
        """(encryption scheme, key id, kdf) for a descriptor created with this configuration."""
        from cloudbm.repository import crypto

        return crypto.new_key_fields(self.config)

    def key_wrapper(self) -> KeyWrapper | None:
        """The key new objects are encrypted with; checked against the descriptor's key id."""
        if self._wrapper is None:
            from cloudbm.repository import crypto

            self._wrapper = crypto.encryption_key(self.config, self.read_descriptor())
        return self._wrapper

    def keyring(self) -> Keyring | None:
        """Keys able to decrypt, or None when no key is configured (plain repositories)."""
        if self._keyring is None and self.config.encryption != "none":
            # Keys are loaded only when some are configured: a plain repository's wal-fetch
            # never imports the key handling.
            from cloudbm.repository import crypto

            self._keyring = crypto.decryption_keys(self.config, self.read_descriptor)
        return self._keyring

    def encode_params(self, *, wal: bool = False) -> EncodeParams:
        """How new objects are encoded; WAL has its own compression level."""
        from cloudbm.codec.envelope import EncodeParams

        config = self.config
        level = config.compression_level
        if wal and config.compression == "zstd":
            level = config.wal_compression_level
        return EncodeParams(
            compression=config.compression,
            level=level,
            key=self.key_wrapper(),
        )

    # -- objects ---------------------------------------------------------------------------------

    def put_bytes(
        self,
        key: str,
        plaintext: bytes,
        *,
        if_absent: bool = False,
        metadata: Mapping[str, str] | None = None,
        params: EncodeParams | None = None,
        sha256: str | None = None,
    ) -> StoredBlob:
        """Encode and store a whole buffer (`sha256`: its digest if the caller has it already);
        returns the stored size and digest."""
        from cloudbm.codec.envelope import encode_bytes

        blob = encode_bytes(plaintext, name=key, params=params or self.encode_params())
        meta = {META_SHA256: sha256 or sha256_hex(plaintext), META_SIZE: str(len(plaintext))}
        meta.update(metadata or {})
        self.storage.put(key, blob, metadata=meta, if_absent=if_absent)
        return StoredBlob(len(blob), blob)

    def get_bytes(
        self, key: str, *, expected_sha256: str | None = None
    ) -> tuple[bytes, ObjectInfo]:
        """Fetch and decode a whole object, verifying the plaintext SHA-256 from metadata."""
        from cloudbm.codec.envelope import decode_bytes

        blob, info = read_whole(self.storage, key)
        plaintext = decode_bytes(blob, name=key, keyring=self.keyring())
        expected = expected_sha256 or info.metadata.get(META_SHA256)
        if expected and sha256_hex(plaintext) != expected:
            raise IntegrityError(
                f"object {self.storage.url}/{key} decodes to content whose SHA-256 does not "
                "match its metadata",
                hint="the object is corrupt; run 'cloudbm wal-verify'",
            )
        return plaintext, info

    def plaintext_sha256(self, key: str) -> str:
        """SHA-256 of an object's plaintext: from metadata, else by decoding it."""
        info = self.storage.head(key)
        known = info.metadata.get(META_SHA256)
        if known:
            return known
        plaintext, _ = self.get_bytes(key)
        return sha256_hex(plaintext)

    def open_stream(self, key: str) -> BinaryIO:
        """Decoded stream of a (possibly large) object."""
        from cloudbm.codec.envelope import DecodingReader

        reader = self.storage.get(key)
        return DecodingReader(reader, name=key, keyring=self.keyring())  # type: ignore[return-value]
