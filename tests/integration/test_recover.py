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

from tests.integration.pgcluster import PgCluster, postgres_dir
from tests.integration.recovery import snapshot, start_recovered, wait_promoted
from tests.integration.test_backup_push import Site, make_site

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
