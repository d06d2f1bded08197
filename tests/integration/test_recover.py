"""The recoverability proof: `cloudbm recover` rebuilds a cluster from a backup and its WAL, the
recovered PostgreSQL replays to the target, and its data equals a snapshot taken at the target
(row count and a checksum over the rows)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pgcluster import CLOUDBM as CLOUDBM_BIN
from tests.integration.pgcluster import PgCluster, as_postgres, chown_tree, postgres_dir
from tests.integration.recovery import snapshot, start_recovered, wait_promoted
from tests.integration.repos import BACKENDS
from tests.integration.test_backup_push import OTHER_MAJORS, ROOT, Site, make_site

pytestmark = pytest.mark.integration

PG15 = Path("/usr/lib/postgresql/15/bin")


@dataclass
class History:
    """A site with one backup and recorded recovery targets, each with its expected data."""

    site: Site
    backup_id: str
    targets: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    restores: Path = Path()

    def recover(
        self, name: str, *extra: str, backup: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        dest = self.restores / name
        # A clone must not push its new timeline into the archive it came from.
        args = [
            "--json",
            "recover",
            *([backup] if backup else []),
            str(dest),
            "--tablespace",
            f"ts:{self.restores / (name + '-ts')}",
            "--no-progress",
            "--archive-mode",
            "off",
            *extra,
        ]
        return self.site.cloudbm(*args)

    def start(self, name: str) -> PgCluster:
        return start_recovered(
            self.restores / name, self.site.cluster.bin_dir, self.site.target.env
        )


def _insert(cluster: PgCluster, first: int, count: int) -> None:
    cluster.psql(
        f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({first}, {first + count - 1}) g"
    )


def build_history(site: Site) -> History:
    c = site.cluster
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts")
    _insert(c, 1, 1000)
    res = site.cloudbm("--json", "backup-push", "--no-progress")
    assert res.returncode == 0, res.stderr
    h = History(site, json.loads(res.stdout)["backup_id"])
    h.restores = postgres_dir("cloudbm-restores-")
    h.targets["immediate"] = (["--target-immediate", "--target-action", "promote"], snapshot(c))
    _insert(c, 1001, 1000)
    # xid: the transaction that inserts 2001..2500
    xid = c.psql(
        "BEGIN; INSERT INTO t SELECT g, md5(g::text) FROM generate_series(2001, 2500) g;"
        " SELECT pg_current_xact_id(); COMMIT;"
    ).splitlines()[0]
    after_xid = snapshot(c)
    c.psql("DELETE FROM t WHERE id > 2000")  # so the exclusive snapshot can be rebuilt below
    before_xid = snapshot(c)
    h.targets["xid-exclusive"] = (
        ["--target-xid", xid, "--exclusive", "--target-action", "promote"],
        _without_range(after_xid, before_xid),
    )
    h.targets["xid"] = (["--target-xid", xid, "--target-action", "promote"], after_xid)
    _insert(c, 3001, 500)
    c.psql("SELECT pg_create_restore_point('before-big-delete')")
    h.targets["name"] = (
        ["--target-name", "before-big-delete", "--target-action", "promote"],
        snapshot(c),
    )
    c.psql("DELETE FROM t WHERE id % 3 = 0")
    lsn = c.psql("SELECT pg_current_wal_insert_lsn()")  # write lsn lags with async commit
    h.targets["lsn"] = (["--target-lsn", lsn, "--target-action", "promote"], snapshot(c))
    _insert(c, 4001, 700)
    time.sleep(1.1)
    when = c.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")
    h.targets["time"] = (["--target-time", when, "--target-action", "promote"], snapshot(c))
    time.sleep(1.1)
    c.psql("UPDATE t SET v = 'changed' WHERE id < 100")
    _insert(c, 5001, 300)
    h.targets["latest"] = ([], snapshot(c))
    c.wait_archived()
    return h


def _without_range(after: str, before: str) -> str:
    # The exclusive xid target is the state before that transaction: the rows up to 2000.
    return before


@pytest.fixture(scope="module")
def history(localstack_endpoints: Any) -> Iterator[History]:
    with make_site("local", localstack_endpoints) as site:
        h = build_history(site)
        yield h
        shutil.rmtree(h.restores, ignore_errors=True)


def _recover_and_compare(
    h: History, case: str, expected: str, args: list[str], backup: str | None = None
) -> PgCluster:
    res = h.recover(case, *args, backup=backup)
    assert res.returncode == 0, res.stderr
    cluster = h.start(case)
    try:
        wait_promoted(cluster)
        assert snapshot(cluster) == expected, cluster.server_log()[-3000:]
    except BaseException:
        cluster.stop("immediate")
        raise
    return cluster


@pytest.mark.parametrize(
    "case", ["latest", "time", "xid", "xid-exclusive", "lsn", "name", "immediate"]
)
def test_recovery_reaches_each_target_with_the_data_of_that_moment(
    history: History, case: str
) -> None:
    args, expected = history.targets[case]
    backup = history.backup_id if case in ("immediate", "xid", "xid-exclusive", "name") else None
    cluster = _recover_and_compare(history, case, expected, args, backup=backup)
    cluster.stop("immediate")


def test_tablespace_is_restored_where_it_was_relocated(history: History) -> None:
    restored = history.restores / "latest-ts"
    assert any(restored.glob("PG_15_*/*/*")), "no relation files in the relocated tablespace"
    links = list((history.restores / "latest" / "pg_tblspc").iterdir())
    assert [link.resolve() for link in links] == [restored.resolve()]
    # PostgreSQL renames the map once it has recreated the links from it.
    spcmap = (history.restores / "latest" / "tablespace_map.old").read_text()
    assert str(restored) in spcmap


def test_delta_restore_over_a_stale_copy_keeps_matching_files(history: History) -> None:
    # A stale copy: the backup recovered to its consistency point, then run and changed.
    stale = _recover_and_compare(
        history,
        "delta",
        history.targets["immediate"][1],
        history.targets["immediate"][0],
        backup=history.backup_id,
    )
    stale.psql("INSERT INTO t VALUES (-1, 'stale')")
    stale.stop("fast")
    args, expected = history.targets["latest"]
    res = history.recover("delta", "--delta", *args)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["files_kept"] > 0 and summary["files_written"] > 0
    cluster = history.start("delta")
    try:
        wait_promoted(cluster)
        assert snapshot(cluster) == expected
    finally:
        cluster.stop("immediate")


def test_recover_leaves_the_first_wal_segments_fetched_for_postgresql(history: History) -> None:
    """`recover` run as the data directory's owner starts the prefetch worker itself: the
    backup's first segment is spooled before PostgreSQL starts, and restore_command's first
    request for it is answered from local state (storage gone by then, to prove it)."""
    res = history.recover("warm", "--target-immediate")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["prefetching"] is True
    manifest = json.loads(history.site.cloudbm("--json", "backup-show", history.backup_id).stdout)
    first = manifest["start_wal"]
    spool = history.site.workdir / "spool"
    deadline = time.monotonic() + 30
    while not list(spool.glob(f"*/prefetch/{first}")):
        assert time.monotonic() < deadline, "recover did not start fetching WAL ahead"
        time.sleep(0.05)
    dest = history.restores / "warm" / "pg_wal" / "RECOVERYXLOG"
    started = time.monotonic()
    res = history.site.cloudbm("wal-fetch", first, str(dest))
    assert res.returncode == 0, res.stderr
    assert dest.stat().st_size > 0
    assert time.monotonic() - started < 2.0


def test_non_empty_destination_is_refused(history: History) -> None:
    dest = history.restores / "busy"
    dest.mkdir()
    (dest / "precious").write_text("keep me")
    res = history.recover("busy")
    assert res.returncode == 2, res.stderr
    assert "not empty" in res.stderr
    assert (dest / "precious").read_text() == "keep me"


def test_timeline_switch_recovers_along_either_timeline(history: History) -> None:
    """Recover, promote, write and archive on timeline 2; then recover to the latest point of
    timeline 2, and to a point on timeline 1 before the switch."""
    res = history.site.cloudbm(
        "--json",
        "recover",
        str(history.restores / "tl2"),
        "--tablespace",
        f"ts:{history.restores / 'tl2-ts'}",
        "--no-progress",
        "--target-action",
        "promote",
        "--target-time",
        history.targets["time"][0][1],
    )
    assert res.returncode == 0, res.stderr
    tl2 = history.start("tl2")
    try:
        wait_promoted(tl2)
        _insert(tl2, 9001, 250)
        on_tl2 = snapshot(tl2)
        tl2.wait_archived()
    finally:
        tl2.stop("fast")
    latest = _recover_and_compare(history, "tl2-latest", on_tl2, [], backup=history.backup_id)
    assert latest.psql("SELECT timeline_id FROM pg_control_checkpoint()") != "1"
    latest.stop("immediate")
    args, expected = history.targets["lsn"]
    old = _recover_and_compare(
        history, "tl1-old", expected, [*args, "--target-tli", "1"], backup=history.backup_id
    )
    old.stop("immediate")


def _simple_history(site: Site) -> tuple[str, str]:
    """A backup, then more changes; returns (backup id, snapshot at the end)."""
    c = site.cluster
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts")
    _insert(c, 1, 500)
    res = site.cloudbm("--json", "backup-push", "--no-progress")
    assert res.returncode == 0, res.stderr
    for first in (501, 701, 901):  # a few segments of WAL after the backup
        _insert(c, first, 200)
        c.psql("SELECT pg_switch_wal()")
    c.psql("UPDATE t SET v = 'x' WHERE id % 7 = 0")
    expected = snapshot(c)
    c.wait_archived()
    return json.loads(res.stdout)["backup_id"], expected


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "local"])
def test_recovery_from_each_cloud_backend(backend: str, localstack_endpoints: Any) -> None:
    with make_site(backend, localstack_endpoints) as site:
        _backup_id, expected = _simple_history(site)
        h = History(site, _backup_id, restores=postgres_dir("cloudbm-restores-"))
        try:
            cluster = _recover_and_compare(h, "latest", expected, [])
            cluster.stop("immediate")
        finally:
            shutil.rmtree(h.restores, ignore_errors=True)


@pytest.mark.parametrize("major", OTHER_MAJORS)
def test_time_target_on_every_supported_major(major: int) -> None:
    bindir = subprocess.run(
        [str(ROOT / "pgversions" / "bindir"), str(major)], capture_output=True, text=True
    )
    assert bindir.returncode == 0, bindir.stderr
    with make_site("local", None, bin_dir=Path(bindir.stdout.strip()), major=major) as site:
        c = site.cluster
        c.psql("CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts")
        _insert(c, 1, 500)
        assert site.cloudbm("backup-push", "--no-progress").returncode == 0
        _insert(c, 501, 500)
        time.sleep(1.1)
        when = c.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")
        expected = snapshot(c)
        time.sleep(1.1)
        c.psql("DELETE FROM t WHERE id > 100")
        c.wait_archived()
        h = History(site, "", restores=postgres_dir("cloudbm-restores-"))
        try:
            cluster = _recover_and_compare(
                h, "time", expected, ["--target-time", when, "--target-action", "promote"]
            )
            version = cluster.psql("SHOW server_version_num")
            assert int(version) // 10000 == major
            cluster.stop("immediate")
        finally:
            shutil.rmtree(h.restores, ignore_errors=True)


@pytest.fixture(scope="module")
def damaged(localstack_endpoints: Any) -> Iterator[History]:
    """A local site for failure cases (they damage its repository in turn)."""
    with make_site("local", localstack_endpoints) as site:
        backup_id, expected = _simple_history(site)
        h = History(site, backup_id, restores=postgres_dir("cloudbm-restores-"))
        h.targets["latest"] = ([], expected)
        yield h
        shutil.rmtree(h.restores, ignore_errors=True)


def _repo_dir(h: History) -> Path:
    return Path(h.site.target.url.removeprefix("file://"))


def test_corrupted_part_stops_recovery_naming_the_object(damaged: History) -> None:
    part = _repo_dir(damaged) / "backups" / damaged.backup_id / "data" / "part-00001"
    original = part.read_bytes()
    try:
        blob = bytearray(original)
        blob[len(blob) // 2] ^= 0x40
        part.write_bytes(bytes(blob))
        res = damaged.recover("corrupt")
        assert res.returncode == 5, res.stderr
        assert "part-00001" in res.stderr
    finally:
        part.write_bytes(original)


def test_wrong_key_is_an_integrity_failure(damaged: History) -> None:
    site = damaged.site
    other = site.workdir / "other.key"
    subprocess.run(
        [str(CLOUDBM_BIN), "keygen", "--type", "symmetric", str(other)],
        check=True,
        capture_output=True,
    )
    chown_tree(site.workdir)
    text = site.config.read_text().replace(str(site.workdir / "repo.key"), str(other))
    wrong = site.workdir / "wrong.toml"
    wrong.write_text(text)
    res = as_postgres(
        [
            str(CLOUDBM_BIN),
            "--config",
            str(wrong),
            "recover",
            "latest",
            str(damaged.restores / "wrongkey"),
            "--tablespace",
            f"ts:{damaged.restores / 'wrongkey-ts'}",
        ],
        check=False,
    )
    assert res.returncode == 5, res.stderr
    assert "key" in res.stderr
    assert not (damaged.restores / "wrongkey").exists()


def test_storage_unreachable_during_replay_never_promotes(damaged: History) -> None:
    res = damaged.recover("unreachable", "--archive-mode", "off")
    assert res.returncode == 0, res.stderr
    repo = _repo_dir(damaged)
    hidden = repo.with_name(repo.name + ".away")
    repo.rename(hidden)
    try:
        cluster = damaged.start("unreachable")
        deadline = time.monotonic() + 90
        log = ""
        while time.monotonic() < deadline:
            log = cluster.server_log()
            if "database system is shut down" in log or "archive recovery complete" in log:
                break
            time.sleep(0.3)
        cluster.stop("immediate")
        assert "archive recovery complete" not in log, log[-3000:]
        assert "selected new timeline" not in log
        # wal-fetch exits 126, so the startup process stops instead of ending recovery
        assert "FATAL:  could not restore file" in log, log[-3000:]
        assert "cloudbm wal-fetch: ERROR" in log
    finally:
        hidden.rename(repo)


def test_missing_wal_in_the_middle_is_refused_and_named(damaged: History) -> None:
    shown = json.loads(damaged.site.cloudbm("--json", "backup-show", damaged.backup_id).stdout)
    wal = sorted((_repo_dir(damaged) / "wal").glob("*/0000000100000000000000*"))
    needed = [p for p in wal if len(p.name) == 24 and p.name > shown["stop_wal"]]
    assert len(needed) >= 3, needed
    victim = needed[len(needed) // 2]  # after the backup, before the end of the archive
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        res = damaged.recover("gap")
        assert res.returncode == 1, res.stderr
        assert victim.name in res.stderr
        assert not (damaged.restores / "gap").exists()
    finally:
        moved.rename(victim)


def test_verify_passes_on_a_sound_backup_and_wal_verify_finds_no_gap(damaged: History) -> None:
    res = damaged.site.cloudbm("--json", "verify", "latest")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["files"] > 0 and not report["problems"]
    res = damaged.site.cloudbm("--json", "wal-verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["ok"] is True


def test_verify_names_a_part_with_a_flipped_byte(damaged: History) -> None:
    part = _repo_dir(damaged) / "backups" / damaged.backup_id / "data" / "part-00002"
    original = part.read_bytes()
    try:
        blob = bytearray(original)
        blob[len(blob) // 3] ^= 0x01
        part.write_bytes(bytes(blob))
        res = damaged.site.cloudbm("verify", damaged.backup_id)
        assert res.returncode == 5, res.stderr
        assert "part-00002" in res.stderr and "part-00001" not in res.stderr
    finally:
        part.write_bytes(original)


def test_verify_and_wal_verify_report_a_missing_segment(damaged: History) -> None:
    shown = json.loads(damaged.site.cloudbm("--json", "backup-show", damaged.backup_id).stdout)
    wal_dir = _repo_dir(damaged) / "wal" / shown["stop_wal"][:16]
    victim = wal_dir / shown["stop_wal"]
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        res = damaged.site.cloudbm("verify", damaged.backup_id)
        assert res.returncode == 5, res.stderr
        assert shown["stop_wal"] in res.stderr
        res = damaged.site.cloudbm("wal-verify")
        assert res.returncode == 3, res.stdout + res.stderr
        assert shown["stop_wal"] in res.stdout
    finally:
        moved.rename(victim)
