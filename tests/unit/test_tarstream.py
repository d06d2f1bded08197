"""Streaming tar parts: round trips, torn files, part planning and a refusing extractor."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudbm.errors import ConfigError, IntegrityError
from cloudbm.tarstream import (
    FileRecord,
    FileSource,
    TarExtractor,
    TarPartReader,
    pending_path,
    plan_parts,
)
from cloudbm.tarstream.writer import _header

LONG_NAME = "base/16384/" + "n" * 150  # needs a pax header
SIZES = {"empty": 0, "one": 1, "block": 512, "block_plus": 513, "big": 300_001}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def source_tree(tmp_path: Path) -> tuple[Path, list[FileSource], dict[str, bytes]]:
    src = tmp_path / "src"
    src.mkdir()
    contents: dict[str, bytes] = {}
    files: list[FileSource] = [FileSource("d", str(src), "dir", 0o750, 0, 1_700_000_000.25)]
    for i, (name, size) in enumerate(sorted(SIZES.items())):
        data = os.urandom(size)
        (src / name).write_bytes(data)
        contents[f"d/{name}"] = data
        files.append(FileSource(f"d/{name}", str(src / name), "file", 0o600 + i, size, 1e9 + i))
    long_data = b"long" * 10
    (src / "long").write_bytes(long_data)
    contents[LONG_NAME] = long_data
    files.append(FileSource(LONG_NAME, str(src / "long"), "file", 0o640, 40, 2e9))
    (src / "ünï").write_bytes(b"unicode")
    contents["d/ünï"] = b"unicode"
    files.append(FileSource("d/ünï", str(src / "ünï"), "file", 0o600, 7, 3e9))
    files.append(FileSource("d/link", "", "symlink", 0o777, 0, 4e9, link_target="one"))
    return src, files, contents


def _extract(dest: Path, data: bytes, **kwargs: object) -> list[FileRecord]:
    return TarExtractor(dest, **kwargs).extract(io.BytesIO(data))  # type: ignore[arg-type]


def _read_in_steps(reader: TarPartReader, steps: list[int], methods: str = "r") -> bytes:
    """Consume with read / read1 / readinto ('r', '1', 'i') in turn, with the given sizes."""
    out: list[bytes] = []
    i = 0
    while True:
        size, method = steps[i % len(steps)], methods[i % len(methods)]
        if method == "i":
            buf = bytearray(size)
            chunk = bytes(buf[: reader.readinto(buf)])
        else:
            chunk = reader.read1(size) if method == "1" else reader.read(size)
            if method == "r" and chunk:
                assert len(chunk) == size or not reader.read(1)  # exact unless at the end
        if not chunk:
            return b"".join(out)
        out.append(chunk)
        i += 1


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=5),
    methods=st.text(alphabet="r1i", min_size=1, max_size=4),
)
def test_round_trip_with_arbitrary_read_sizes(
    source_tree: tuple[Path, list[FileSource], dict[str, bytes]], tmp_path_factory, steps, methods
) -> None:
    _, files, contents = source_tree
    reader = TarPartReader(files, chunk_size=65536)
    data = _read_in_steps(reader, steps, methods)
    assert reader.bytes_read == len(data)
    assert data == TarPartReader(files).read()  # deterministic whatever the read sizes
    by_path = {r.path: r for r in reader.records}
    assert [r.path for r in reader.records] == [f.path for f in files]
    for path, content in contents.items():
        assert by_path[path].sha256 == _sha(content)
        assert by_path[path].size == len(content)

    dest = tmp_path_factory.mktemp("dest")
    records = _extract(dest, data, expected=by_path)
    for path, content in contents.items():
        assert (dest / path).read_bytes() == content
    assert {r.path: r.sha256 for r in records} == {r.path: r.sha256 for r in reader.records}
    assert os.readlink(dest / "d/link") == "one"
    for f in files:
        if f.kind != "symlink":
            st_ = (dest / f.path).stat()
            assert st_.st_mode & 0o777 == f.mode
            assert st_.st_mtime == f.mtime  # exact, from the manifest


def test_output_is_a_standard_tar(source_tree) -> None:
    _, files, contents = source_tree
    data = TarPartReader(files).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [f.path for f in files]
        for path, content in contents.items():
            member = tar.extractfile(path)
            assert member is not None and member.read() == content


def test_file_that_shrinks_is_padded_and_flagged(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    files = [FileSource("f", str(tmp_path / "f"), "file", 0o600, 5000, 1.0)]
    reader = TarPartReader(files, chunk_size=1024)
    data = reader.read()
    (record,) = reader.records
    padded = b"abc" + bytes(4997)
    assert record.truncated and not record.missing
    assert record.size == 5000
    assert record.sha256 == _sha(padded)
    _extract(tmp_path / "out", data, expected={"f": record})
    assert (tmp_path / "out" / "f").read_bytes() == padded


def test_file_that_grows_is_read_to_its_stat_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    reader = TarPartReader([FileSource("f", str(tmp_path / "f"), "file", 0o600, 4, 1.0)])
    data = reader.read()
    assert reader.records[0].sha256 == _sha(b"0123") and not reader.records[0].truncated
    _extract(tmp_path / "out", data)
    assert (tmp_path / "out" / "f").read_bytes() == b"0123"


def test_vanished_file_is_recorded_missing_and_left_out(tmp_path: Path) -> None:
    (tmp_path / "kept").write_bytes(b"k")
    files = [
        FileSource("gone", str(tmp_path / "gone"), "file", 0o600, 10, 1.0),
        FileSource("kept", str(tmp_path / "kept"), "file", 0o600, 1, 1.0),
    ]
    reader = TarPartReader(files)
    data = reader.read()
    assert [(r.path, r.missing) for r in reader.records] == [("gone", True), ("kept", False)]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["kept"]


def test_rate_limiter_sees_every_byte(source_tree) -> None:
    _, files, _ = source_tree
    seen: list[int] = []
    reader = TarPartReader(files, rate_limiter=seen.append)
    total = len(_read_in_steps(reader, [4096]))
    assert sum(seen) == total == reader.bytes_read
    assert max(seen) <= 4096


def test_readinto(source_tree) -> None:
    _, files, _ = source_tree
    expected = TarPartReader(files).read()
    reader = TarPartReader(files)
    buf = bytearray(1000)
    out = bytearray()
    while n := reader.readinto(buf):
        out += buf[:n]
    assert out == expected


def test_writer_refuses_unsafe_names(tmp_path: Path) -> None:
    for bad in ["/etc/passwd", "a/../b", "", "a//b"]:
        reader = TarPartReader([FileSource(bad, str(tmp_path), "dir", 0o700, 0, 1.0)])
        with pytest.raises(ConfigError):
            reader.read()


def _entry(path: str, size: int, kind: str = "file") -> FileSource:
    return FileSource(path, "/nowhere", kind, 0o600, size, 0.0)


def test_plan_parts_groups_consecutively() -> None:
    entries = [
        _entry("d", 0, "dir"),
        _entry("a", 3000),
        _entry("b", 3000),
        _entry("huge", 50_000),
        _entry("c", 100),
        _entry("e", 100),
        _entry("global/pg_control", 8192),
    ]
    parts = [[e.path for e in p] for p in plan_parts(entries, target_size=8192)]
    assert parts == [["d", "a", "b"], ["huge"], ["c", "e"], ["global/pg_control"]]
    flat = [e.path for p in plan_parts(entries, target_size=1 << 30) for e in p]
    assert flat == [e.path for e in entries]


def test_plan_parts_max_files_and_laziness() -> None:
    def endless() -> Iterator[FileSource]:
        i = 0
        while True:
            yield _entry(f"f{i}", 0)
            i += 1

    parts = plan_parts(endless(), target_size=1 << 30, max_files=3)
    assert [e.path for e in next(parts)] == ["f0", "f1", "f2"]
    assert [e.path for e in next(parts)] == ["f3", "f4", "f5"]
    with pytest.raises(ConfigError):
        next(plan_parts([], target_size=0))


# --- a refusing extractor ------------------------------------------------------------------


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
        _extract(dest, _tar(*members))
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
    records = _extract(tmp_path, data)
    assert [r.kind for r in records] == ["dir", "file", "symlink", "symlink", "hardlink"]
    assert (tmp_path / "up").read_bytes() == b"hi"
    assert os.stat(tmp_path / "hard").st_ino == os.stat(tmp_path / "dir/f").st_ino


def test_mismatch_against_manifest_names_the_file(tmp_path: Path) -> None:
    data = _tar((_info("base/1/1259", size=4), b"data"))
    good = FileRecord("base/1/1259", "file", 4, 0o600, 5.0, _sha(b"data"))
    wrong_sha = FileRecord("base/1/1259", "file", 4, 0o600, 5.0, _sha(b"DATA"))
    wrong_size = FileRecord("base/1/1259", "file", 5, 0o600, 5.0, _sha(b"data"))
    with pytest.raises(IntegrityError, match=r"base/1/1259.*SHA-256"):
        _extract(tmp_path / "a", data, expected={"base/1/1259": wrong_sha})
    assert not (tmp_path / "a/base/1/1259").exists()  # no bad file left to pass for good
    with pytest.raises(IntegrityError, match=r"base/1/1259.*size"):
        _extract(tmp_path / "b", data, expected={"base/1/1259": wrong_size})
    _extract(tmp_path / "c", data, expected={"base/1/1259": good})
    assert (tmp_path / "c/base/1/1259").stat().st_mtime == 5.0
    with pytest.raises(IntegrityError, match="not in the backup manifest"):
        _extract(tmp_path / "d", data, expected={}, strict=True)


def test_truncated_or_garbled_streams_are_refused(tmp_path: Path) -> None:
    data = _tar((_info("f", size=2000), os.urandom(2000)))
    for cut in (100, 700, 2000):
        with pytest.raises(IntegrityError, match=r"truncated|end-of-archive"):
            _extract(tmp_path / f"cut{cut}", data[:cut])
    garbled = bytearray(data)
    garbled[10] ^= 0xFF  # breaks the header checksum
    with pytest.raises(IntegrityError, match="corrupt tar header"):
        _extract(tmp_path / "garbled", bytes(garbled))
    trailing = TarPartReader([]).read() + b"junk"
    with pytest.raises(IntegrityError, match="after the tar end"):
        _extract(tmp_path / "trailing", trailing)


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

    _extract(tmp_path / "pgdata", data, path_map=path_map)
    assert (tmp_path / "ts/PG_15_1/5/16385").read_bytes() == b"t"
    assert (tmp_path / "pgdata/base/5/1").read_bytes() == b"b"
    assert not (tmp_path / "pgdata/pg_tblspc").exists()


def test_delta_restore_replaces_files_and_stray_links(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/old").write_bytes(b"previous contents, longer")
    (tmp_path / "target").write_bytes(b"must not change")
    (tmp_path / "dest/link").symlink_to(tmp_path / "target")
    data = _tar((_info("old", size=3), b"new"), (_info("link", size=3), b"new"))
    _extract(tmp_path / "dest", data)
    assert (tmp_path / "dest/old").read_bytes() == b"new"
    assert not (tmp_path / "dest/link").is_symlink()
    assert (tmp_path / "target").read_bytes() == b"must not change"


def test_deferred_member_is_written_under_its_pending_name_only(tmp_path: Path) -> None:
    """A restore defers global/pg_control: written and checked like any file, but under
    pending_path() so that the directory is not startable until the caller puts it in place;
    a failed one leaves nothing behind."""
    data = _tar((_info("global/pg_control", size=4), b"ctrl"), (_info("base/1", size=1), b"b"))
    good = FileRecord("global/pg_control", "file", 4, 0o600, 5.0, _sha(b"ctrl"))
    _extract(tmp_path / "a", data, expected={good.path: good}, deferred={good.path})
    assert not (tmp_path / "a/global/pg_control").exists()
    assert Path(pending_path(tmp_path / "a/global/pg_control")).read_bytes() == b"ctrl"
    assert (tmp_path / "a/base/1").read_bytes() == b"b"
    bad = FileRecord("global/pg_control", "file", 4, 0o600, 5.0, _sha(b"CTRL"))
    with pytest.raises(IntegrityError, match="global/pg_control"):
        _extract(tmp_path / "b", data, expected={bad.path: bad}, deferred={bad.path})
    assert list((tmp_path / "b/global").iterdir()) == []


_SEGMENT = st.text(alphabet="ab_.0123456789ü", min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..")
)


@settings(max_examples=80, deadline=None)
@given(
    path=st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join),
    kind=st.sampled_from(["file", "dir", "symlink"]),
    size=st.one_of(st.integers(0, 1 << 20), st.integers(8**11 - 2, 8**11 + 2)),
    mode=st.integers(0, 0o7777),
    mtime=st.floats(0, 8.0**11 + 10),
    link=st.text(alphabet=st.sampled_from("xy./ü"), min_size=1, max_size=110),
)
def test_fast_headers_equal_tarfiles(path, kind, size, mode, mtime, link) -> None:
    """The hand-built ustar header is byte for byte tarfile's pax-format header."""
    type_ = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[kind]
    target = link if kind == "symlink" else None
    src = FileSource(path, "", kind, mode, size, mtime, target)
    info = tarfile.TarInfo(path)
    info.type, info.size, info.mode, info.mtime = type_, size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.linkname = target or ""
    expected = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    assert _header(src, type_, size) == expected
