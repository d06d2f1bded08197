"""What wal-push accepts (repository.wal.WalArchiver, used by wal-push and the background
pusher): each file must be what its name says, or nothing is stored.

A real local repository (file://) under tmp_path; segments are built byte for byte like the
ones PostgreSQL 15 wrote on a promoted 1 MiB-segment cluster (tests/integration covers the
real thing end to end).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cloudbm.config import Settings
from cloudbm.errors import IntegrityError, ObjectNotFoundError
from cloudbm.pg import walnames
from cloudbm.repository import Descriptor, Repository, sha256_hex
from cloudbm.repository.layout import wal_key
from cloudbm.repository.wal import WalArchiver
from cloudbm.storage.local import LocalStorage

SYSID = 7301234567890123456
MiB = 1 << 20


def _segment(tli: int, pageaddr: int, size: int = MiB, sysid: int = SYSID) -> bytes:
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0006, tli, pageaddr, 0, sysid, size, 8192)
    return header + bytes(size - len(header))


class _Repo(Repository):
    """A repository that remembers the settings it was opened with (wal-push takes both)."""

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(LocalStorage(root), settings.repository_config())
        self.settings = settings


@pytest.fixture
def repo(tmp_path: Path) -> _Repo:
    root = tmp_path / "repo"
    root.mkdir()
    settings = Settings(server="t", repository=f"file://{root}", spool_directory=str(tmp_path))
    repository = _Repo(root, settings)
    repository.create_descriptor(Descriptor(SYSID, 15, MiB))
    return repository


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    path = tmp_path / "pg_wal"
    path.mkdir()
    return path


def _push(repo: _Repo, pg_wal: Path, name: str, data: bytes) -> None:
    archiver = WalArchiver(repo, pg_wal, repo.settings.pgdata_path)
    archiver.push(walnames.parse(name), data, sha256_hex(data))


def _stored(repo: _Repo, name: str) -> bool:
    try:
        repo.storage.head(wal_key(walnames.parse(name)))
    except ObjectNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("00000009.history", b"this is not a timeline history\n"),
        ("00000009.history", b""),
        ("00000002.history", b"2\t0/3000000\tno recovery target specified\n"),
        ("00000003.history", b"2\t0/3000000\tr\n\n1\t0/5000000\tr\n"),
        ("00000003.history", b"1\t0/5000000\tr\n\n2\t0/3000000\tr\n"),
        ("00000001.history", b"1\t0/3000000\tr\n"),
    ],
)
def test_a_history_file_that_does_not_parse_or_match_its_name_is_refused(
    repo: _Repo, pg_wal: Path, name: str, data: bytes
) -> None:
    with pytest.raises(IntegrityError) as info:
        _push(repo, pg_wal, name, data)
    assert info.value.exit_code == 5
    assert name in str(info.value)
    assert not _stored(repo, name)


def test_a_history_file_postgresql_wrote_is_stored_with_its_switch_points(
    repo: _Repo, pg_wal: Path
) -> None:
    data = b"1\t0/A05B78\tno recovery target specified\n\n2\t0/A07660\tafter LSN 0/A05BA8\n"
    _push(repo, pg_wal, "00000003.history", data)
    meta = repo.storage.head("wal/00000003.history").metadata
    assert meta["cloudbm-switches"] == "1:0/A05B78,2:0/A07660"


def test_a_segment_under_another_segments_name_is_refused(repo: _Repo, pg_wal: Path) -> None:
    with pytest.raises(IntegrityError, match="0/500000") as info:
        _push(repo, pg_wal, "000000010000000000000009", _segment(1, 0x500000))
    assert info.value.exit_code == 5
    assert not _stored(repo, "000000010000000000000009")


def test_a_segment_whose_header_declares_another_segment_size_is_refused(
    repo: _Repo, pg_wal: Path
) -> None:
    data = struct.pack("<HHIQI4xQII", 0xD110, 6, 1, 0x900000, 0, SYSID, 3 * MiB, 8192)
    with pytest.raises(IntegrityError, match="segment size"):
        _push(repo, pg_wal, "000000010000000000000009", data + bytes(3 * MiB - len(data)))
    assert not _stored(repo, "000000010000000000000009")


def test_a_segment_stored_records_its_header_facts(repo: _Repo, pg_wal: Path) -> None:
    _push(repo, pg_wal, "000000010000000000000009", _segment(1, 0x900000))
    meta = repo.storage.head(wal_key(walnames.parse("000000010000000000000009"))).metadata
    assert meta["cloudbm-wal-page-address"] == "0/900000"
    assert meta["cloudbm-wal-page-tli"] == "1"
    assert meta["cloudbm-wal-segment-size"] == str(MiB)
    assert meta["cloudbm-wal-system-identifier"] == str(SYSID)


TL2_HISTORY = b"1\t0/A5F110\tno recovery target specified\n"


def test_the_first_segment_after_a_promotion_starts_with_the_parents_page(
    repo: _Repo, pg_wal: Path
) -> None:
    # PostgreSQL copies the old timeline's pages up to the switch point into the new segment.
    (pg_wal / "00000002.history").write_bytes(TL2_HISTORY)
    _push(repo, pg_wal, "00000002000000000000000A", _segment(1, 0xA00000))
    _push(repo, pg_wal, "00000001000000000000000A.partial", _segment(1, 0xA00000))
    assert _stored(repo, "00000002000000000000000A")


def test_a_parents_page_is_checked_against_the_archived_history_when_pg_wal_lacks_it(
    repo: _Repo, pg_wal: Path
) -> None:
    _push(repo, pg_wal, "00000002.history", TL2_HISTORY)
    _push(repo, pg_wal, "00000002000000000000000A", _segment(1, 0xA00000))
    with pytest.raises(IntegrityError, match="began at 0/A5F110"):
        _push(repo, pg_wal, "00000002000000000000000B", _segment(1, 0xB00000))
    assert not _stored(repo, "00000002000000000000000B")


def test_a_parents_page_without_any_history_of_the_timeline_is_refused(
    repo: _Repo, pg_wal: Path
) -> None:
    # Timeline 1's segment 9 pushed as timeline 7's: nothing says timeline 7 began there.
    with pytest.raises(IntegrityError, match=r"00000007\.history"):
        _push(repo, pg_wal, "000000070000000000000009", _segment(1, 0x900000))
    assert not _stored(repo, "000000070000000000000009")


def test_a_backup_history_file_must_match_its_name(repo: _Repo, pg_wal: Path) -> None:
    data = b"START WAL LOCATION: 0/900028 (file 000000010000000000000009)\nLABEL: x\n"
    _push(repo, pg_wal, "000000010000000000000009.00000028.backup", data)
    with pytest.raises(IntegrityError, match="START WAL LOCATION"):
        _push(repo, pg_wal, "000000010000000000000009.00000060.backup", data)
    assert not _stored(repo, "000000010000000000000009.00000060.backup")


def test_the_background_pusher_refuses_the_same_files_and_leaves_them_to_postgresql(
    repo: _Repo, pg_wal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudbm.commands import wal_push_ahead
    from cloudbm.localstate.spool import Markers, spool_root

    monkeypatch.setattr(wal_push_ahead, "IDLE_EXIT_SECONDS", 0.1)
    files = {
        "000000010000000000000009": _segment(1, 0x900000),
        "0000000A.history": b"this is not a timeline history\n",
        "00000001000000000000000B": _segment(1, 0x500000),  # segment 5's WAL
    }
    (pg_wal / "archive_status").mkdir()
    for name, data in files.items():
        (pg_wal / name).write_bytes(data)
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    settings = repo.settings
    wal_push_ahead.push_ahead(settings, pg_wal)
    markers = Markers(spool_root(settings.spool_directory, settings.server, settings.repository))
    assert _stored(repo, "000000010000000000000009")
    assert markers.exists("000000010000000000000009")
    for refused in ("0000000A.history", "00000001000000000000000B"):
        assert not _stored(repo, refused)
        assert markers.failed(refused)  # PostgreSQL's own call uploads it and reports why
