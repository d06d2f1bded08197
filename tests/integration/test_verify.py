"""`cloudbm verify`: a storage error is not damage (issue 9, defect 1).

One DONE backup of a real cluster in the S3 emulator; verify then runs through the
fault-injecting proxy with every GET of one part failing (a storage error that survives the
retries), alone and beside a part whose bytes were altered.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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

# Every GET of part-00001's tar (not its .files list), whichever way the SDK addresses it.
PART_1_GET = r"^GET \S*/data/part-00001(\?| )"


@dataclass
class Backed:
    cluster: PgCluster
    target: RepoTarget
    keys: dict[str, Any]
    workdir: Path
    backup_id: str
    endpoints: Any

    def verify_through(self, proxy: Any, tag: str) -> Any:
        """`cloudbm verify` with every request going through `proxy`."""
        target = through_proxy(self.target, proxy)
        config = write_config(
            self.workdir / f"{tag}.toml",
            "main",
            {**self.keys, **target.keys, "max_attempts": 2, "operation_timeout": 5},
        )
        return as_postgres(
            [str(CLOUDBM), "--config", str(config), "verify", self.backup_id],
            env=target.env,
            cwd=self.cluster.pgdata,
            check=False,
        )


@pytest.fixture(scope="module")
def backed(localstack_endpoints: Any) -> Iterator[Backed]:
    workdir = postgres_dir("cloudbm-verify-")
    target = make_target("s3", localstack_endpoints, workdir)
    keys: dict[str, Any] = {
        "repository": target.url,
        "spool_directory": str(workdir / "spool"),
        "backup_part_size": 2 * 1024 * 1024,
        "connect_timeout": 2,
        "read_timeout": 2,
        **target.keys,
    }
    config = write_config(workdir / "cloudbm.toml", "main", keys)
    chown_tree(workdir)
    command = f"{CLOUDBM} --config {config} wal-push %p"
    try:
        with running_cluster(command, env=target.env) as cluster:
            keys["conninfo"] = (
                f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
            )
            keys["pgdata"] = str(cluster.pgdata)
            write_config(config, "main", keys)
            cluster.psql(
                "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v"
                " FROM generate_series(1, 100000) g"
            )
            res = as_postgres(
                [str(CLOUDBM), "--config", str(config), "--json", "backup-push", "--no-progress"],
                env=target.env,
                cwd=cluster.pgdata,
                check=False,
                timeout=300,
            )
            assert res.returncode == 0, res.stderr
            backup_id = str(json.loads(res.stdout)["backup_id"])
            yield Backed(cluster, target, keys, workdir, backup_id, localstack_endpoints)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _s3(backed: Backed) -> tuple[Any, str, str]:
    import boto3

    e = backed.endpoints
    client = boto3.client(
        "s3",
        endpoint_url=e.s3_url,
        region_name=e.region,
        aws_access_key_id=e.aws_access_key_id,
        aws_secret_access_key=e.aws_secret_access_key,
    )
    bucket, _, prefix = backed.target.url.removeprefix("s3://").partition("/")
    return client, bucket, f"{prefix}/backups/{backed.backup_id}/data/"


def test_verify_passes_through_a_clean_proxy(backed: Backed) -> None:
    with start_proxy("s3", backed.endpoints, rate=0.0) as proxy:
        res = backed.verify_through(proxy, "clean")
    assert res.returncode == 0, res.stderr


def test_a_part_storage_cannot_deliver_is_a_storage_error_not_damage(backed: Backed) -> None:
    with start_proxy(
        "s3", backed.endpoints, rate=1.0, kinds=["status-503"], only=PART_1_GET
    ) as proxy:
        res = backed.verify_through(proxy, "unreadable")
        assert proxy.faults > 0, proxy.summary()
    assert res.returncode == 4, res.stderr
    assert "part-00001" in res.stderr
    assert "damaged" not in res.stderr and "another backup" not in res.stderr


def test_damage_and_a_storage_error_are_both_reported(backed: Backed) -> None:
    client, bucket, data_prefix = _s3(backed)
    key = data_prefix + "part-00002"
    obj = client.get_object(Bucket=bucket, Key=key)
    original, meta = obj["Body"].read(), obj["Metadata"]
    assert len(original) > 1000
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(flipped), Metadata=meta)
    try:
        with start_proxy(
            "s3", backed.endpoints, rate=1.0, kinds=["status-503"], only=PART_1_GET
        ) as proxy:
            res = backed.verify_through(proxy, "mixed")
        assert res.returncode == 5, res.stderr
        assert "part-00002" in res.stderr and "damaged" in res.stderr
        assert "part-00001" in res.stderr and "could not be read" in res.stderr
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=original, Metadata=meta)
