"""Streaming tar parts with per-file SHA-256: a generic byte-stream layer (knows no PostgreSQL).

`TarPartReader` turns a sequence of files into one POSIX (pax) tar stream, produced on demand as
the consumer reads, so a part of any size is built with about one chunk in memory and no
temporary file. File contents are read and hashed in large chunks; hashlib releases the GIL for
them, so several readers run in parallel threads.

`TarExtractor` reads one part back as a stream and writes it under a destination directory,
refusing anything that could land outside it (absolute names, `..`, escaping links, device
nodes) and verifying each file's size and SHA-256 against what the caller expects.

The extractor parses tar headers itself (with `tarfile.TarInfo.frombuf` for the ustar block
and a small pax parser) instead of `tarfile.open(mode="r|")`: tarfile's stream mode re-copies
its whole read buffer on every small read, which is quadratic for parts of small files, and
reading member data straight from the caller's stream avoids one more copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from cloudbm.errors import ConfigError, IntegrityError
from cloudbm.writeback import FLUSH_AFTER, start_writeback

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BLOCK = tarfile.BLOCKSIZE  # 512
_ZERO_BLOCK = bytes(BLOCK)
_END_OF_ARCHIVE = bytes(2 * BLOCK)
_MAX_META = 1 << 20  # largest pax / GNU long-name header accepted: names are never that long
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
PENDING_SUFFIX = ".cloudbm-pending"  # a deferred member until the caller puts it in place


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


# --- writing -------------------------------------------------------------------------------


def _header(src: SourceLike, type_: bytes, size: int) -> bytes:
    """A pax-format header, byte for byte what `TarInfo.tobuf(PAX_FORMAT)` gives."""
    # Whole seconds keep the header plain ustar; a float would add a pax header to every member.
    # The exact mtime travels in the FileRecord.
    mtime = int(src.mtime)
    name = src.path + "/" if type_ == tarfile.DIRTYPE else src.path
    link = src.link_target or ""
    fast = _ustar_header(name, link, type_, src.mode & 0o7777, size, mtime)
    if fast is not None:
        return fast
    info = tarfile.TarInfo(src.path)
    info.type = type_
    info.size = size
    info.mode = src.mode & 0o7777
    info.mtime = mtime
    info.uid = info.gid = 0  # ownership is the restoring user's; keep headers deterministic
    info.uname = info.gname = ""
    info.linkname = link
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


_USTAR_IDS = b"0000000\x00" * 2  # uid, gid
# magic, empty uname/gname, devmajor/devminor left NUL (not a device), empty prefix, padding
_USTAR_TAIL = tarfile.POSIX_MAGIC + bytes(64) + bytes(16) + bytes(155 + 12)
_OCTAL_LIMIT = 8**11  # what fits in the 12-byte size and mtime fields


def _ustar_header(
    name: str, link: str, type_: bytes, mode: int, size: int, mtime: int
) -> bytes | None:
    """Plain ustar header for the common case (tarfile.tobuf costs ~10x more per file).

    None when pax records are needed: non-ASCII or long names, huge sizes, odd times.
    """
    if not (name.isascii() and link.isascii() and len(name) <= 100 and len(link) <= 100):
        return None
    if not (0 <= size < _OCTAL_LIMIT and 0 <= mtime < _OCTAL_LIMIT):
        return None
    head = b"".join(
        (
            name.encode("ascii").ljust(100, b"\x00"),
            b"%07o\x00" % mode,
            _USTAR_IDS,
            b"%011o\x00" % size,
            b"%011o\x00" % mtime,
            b"        ",
            type_,
            link.encode("ascii").ljust(100, b"\x00"),
            _USTAR_TAIL,
        )
    )
    checksum = sum(head)  # with the checksum field as spaces, as the format defines it
    return head[:148] + b"%06o\x00 " % checksum + head[156:]


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
        yield _END_OF_ARCHIVE

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
                yield _ZERO_BLOCK[:padding]
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


# --- reading -------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    type: bytes
    size: int
    mode: int
    mtime: float
    linkname: str


class _TarStream:
    """Pulls headers and data out of a tar byte stream without buffering data itself."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) == n:
            return data
        pieces = [data]
        have = len(data)
        while have < n:
            more = self.stream.read(n - have)
            if not more:
                raise IntegrityError(f"tar stream truncated in {what}")
            pieces.append(more)
            have += len(more)
        return b"".join(pieces)

    def skip(self, n: int, what: str) -> None:
        while n:
            data = self.stream.read(min(n, 1 << 20))
            if not data:
                raise IntegrityError(f"tar stream truncated in {what}")
            n -= len(data)

    def next_member(self) -> _Member | None:
        """The next member with pax / GNU long-name headers applied, or None at the end."""
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self.stream.read(BLOCK)
            if len(block) < BLOCK:
                if not block:
                    raise IntegrityError("tar stream ends without an end-of-archive marker")
                block += self.read_exact(BLOCK - len(block), "a header")
            if block == _ZERO_BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise IntegrityError(f"corrupt tar header: {exc}") from None
            if info.type in _META_TYPES:
                if info.size > _MAX_META:
                    raise IntegrityError(f"tar extended header of {info.size} bytes refused")
                raw = self.read_exact(info.size + (-info.size % BLOCK), "an extended header")
                raw = raw[: info.size]
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(raw))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = _decode(raw.split(b"\x00", 1)[0])
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = _decode(raw.split(b"\x00", 1)[0])
                # global pax headers (XGLTYPE) carry nothing we use
                continue
            name = pax.get("path", long_name if long_name is not None else info.name)
            link = pax.get("linkpath", long_link if long_link is not None else info.linkname)
            try:
                size = int(pax["size"]) if "size" in pax else info.size
                mtime = float(pax["mtime"]) if "mtime" in pax else float(info.mtime)
            except ValueError:
                raise IntegrityError(f"tar member {name!r} has a corrupt pax header") from None
            if size < 0:
                raise IntegrityError(f"tar member {name!r} has a negative size")
            if info.type not in _REGULAR:
                size = 0  # only regular files carry data (as tarfile reads it); others refused
            return _Member(name.rstrip("/"), info.type, size, info.mode, mtime, link)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(raw: bytes) -> dict[str, str]:
    """Records of the form b'<len> <key>=<value>\\n'."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        space = raw.find(b" ", pos)
        try:
            length = int(raw[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(raw) or raw[end - 1 : end] != b"\n":
            raise IntegrityError("corrupt pax extended header")
        key, eq, value = raw[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise IntegrityError("corrupt pax extended header")
        out[_decode(key)] = _decode(value)
        pos = end
    return out


def pending_path(path: str | os.PathLike[str]) -> str:
    """Where TarExtractor writes a deferred member whose final path is `path`."""
    return os.fspath(path) + PENDING_SUFFIX


class TarExtractor:
    """Safe streaming extraction of tar parts under `dest`.

    `expected` maps archive paths to the records the manifest holds: a member found there must
    match its kind, size and SHA-256 (IntegrityError naming the file otherwise, and a file that
    fails is removed). With `strict`, a member absent from `expected` is refused too.
    `path_map` maps archive paths to filesystem paths (default `dest / path`), e.g. to relocate
    tablespaces. With `fsync`, each file is fsynced as written and, at the end of `extract`,
    every directory that gained entries. Files named in `deferred` are written under
    `pending_path(their path)` instead, for the caller to put in place when everything else is
    (a restore writes the file that makes a directory startable last).
    """

    def __init__(
        self,
        dest: Path,
        *,
        expected: Mapping[str, FileRecord] | None = None,
        path_map: Callable[[str], Path] | None = None,
        fsync: bool = True,
        strict: bool = False,
        chunk_size: int = 1 << 20,
        skip: Callable[[str], bool] | None = None,
        on_progress: Callable[[int], None] | None = None,
        verify_only: bool = False,
        deferred: Collection[str] = (),
    ) -> None:
        self.dest = Path(dest)
        self.deferred = frozenset(deferred)
        # verify_only: check every member against `expected` and write nothing (cloudbm verify).
        self.verify_only = verify_only
        self.skip = skip
        self.on_progress = on_progress
        self.expected = expected
        self.path_map = path_map
        self.fsync = fsync
        self.strict = strict
        self.chunk_size = chunk_size
        self._dest_real = os.path.realpath(self.dest)
        self._known_dirs: set[str] = set()
        self._touched_dirs: set[str] = set()
        self._dir_meta: dict[str, tuple[int, float]] = {}
        self._archive_links: set[str] = set()

    def _target(self, rel: str) -> str:
        if self.path_map is not None:
            return os.fspath(self.path_map(rel))
        return os.path.join(self.dest, rel)

    def extract(self, stream: BinaryIO) -> list[FileRecord]:
        """Extract one part, reading `stream` to its end; returns a record per member."""
        os.makedirs(self.dest, mode=0o700, exist_ok=True)
        self._known_dirs.add(os.fspath(self.dest))
        tar = _TarStream(stream)
        records: list[FileRecord] = []
        while (member := tar.next_member()) is not None:
            record = self._member(tar, member)
            if record is not None:
                records.append(record)
        # Read to the real end: the layers below (decryption) authenticate there.
        while data := stream.read(1 << 20):
            if data.count(0) != len(data):
                raise IntegrityError("unexpected data after the tar end-of-archive marker")
        self._finish_dirs()
        return records

    def _member(self, tar: _TarStream, m: _Member) -> FileRecord | None:
        rel = archive_path(m.name)
        if not rel:
            tar.skip(m.size + (-m.size % BLOCK), "the root directory entry")
            return None
        if self._archive_links and self._through_link(rel):
            raise IntegrityError(f"tar member {rel} lies beyond a symbolic link in the archive")
        expected = self.expected.get(rel) if self.expected is not None else None
        if expected is None and self.strict and self.expected is not None:
            raise IntegrityError(f"tar member {rel} is not in the backup manifest")
        if expected is not None and expected.missing:
            raise IntegrityError(f"{rel} is recorded as missing but is in the archive")
        if m.type in _REGULAR:
            return self._file(tar, m, rel, expected)
        kind = {
            tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink",
            tarfile.LNKTYPE: "hardlink",
        }.get(m.type)
        if kind is None:
            what = {
                tarfile.CHRTYPE: "a character device",
                tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a FIFO",
            }.get(m.type, f"an unsupported type {m.type!r}")
            raise IntegrityError(f"tar member {rel} is {what}")
        if expected is not None and expected.kind != kind:
            raise IntegrityError(f"{rel}: archive holds a {kind}, manifest says {expected.kind}")
        mtime = expected.mtime if expected is not None else m.mtime
        target = self._target(rel)
        if kind == "dir":
            self._make_dir(target, rel)
            self._dir_meta[target] = (m.mode & 0o7777, mtime)
        elif kind == "symlink":
            self._check_link_target(rel, m.linkname)
            self._prepare_slot(target, rel)
            os.symlink(m.linkname, target)
            self._archive_links.add(rel)
        else:
            source_rel = archive_path(m.linkname)
            if not source_rel or self._through_link(source_rel):
                raise IntegrityError(f"hard link {rel} -> {m.linkname!r} points outside")
            self._prepare_slot(target, rel)
            try:
                os.link(self._target(source_rel), target, follow_symlinks=False)
            except FileNotFoundError:
                raise IntegrityError(f"hard link {rel} -> {source_rel}: no such member") from None
        return FileRecord(rel, kind, 0, m.mode & 0o7777, mtime, None)

    def _file(
        self, tar: _TarStream, m: _Member, rel: str, expected: FileRecord | None
    ) -> FileRecord:
        if expected is not None:
            if expected.kind != "file":
                raise IntegrityError(f"{rel}: archive holds a file, manifest says {expected.kind}")
            if expected.size != m.size:
                raise IntegrityError(
                    f"{rel}: size {m.size} in the archive, {expected.size} in the manifest"
                )
        if self.verify_only:
            return self._verify_file(tar, m, rel, expected)
        if self.skip is not None and self.skip(rel):
            # Already in place (delta restore): read past the data, write nothing.
            tar.skip(m.size + (-m.size % BLOCK), f"the data of {rel}")
            mtime = expected.mtime if expected is not None else m.mtime
            return FileRecord(rel, "file", m.size, m.mode & 0o777, mtime, None)
        target = self._target(rel)
        if rel in self.deferred:
            target = pending_path(target)
        self._prepare_slot(target, rel)
        # O_NOFOLLOW: never write through a link that happens to sit at the member's name.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_NOFOLLOW
        fd = os.open(target, flags, 0o600)
        digest = hashlib.sha256()
        try:
            remaining = m.size
            flushed = 0  # bytes handed to writeback so far
            while remaining:
                data = tar.stream.read(min(self.chunk_size, remaining))
                if not data:
                    raise IntegrityError(f"tar stream truncated in {rel}")
                digest.update(data)
                remaining -= len(data)
                _write_all(fd, data)
                written = m.size - remaining
                if self.fsync and written - flushed >= FLUSH_AFTER:
                    start_writeback(fd, flushed, written - flushed)
                    flushed = written
                if self.on_progress is not None:
                    self.on_progress(len(data))
            sha = digest.hexdigest()
            if expected is not None and expected.sha256 is not None and expected.sha256 != sha:
                raise IntegrityError(
                    f"{rel}: SHA-256 {sha} does not match the manifest's {expected.sha256}"
                )
            mtime = expected.mtime if expected is not None else m.mtime
            os.fchmod(fd, m.mode & 0o777)
            os.utime(fd, (mtime, mtime))
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            # Leave no half-written or wrong file behind to pass for a restored one later.
            _unlink_quietly(target)
            raise
        os.close(fd)
        padding = -m.size % BLOCK
        if padding:
            tar.read_exact(padding, f"the padding of {rel}")
        return FileRecord(rel, "file", m.size, m.mode & 0o777, mtime, sha)

    def _verify_file(
        self, tar: _TarStream, m: _Member, rel: str, expected: FileRecord | None
    ) -> FileRecord:
        digest = hashlib.sha256()
        remaining = m.size
        while remaining:
            data = tar.stream.read(min(self.chunk_size, remaining))
            if not data:
                raise IntegrityError(f"tar stream truncated in {rel}")
            digest.update(data)
            remaining -= len(data)
            if self.on_progress is not None:
                self.on_progress(len(data))
        sha = digest.hexdigest()
        if expected is not None and expected.sha256 is not None and expected.sha256 != sha:
            raise IntegrityError(
                f"{rel}: SHA-256 {sha} does not match the manifest's {expected.sha256}"
            )
        padding = -m.size % BLOCK
        if padding:
            tar.read_exact(padding, f"the padding of {rel}")
        mtime = expected.mtime if expected is not None else m.mtime
        return FileRecord(rel, "file", m.size, m.mode & 0o777, mtime, sha)

    def _through_link(self, rel: str) -> bool:
        """Whether an ancestor of `rel` is a symbolic link this archive created."""
        parts = rel.split("/")
        return any("/".join(parts[:i]) in self._archive_links for i in range(1, len(parts)))

    def _check_link_target(self, rel: str, link: str) -> None:
        if not link or "\x00" in link:
            raise IntegrityError(f"symbolic link {rel} has an invalid target")
        if link.startswith("/"):
            inside = posixpath.normpath(link)
            if inside == self._dest_real or inside.startswith(self._dest_real + "/"):
                return
        else:
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
            if joined != ".." and not joined.startswith("../"):
                return
        raise IntegrityError(f"symbolic link {rel} -> {link} points outside the destination")

    def _prepare_slot(self, target: str, rel: str) -> None:
        """Make the parent exist and clear a link left at `target` (a delta restore)."""
        parent = os.path.dirname(target)
        if parent not in self._known_dirs:
            self._make_dirs(parent)
        self._touched_dirs.add(parent)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise IntegrityError(f"refusing to replace directory {target} with {rel}")
        if not stat.S_ISREG(st.st_mode):
            os.unlink(target)
            self._archive_links.discard(rel)

    def _make_dir(self, target: str, rel: str) -> None:
        if target in self._known_dirs:
            return
        try:
            st = os.stat(target)  # follows a link the operator placed (pg_wal elsewhere)
        except FileNotFoundError:
            self._make_dirs(target)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(f"refusing to replace {target} with directory {rel}")
        self._known_dirs.add(target)

    def _make_dirs(self, path: str) -> None:
        """mkdir -p that remembers what it created (for fsync and a single stat per dir)."""
        missing = []
        while path not in self._known_dirs and not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                if not os.path.isdir(d):
                    raise IntegrityError(f"refusing to replace {d} with a directory") from None
            self._touched_dirs.add(os.path.dirname(d))
            self._touched_dirs.add(d)
        self._known_dirs.update(missing)
        self._known_dirs.add(path)

    def _finish_dirs(self) -> None:
        # Modes last (a read-only directory must still receive its files), deepest first.
        for target in sorted(self._dir_meta, key=len, reverse=True):
            mode, mtime = self._dir_meta[target]
            os.chmod(target, mode)
            os.utime(target, (mtime, mtime))
        self._dir_meta.clear()
        if self.fsync:
            for d in sorted(self._touched_dirs):
                try:
                    fd = os.open(d, os.O_RDONLY | _O_DIRECTORY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self._touched_dirs.clear()


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(view):
        written += os.write(fd, view[written:])


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
