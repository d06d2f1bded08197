"""cloudbm.json, the descriptor: which cluster and which key a repository belongs to."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloudbm import __version__
from cloudbm.errors import ForeignClusterError, IntegrityError
from cloudbm.pg.walnames import DEFAULT_SEGMENT_SIZE

if TYPE_CHECKING:
    from cloudbm.pg.controlfile import ClusterIdentity

FORMAT_VERSION = 1


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

    @classmethod
    def for_cluster(
        cls, identity: ClusterIdentity, key_fields: tuple[str, str | None, dict[str, Any] | None]
    ) -> Descriptor:
        """The descriptor of a new repository for the cluster `identity` (read from its
        pg_control) and the key named by `key_fields` (Repository.new_key_fields)."""
        scheme, key_id, kdf = key_fields
        return cls(
            system_identifier=identity.system_identifier,
            pg_major=identity.major_version,
            wal_segment_size=identity.wal_segment_size or DEFAULT_SEGMENT_SIZE,
            encryption=scheme,
            key_id=key_id,
            kdf=kdf,
        )

    def check_cluster(self, url: str, system_identifier: int, pg_major: int | None) -> None:
        """Refuse to mix clusters in one repository (two servers or a pg_upgrade'd cluster)."""
        if self.system_identifier != system_identifier:
            raise ForeignClusterError(
                f"repository {url} belongs to the cluster with system identifier "
                f"{self.system_identifier}, not {system_identifier}",
                hint="give each cluster (and each pg_upgrade) its own repository prefix",
            )
        if pg_major is not None and self.pg_major != pg_major:
            raise ForeignClusterError(
                f"repository {url} holds PostgreSQL {self.pg_major}, not {pg_major}",
                hint="use a new repository prefix after a major upgrade",
            )
