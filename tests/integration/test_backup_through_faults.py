"""backup-push and the catalogue above a storage that loses answers.

A real cluster backs up to S3 through the fault-injecting proxy. The create-if-absent write of
`started.json` takes effect and its response is dropped: backup-push must see that the object
it then finds is its own and keep its id — no `<ID>-1`, no phantom INCOMPLETE backup (defect 5
of issue 9). Then the catalogue, the descriptor and the backup's objects are read back through
every kind of fault: a network fault must never read as "no DONE backup", a manifest that is
not valid, or an object that is corrupt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from cloudbm.repository import Repository
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.layout import manifest_key
from tests.integration.backup_checks import open_repo
from tests.integration.faults import start_proxy, through_proxy
from tests.integration.pgcluster import (
    CLOUDBM,
    PgCluster,
    as_postgres,
    chown_tree,
    postgres_dir,
    running_cluster,
)
from tests.integration.repos import RepoTarget, make_target, write_config

pytestmark = pytest.mark.integration

# Held responses must cost about a second, not read_timeout's default minute.
NETWORK = {"connect_timeout": 2, "read_timeout": 1, "operation_timeout": 60}


class Site:
    def __init__(self, cluster: PgCluster, target: RepoTarget, workdir: Path, keys: dict[str, Any]):
        self.cluster = cluster
        self.target = target
        self.workdir = workdir
        self.keys = keys

    def config(self, name: str, target: RepoTarget) -> Path:
        """A configuration for this server reaching the repository as `target` says."""
        path = write_config(self.workdir / f"{name}.toml", "main", {**self.keys, **target.keys})
        chown_tree(self.workdir)
        return path

    def cloudbm(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return as_postgres(
            [str(CLOUDBM), "--config", str(config), *args],
            env=self.target.env,
            cwd=self.cluster.pgdata,
            check=False,
            timeout=300,
        )


@contextmanager
def s3_site(endpoints: Any) -> Iterator[Site]:
    """A cluster archiving (directly, no faults) into a fresh S3 bucket."""
    workdir = postgres_dir("cloudbm-bkfault-")
    target = make_target("s3", endpoints, workdir)
    subprocess.run(
        [str(CLOUDBM), "keygen", "--type", "symmetric", str(workdir / "repo.key")],
        check=True,
        capture_output=True,
    )
    keys: dict[str, Any] = {
        "repository": target.url,
        "spool_directory": str(workdir / "spool"),
        "encryption": "keyfile",
        "key_file": str(workdir / "repo.key"),
        "backup_part_size": 8 * 1024 * 1024,
        "wal_wait_timeout": 60,
        **NETWORK,
    }
    site = Site(None, target, workdir, keys)  # type: ignore[arg-type]
    direct = site.config("cloudbm", target)
    try:
        with running_cluster(f"{CLOUDBM} --config {direct} wal-push %p", env=target.env) as cluster:
            keys["conninfo"] = (
                f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
            )
            keys["pgdata"] = str(cluster.pgdata)
            site.cluster = cluster
            site.config("cloudbm", target)
            cluster.psql(
                "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                "FROM generate_series(1, 20000) g"
            )
            yield site
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _raw(repo: Repository, key: str) -> bytes:
    with repo.storage.get(key) as reader:
        return reader.read()


def _catalogue_view(repo: Repository) -> list[tuple[str, str, Any]]:
    return [
        (e.backup_id, e.status, asdict(e.manifest) if e.manifest else None)
        for e in load_catalogue(repo)
    ]


def test_a_dropped_response_to_started_json_keeps_the_backup_id_and_leaves_no_phantom(
    localstack_endpoints: Any,
) -> None:
    with (
        s3_site(localstack_endpoints) as site,
        start_proxy(
            "s3",
            localstack_endpoints,
            rate=1.0,
            kinds=["drop-response"],
            only=r"^PUT .*started[.]json",
            max_faults=1,
        ) as proxy,
    ):
        dropping = site.config("dropping", through_proxy(site.target, proxy))
        res = site.cloudbm(dropping, "--json", "backup-push")
        assert res.returncode == 0, res.stderr
        assert proxy.counts["drop-response"] == 1
        backup_id = json.loads(res.stdout)["backup_id"]
        assert "-" not in backup_id, backup_id

        listed = site.cloudbm(site.config("cloudbm", site.target), "--json", "backup-list")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)["backups"]
        assert [(r["backup_id"], r["status"]) for r in rows] == [(backup_id, "DONE")], rows


def test_the_catalogue_and_the_backup_read_through_faults_are_what_is_stored(
    localstack_endpoints: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_site(localstack_endpoints) as site:
        direct = site.config("cloudbm", site.target)
        for _ in range(2):
            res = site.cloudbm(direct, "--json", "backup-push")
            assert res.returncode == 0, res.stderr
        for key, value in site.target.env.items():
            monkeypatch.setenv(key, value)
        clean = open_repo(direct)
        expected = _catalogue_view(clean)
        assert [status for _, status, _ in expected] == ["DONE", "DONE"]
        manifest = load_catalogue(clean)[-1].manifest
        assert manifest is not None
        manifest_raw = _raw(clean, manifest_key(manifest.backup_id))
        files = {p.files_key: clean.get_bytes(p.files_key)[0] for p in manifest.parts}
        descriptor = clean.read_descriptor()
        clean.storage.close()

        with start_proxy("s3", localstack_endpoints, rate=0.3, seed=9, hold_seconds=2.0) as proxy:
            faulty = site.config("faulty", through_proxy(site.target, proxy))
            for _ in range(3):
                repo = open_repo(faulty)
                try:
                    assert repo.read_descriptor() == descriptor
                    assert _catalogue_view(repo) == expected
                    assert _raw(repo, manifest_key(manifest.backup_id)) == manifest_raw
                    for key, plaintext in files.items():
                        assert repo.get_bytes(key)[0] == plaintext
                finally:
                    repo.storage.close()
            summary = proxy.summary()
        assert all(summary["by_kind"].get(k, 0) > 0 for k in ("cut-headers", "cut-body")), summary
