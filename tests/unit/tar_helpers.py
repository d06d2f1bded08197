"""Helpers shared by the tarstream tests: a SHA-256 in the manifest's form, one-call extraction."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from cloudbm.tarstream import FileRecord, TarExtractor


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract(dest: Path, data: bytes, **kwargs: object) -> list[FileRecord]:
    return TarExtractor(dest, **kwargs).extract(io.BytesIO(data))  # type: ignore[arg-type]
