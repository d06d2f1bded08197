"""Writing tar parts: round trips at any read size, torn and vanished files, part planning and
headers byte for byte tarfile's."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudbm.errors import ConfigError
from cloudbm.tarstream import FileSource, TarPartReader, plan_parts
from cloudbm.tarstream.writer import _header
from tests.unit.tar_helpers import extract, sha

LONG_NAME = "base/16384/" + "n" * 150  # needs a pax header
SIZES = {"empty": 0, "one": 1, "block": 512, "block_plus": 513, "big": 300_001}


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
        assert by_path[path].sha256 == sha(content)
        assert by_path[path].size == len(content)

    dest = tmp_path_factory.mktemp("dest")
    records = extract(dest, data, expected=by_path)
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
    assert record.sha256 == sha(padded)
    extract(tmp_path / "out", data, expected={"f": record})
    assert (tmp_path / "out" / "f").read_bytes() == padded


def test_file_that_grows_is_read_to_its_stat_size(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    reader = TarPartReader([FileSource("f", str(tmp_path / "f"), "file", 0o600, 4, 1.0)])
    data = reader.read()
    assert reader.records[0].sha256 == sha(b"0123") and not reader.records[0].truncated
    extract(tmp_path / "out", data)
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
