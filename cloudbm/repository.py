"""The repository: a storage location plus its descriptor, keys and object envelope.

Storage moves bytes; this layer adds what every object cloudbm writes needs: the envelope
(compression, encryption bound to the object's name), plaintext size/SHA-256 in metadata, and
the descriptor `cloudbm.json` that binds the location to one cluster and one key.
It knows nothing of PostgreSQL: commands/ compose it with pg/.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from cloudbm import __version__
from cloudbm.errors import (
    ConfigError,
    ForeignClusterError,
    IntegrityError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientStorageError,
    WrongKeyError,
)
from cloudbm.storage.base import ObjectInfo, Storage

if TYPE_CHECKING:
    from cloudbm.codec.envelope import EncodeParams
    from cloudbm.codec.keys import Keyring, KeyWrapper
    from cloudbm.config import Settings

DESCRIPTOR_KEY = "cloudbm.json"
FORMAT_VERSION = 1
META_SHA256 = "cloudbm-sha256"
META_SIZE = "cloudbm-size"

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class Descriptor:
    """cloudbm.json: which cluster and which key a repository belongs to (plain JSON)."""

    system_identifier: int
    pg_major: int
    wal_segment_size: int
    encryption: str = "none"  # none | symmetric | x25519
    key_id: str | None = None
    kdf: Mapping[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    created_by: str = f"cloudbm {__version__}"

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n").encode()

    def as_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "system_identifier": str(self.system_identifier),
            "pg_major": self.pg_major,
            "wal_segment_size": self.wal_segment_size,
            "encryption": self.encryption,
            "key_id": self.key_id,
            "kdf": dict(self.kdf) if self.kdf else None,
            "created": self.created,
            "created_by": self.created_by,
        }

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Descriptor:
        try:
            doc = json.loads(raw)
            version = int(doc["format_version"])
            if version > FORMAT_VERSION:
                raise IntegrityError(
                    f"{where} has format version {version}; this cloudbm reads up to "
                    f"{FORMAT_VERSION}",
                    hint="upgrade cloudbm",
                )
            return cls(
                system_identifier=int(doc["system_identifier"]),
                pg_major=int(doc["pg_major"]),
                wal_segment_size=int(doc["wal_segment_size"]),
                encryption=str(doc.get("encryption") or "none"),
                key_id=doc.get("key_id"),
                kdf=doc.get("kdf"),
                format_version=version,
                created=str(doc.get("created", "")),
                created_by=str(doc.get("created_by", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{where} is not a valid repository descriptor: {exc}") from None


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


class Repository:
    """Objects of one server's repository, encoded and decoded through the envelope."""

    def __init__(self, storage: Storage, settings: Settings) -> None:
        self.storage = storage
        self.settings = settings
        self._descriptor: Descriptor | None = None
        self._wrapper: KeyWrapper | None = None
        self._keyring: Keyring | None = None

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
        if desc.system_identifier != system_identifier:
            raise ForeignClusterError(
                f"repository {self.storage.url} belongs to the cluster with system identifier "
                f"{desc.system_identifier}, not {system_identifier}",
                hint="give each cluster (and each pg_upgrade) its own repository prefix",
            )
        if pg_major is not None and desc.pg_major != pg_major:
            raise ForeignClusterError(
                f"repository {self.storage.url} holds PostgreSQL {desc.pg_major}, not {pg_major}",
                hint="use a new repository prefix after a major upgrade",
            )
        return desc

    # -- keys ------------------------------------------------------------------------------------

    def new_key_fields(self) -> tuple[str, str | None, dict[str, Any] | None]:
        """(encryption scheme, key id, kdf) for a descriptor being created with current settings."""
        mode = self.settings.encryption
        if mode == "none":
            return "none", None, None
        from cloudbm.codec import keys

        if mode == "passphrase":
            salt = keys.new_salt()
            kdf = {
                "name": "scrypt",
                "salt": base64.b64encode(salt).decode(),
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
            }
            key = keys.key_from_passphrase(
                self.settings.passphrase(), salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P
            )
            return "symmetric", key.key_id.hex(), kdf
        if mode == "keyfile":
            assert self.settings.key_file
            return "symmetric", keys.key_from_keyfile(self.settings.key_file).key_id.hex(), None
        if self.settings.public_key_file:
            pub = keys.public_key_from_file(self.settings.public_key_file)
            return "x25519", pub.key_id.hex(), None
        assert self.settings.private_key_file
        priv = keys.private_key_from_file(self.settings.private_key_file)
        return "x25519", priv.key_id.hex(), None

    def _symmetric_key(self) -> Any:
        from cloudbm.codec import keys

        if self.settings.encryption == "passphrase":
            kdf = self.read_descriptor().kdf
            if not kdf or kdf.get("name") != "scrypt":
                raise ConfigError(
                    f"repository {self.storage.url} was not created with a passphrase",
                    hint="set encryption to match the repository (see its cloudbm.json)",
                )
            return keys.key_from_passphrase(
                self.settings.passphrase(),
                base64.b64decode(kdf["salt"]),
                n=int(kdf["n"]),
                r=int(kdf["r"]),
                p=int(kdf["p"]),
            )
        assert self.settings.key_file
        return keys.key_from_keyfile(self.settings.key_file)

    def key_wrapper(self) -> KeyWrapper | None:
        """The key new objects are encrypted with; checked against the descriptor's key id."""
        if self._wrapper is not None:
            return self._wrapper
        desc = self.read_descriptor()
        mode = self.settings.encryption
        if mode == "none":
            if desc.key_id:
                raise ConfigError(
                    f"repository {self.storage.url} is encrypted (key id {desc.key_id}) but "
                    "encryption = 'none' is configured",
                    hint="configure the repository's key; cloudbm never downgrades to plaintext",
                )
            return None
        from cloudbm.codec import keys

        wrapper: KeyWrapper
        if mode == "public-key":
            if self.settings.public_key_file:
                wrapper = keys.public_key_from_file(self.settings.public_key_file)
            else:
                assert self.settings.private_key_file
                wrapper = keys.private_key_from_file(self.settings.private_key_file).public()
        else:
            wrapper = self._symmetric_key()
        if desc.key_id != wrapper.key_id.hex():
            raise WrongKeyError(
                f"the configured key (id {wrapper.key_id.hex()}) is not the repository's "
                f"key (id {desc.key_id})",
                hint="configure the key the repository was initialised with",
            )
        self._wrapper = wrapper
        return wrapper

    def keyring(self) -> Keyring | None:
        """Keys able to decrypt, or None when no key is configured (plain repositories)."""
        if self._keyring is not None or self.settings.encryption == "none":
            return self._keyring
        from cloudbm.codec import keys

        if self.settings.encryption == "public-key":
            if not self.settings.private_key_file:
                raise ConfigError(
                    "reading encrypted objects needs private_key_file",
                    hint="the public key can only encrypt; give this host the private key",
                )
            unwrapper: Any = keys.private_key_from_file(self.settings.private_key_file)
        else:
            unwrapper = self._symmetric_key()
        self._keyring = keys.Keyring([unwrapper])
        return self._keyring

    def encode_params(self, *, wal: bool = False) -> EncodeParams:
        """How new objects are encoded; WAL has its own compression level."""
        from cloudbm.codec.envelope import EncodeParams

        level = self.settings.compression_level
        if wal and self.settings.compression in ("zstd", "lz4", "gzip"):
            level = (
                self.settings.wal_compression_level
                if self.settings.compression == "zstd"
                else level
            )
        return EncodeParams(
            compression=self.settings.compression,
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
