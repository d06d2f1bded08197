"""Walk a data directory the way PostgreSQL's own base backup does (basebackup.c's exclusions).

`walk` yields the directories and files of PGDATA and of its tablespaces that belong in a base
backup, lazily and in a deterministic order (names sorted per directory, depth first), holding
only the names of the directories on the current path in memory. `global/pg_control` comes last,
after every data file, so that a backup whose last part is present is complete.

Symbolic links (decided here, mirroring pg_basebackup where it has an opinion):

- `pg_tblspc/<oid>` links are never emitted as links. Each tablespace becomes the directory
  `pg_tblspc/<oid>` in the archive namespace, holding only this major version's
  `PG_<major>_<catversion>` directory. The caller records oid -> location and recreates the
  links (or a tablespace_map) on restore.
- `pg_wal` and the excluded-contents directories are emitted as plain directories even when they
  are links to another disk (their contents are not backed up anyway).
- Any other link is followed: a link to a file is backed up as a regular file with the target's
  contents, a link to a directory as a directory with the target's contents (a link back to one
  of its own ancestors is skipped to avoid loops). The restored cluster then needs nothing
  outside PGDATA, which matters when restoring to another host. Dangling links are skipped.

A directory inside PGDATA that is also a tablespace location (a discouraged but legal layout) is
emitted empty, as PostgreSQL does, because its contents travel under `pg_tblspc/<oid>`.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudbm.errors import ConfigError

log = logging.getLogger(__name__)

# Directories whose contents PostgreSQL removes or rebuilds at startup: kept empty for their mode.
EXCLUDED_DIR_CONTENTS = frozenset(
    {
        "pg_stat_tmp",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_subtrans",
    }
)

# Files that must not travel in a backup: server state, leftovers of other backups and signal
# files (a copied standby.signal makes the restored cluster wait forever for a primary).
EXCLUDED_FILES = frozenset(
    {
        "postmaster.pid",
        "postmaster.opts",
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "backup_manifest",
        "recovery.signal",
        "standby.signal",
        "recovery.conf",
        "recovery.done",
        ".DS_Store",
    }
)

PG_CONTROL = "global/pg_control"
_TEMP_PREFIX = "pgsql_tmp"
_RELCACHE_PREFIX = "pg_internal.init"  # also its pg_internal.init.<pid> temporary files
# t<backend>_<relfilenode>[_fork][.segment]: temporary relations, never needed after a restart.
_TEMP_REL = re.compile(r"t\d+_\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?\Z")
# <relfilenode>[_fork][.segment]: a permanent or unlogged relation's file.
_REL_FILE = re.compile(r"(\d+)(?:_(fsm|vm|init))?(?:\.\d+)?\Z")


@dataclass(frozen=True)
class Tablespace:
    oid: int
    name: str | None
    location: str  # the symlink target of pg_tblspc/<oid> (an absolute path in practice)


@dataclass(frozen=True)
class Entry:
    """One member of a base backup: what to call it in the archive and where to read it."""

    path: str  # archive path, relative to PGDATA ('base/1/1259', 'pg_tblspc/16500/PG_15_…/…')
    source: str  # absolute filesystem path to read
    kind: str  # 'file' | 'dir' | 'symlink' (walk never emits 'symlink': see the module doc)
    mode: int  # permission bits
    size: int  # at stat time (0 for directories)
    mtime: float
    link_target: str | None = None


def list_tablespaces(pgdata: Path) -> list[Tablespace]:
    """Tablespaces found in pg_tblspc, by oid; names are left for the caller to fill in.

    In-place tablespaces (real directories in pg_tblspc, PostgreSQL 15+ test setups) are
    listed too, with their own absolute path as location.
    """
    tblspc = Path(os.path.abspath(pgdata)) / "pg_tblspc"
    try:
        names = _sorted_names(os.fspath(tblspc))
    except FileNotFoundError:
        return []
    found: list[Tablespace] = []
    for name in names:
        if not name.isdigit():
            continue
        path = tblspc / name
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                location = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                location = os.fspath(path)
            else:
                continue
        except FileNotFoundError:
            continue  # dropped while we looked
        found.append(Tablespace(int(name), None, location))
    return found


def is_excluded(relpath: str, major: int) -> bool:
    """Whether the name rules leave `relpath` (an archive path) out of a base backup.

    Covers everything `walk` decides from a path alone; the unlogged-relation rule needs the
    sibling `_init` fork and is not covered. Directories whose contents are excluded
    (`pg_wal`, `pg_replslot`, ...) are themselves not excluded, nor are `pg_wal/archive_status`
    and (17+) `pg_wal/summaries`.
    """
    parts = [p for p in relpath.split("/") if p and p != "."]
    if not parts:
        return False
    if any(p.startswith(_TEMP_PREFIX) for p in parts):
        return True
    top, name = parts[0], parts[-1]
    if top in EXCLUDED_DIR_CONTENTS and len(parts) > 1:
        return True
    if top == "pg_wal" and len(parts) > 1:
        kept = parts[1] == "archive_status" or (major >= 17 and parts[1] == "summaries")
        return not (kept and len(parts) == 2)
    if _excluded_name(name):
        return True
    if top == "pg_tblspc" and len(parts) > 2 and not parts[2].startswith(f"PG_{major}_"):
        return True
    in_db_dir = (top == "base" and len(parts) == 3 and parts[1].isdigit()) or (
        top == "pg_tblspc" and len(parts) == 5 and parts[3].isdigit()
    )
    return in_db_dir and _TEMP_REL.match(name) is not None


def walk(
    pgdata: Path,
    *,
    major: int,
    tablespaces: Sequence[Tablespace] | None = None,
    extra_excludes: Sequence[str] = (),
) -> Iterator[Entry]:
    """Yield the entries of a base backup of `pgdata` (see the module doc), pg_control last.

    `tablespaces` defaults to `list_tablespaces(pgdata)` and defines what is backed up under
    pg_tblspc. `extra_excludes` are archive paths (relative to PGDATA) left out entirely,
    contents included. Files that vanish while walking are skipped; sockets, FIFOs and
    devices are skipped.
    """
    if major < 10:
        raise ConfigError(f"PostgreSQL {major} is not supported: base backups need 10 or later")
    root = os.path.abspath(pgdata)
    if not os.path.isdir(root):
        raise ConfigError(f"{root} is not a directory", hint="set pgdata to the data directory")
    spaces = list_tablespaces(Path(root)) if tablespaces is None else list(tablespaces)
    excludes = {_normalise_exclude(root, e) for e in extra_excludes}
    # Validated eagerly above; the walk itself is lazy.
    return _Walker(root, major, spaces, excludes).run()


def _normalise_exclude(root: str, path: str) -> str:
    if os.path.isabs(path):
        # Both resolved: PGDATA is often reached through a link (/var/lib/pgsql -> /data).
        rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
        if rel == ".." or rel.startswith("../"):
            raise ConfigError(f"exclude {path!r} is outside the data directory {root}")
        path = rel
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise ConfigError(f"exclude {path!r} is not a path inside the data directory")
    return "/".join(parts)


def _excluded_name(name: str) -> bool:
    return (
        name in EXCLUDED_FILES or name.startswith(_TEMP_PREFIX) or name.startswith(_RELCACHE_PREFIX)
    )


def _sorted_names(path: str) -> list[str]:
    # Only the names are kept (not DirEntry objects): a database directory can hold millions.
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it)
    except PermissionError:
        raise ConfigError(
            f"cannot read directory {path}: permission denied",
            hint="run cloudbm as the database owner",
        ) from None


def _unlogged_relfilenodes(names: Sequence[str]) -> frozenset[str]:
    """Relfilenodes with an `_init` fork: their other forks are reset from it at startup."""
    found = set()
    for name in names:
        m = _REL_FILE.match(name)
        if m is not None and m.group(2) == "init":
            found.add(m.group(1))
    return frozenset(found)


class _Walker:
    def __init__(self, root: str, major: int, spaces: list[Tablespace], excludes: set[str]) -> None:
        self.root = root
        self.major = major
        self.spaces = sorted(spaces, key=lambda t: t.oid)
        self.excludes = excludes
        # Directories on the current path, by identity: a followed link to one is a loop.
        self.ancestors: set[tuple[int, int]] = set()
        self.space_dirs: set[tuple[int, int]] = set()
        for ts in self.spaces:
            try:
                st = os.stat(self._location(ts))
            except OSError:
                continue
            self.space_dirs.add((st.st_dev, st.st_ino))

    def run(self) -> Iterator[Entry]:
        st = os.stat(self.root)
        self.ancestors.add((st.st_dev, st.st_ino))
        yield from self._walk_dir(self.root, "")
        control = os.path.join(self.root, PG_CONTROL)
        try:
            st = os.stat(control)
        except FileNotFoundError:
            raise ConfigError(
                f"{control} is missing: {self.root} is not a PostgreSQL data directory"
            ) from None
        yield _entry(PG_CONTROL, control, "file", st)

    def _location(self, ts: Tablespace) -> str:
        # os.path.join keeps an absolute location as is and anchors a relative one at the link.
        return os.path.join(self.root, "pg_tblspc", ts.location)

    def _walk_dir(self, fs_dir: str, rel_dir: str) -> Iterator[Entry]:
        """Entries below one directory, depth first, names sorted."""
        try:
            names = _sorted_names(fs_dir)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while we walked (a dropped database): WAL replay deals with it
        at_root = rel_dir == ""
        in_db_dir = _is_db_dir(rel_dir)
        unlogged = _unlogged_relfilenodes(names) if in_db_dir else frozenset()
        for name in names:
            if _excluded_name(name):
                continue
            if in_db_dir:
                if _TEMP_REL.match(name):
                    continue
                m = _REL_FILE.match(name)
                if m is not None and m.group(2) != "init" and m.group(1) in unlogged:
                    continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in self.excludes or rel == PG_CONTROL:
                continue
            path = os.path.join(fs_dir, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if at_root and (name in EXCLUDED_DIR_CONTENTS or name == "pg_wal"):
                yield from self._contents_excluded_dir(name, path, st)
                continue
            if at_root and name == "pg_tblspc":
                yield _entry(rel, path, "dir", st)
                for ts in self.spaces:
                    yield from self._walk_tablespace(ts)
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    st = os.stat(path)
                except (FileNotFoundError, NotADirectoryError):
                    log.warning("skipping dangling symbolic link %s", path)
                    continue
                if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in self.ancestors:
                    log.warning("skipping %s: it links to one of its own parents", path)
                    continue
            if stat.S_ISDIR(st.st_mode):
                yield _entry(rel, path, "dir", st)
                if (st.st_dev, st.st_ino) in self.space_dirs:
                    continue  # a tablespace inside PGDATA: backed up under pg_tblspc
                yield from self._descend(path, rel, st)
            elif stat.S_ISREG(st.st_mode):
                yield _entry(rel, path, "file", st)
            # sockets, FIFOs and devices have no place in a backup

    def _descend(self, path: str, rel: str, st: os.stat_result) -> Iterator[Entry]:
        key = (st.st_dev, st.st_ino)
        self.ancestors.add(key)
        try:
            yield from self._walk_dir(path, rel)
        finally:
            self.ancestors.discard(key)

    def _contents_excluded_dir(self, name: str, path: str, lst: os.stat_result) -> Iterator[Entry]:
        # Emitted as a directory even when it is a link (pg_wal on another disk): the restore
        # creates a plain directory unless told otherwise.
        try:
            st = os.stat(path)
            top = _entry(name, path, "dir", st)
        except OSError:
            # A dangling link: the directory still has to exist after a restore.
            mode = 0o700 if stat.S_ISLNK(lst.st_mode) else stat.S_IMODE(lst.st_mode)
            top = Entry(name, path, "dir", mode, 0, lst.st_mtime)
        yield top
        if name != "pg_wal":
            return
        kept = ["archive_status"] + (["summaries"] if self.major >= 17 else [])
        for sub in kept:
            sub_path = os.path.join(path, sub)
            try:
                entry = _entry(f"pg_wal/{sub}", sub_path, "dir", os.stat(sub_path))
            except OSError:  # not there (yet): PostgreSQL reuses pg_wal's mode, so do we
                entry = Entry(f"pg_wal/{sub}", sub_path, "dir", top.mode, 0, top.mtime)
            yield entry

    def _walk_tablespace(self, ts: Tablespace) -> Iterator[Entry]:
        location = self._location(ts)
        rel = f"pg_tblspc/{ts.oid}"
        try:
            st = os.stat(location)
            names = _sorted_names(location)
        except (FileNotFoundError, NotADirectoryError):
            # PostgreSQL tolerates this too: the tablespace was dropped during the backup.
            log.warning("tablespace %s (%s) is gone; skipping it", ts.oid, location)
            return
        prefix = f"PG_{self.major}_"
        versions = [n for n in names if n.startswith(prefix)]
        if len(versions) > 1:
            raise ConfigError(
                f"tablespace {ts.oid} at {location} holds several directories for "
                f"PostgreSQL {self.major}: {', '.join(versions)}"
            )
        yield _entry(rel, location, "dir", st)
        if not versions:
            log.warning("tablespace %s (%s) has no %s* directory", ts.oid, location, prefix)
            return
        vpath = os.path.join(location, versions[0])
        try:
            vst = os.stat(vpath)
        except FileNotFoundError:
            return
        vrel = f"{rel}/{versions[0]}"
        yield _entry(vrel, vpath, "dir", vst)
        yield from self._descend(vpath, vrel, vst)


def _is_db_dir(rel_dir: str) -> bool:
    """base/<oid> or pg_tblspc/<spc>/PG_<ver>/<oid>: where relation files live."""
    parts = rel_dir.split("/")
    if len(parts) == 2 and parts[0] == "base":
        return parts[1].isdigit()
    if len(parts) == 4 and parts[0] == "pg_tblspc":
        return parts[3].isdigit()
    return False


def _entry(rel: str, path: str, kind: str, st: os.stat_result) -> Entry:
    size = st.st_size if kind == "file" else 0
    return Entry(rel, path, kind, stat.S_IMODE(st.st_mode), size, st.st_mtime)
