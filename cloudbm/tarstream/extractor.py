"""Extracting a tar part: written under a destination and nowhere else, checked as it arrives.

`TarExtractor` reads one part back as a stream and writes it under a destination directory,
refusing anything that could land outside it (absolute names, `..`, escaping links, device
nodes) and verifying each file's size and SHA-256 against what the caller expects, so that a
restore either produces the backed-up files or stops naming the one that differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import BinaryIO

from cloudbm.errors import IntegrityError
from cloudbm.tarstream.headers import BLOCK, REGULAR_TYPES, Member, TarStream
from cloudbm.tarstream.record import FileRecord, archive_path
from cloudbm.writeback import FLUSH_AFTER, start_writeback

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
PENDING_SUFFIX = ".cloudbm-pending"  # a deferred member until the caller puts it in place


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
        tar = TarStream(stream)
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

    def _member(self, tar: TarStream, m: Member) -> FileRecord | None:
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
        if m.type in REGULAR_TYPES:
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

    def _file(self, tar: TarStream, m: Member, rel: str, expected: FileRecord | None) -> FileRecord:
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
        self, tar: TarStream, m: Member, rel: str, expected: FileRecord | None
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
