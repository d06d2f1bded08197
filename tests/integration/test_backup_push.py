"""Base backups of real clusters: `cloudbm backup-push` while pgbench runs, into every backend
and on every supported PostgreSQL major. Each backup's parts are decoded back and compared with
its manifest, and the manifest with the data directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloudbm.pg import datadir
from tests.integration.backup_checks import (
    check_against_datadir,
    decode_all_parts,
    load_manifest,
    open_repo,
    stable_files,
)
from tests.integration.pgcluster import (
    CLOUDBM,
    PgCluster,
    as_postgres,
    chown_tree,
    free_port,
    postgres_dir,
    running_cluster,
)
from tests.integration.repos import BACKENDS, RepoTarget, make_target, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OTHER_MAJORS = (13, 14, 16, 17, 18)


@dataclass
class Site:
    """A cluster with a user tablespace, archiving into a repository, and its cloudbm config."""

    cluster: PgCluster
    target: RepoTarget
    workdir: Path
    config: Path
    major: int
    keys: dict[str, Any] = field(default_factory=dict)

    def variant(self, name: str, **changes: Any) -> Path:
        """Another configuration file for the same server, with some keys changed."""
        path = write_config(self.workdir / f"{name}.toml", "main", {**self.keys, **changes})
        chown_tree(self.workdir)
        return path

    def cloudbm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return as_postgres(
            [str(CLOUDBM), "--config", str(self.config), *args],
            env=self.target.env,
            cwd=self.cluster.pgdata,
            check=False,
            timeout=timeout,
        )

    def cloudbm_background(self, *args: str) -> subprocess.Popen[str]:
        env = {"PATH": "/usr/bin:/bin", **self.target.env}
        cmd = [
            "runuser",
            "-u",
            "postgres",
            "--",
            "env",
            *(f"{k}={v}" for k, v in env.items()),
            str(CLOUDBM),
            "--config",
            str(self.config),
            *args,
        ]
        return subprocess.Popen(
            cmd, cwd=self.cluster.pgdata, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def pgbench(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [
            "runuser",
            "-u",
            "postgres",
            "--",
            "/usr/bin/pgbench",
            "-h",
            str(self.cluster.socket_dir),
            "-p",
            str(self.cluster.port),
            *args,
            "postgres",
        ]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def tablespaces(self) -> list[datadir.Tablespace]:
        return datadir.list_tablespaces(self.cluster.pgdata)


@contextmanager
def make_site(
    backend: str,
    endpoints: Any,
    bin_dir: Path | None = None,
    major: int = 15,
    extra_keys: dict[str, Any] | None = None,
) -> Iterator[Site]:
    workdir = postgres_dir(f"cloudbm-bk-{backend}-")
    target = make_target(backend, endpoints, workdir)
    (workdir / "ts").mkdir()
    subprocess.run(
        [str(CLOUDBM), "keygen", "--type", "symmetric", str(workdir / "repo.key")],
        check=True,
        capture_output=True,
    )
    config = workdir / "cloudbm.toml"
    keys: dict[str, Any] = {
        "repository": target.url,
        "spool_directory": str(workdir / "spool"),
        "encryption": "keyfile",
        "key_file": str(workdir / "repo.key"),
        "backup_part_size": 4 * 1024 * 1024,
        "wal_wait_timeout": 60,
        **target.keys,
        **(extra_keys or {}),
    }
    write_config(config, "main", keys)  # archive_command needs it before the server starts
    chown_tree(workdir)
    command = f"{CLOUDBM} --config {config} wal-push %p"
    try:
        with running_cluster(
            command, env=target.env, bin_dir=bin_dir or Path("/usr/lib/postgresql/15/bin")
        ) as cluster:
            keys["conninfo"] = (
                f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
            )
            keys["pgdata"] = str(cluster.pgdata)
            write_config(config, "main", keys)
            cluster.psql(f"CREATE TABLESPACE ts LOCATION '{workdir / 'ts'}'")
            cluster.psql("CREATE TABLE in_ts (id int, v text) TABLESPACE ts")
            cluster.psql("INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            cluster.psql("CREATE UNLOGGED TABLE scratch (id int)")
            cluster.psql("INSERT INTO scratch SELECT generate_series(1, 1000)")
            yield Site(cluster, target, workdir, config, major, keys)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def env_for(monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(site: Site) -> None:
        for key, value in site.target.env.items():
            monkeypatch.setenv(key, value)

    return apply


def _backup_under_load(site: Site) -> dict[str, Any]:
    """pgbench init, then a backup while pgbench writes; returns the --json summary."""
    init = site.pgbench("-i", "-s", "2", "-q")
    assert init.wait(timeout=120) == 0, init.stderr.read() if init.stderr else ""
    before = stable_files(site.cluster.pgdata, site.major, site.tablespaces())
    load = site.pgbench("-T", "8", "-c", "2")
    try:
        time.sleep(1)
        res = site.cloudbm("--json", "backup-push", "--label", "under load")
    finally:
        load.wait(timeout=60)
    assert res.returncode == 0, res.stderr + site.cluster.server_log()[-2000:]
    after = stable_files(site.cluster.pgdata, site.major, site.tablespaces())
    summary: dict[str, Any] = json.loads(res.stdout)
    summary["_stable"] = before & after
    return summary


def _verify(site: Site, summary: dict[str, Any], env_for: Any) -> None:
    env_for(site)
    repo = open_repo(site.config)
    try:
        manifest = load_manifest(repo, summary["backup_id"])
        assert manifest.status == "DONE"
        records = decode_all_parts(repo, manifest)
        check_against_datadir(records, site.cluster.pgdata, site.major, summary["_stable"])
        spaces = {t.name: t for t in manifest.tablespaces}
        assert spaces["ts"].location == str(site.workdir / "ts")
        assert any(p.startswith(f"pg_tblspc/{spaces['ts'].oid}/PG_") for p in records)
        # unlogged relation: only its init fork is backed up
        relpath = site.cluster.psql("SELECT pg_relation_filepath('scratch')")
        assert relpath not in records and relpath + "_init" in records
        assert manifest.start_wal <= manifest.stop_wal
    finally:
        repo.storage.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backup_under_load_decodes_to_the_manifest(
    backend: str, localstack_endpoints: Any, env_for: Any
) -> None:
    with make_site(backend, localstack_endpoints) as site:
        summary = _backup_under_load(site)
        assert len(summary["parts"]) >= 2  # 4 MiB parts: the data spans several
        _verify(site, summary, env_for)
        listed = site.cloudbm("--json", "backup-list")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["backups"]
        assert row["status"] == "DONE" and row["backup_id"] == summary["backup_id"]
        shown = site.cloudbm("backup-show", "latest")
        assert shown.returncode == 0, shown.stderr
        assert summary["backup_id"] in shown.stdout and "ts (oid" in shown.stdout


@pytest.mark.parametrize("major", OTHER_MAJORS)
def test_backup_on_every_supported_major(major: int, env_for: Any) -> None:
    bindir = subprocess.run(
        [str(ROOT / "pgversions" / "bindir"), str(major)], capture_output=True, text=True
    )
    assert bindir.returncode == 0, bindir.stderr
    with make_site("local", None, bin_dir=Path(bindir.stdout.strip()), major=major) as site:
        summary = _backup_under_load(site)
        assert summary["pg_version_num"] // 10000 == major
        _verify(site, summary, env_for)


def _backup_caught_copying(site: Site) -> tuple[subprocess.Popen[str], Path]:
    """A backup-push in the background, once it is copying (a bandwidth limit in the site's
    configuration keeps it there); the process and the file repository's directory."""
    init = site.pgbench("-i", "-s", "2", "-q")
    assert init.wait(timeout=120) == 0
    running = site.cloudbm_background("backup-push", "--no-progress")
    repo_dir = Path(site.target.url.removeprefix("file://"))
    deadline = time.monotonic() + 60
    while not list(repo_dir.glob("backups/*/data/part-00001*")):
        assert running.poll() is None, running.communicate()
        assert time.monotonic() < deadline, "backup never started copying"
        time.sleep(0.1)
    return running, repo_dir


def _signal_backup(site: Site, signum: int) -> None:
    """Signal the cloudbm process itself, not runuser (its parent, which would end the
    session with a signal of its own)."""
    pids = subprocess.run(
        ["pgrep", "-f", f"{CLOUDBM} --config {site.config} backup-push"],
        capture_output=True,
        text=True,
    ).stdout.split()
    for pid in pids:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "runuser":
            os.kill(int(pid), signum)


def test_killed_backup_never_looks_done_and_a_second_run_is_refused(env_for: Any) -> None:
    # A bandwidth limit keeps the first run busy long enough to be caught mid-copy.
    with make_site("local", None, extra_keys={"bandwidth_limit": 256}) as site:
        first, repo_dir = _backup_caught_copying(site)
        second = site.cloudbm("backup-push")
        assert second.returncode == 3, second.stderr
        assert "another backup-push" in second.stderr
        _signal_backup(site, signal.SIGKILL)
        first.wait(timeout=30)
        assert not list(repo_dir.glob("backups/*/manifest.json"))
        listed = site.cloudbm("--json", "backup-list")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["backups"]
        assert row["status"] in ("INCOMPLETE", "FAILED"), row
        assert site.cloudbm("backup-show", "latest").returncode == 1
        # the server ended backup mode with the session: a new backup works
        res = site.cloudbm("--json", "backup-push", "--bandwidth-limit", "1000000")
        assert res.returncode == 0, res.stderr


def test_a_terminated_backup_is_recorded_failed_and_frees_its_lease(env_for: Any) -> None:
    # systemctl stop sends SIGTERM: the run must say how it ended, not vanish mid-write.
    with make_site("local", None, extra_keys={"bandwidth_limit": 256}) as site:
        first, repo_dir = _backup_caught_copying(site)
        _signal_backup(site, signal.SIGTERM)
        _out, err = first.communicate(timeout=60)
        assert first.returncode == 143, err
        assert "stopped by SIGTERM" in err
        listed = site.cloudbm("--json", "backup-list")
        (row,) = json.loads(listed.stdout)["backups"]
        assert row["status"] == "FAILED", row
        assert list(repo_dir.glob("locks/backup/*.released")), "the lease was not given back"
        res = site.cloudbm("--json", "backup-push", "--bandwidth-limit", "1000000")
        assert res.returncode == 0, res.stderr


def test_hooks_see_the_backup_and_its_outcome(env_for: Any) -> None:
    with make_site("local", None) as site:
        record = site.workdir / "hooks.log"
        hook = site.workdir / "hook.sh"
        hook.write_text(
            "#!/bin/sh\n"
            f'echo "$CLOUDBM_PHASE $CLOUDBM_STATUS $CLOUDBM_BACKUP_ID $CLOUDBM_SERVER '
            f'$CLOUDBM_PREVIOUS_ID|$CLOUDBM_ERROR" >> {record}\n'
        )
        hook.chmod(0o755)
        text = site.config.read_text()
        site.config.write_text(
            text + f'pre_backup_script = "{hook}"\npost_backup_script = "{hook}"\n'
        )
        chown_tree(site.workdir)
        first = site.cloudbm("--json", "backup-push", "--no-progress")
        assert first.returncode == 0, first.stderr
        second = site.cloudbm("--json", "backup-push", "--no-progress")
        assert second.returncode == 0, second.stderr
        id1, id2 = json.loads(first.stdout)["backup_id"], json.loads(second.stdout)["backup_id"]
        lines = record.read_text().splitlines()
        assert lines[0] == f"pre STARTED {id1} main |"
        assert lines[1] == f"post DONE {id1} main |"
        assert lines[2] == f"pre STARTED {id2} main {id1}|"
        assert lines[3] == f"post DONE {id2} main {id1}|"


def test_backup_from_a_standby_waits_for_the_primary_to_archive(env_for: Any) -> None:
    with make_site("local", None) as site:
        primary = site.cluster
        primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        standby_dir = site.workdir / "standby"
        as_postgres(
            [
                "/usr/lib/postgresql/15/bin/pg_basebackup",
                "-h",
                str(primary.socket_dir),
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(standby_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--tablespace-mapping",
                f"{site.workdir / 'ts'}={site.workdir / 'ts2'}",
            ]
        )
        standby = PgCluster(site.workdir, 0)
        standby.pgdata = standby_dir
        standby.port = free_port()
        standby.log_path = site.workdir / "standby.log"
        standby.configure(
            {
                "port": str(standby.port),
                "archive_mode": "on",
                "unix_socket_directories": f"'{site.workdir}'",
            }
        )
        standby.start(site.target.env)
        try:
            assert standby.psql("SELECT pg_is_in_recovery()") == "t"
            text = site.config.read_text()
            config = site.workdir / "standby.toml"
            config.write_text(
                text.replace(
                    f"host={primary.socket_dir} port={primary.port}",
                    f"host={site.workdir} port={standby.port}",
                ).replace(str(primary.pgdata), str(standby_dir))
            )
            chown_tree(site.workdir)
            env = {"PATH": "/usr/bin:/bin", **site.target.env}
            proc = subprocess.Popen(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    "env",
                    *(f"{k}={v}" for k, v in env.items()),
                    str(CLOUDBM),
                    "--config",
                    str(config),
                    "--json",
                    "backup-push",
                    "--no-progress",
                ],
                cwd=standby_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # A standby's stop does not switch WAL: the primary must, as archive_timeout would.
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                primary.psql("INSERT INTO t VALUES (0); SELECT pg_switch_wal()")
                time.sleep(0.5)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            summary = json.loads(out)
            assert summary["backup_from"] == "standby"
            env_for(site)
            repo = open_repo(site.config)
            try:
                decode_all_parts(repo, load_manifest(repo, summary["backup_id"]))
            finally:
                repo.storage.close()
        finally:
            standby.stop("immediate")


# --- transient storage errors while waiting for WAL (issue 9, defect 6) ----------------------


def test_transient_errors_while_waiting_for_wal_are_polled_through(
    localstack_endpoints: Any, env_for: Any
) -> None:
    from tests.integration.faults import start_proxy

    with make_site("s3", localstack_endpoints) as site:
        # Only backup-push goes through the proxy (the archiver does not): the first 12 HEADs of
        # WAL objects fail, more than one storage call's five attempts in a row.
        with start_proxy(
            "s3",
            localstack_endpoints,
            rate=1.0,
            kinds=["status-503", "reset"],
            only=r"^HEAD .*/wal/",
            max_faults=12,
            seed=6,
        ) as proxy:
            # Two attempts per storage call: the wait itself must look again.
            config = site.variant("proxied", s3_endpoint_url=proxy.url, max_attempts=2)
            res = site.cloudbm("--config", str(config), "--json", "backup-push", "--no-progress")
            faults = proxy.faults
        assert res.returncode == 0, res.stderr
        assert faults == 12
        assert "retrying" in res.stderr  # each failed look is logged
        env_for(site)
        repo = open_repo(site.config)
        try:
            assert load_manifest(repo, json.loads(res.stdout)["backup_id"]).status == "DONE"
        finally:
            repo.storage.close()


# --- one backup at a time per server, whatever the host or spool (issue 9, defect 7) ---------


def _cloudbm_pids(config: Path) -> list[int]:
    """The cloudbm processes running backup-push with `config` (not their runuser parent,
    which runs as root)."""
    out = subprocess.run(
        ["pgrep", "-u", "postgres", "-f", f"{CLOUDBM} --config {config} backup-push"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return [int(p) for p in out]


def _wait_copying(site: Site, proc: subprocess.Popen[str]) -> None:
    repo_dir = Path(site.target.url.removeprefix("file://"))
    deadline = time.monotonic() + 60
    while not list(repo_dir.glob("backups/*/data/part-00001*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup never started copying"
        time.sleep(0.1)


def test_a_second_backup_with_another_spool_directory_is_refused_naming_the_holder() -> None:
    import socket

    with make_site("local", None, extra_keys={"bandwidth_limit": 64}) as site:
        first = site.cloudbm_background("backup-push", "--no-progress")
        try:
            _wait_copying(site, first)
            (pid,) = _cloudbm_pids(site.config)
            other = site.variant("other-spool", spool_directory=str(site.workdir / "spool2"))
            second = site.cloudbm(
                "--config",
                str(other),
                "backup-push",
                "--no-progress",
                "--bandwidth-limit",
                "999999",
            )
            assert second.returncode == 3, second.stderr
            assert "another backup-push of server 'main' is running" in second.stderr
            assert socket.gethostname() in second.stderr and f"pid {pid}" in second.stderr
            assert first.poll() is None  # the holder is untouched
        finally:
            for pid in _cloudbm_pids(site.config):
                os.kill(pid, signal.SIGKILL)
            first.wait(timeout=30)
        # The holder died: on its own host that is known at once, no need to wait for expiry.
        again = site.cloudbm(
            "--config",
            str(other),
            "--json",
            "backup-push",
            "--no-progress",
            "--bandwidth-limit",
            "999999",
        )
        assert again.returncode == 0, again.stderr


def test_a_dead_hosts_stale_lease_is_taken_over_after_its_ttl() -> None:
    with make_site("local", None, extra_keys={"backup_lease_ttl": 3}) as site:
        repo_dir = Path(site.target.url.removeprefix("file://"))
        locks = repo_dir / "locks" / "backup"
        locks.mkdir(parents=True)
        # A lease as docs/format.md describes it, from a host that then died.
        (locks / "lease-0000000001.json").write_text(
            json.dumps(
                {
                    "format_version": 1,
                    "lease": 1,
                    "owner": "0" * 32,
                    "server": "main",
                    "host": "db-old",
                    "pid": 4242,
                    "user": "postgres",
                    "ttl": 3,
                    "taken": "2026-01-01T00:00:00Z",
                    "process": {"boot_id": "elsewhere", "pid_ns": "", "start_ticks": 0},
                    "cloudbm_version": "0",
                }
            )
        )
        chown_tree(repo_dir)
        written = time.monotonic()
        refused = site.cloudbm("backup-push", "--no-progress")
        assert refused.returncode == 3, refused.stderr
        assert "db-old" in refused.stderr and "pid 4242" in refused.stderr
        time.sleep(max(0.0, written + 3.5 - time.monotonic()))
        taken = site.cloudbm("--json", "backup-push", "--no-progress")
        assert taken.returncode == 0, taken.stderr
        names = sorted(p.name for p in locks.iterdir() if not p.name.endswith(".cbmeta"))
        # Lease 2 was taken and released; the dead lease 1 was cleaned up.
        assert names == ["lease-0000000002.json", "lease-0000000002.released"], names


def test_a_holder_paused_past_the_ttl_loses_its_lease_and_its_backup_fails() -> None:
    keys = {"bandwidth_limit": 256, "backup_lease_ttl": 3}
    with make_site("local", None, extra_keys=keys) as site:
        other = site.variant("other-spool", spool_directory=str(site.workdir / "spool2"))
        args = ("--config", str(other), "--json", "backup-push", "--no-progress")
        fast = ("--bandwidth-limit", "999999")
        first = site.cloudbm_background("backup-push", "--no-progress")
        try:
            _wait_copying(site, first)
            (pid,) = _cloudbm_pids(site.config)
            os.kill(pid, signal.SIGSTOP)
            paused = time.monotonic()
            assert site.cloudbm(*args, *fast).returncode == 3  # paused, not yet expired
            time.sleep(max(0.0, paused + 3.5 - time.monotonic()))
            second = site.cloudbm(*args, *fast)
            assert second.returncode == 0, second.stderr
            # runuser stopped itself with its child (as su does): wake both.
            for stopped in (pid, first.pid):
                os.kill(stopped, signal.SIGCONT)
            _, err = first.communicate(timeout=60)
            assert first.returncode == 3, err
            assert "lease" in err and "taken over" in err
        finally:
            for pid in _cloudbm_pids(site.config):
                os.kill(pid, signal.SIGKILL)
            if first.poll() is None:
                os.kill(first.pid, signal.SIGCONT)
                first.wait(timeout=30)
        listed = site.cloudbm("--json", "backup-list")
        statuses = sorted(b["status"] for b in json.loads(listed.stdout)["backups"])
        assert statuses == ["DONE", "FAILED"], statuses


# --- a mis-set archive_command is found within seconds (issue 9, defect 11) ------------------


def _set_archive_command(site: Site, command: str) -> None:
    quoted = command.replace("'", "''")
    site.cluster.psql(f"ALTER SYSTEM SET archive_command = '{quoted}'")
    site.cluster.psql("SELECT pg_reload_conf()")


def _timed_backup(site: Site) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    res = site.cloudbm("backup-push", "--no-progress", timeout=200)
    return res, time.monotonic() - began


def _archiver_line(site: Site) -> str:
    res = site.cloudbm("check")
    assert res.returncode == 3, res.stdout + res.stderr
    (line,) = [row for row in res.stdout.splitlines() if ": archiver: " in row]
    return line


def test_an_archive_command_that_archives_nowhere_fails_the_backup_within_seconds() -> None:
    with make_site("local", None) as site:  # wal_wait_timeout is 60 s
        _set_archive_command(site, "true")
        res, elapsed = _timed_backup(site)
        assert res.returncode == 3, res.stderr
        assert "archive_command = 'true'" in res.stderr and "not in" in res.stderr
        assert elapsed < 20, f"took {elapsed:.1f}s: {res.stderr}"
        line = _archiver_line(site)
        assert "archiver: FAILED" in line and "'true'" in line, line


def test_a_failing_archiver_fails_the_backup_within_seconds() -> None:
    with make_site("local", None) as site:
        _set_archive_command(site, "false")
        res, elapsed = _timed_backup(site)
        assert res.returncode == 3, res.stderr
        assert "archiver is failing" in res.stderr and "archive_command = 'false'" in res.stderr
        assert elapsed < 20, f"took {elapsed:.1f}s: {res.stderr}"


def test_an_archive_command_for_another_repository_fails_the_backup_within_seconds() -> None:
    with make_site("local", None) as site:
        elsewhere = site.workdir / "elsewhere"
        elsewhere.mkdir()
        other = site.variant("elsewhere", repository=f"file://{elsewhere}")
        command = f"{CLOUDBM} --config {other} wal-push %p"
        _set_archive_command(site, command)
        res, elapsed = _timed_backup(site)
        assert res.returncode == 3, res.stderr
        assert f"archive_command = '{command}'" in res.stderr, res.stderr
        assert elapsed < 20, f"took {elapsed:.1f}s: {res.stderr}"
        check = site.cloudbm("check")
        assert "archive_command: OK" in check.stdout  # it looks right: only the archiver tells
        line = _archiver_line(site)
        assert "archiver: FAILED" in line and str(other) in line, line


def test_a_slow_but_healthy_archiver_is_waited_for() -> None:
    with make_site("local", None) as site:
        _set_archive_command(site, f"sleep 3 && {CLOUDBM} --config {site.config} wal-push %p")
        site.cluster.wait_archived(timeout=60)  # drain what is pending at the slow pace
        res, elapsed = _timed_backup(site)
        assert res.returncode == 0, res.stderr
        assert elapsed > 3  # it did wait for the archiver
