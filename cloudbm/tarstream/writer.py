"""Writing tar parts: one part produced on demand as the consumer reads, and the grouping.

`TarPartReader` turns a sequence of files into one POSIX (pax) tar stream, produced as the
consumer reads, so a part of any size is built with about one chunk in memory and no temporary
file. File contents are read and hashed in large chunks; hashlib releases the GIL for them, so
several readers run in parallel threads. `plan_parts` groups a walk into parts of about a
target size without splitting a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from cloudbm.errors import ConfigError, IntegrityError
from cloudbm.tarstream.headers import BLOCK, END_OF_ARCHIVE, ZERO_BLOCK, build_header
from cloudbm.tarstream.record import FileRecord, archive_path

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class SourceLike(Protocol):
    """What TarPartReader needs of a file to archive (datadir.Entry and FileSource fit)."""

    @property
    def path(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mode(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...
    @property
    def link_target(self) -> str | None: ...


S = TypeVar("S", bound=SourceLike)


@dataclass(frozen=True)
class FileSource:
    path: str  # archive path (relative, '/'-separated)
    source: str  # filesystem path to read
    kind: str  # 'file' | 'dir' | 'symlink'
    mode: int
    size: int
    mtime: float
    link_target: str | None = None


def _header(src: SourceLike, type_: bytes, size: int) -> bytes:
    """The header for `src`: permission bits only and whole-second mtime (see build_header)."""
    # Whole seconds keep the header plain ustar; a float would add a pax header to every member.
    # The exact mtime travels in the FileRecord.
    return build_header(
        src.path, type_, size, src.mode & 0o7777, int(src.mtime), src.link_target or ""
    )


class TarPartReader(io.BufferedIOBase):
    """A readable binary stream producing one tar part from `files`, on demand.

    `read(n)` returns exactly n bytes until the end of the part (b"" at EOF); `read1(n)` and
    `readinto(buf)` are the cheaper ways to consume it (no copy / one copy). `records` grows
    as files are consumed and is complete at EOF; `bytes_read` counts tar bytes produced.
    `rate_limiter(n)` is called with each amount handed out (it may sleep to throttle).
    """

    def __init__(
        self,
        files: Iterable[SourceLike],
        *,
        chunk_size: int = 1 << 20,
        rate_limiter: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        if chunk_size < BLOCK:
            raise ConfigError(f"chunk_size must be at least {BLOCK} bytes")
        self.records: list[FileRecord] = []
        self.bytes_read = 0
        self._chunk_size = chunk_size
        self._rate_limiter = rate_limiter
        self._zeros = b""  # allocated on the first truncated file only
        self._gen = self._produce(files)
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Exactly `size` bytes (fewer only at the end of the part)."""
        if size is None or size < 0:
            return self.readall()
        return self._account(_joined(self._take(size, one_chunk=False)))

    def read1(self, size: int = -1) -> bytes:
        """Up to `size` bytes from the current chunk: no copy when a whole chunk fits."""
        if size < 0:
            size = 1 << 62
        return self._account(_joined(self._take(size, one_chunk=True)))

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill `buffer` (fully, unless at the end): one copy, no intermediate bytes."""
        view = memoryview(buffer).cast("B")
        offset = 0
        for piece in self._take(len(view), one_chunk=False):
            view[offset : offset + len(piece)] = piece
            offset += len(piece)
        self._account_n(offset)
        return offset

    def readall(self) -> bytes:
        """The rest of the part in memory: for tests and tiny parts only."""
        pieces = []
        while chunk := self.read1(self._chunk_size):
            pieces.append(chunk)
        return b"".join(pieces)

    def _take(self, size: int, *, one_chunk: bool) -> list[bytes | memoryview]:
        """Up to `size` bytes as views on the producer's chunks, advancing the stream.

        A tar part rarely splits at the caller's read size (each header shifts it by 512
        bytes), so handing out views and joining once avoids copying every chunk twice.
        """
        pieces: list[bytes | memoryview] = []
        have = 0
        while have < size:
            buf, pos = self._buf, self._pos
            if pos >= len(buf):
                if one_chunk and pieces:
                    break
                chunk = next(self._gen, None)
                if chunk is None:
                    break
                self._buf, self._pos = buf, pos = chunk, 0
            take = min(len(buf) - pos, size - have)
            pieces.append(buf if take == len(buf) else memoryview(buf)[pos : pos + take])
            self._pos = pos + take
            have += take
            if one_chunk:
                break
        return pieces

    def close(self) -> None:
        self._gen.close()  # closes the file being read, if any
        super().close()

    def _account(self, out: bytes) -> bytes:
        self._account_n(len(out))
        return out

    def _account_n(self, n: int) -> None:
        if n:
            self.bytes_read += n
            if self._rate_limiter is not None:
                self._rate_limiter(n)

    def _produce(self, files: Iterable[SourceLike]) -> Generator[bytes, None, None]:
        for src in files:
            _check_source_path(src.path)
            if src.kind == "file":
                yield from self._file(src)
            elif src.kind == "dir":
                self.records.append(FileRecord(src.path, "dir", 0, src.mode, src.mtime, None))
                yield _header(src, tarfile.DIRTYPE, 0)
            elif src.kind == "symlink":
                if src.link_target is None:
                    raise ConfigError(f"symbolic link {src.path} has no target")
                self.records.append(FileRecord(src.path, "symlink", 0, src.mode, src.mtime, None))
                yield _header(src, tarfile.SYMTYPE, 0)
            else:
                raise ConfigError(f"{src.path}: cannot archive a {src.kind!r}")
        yield END_OF_ARCHIVE

    def _file(self, src: SourceLike) -> Iterator[bytes]:
        try:
            fd = os.open(src.source, os.O_RDONLY)
        except FileNotFoundError:
            # Dropped or truncated away since the walk: WAL replay recreates what is needed.
            self.records.append(
                FileRecord(src.path, "file", 0, src.mode, src.mtime, None, missing=True)
            )
            return
        except PermissionError:
            raise ConfigError(f"cannot read {src.source}: permission denied") from None
        try:
            size = src.size
            digest = hashlib.sha256()
            yield _header(src, tarfile.REGTYPE, size)
            remaining = size
            while remaining:
                # Only the size declared in the header is read; growth is WAL replay's business.
                chunk = os.read(fd, min(self._chunk_size, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
                yield chunk
            truncated = remaining > 0
            if truncated:
                # The header is already out: pad to the declared size (torn reads are expected
                # in a base backup and fixed by WAL replay).
                if not self._zeros:
                    self._zeros = bytes(self._chunk_size)
                while remaining:
                    zeros = self._zeros[: min(self._chunk_size, remaining)]
                    digest.update(zeros)
                    remaining -= len(zeros)
                    yield zeros
            padding = -size % BLOCK
            if padding:
                yield ZERO_BLOCK[:padding]
        finally:
            os.close(fd)
        self.records.append(
            FileRecord(
                src.path, "file", size, src.mode, src.mtime, digest.hexdigest(), truncated=truncated
            )
        )


def _joined(pieces: list[bytes | memoryview]) -> bytes:
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        return pieces[0]
    return b"".join(pieces)


def _check_source_path(path: str) -> None:
    try:
        ok = bool(path) and archive_path(path) == path
    except IntegrityError:
        ok = False
    if not ok:
        raise ConfigError(f"{path!r} is not a normalised relative archive path")


def _member_size(entry: SourceLike) -> int:
    """Approximate tar bytes of one member (header + padded data)."""
    if entry.kind != "file":
        return BLOCK
    return BLOCK + entry.size + (-entry.size % BLOCK)


def plan_parts(
    entries: Iterable[S], *, target_size: int, max_files: int = 100_000
) -> Iterator[list[S]]:
    """Group consecutive entries into parts of about `target_size` tar bytes, lazily.

    A file is never split: one larger than the target makes a part of its own. Grouping is
    consecutive, so the walk's last entry (pg_control) is in the last part.
    """
    if target_size <= 0:
        raise ConfigError("the backup part size must be positive")
    if max_files <= 0:
        raise ConfigError("the number of files per part must be positive")
    part: list[S] = []
    part_size = 0
    for entry in entries:
        size = _member_size(entry)
        if part and (part_size + size > target_size or len(part) >= max_files):
            yield part
            part, part_size = [], 0
        part.append(entry)
        part_size += size
        if part_size >= target_size:
            yield part
            part, part_size = [], 0
    if part:
        yield part
