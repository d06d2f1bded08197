"""The day it matters most: the whole job through a network that fails one request in five.

For each cloud emulator (S3, GCS, Azure) a real cluster archives through the fault-injecting
proxy (localstack/faultproxy.py: resets, 503s, cut bodies, cut headers, held and dropped
responses), and then, still through it: backup-push, verify, check, wal-verify, a second
backup, retention, and recover + start + a data check with wal-fetch as the restore_command.
Every command must succeed, nothing may be reported corrupt or missing, and the recovered data
must equal the source's. The proxy's counts prove the faults happened.

bench/fault_soak.py runs the same journey for longer (1,000+ injected faults).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faults import PROXIED_BACKENDS, start_proxy, through_proxy
from tests.integration.pgcluster import (
    CLOUDBM,
    PgCluster,
    as_postgres,
    chown_tree,
    postgres_dir,
    running_cluster,
)
from tests.integration.recovery import snapshot, start_recovered, wait_promoted
from tests.integration.repos import RepoTarget, make_target, write_config

pytestmark = pytest.mark.integration

FAULT_RATE = 0.2
# Short network deadlines so a held response costs about a second, and enough time for
# retries to get through a run of faults.
NETWORK_KEYS: dict[str, Any] = {
    "connect_timeout": 2,
    "read_timeout": 2,
    "operation_timeout": 120,
    "wal_wait_timeout": 180,
}


@dataclass
class FaultySite:
    cluster: PgCluster
    target: RepoTarget
    config: Path
    workdir: Path
    commands: int = 0  # cloudbm commands run by the journey (archive/restore calls aside)
    restored: int = 0  # files the recovered servers' restore_command delivered

    def cloudbm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        self.commands += 1
        return as_postgres(
            [str(CLOUDBM), "--config", str(self.config), *args],
            env=self.target.env,
            cwd=self.cluster.pgdata,
            check=False,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        res = self.cloudbm(*args)
        assert res.returncode == 0, f"cloudbm {' '.join(args)}: {res.returncode}\n{res.stderr}"
        return res.stdout

    def write(self, first: int, count: int) -> None:
        self.cluster.psql(
            f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({first}, "
            f"{first + count - 1}) g"
        )


@contextmanager
def faulty_site(target: RepoTarget, workdir: Path) -> Iterator[FaultySite]:
    """A cluster whose archive_command reaches `target` (already routed through a proxy)."""
    subprocess.run(
        [str(CLOUDBM), "keygen", "--type", "x25519", str(workdir / "repo.key")],
        check=True,
        capture_output=True,
    )
    config = workdir / "cloudbm.toml"
    keys: dict[str, Any] = {
        "repository": target.url,
        "spool_directory": str(workdir / "spool"),
        "encryption": "public-key",
        "public_key_file": str(workdir / "repo.key.pub"),
        "private_key_file": str(workdir / "repo.key"),
        "backup_part_size": 2 * 1024 * 1024,
        "multipart_threshold": 1024 * 1024,
        "retention_policy": "REDUNDANCY 1",
        **NETWORK_KEYS,
        **target.keys,
    }
    write_config(config, "main", keys)
    chown_tree(workdir)
    command = f"{CLOUDBM} --config {config} wal-push %p"
    with running_cluster(command, env=target.env) as cluster:
        keys["conninfo"] = (
            f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
        )
        keys["pgdata"] = str(cluster.pgdata)
        write_config(config, "main", keys)
        yield FaultySite(cluster, target, config, workdir)


def recover_and_compare(site: FaultySite, expected: str) -> None:
    """recover latest into a new directory, start it, replay through wal-fetch, compare."""
    restores = postgres_dir("cloudbm-faults-restore-")
    try:
        dest = restores / "data"
        site.ok("recover", "latest", str(dest), "--no-progress", "--archive-mode", "off")
        recovered = start_recovered(dest, site.cluster.bin_dir, site.target.env)
        try:
            wait_promoted(recovered, timeout=300)
            assert snapshot(recovered) == expected, recovered.server_log()[-3000:]
            site.restored += recovered.server_log().count("restored log file")
        finally:
            recovered.stop("immediate")
    finally:
        shutil.rmtree(restores, ignore_errors=True)


def journey_round(site: FaultySite, number: int, kept: str | None) -> str:
    """Write, back up twice, verify, check, apply retention, recover and compare; returns the
    id of the backup retention kept. `kept`: the backup the previous round left."""
    c = site.cluster
    base = number * 100_000
    site.write(base + 1, 20_000)
    c.wait_archived(timeout=300)
    first = str(json.loads(site.ok("--json", "backup-push", "--no-progress"))["backup_id"])
    site.write(base + 20_001, 20_000)
    c.psql(f"UPDATE t SET v = 'changed {number}' WHERE id % 7 = {number % 7}")
    second = str(json.loads(site.ok("--json", "backup-push", "--no-progress"))["backup_id"])
    site.write(base + 40_001, 5_000)
    expected = snapshot(c)
    c.wait_archived(timeout=300)

    site.ok("verify", second)
    site.ok("wal-verify")
    site.ok("check")
    listed = json.loads(site.ok("--json", "backup-list"))["backups"]
    assert [b["backup_id"] for b in listed] == [*([kept] if kept else []), first, second]
    assert all(b["status"] == "DONE" for b in listed), listed

    retention = json.loads(site.ok("--json", "retention"))["servers"][0]
    assert retention["backups_removed"] == [*([kept] if kept else []), first], retention
    listed = json.loads(site.ok("--json", "backup-list"))["backups"]
    assert [b["backup_id"] for b in listed] == [second]

    recover_and_compare(site, expected)
    return second


def run_journey(backend: str, endpoints: Any, rounds: int, seed: int) -> dict[str, Any]:
    """The journey on one backend through a 20% faulty network; the proxy's summary."""
    workdir = postgres_dir(f"cloudbm-faults-{backend}-")
    proxy = start_proxy(backend, endpoints, rate=FAULT_RATE, seed=seed, hold_seconds=3)
    try:
        target = through_proxy(make_target(backend, endpoints, workdir), proxy)
        with faulty_site(target, workdir) as site:
            site.cluster.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
            kept = None
            for number in range(rounds):
                kept = journey_round(site, number, kept)
            archived, failed = site.cluster.psql(
                "SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver"
            ).split()
            work = {
                "commands": site.commands,
                "archived": int(archived),
                "archive_command_failures": int(failed),
                "restored": site.restored,
            }
    finally:
        proxy.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"backend": backend, "rounds": rounds, **work, **proxy.summary()}


@pytest.mark.parametrize("backend", PROXIED_BACKENDS)
def test_the_whole_job_survives_one_request_in_five_failing(
    backend: str, localstack_endpoints: Any
) -> None:
    rounds = int(os.environ.get("CLOUDBM_FAULT_ROUNDS", "1"))
    summary = run_journey(backend, localstack_endpoints, rounds, seed=9)
    report = os.environ.get("CLOUDBM_FAULT_REPORT")
    if report:  # bench/fault_soak.py collects these
        with open(report, "a") as fh:
            fh.write(json.dumps(summary, sort_keys=True) + "\n")
    assert summary["faults"] >= 40 * rounds, summary
    assert set(summary["by_kind"]) == {
        "reset",
        "status-503",
        "cut-body",
        "cut-headers",
        "hold",
        "drop-response",
    }, summary
