"""`file://` backend: a local or NFS directory, the embedded default.

Writes are atomic and durable: a temporary file beside the target, fsync, then link()/rename(),
then fsync of the directory. put-if-absent uses link(), which fails if the name exists, so two
writers racing for one key cannot both win. Object metadata lives in a sidecar file
`<key>.cbmeta` (JSON) written before the object itself, so a visible object always has it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cloudbm.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
    TransientStorageError,
)
from cloudbm.fsutil import fsync_dir
from cloudbm.storage.base import Closing, ObjectInfo, expected_end

META_SUFFIX = ".cbmeta"
TMP_PREFIX = ".cbtmp-"
COPY_CHUNK = 1024 * 1024


class _FileReader(Closing):
    """The bytes [start, stop) of an open file, `stop` fixed by the size it had when opened:
    a file that ends sooner (truncated in place, a short NFS read) is an error, not a short
    object."""

    def __init__(self, fh: BinaryIO, info: ObjectInfo, start: int, stop: int, where: str) -> None:
        self._fh = fh
        self._pos = start
        self._stop = stop
        self._where = where
        self.info = info

    def read(self, size: int = -1) -> bytes:
        remaining = self._stop - self._pos
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size == 0:
            return b""
        try:
            data = self._fh.read(size)  # buffered: short only at the end of the file
        except OSError as exc:
            raise StorageError(f"read {self._where}: {exc.strerror or exc}") from exc
        if len(data) < size:
            raise TransientStorageError(
                f"read {self._where}: the file ended at byte {self._pos + len(data)} of "
                f"{self._stop}",
                hint="it was truncated while being read",
            )
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class LocalStorage:
    """Objects are files below `root`; keys map to relative paths."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid object key {key!r}")
        if parts[-1].endswith(META_SUFFIX) or parts[-1].startswith(TMP_PREFIX):
            raise StorageError(f"object key {key!r} uses a name reserved by the file backend")
        return self.root.joinpath(*parts)

    def _error(self, op: str, key: str, exc: OSError) -> StorageError:
        where = f"{self.root}/{key}" if key else str(self.root)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StoragePermissionError(
                f"{op} {where}: {exc.strerror}",
                hint="check the directory's owner and mode (archive_command runs as postgres)",
            )
        if exc.errno == errno.ENOSPC:
            return StorageError(f"{op} {where}: no space left on device")
        return StorageError(f"{op} {where}: {exc.strerror or exc}")

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailableError(
                f"repository directory {self.root} does not exist",
                hint="create it (owned by the postgres user) or fix 'repository'",
            )

    def _write_temp(self, directory: Path, data: bytes | BinaryIO) -> Path:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                if isinstance(data, bytes | bytearray | memoryview):
                    fh.write(data)
                else:
                    while chunk := data.read(COPY_CHUNK):
                        fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def _read_meta(self, path: Path) -> dict[str, str]:
        try:
            raw = (path.parent / (path.name + META_SUFFIX)).read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:  # e.g. a sidecar another user wrote 0600: say which file
            key = path.relative_to(self.root).as_posix() + META_SUFFIX
            raise self._error("read", key, exc) from exc
        try:
            meta = json.loads(raw)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}

    def _info(self, key: str, path: Path, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            metadata=self._read_meta(path),
            etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}",
            modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    # -- protocol --------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        """Atomically and durably store `data` under `key`."""
        path = self._path(key)
        self._check_root()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if if_absent and path.exists():
                raise ObjectExistsError(f"object {key} already exists in {self.url}")
            tmp = self._write_temp(path.parent, data)
            meta_tmp = None
            try:
                meta_path = path.parent / (path.name + META_SUFFIX)
                if metadata:
                    meta_tmp = self._write_temp(
                        path.parent, json.dumps(dict(metadata), sort_keys=True).encode()
                    )
                if if_absent:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise ObjectExistsError(
                            f"object {key} already exists in {self.url}"
                        ) from None
                    os.unlink(tmp)
                    # The sidecar follows the winning link, so a losing writer never leaves
                    # metadata describing bytes that are not the object's. Readers that find
                    # no sidecar in that short window fall back to decoding the object.
                    if meta_tmp is not None:
                        os.replace(meta_tmp, meta_path)
                else:
                    if meta_tmp is not None:
                        os.replace(meta_tmp, meta_path)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(meta_path)
                    os.replace(tmp, path)
            except BaseException:
                for leftover in (tmp, meta_tmp):
                    if leftover is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(leftover)
                raise
            fsync_dir(path.parent)
        except OSError as exc:
            raise self._error("write", key, exc) from exc

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> _FileReader:
        """Open `key` (or the byte range [start, end)) for streaming."""
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the reader owns and closes it
        except FileNotFoundError:
            self._check_root()
            raise ObjectNotFoundError(f"object {key} not found in {self.url}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from exc
        try:
            info = self._info(key, path, os.fstat(fh.fileno()))
            if start:
                fh.seek(start)
        except OSError as exc:
            fh.close()
            raise self._error("read", key, exc) from exc
        stop = expected_end(info.size, start, end)
        return _FileReader(fh, info, start, stop, f"{self.root}/{key}")

    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of `key`."""
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._check_root()
            raise ObjectNotFoundError(f"object {key} not found in {self.url}") from None
        except OSError as exc:
            raise self._error("stat", key, exc) from exc
        return self._info(key, path, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, one directory at a time."""
        return self.list_after(prefix, "")

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Like list(prefix), from the first key sorting after `after`."""
        self._check_root()
        # Walk only the directory the prefix can live in, not the whole repository.
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start_dir = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        yield from self._walk(start_dir, base_key, prefix, after)

    def _walk(self, directory: Path, dir_key: str, prefix: str, after: str) -> Iterator[ObjectInfo]:
        try:
            # Byte order of full keys, as object stores list them: a directory 'b' sorts as
            # 'b/', after siblings like 'b-x' and 'b.txt'.
            entries = sorted(
                os.scandir(directory),
                key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name,
            )
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("list", dir_key, exc) from exc
        for entry in entries:
            name = entry.name
            if name.startswith(TMP_PREFIX) or name.endswith(META_SUFFIX):
                continue
            key = f"{dir_key}/{name}" if dir_key else name
            if entry.is_dir(follow_symlinks=False):
                inside = key + "/"
                if after > inside and not after.startswith(inside):
                    continue  # every key below sorts before `after`
                if key.startswith(prefix) or prefix.startswith(inside):
                    yield from self._walk(Path(entry.path), key, prefix, after)
            elif key.startswith(prefix) and key > after:
                try:
                    yield self._info(key, Path(entry.path), entry.stat())
                except FileNotFoundError:
                    continue  # deleted while listing

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects (and their metadata); missing ones are fine."""
        touched: set[Path] = set()
        for key in keys:
            path = self._path(key)
            for victim in (path, path.parent / (path.name + META_SUFFIX)):
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise self._error("delete", key, exc) from exc
            touched.add(path.parent)
        for directory in touched:
            with contextlib.suppress(OSError):
                fsync_dir(directory)

    def close(self) -> None:
        """Nothing to release."""
