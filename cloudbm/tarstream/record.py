"""A tar member as the manifest records it, and the rule for its name: shared by both sides.

The writer refuses to produce a name that `archive_path` would change; the extractor refuses one
that could land outside its destination. Both report what they handled as `FileRecord`s, which
the backup manifest stores and a restore checks against.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudbm.errors import IntegrityError


@dataclass
class FileRecord:
    """What the manifest stores for one member; size counts the bytes in the archive."""

    path: str
    kind: str  # 'file' | 'dir' | 'symlink' (| 'hardlink' from foreign archives on extraction)
    size: int
    mode: int
    mtime: float
    sha256: str | None
    missing: bool = False  # vanished before it could be read: not in the tar
    truncated: bool = False  # shrank while read: zero-padded to the size in its header


def archive_path(path: str) -> str:
    """Normalise an archive path, or raise IntegrityError if it could escape the destination."""
    if "\x00" in path:
        raise IntegrityError(f"tar member name {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise IntegrityError(f"tar member {path!r} has an absolute path")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise IntegrityError(f"tar member {path!r} has a '..' component")
    return "/".join(parts)
