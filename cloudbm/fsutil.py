"""Files written so that a crash never leaves half of one, and private ones: stdlib only.

Imported by the fast path of restore_command (cloudbm.fastpath), so at its top it imports only
modules the interpreter has loaded before any of ours (os, time), and it leaves out
`from __future__ import annotations`, a module import of its own: every annotation here is
valid at run time.
"""

import os
import time

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make the entries of directory `path` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: StrPath) -> None:
    """Make the content of the file at `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: StrPath) -> str:
    """Create `path` (and parents) for this user only; tighten it if it is ours but looser.
    Returns it as a string."""
    path = os.fspath(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def open_private(path: StrPath) -> int:
    """A new, truncated, write-only file descriptor for `path`, mode 0600 whatever the umask
    (a file left from before keeps its old mode through O_TRUNC: it is set again)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: StrPath, data: bytes) -> None:
    """Replace `path` with `data` atomically (a reader sees the old file or the whole new
    one), mode 0600. Not fsynced: for state that is only ever a shortcut."""
    head, tail = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.tmp")  # hidden: listings skip it
    fd = open_private(tmp)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def touch_private(path: StrPath, when_ns: int | None = None) -> None:
    """Create `path` (0600) or keep it, and set its times to `when_ns` (time.time_ns(), now by
    default): a caller's own clock at nanosecond precision, where the file system's coarser
    timestamps could order two events wrongly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    now = time.time_ns() if when_ns is None else when_ns
    os.utime(path, ns=(now, now))


def _temporary(dest: str) -> str:
    head, tail = os.path.split(dest)
    return os.path.join(head, f".{tail}.cloudbm-tmp")


def _discard(path: str) -> None:
    import contextlib  # only on a failure: the fast path never gets here

    with contextlib.suppress(OSError):
        os.unlink(path)


def write_durably(dest: StrPath, data: bytes) -> None:
    """A temporary file beside `dest` (0600), fsync, rename, fsync the directory: `dest` is
    never partial, and once this returns it survives a crash."""
    dest = os.fspath(dest)
    tmp = _temporary(dest)
    try:
        fd = open_private(tmp)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(os.path.dirname(dest) or ".")


def move_durably(src: StrPath, dest: StrPath) -> None:
    """Rename `src` to `dest` and make both the file and the rename durable; across file
    systems, copy to a temporary file beside `dest` first, then remove `src`."""
    src, dest = os.fspath(src), os.fspath(dest)
    try:
        os.replace(src, dest)
        fsync_file(dest)
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:
            raise
        import shutil

        tmp = _temporary(dest)
        try:
            with open(src, "rb") as fin, open(open_private(tmp), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1024 * 1024)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
        except BaseException:
            _discard(tmp)
            raise
        os.unlink(src)
    fsync_dir(os.path.dirname(dest) or ".")
