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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backup_checks import open_repo
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
            *([backup] if backup is not None else []),
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


def _settled(root: Path, quiet: float = 1.5, timeout: float = 60) -> None:
    """Wait until nothing under `root` has changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last: tuple[int, float] = (-1, 0.0)
    since = time.monotonic()
    while time.monotonic() < deadline:
        files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        state = (len(files), max((p.stat().st_mtime for p in files), default=0.0))
        if state != last:
            last, since = state, time.monotonic()
        elif files and time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    raise AssertionError(f"{root} did not settle")


def test_killed_recover_leaves_nothing_startable_and_delta_completes_it(
    damaged: History,
) -> None:
    """Part 1 stalls (a FIFO nobody writes stands in for it) while every other part, global/
    pg_control's among them, extracts; then recover is killed. The directory must hold no
    global/pg_control: started by hand with a signal file, it would replay from the wrong
    checkpoint. `recover --delta` into it then completes it, and the cluster has the data."""
    import os
    import signal

    part = _repo_dir(damaged) / "backups" / damaged.backup_id / "data" / "part-00001"
    assert part.with_name("part-00002").exists()  # pg_control is in another part
    moved = part.with_name("part-00001.away")
    part.rename(moved)
    os.mkfifo(part)
    dest = damaged.restores / "killed"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **damaged.site.target.env}
    command = [
        *("runuser", "-u", "postgres", "--", "env", *(f"{k}={v}" for k, v in env.items())),
        *(str(CLOUDBM_BIN), "--config", str(damaged.site.config), "recover", str(dest)),
        *("--tablespace", f"ts:{damaged.restores / 'killed-ts'}", "--no-progress"),
        *("--jobs", "32"),  # every part at once: pg_control's is written while part 1 stalls
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _settled(dest)
        assert proc.poll() is None, "recover ended although part 1 never arrived"
        assert (dest / "global").is_dir()  # pg_control's part was extracted
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        part.unlink()
        moved.rename(part)
    assert not (dest / "global" / "pg_control").exists()
    res = damaged.recover("killed", "--delta")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["files_kept"] > 0
    assert (dest / "global" / "pg_control").exists()
    assert not [p.name for p in (dest / "global").iterdir() if p.name.startswith("pg_control.")]
    cluster = damaged.start("killed")
    try:
        wait_promoted(cluster)
        assert snapshot(cluster) == damaged.targets["latest"][1]
    finally:
        cluster.stop("immediate")


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


# --- every target checked before anything is written (issue 9, defect 2) --------------------

_NAME_64 = "n" * 64  # PostgreSQL's restore point names stop at 63 bytes


@pytest.mark.parametrize(
    ("case", "backup", "args", "code", "words"),
    [
        ("no-zone", "ID", ["--target-time", "2026-12-02 04:35:00"], 2, "time zone"),
        ("not-a-time", "ID", ["--target-time", "yesterday-ish"], 2, "not a timestamp"),
        ("named-zone", "ID", ["--target-time", "2026-12-02 04:35 Mars/Olympus"], 2, "zone"),
        ("bad-date", "ID", ["--target-time", "2026-02-30 04:35:00+00"], 2, "not a timestamp"),
        ("bad-lsn", "ID", ["--target-lsn", "zz/yy"], 2, "not a WAL location"),
        ("bad-xid", "ID", ["--target-xid", "12abc"], 2, "not a transaction id"),
        ("special-xid", "ID", ["--target-xid", "2"], 2, "not a transaction id"),
        ("empty-name", "ID", ["--target-name", ""], 2, "empty"),
        ("long-name", "ID", ["--target-name", _NAME_64], 2, "63"),
        ("tli-word", "ID", ["--target-tli", "newest"], 2, "--target-tli"),
        ("tli-zero", "ID", ["--target-tli", "0"], 2, "--target-tli"),
        ("tli-unicode-digit", "ID", ["--target-tli", "\u00b2"], 2, "--target-tli"),
        ("action-alone", "ID", ["--target-action", "promote"], 2, "--target-action"),
        ("exclusive-name", "ID", ["--target-name", "x", "--exclusive"], 2, "--exclusive"),
        ("empty-id", "", [], 2, "backup id"),
        ("blank-id", "  ", [], 2, "backup id"),
        ("time-before-backup", "ID", ["--target-time", "2001-01-01 00:00:00+00"], 3, "before"),
        ("time-after-archive", "ID", ["--target-time", "TOMORROW"], 3, "newest"),
        ("lsn-before-backup", "ID", ["--target-lsn", "0/10"], 3, "before"),
        ("lsn-after-archive", "ID", ["--target-lsn", "1/0"], 3, "beyond"),
        ("time-before-any-backup", None, ["--target-time", "2001-01-01 00:00:00+00"], 3, "ended"),
    ],
)
def test_bad_or_unreachable_target_is_refused_before_anything_is_written(
    history: History, case: str, backup: str | None, args: list[str], code: int, words: str
) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S+00")
    args = [tomorrow if a == "TOMORROW" else a for a in args]
    res = history.recover(
        f"refused-{case}", *args, backup=history.backup_id if backup == "ID" else backup
    )
    assert res.returncode == code, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and words in errors[0], res.stderr
    assert "unexpected" not in res.stderr
    if code == 3:  # unreachable: the one line says what is possible
        assert "reachable" in errors[0], errors[0]
    assert not (history.restores / f"refused-{case}").exists()
    assert not (history.restores / f"refused-{case}-ts").exists()


# --- a malformed history file that recovery does not need (issue 9, defect 3) ----------------


def test_recover_survives_a_bad_history_file_it_does_not_need(history: History) -> None:
    """Garbage stored as 00000009.history (as wal-push used to accept) stops only a recovery
    along timeline 9, naming the object; recovery along the backup's timeline proceeds."""
    repo = open_repo(history.site.config)
    key = "wal/00000009.history"
    try:
        repo.put_bytes(key, b"this is not a timeline history\n")
        chown_tree(_repo_dir(history) / "wal")  # written as root here, read by postgres
        res = history.recover("bad-history", "--target-immediate", backup=history.backup_id)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["target"]["timeline"] < 9  # as PostgreSQL probes: 2, 3..
        res = history.recover("bad-history-needed", "--target-tli", "9", backup=history.backup_id)
        assert res.returncode == 5, res.stderr
        assert "00000009.history" in res.stderr and "unexpected" not in res.stderr
        assert not (history.restores / "bad-history-needed").exists()
    finally:
        repo.storage.delete_many([key])
        repo.storage.close()


# --- output to a closed pipe (issue 9, defect 10) -------------------------------------------


def _to_closed_pipe(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """Run cloudbm as postgres with stdout a pipe nobody reads (as `cloudbm ... | head` after
    head has exited)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **site.target.env}
    try:
        return subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "env",
                *(f"{k}={v}" for k, v in env.items()),
                str(CLOUDBM_BIN),
                "--config",
                str(site.config),
                *args,
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [["backup-list"], ["--json", "backup-list"], ["backup-show", "latest"], ["wal-verify"]],
    ids=["backup-list", "backup-list-json", "backup-show", "wal-verify"],
)
def test_output_to_a_closed_pipe_ends_quietly(history: History, args: list[str]) -> None:
    res = _to_closed_pipe(history.site, *args)
    assert res.returncode == 141, res.stderr  # 128 + SIGPIPE, as the shell reports it
    assert res.stderr == ""
