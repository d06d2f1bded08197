"""Extracting tar parts: a refusing extractor, checks against the manifest, relocation, delta
restores and deferred members."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from cloudbm.errors import IntegrityError
from cloudbm.tarstream import FileRecord, TarPartReader, pending_path
from tests.unit.tar_helpers import extract, sha


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(
    name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = size
    info.linkname = link
    info.mode = 0o600
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(_info("/etc/evil", size=1), b"x")], "absolute"),
        ([(_info("../evil", size=1), b"x")], r"'\.\.'"),
        ([(_info("a/../../evil", size=1), b"x")], r"'\.\.'"),
        ([(_info("l", tarfile.SYMTYPE, link="/etc"), None)], "outside"),
        ([(_info("a/l", tarfile.SYMTYPE, link="../../x"), None)], "outside"),
        ([(_info("h", tarfile.LNKTYPE, link="../outside"), None)], r"'\.\.'"),
        ([(_info("h", tarfile.LNKTYPE, link="/etc/passwd"), None)], "absolute"),
        ([(_info("dev", tarfile.CHRTYPE), None)], "character device"),
        ([(_info("blk", tarfile.BLKTYPE), None)], "block device"),
        ([(_info("fifo", tarfile.FIFOTYPE), None)], "FIFO"),
        (
            [
                (_info("sub", tarfile.DIRTYPE), None),
                (_info("l", tarfile.SYMTYPE, link="sub"), None),
                (_info("l/x", size=1), b"x"),
            ],
            "beyond a symbolic link",
        ),
    ],
)
def test_extractor_refuses_unsafe_members(tmp_path: Path, members, message: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=message):
        extract(dest, _tar(*members))
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "outside").exists()


def test_extractor_allows_links_inside(tmp_path: Path) -> None:
    data = _tar(
        (_info("dir", tarfile.DIRTYPE), None),
        (_info("dir/f", size=2), b"hi"),
        (_info("dir/rel", tarfile.SYMTYPE, link="f"), None),
        (_info("up", tarfile.SYMTYPE, link="dir/../dir/f"), None),
        (_info("hard", tarfile.LNKTYPE, link="dir/f"), None),
    )
    records = extract(tmp_path, data)
    assert [r.kind for r in records] == ["dir", "file", "symlink", "symlink", "hardlink"]
    assert (tmp_path / "up").read_bytes() == b"hi"
    assert os.stat(tmp_path / "hard").st_ino == os.stat(tmp_path / "dir/f").st_ino


def test_mismatch_against_manifest_names_the_file(tmp_path: Path) -> None:
    data = _tar((_info("base/1/1259", size=4), b"data"))
    good = FileRecord("base/1/1259", "file", 4, 0o600, 5.0, sha(b"data"))
    wrong_sha = FileRecord("base/1/1259", "file", 4, 0o600, 5.0, sha(b"DATA"))
    wrong_size = FileRecord("base/1/1259", "file", 5, 0o600, 5.0, sha(b"data"))
    with pytest.raises(IntegrityError, match=r"base/1/1259.*SHA-256"):
        extract(tmp_path / "a", data, expected={"base/1/1259": wrong_sha})
    assert not (tmp_path / "a/base/1/1259").exists()  # no bad file left to pass for good
    with pytest.raises(IntegrityError, match=r"base/1/1259.*size"):
        extract(tmp_path / "b", data, expected={"base/1/1259": wrong_size})
    extract(tmp_path / "c", data, expected={"base/1/1259": good})
    assert (tmp_path / "c/base/1/1259").stat().st_mtime == 5.0
    with pytest.raises(IntegrityError, match="not in the backup manifest"):
        extract(tmp_path / "d", data, expected={}, strict=True)


def test_truncated_or_garbled_streams_are_refused(tmp_path: Path) -> None:
    data = _tar((_info("f", size=2000), os.urandom(2000)))
    for cut in (100, 700, 2000):
        with pytest.raises(IntegrityError, match=r"truncated|end-of-archive"):
            extract(tmp_path / f"cut{cut}", data[:cut])
    garbled = bytearray(data)
    garbled[10] ^= 0xFF  # breaks the header checksum
    with pytest.raises(IntegrityError, match="corrupt tar header"):
        extract(tmp_path / "garbled", bytes(garbled))
    trailing = TarPartReader([]).read() + b"junk"
    with pytest.raises(IntegrityError, match="after the tar end"):
        extract(tmp_path / "trailing", trailing)


def test_path_map_relocates(tmp_path: Path) -> None:
    data = _tar(
        (_info("pg_tblspc/16500", tarfile.DIRTYPE), None),
        (_info("pg_tblspc/16500/PG_15_1/5/16385", size=1), b"t"),
        (_info("base/5/1", size=1), b"b"),
    )

    def path_map(rel: str) -> Path:
        if rel.startswith("pg_tblspc/16500"):
            return tmp_path / "ts" / rel.removeprefix("pg_tblspc/16500").lstrip("/")
        return tmp_path / "pgdata" / rel

    extract(tmp_path / "pgdata", data, path_map=path_map)
    assert (tmp_path / "ts/PG_15_1/5/16385").read_bytes() == b"t"
    assert (tmp_path / "pgdata/base/5/1").read_bytes() == b"b"
    assert not (tmp_path / "pgdata/pg_tblspc").exists()


def test_delta_restore_replaces_files_and_stray_links(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/old").write_bytes(b"previous contents, longer")
    (tmp_path / "target").write_bytes(b"must not change")
    (tmp_path / "dest/link").symlink_to(tmp_path / "target")
    data = _tar((_info("old", size=3), b"new"), (_info("link", size=3), b"new"))
    extract(tmp_path / "dest", data)
    assert (tmp_path / "dest/old").read_bytes() == b"new"
    assert not (tmp_path / "dest/link").is_symlink()
    assert (tmp_path / "target").read_bytes() == b"must not change"


def test_deferred_member_is_written_under_its_pending_name_only(tmp_path: Path) -> None:
    """A restore defers global/pg_control: written and checked like any file, but under
    pending_path() so that the directory is not startable until the caller puts it in place;
    a failed one leaves nothing behind."""
    data = _tar((_info("global/pg_control", size=4), b"ctrl"), (_info("base/1", size=1), b"b"))
    good = FileRecord("global/pg_control", "file", 4, 0o600, 5.0, sha(b"ctrl"))
    extract(tmp_path / "a", data, expected={good.path: good}, deferred={good.path})
    assert not (tmp_path / "a/global/pg_control").exists()
    assert Path(pending_path(tmp_path / "a/global/pg_control")).read_bytes() == b"ctrl"
    assert (tmp_path / "a/base/1").read_bytes() == b"b"
    bad = FileRecord("global/pg_control", "file", 4, 0o600, 5.0, sha(b"CTRL"))
    with pytest.raises(IntegrityError, match="global/pg_control"):
        extract(tmp_path / "b", data, expected={bad.path: bad}, deferred={bad.path})
    assert list((tmp_path / "b/global").iterdir()) == []
