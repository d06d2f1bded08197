"""Streaming tar parts with per-file SHA-256: a generic byte-stream layer (knows no PostgreSQL).

A backup is written as tar parts produced while the upload reads them and restored by streaming
them back, so neither side holds more than a chunk in memory or a temporary file on disk. One
module per job:

- `record`: `FileRecord`, a member as the manifest holds it, and `archive_path`, the name rule
  both sides enforce;
- `headers`: tar header bytes, built (a hand-made ustar fast path) and parsed (without
  tarfile's stream mode);
- `writer`: `TarPartReader`, one part as a readable stream, and `plan_parts`;
- `extractor`: `TarExtractor`, one part written safely under a destination and checked against
  the manifest, and `pending_path` for the members a restore puts in place last.
"""

from cloudbm.tarstream.extractor import PENDING_SUFFIX, TarExtractor, pending_path
from cloudbm.tarstream.headers import BLOCK
from cloudbm.tarstream.record import FileRecord, archive_path
from cloudbm.tarstream.writer import FileSource, SourceLike, TarPartReader, plan_parts

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
