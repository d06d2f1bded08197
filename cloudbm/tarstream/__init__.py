"""Streaming tar parts with per-file SHA-256 (being split into modules)."""

from cloudbm.tarstream.extractor import (
    BLOCK,
    PENDING_SUFFIX,
    FileRecord,
    FileSource,
    SourceLike,
    TarExtractor,
    TarPartReader,
    archive_path,
    pending_path,
    plan_parts,
)

__all__ = [
    "BLOCK",
    "PENDING_SUFFIX",
    "FileRecord",
    "FileSource",
    "SourceLike",
    "TarExtractor",
    "TarPartReader",
    "archive_path",
    "pending_path",
    "plan_parts",
]
