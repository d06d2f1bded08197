"""Walking PGDATA for a base backup: PostgreSQL's exclusion rules, tablespaces, pg_control last."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from cloudbm.errors import ConfigError
from cloudbm.pg import datadir
from cloudbm.pg.datadir import Entry, Tablespace, is_excluded, list_tablespaces, walk
from cloudbm.tarstream import TarExtractor, TarPartReader, plan_parts

FILES = [
    "PG_VERSION",
    "postgresql.conf",
    "postgresql.auto.conf",
    "postgresql.auto.conf.tmp",
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "backup_manifest",
    "tablespace_map",
    "standby.signal",
    "recovery.signal",
    "current_logfiles",
    "current_logfiles.tmp",
    "global/1262",
    "global/pg_filenode.map",
    "global/pg_internal.init",
    "global/pg_control",
    "base/1/1259",
    "base/1/PG_VERSION",
    "base/1/pg_internal.init",
    "base/1/pg_internal.init.4242",
    "base/5/16384",
    "base/5/16384.1",
    "base/5/16384_fsm",
    "base/5/16384_vm",
    "base/5/16390_init",  # unlogged relation: only its init fork is backed up
    "base/5/16390",
    "base/5/16390.1",
    "base/5/16390_fsm",
    "base/5/16390_vm",
    "base/5/t3_16400",  # temporary relation
    "base/5/t3_16400_fsm",
    "base/5/t3_16400.1",
    "base/5/t3x_1",  # not a temp relation name
    "base/pgsql_tmp/pgsql_tmp1234.0",
    "pg_wal/000000010000000000000001",
    "pg_wal/000000010000000000000002",
    "pg_wal/00000002.history",
    "pg_wal/archive_status/000000010000000000000001.ready",
    "pg_replslot/slot/state",
    "pg_stat_tmp/global.stat",
    "pg_subtrans/0000",
    "pg_notify/0000",
    "pg_serial/0000",
    "pg_snapshots/00000003-00000002-1",
    "pg_dynshmem/mmap.1",
    "pg_stat/pgstat.stat",
    "pg_xact/0000",
    "spool/queued",
    "pgsql_tmp_stray",
]
DIRS = ["pg_tblspc", "pg_logical/snapshots", "pg_commit_ts"]

TS_FILES = [
    "PG_15_202209061/16384/16385",
    "PG_15_202209061/16384/16385_vm",
    "PG_15_202209061/16384/16386_init",
    "PG_15_202209061/16384/16386",
    "PG_15_202209061/16384/t4_16999",
    "PG_15_202209061/pgsql_tmp/pgsql_tmp99.1",
    "PG_14_202107181/16384/16385",  # left behind by pg_upgrade: another version's files
]

GOLDEN = [
    "PG_VERSION",
    "base",
    "base/1",
    "base/1/1259",
    "base/1/PG_VERSION",
    "base/5",
    "base/5/16384",
    "base/5/16384.1",
    "base/5/16384_fsm",
    "base/5/16384_vm",
    "base/5/16390_init",
    "base/5/t3x_1",
    "current_logfiles",
    "global",
    "global/1262",
    "global/pg_filenode.map",
    "linked_dir",
    "linked_dir/inner",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat/pgstat.stat",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_tblspc/16500",
    "pg_tblspc/16500/PG_15_202209061",
    "pg_tblspc/16500/PG_15_202209061/16384",
    "pg_tblspc/16500/PG_15_202209061/16384/16385",
    "pg_tblspc/16500/PG_15_202209061/16384/16385_vm",
    "pg_tblspc/16500/PG_15_202209061/16384/16386_init",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_xact",
    "pg_xact/0000",
    "postgresql.auto.conf",
    "postgresql.conf",
    "server.crt",
    "global/pg_control",
]


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture()
def cluster(tmp_path: Path) -> tuple[Path, Path]:
    pgdata = tmp_path / "pgdata"
    for name in FILES:
        _write(pgdata / name, name.encode())
    for name in DIRS:
        (pgdata / name).mkdir(parents=True, exist_ok=True)
    (pgdata / "pg_replslot").chmod(0o750)
    ts = tmp_path / "ts"
    for name in TS_FILES:
        _write(ts / name, name.encode())
    (pgdata / "pg_tblspc" / "16500").symlink_to(ts)
    # Links elsewhere are followed; special files are skipped.
    _write(tmp_path / "cert.pem", b"certificate")
    (pgdata / "server.crt").symlink_to(tmp_path / "cert.pem")
    _write(tmp_path / "elsewhere" / "inner", b"inner")
    (pgdata / "linked_dir").symlink_to(tmp_path / "elsewhere")
    (pgdata / "linked_dir_loop").symlink_to(pgdata)
    (pgdata / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(pgdata / "a_fifo")
    return pgdata, ts


def _paths(entries: list[Entry]) -> list[str]:
    return [e.path for e in entries]


def test_walk_yields_exactly_what_postgres_backs_up(cluster: tuple[Path, Path]) -> None:
    pgdata, ts = cluster
    entries = list(walk(pgdata, major=15, extra_excludes=["spool"]))
    # linked_dir_loop points at PGDATA itself: skipped rather than walked forever.
    assert _paths(entries) == GOLDEN
    by_path = {e.path: e for e in entries}
    assert entries[-1].path == "global/pg_control"
    assert by_path["pg_replslot"].kind == "dir"
    assert by_path["pg_replslot"].mode == 0o750
    assert by_path["pg_tblspc/16500"].source == str(ts)
    assert by_path["pg_tblspc/16500"].kind == "dir"
    assert by_path["server.crt"].kind == "file"
    assert by_path["server.crt"].size == len(b"certificate")
    assert by_path["base/5/16384"].size == len(b"base/5/16384")
    assert by_path["base/5/16384"].source == str(pgdata / "base/5/16384")
    assert all(e.kind in ("file", "dir") for e in entries)
    assert all(e.size == 0 for e in entries if e.kind == "dir")


def test_excluded_directories_are_kept_empty(cluster: tuple[Path, Path]) -> None:
    pgdata, _ = cluster
    paths = _paths(list(walk(pgdata, major=15, extra_excludes=["spool"])))
    for d in datadir.EXCLUDED_DIR_CONTENTS | {"pg_wal"}:
        assert d in paths
        below = [p for p in paths if p.startswith(d + "/")]
        assert below == (["pg_wal/archive_status"] if d == "pg_wal" else [])


def test_pg_wal_summaries_kept_from_17(cluster: tuple[Path, Path]) -> None:
    pgdata, ts = cluster
    (ts / "PG_17_202406281").mkdir()
    (ts / "PG_15_202209061").rename(ts / "PG_15_moved")  # only the 17 dir is this version's
    paths = _paths(list(walk(pgdata, major=17, extra_excludes=["spool"])))
    assert [p for p in paths if p.startswith("pg_wal")] == [
        "pg_wal",
        "pg_wal/archive_status",
        "pg_wal/summaries",
    ]
    assert [p for p in paths if p.startswith("pg_tblspc/")] == [
        "pg_tblspc/16500",
        "pg_tblspc/16500/PG_17_202406281",
    ]


def test_symlinked_pg_wal_is_a_directory_not_followed(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    _write(pgdata / "global" / "pg_control")
    _write(tmp_path / "waldisk" / "000000010000000000000001")
    (tmp_path / "waldisk").chmod(0o700)
    (pgdata / "pg_wal").symlink_to(tmp_path / "waldisk")
    entries = list(walk(pgdata, major=15))
    assert [(e.path, e.kind, e.mode) for e in entries] == [
        ("global", "dir", entries[0].mode),
        ("pg_wal", "dir", 0o700),
        ("pg_wal/archive_status", "dir", 0o700),  # absent on disk: takes pg_wal's mode
        ("global/pg_control", "file", 0o644 & ~_umask()),
    ]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_and_directories_vanishing_mid_walk_are_skipped(
    cluster: tuple[Path, Path],
) -> None:
    pgdata, _ = cluster
    seen = []
    for entry in walk(pgdata, major=15, extra_excludes=["spool"]):
        seen.append(entry.path)
        if entry.path == "base/5/16384":
            # Already listed by scandir, gone before its lstat.
            (pgdata / "base/5/16384.1").unlink()
        if entry.path == "base/1":
            # A database dropped between its directory entry and its listing.
            for child in (pgdata / "base/1").iterdir():
                child.unlink()
            (pgdata / "base/1").rmdir()
    expected = [p for p in GOLDEN if not p.startswith("base/1/") and p != "base/5/16384.1"]
    assert seen == expected


def test_walk_is_lazy(cluster: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pgdata, _ = cluster
    listed: list[str] = []
    real = datadir._sorted_names

    def spy(path: str) -> list[str]:
        listed.append(path)
        return real(path)

    monkeypatch.setattr(datadir, "_sorted_names", spy)
    it = walk(pgdata, major=15)
    assert next(it).path == "PG_VERSION"
    # Only the root and pg_tblspc (to find the tablespaces) have been listed so far.
    assert listed == [str(pgdata / "pg_tblspc"), str(pgdata)]


def test_list_tablespaces(cluster: tuple[Path, Path]) -> None:
    pgdata, ts = cluster
    (pgdata / "pg_tblspc" / "16600").mkdir()  # in-place tablespace (PG 15+ tests)
    (pgdata / "pg_tblspc" / "not-an-oid").mkdir()
    assert list_tablespaces(pgdata) == [
        Tablespace(16500, None, str(ts)),
        Tablespace(16600, None, str(pgdata / "pg_tblspc" / "16600")),
    ]


def test_explicit_tablespace_list_drives_pg_tblspc(cluster: tuple[Path, Path]) -> None:
    pgdata, _ = cluster
    paths = _paths(list(walk(pgdata, major=15, tablespaces=[])))
    assert [p for p in paths if p.startswith("pg_tblspc")] == ["pg_tblspc"]


def test_tablespace_inside_pgdata_is_not_walked_twice(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    _write(pgdata / "global" / "pg_control")
    _write(pgdata / "inside_ts" / "PG_15_202209061" / "5" / "16385")
    (pgdata / "pg_tblspc").mkdir()
    (pgdata / "pg_tblspc" / "17000").symlink_to(pgdata / "inside_ts")
    paths = _paths(list(walk(pgdata, major=15)))
    assert paths == [
        "global",
        "inside_ts",
        "pg_tblspc",
        "pg_tblspc/17000",
        "pg_tblspc/17000/PG_15_202209061",
        "pg_tblspc/17000/PG_15_202209061/5",
        "pg_tblspc/17000/PG_15_202209061/5/16385",
        "global/pg_control",
    ]


def test_absolute_excludes_through_a_linked_pgdata(cluster: tuple[Path, Path]) -> None:
    pgdata, _ = cluster
    alias = pgdata.parent / "alias"
    alias.symlink_to(pgdata)
    paths = _paths(list(walk(alias, major=15, extra_excludes=[str(pgdata / "spool")])))
    assert paths == GOLDEN


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        walk(tmp_path, major=9)
    with pytest.raises(ConfigError):
        walk(tmp_path / "absent", major=15)
    with pytest.raises(ConfigError):
        walk(tmp_path, major=15, extra_excludes=["../etc"])
    with pytest.raises(ConfigError, match="pg_control"):
        list(walk(tmp_path, major=15))


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("base/5/16384", False),
        ("base/5/t3_16400", True),
        ("base/5/t3_16400_vm.2", True),
        ("global/t3_16400", False),  # temp relations live in database directories only
        ("pg_wal", False),
        ("pg_wal/000000010000000000000001", True),
        ("pg_wal/archive_status", False),
        ("pg_wal/archive_status/000000010000000000000001.ready", True),
        ("pg_wal/summaries", True),  # kept from 17 only
        ("pg_replslot", False),
        ("pg_replslot/slot/state", True),
        ("postmaster.pid", True),
        ("standby.signal", True),
        ("global/pg_internal.init", True),
        ("base/pgsql_tmp/pgsql_tmp1.0", True),
        ("pg_tblspc/16500/PG_15_202209061/16384/t1_2", True),
        ("pg_tblspc/16500/PG_15_202209061/16384/16385", False),
        ("pg_tblspc/16500/PG_14_202107181/16384/16385", True),
        ("global/pg_control", False),
    ],
)
def test_is_excluded(path: str, excluded: bool) -> None:
    assert is_excluded(path, 15) is excluded


def test_is_excluded_agrees_with_walk(cluster: tuple[Path, Path]) -> None:
    pgdata, _ = cluster
    for entry in walk(pgdata, major=15):
        assert not is_excluded(entry.path, 15), entry.path


def test_backup_round_trip_through_tar_parts(cluster: tuple[Path, Path], tmp_path: Path) -> None:
    pgdata, ts = cluster
    entries = list(walk(pgdata, major=15, extra_excludes=["spool"]))
    parts = list(plan_parts(entries, target_size=4096))
    assert len(parts) > 1
    assert parts[-1][-1].path == "global/pg_control"
    dest = tmp_path / "restore"
    ts_dest = tmp_path / "ts_restore"

    def path_map(rel: str) -> Path:
        prefix = "pg_tblspc/16500"
        if rel == prefix or rel.startswith(prefix + "/"):
            return ts_dest / rel[len(prefix) + 1 :]
        return dest / rel

    for part in parts:
        reader = TarPartReader(part)
        extractor = TarExtractor(dest, path_map=path_map, fsync=False)
        extractor.extract(io.BytesIO(reader.read()))
    assert (dest / "base/5/16384").read_bytes() == b"base/5/16384"
    assert (dest / "server.crt").read_bytes() == b"certificate"
    assert (dest / "global/pg_control").read_bytes() == b"global/pg_control"
    assert not (dest / "base/5/16390").exists()
    assert sorted(os.listdir(dest / "pg_wal")) == ["archive_status"]
    assert (ts_dest / "PG_15_202209061/16384/16385").read_bytes() == (
        ts / "PG_15_202209061/16384/16385"
    ).read_bytes()
    assert not (ts_dest / "PG_14_202107181").exists()
