"""WAL archiving end to end: a real PostgreSQL 15 archives through `cloudbm wal-push` into each
backend (real servers on 127.0.0.1), and `cloudbm wal-fetch` brings every segment back.

One cluster per backend is shared by the tests of this module; each backend also exercises a
different key source and compression so the whole matrix is covered without repeating it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.pgcluster import (
    CLOUDBM,
    PgCluster,
    as_postgres,
    chown_tree,
    postgres_dir,
    running_cluster,
)
from tests.integration.repos import BACKENDS, RepoTarget, make_target, write_config

pytestmark = pytest.mark.integration

# backend -> (encryption, compression): every key source and codec meets a real server.
PROFILES = {
    "local": ("public-key", "zstd"),
    "s3": ("passphrase", "lz4"),
    "gcs": ("none", "gzip"),
    "azure": ("keyfile", "zstd"),
}


@dataclass
class Archive:
    backend: str
    cluster: PgCluster
    target: RepoTarget
    workdir: Path
    push_config: Path
    fetch_config: Path
    keys: dict[str, Any]

    def cloudbm(
        self, *args: str, config: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run cloudbm as postgres with cwd = PGDATA, exactly as the server would."""
        return as_postgres(
            [str(CLOUDBM), "--config", str(config or self.fetch_config), *args],
            env={**self.target.env, **(env or {})},
            cwd=self.cluster.pgdata,
            check=False,
        )

    def isolated_fetch_config(self, tag: str) -> Path:
        """A fetch config with its own empty spool and no prefetch, so a result comes from
        storage and not from segments prefetched by earlier tests."""
        keys = dict(self.keys)
        keys.update(
            {
                "repository": self.target.url,
                **self.target.keys,
                "wal_prefetch": 0,
                "spool_directory": str(self.workdir / f"spool-{tag}"),
            }
        )
        if keys.get("encryption") == "public-key":
            keys["private_key_file"] = str(self.workdir / "repo.key")
        return write_config(self.workdir / f"{tag}.toml", "main", keys)

    def fetch(
        self, name: str, dest: str = "pg_wal/RECOVERYXLOG"
    ) -> subprocess.CompletedProcess[str]:
        return self.cloudbm("wal-fetch", name, dest)


def _generate_keys(workdir: Path, encryption: str) -> dict[str, Any]:
    keys: dict[str, Any] = {"encryption": encryption}
    if encryption == "public-key":
        subprocess.run(
            [str(CLOUDBM), "keygen", "--type", "x25519", str(workdir / "repo.key")],
            check=True,
            capture_output=True,
        )
        keys["public_key_file"] = str(workdir / "repo.key.pub")
    elif encryption == "keyfile":
        subprocess.run(
            [str(CLOUDBM), "keygen", "--type", "symmetric", str(workdir / "repo.key")],
            check=True,
            capture_output=True,
        )
        keys["key_file"] = str(workdir / "repo.key")
    elif encryption == "passphrase":
        (workdir / "pass").write_text("correct horse battery staple\n")
        keys["passphrase_file"] = str(workdir / "pass")
    return keys


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, localstack_endpoints: Any) -> Iterator[Archive]:
    backend = request.param
    encryption, compression = PROFILES[backend]
    workdir = postgres_dir(f"cloudbm-wal-{backend}-")
    target = make_target(backend, localstack_endpoints, workdir)
    keys = _generate_keys(workdir, encryption)
    common = {
        "repository": target.url,
        "compression": compression,
        "spool_directory": str(workdir / "spool"),
        "operation_timeout": 30,
        "max_attempts": 3,
        **target.keys,
        **keys,
    }
    push_config = write_config(workdir / "push.toml", "main", common)
    fetch_keys = dict(common)
    if encryption == "public-key":
        fetch_keys["private_key_file"] = str(workdir / "repo.key")
    fetch_config = write_config(workdir / "fetch.toml", "main", fetch_keys)
    chown_tree(workdir)
    command = f"{CLOUDBM} --config {push_config} wal-push %p"
    # wal_keep_size keeps archived segments in pg_wal so the test can compare bytes.
    with running_cluster(command, env=target.env, extra={"wal_keep_size": "'512MB'"}) as cluster:
        yield Archive(backend, cluster, target, workdir, push_config, fetch_config, keys)
    shutil.rmtree(workdir, ignore_errors=True)


def _archived_segments(cluster: PgCluster) -> list[str]:
    status = cluster.pgdata / "pg_wal" / "archive_status"
    return sorted(
        p.name[:-5] for p in status.iterdir() if p.name.endswith(".done") and len(p.name) == 29
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(cluster: PgCluster, rows: int = 20000) -> None:
    cluster.psql("CREATE TABLE IF NOT EXISTS t (id int, pad text)")
    cluster.psql(
        f"INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, {rows}) g"
    )


def test_every_archived_segment_fetches_back_byte_identical(archive: Archive) -> None:
    cluster = archive.cluster
    for _ in range(3):
        _load(cluster)
        cluster.psql("SELECT pg_switch_wal()")
    cluster.wait_archived()
    segments = _archived_segments(cluster)
    assert len(segments) >= 5, segments
    failed = cluster.psql("SELECT failed_count FROM pg_stat_archiver")
    assert failed == "0", cluster.server_log()[-3000:]
    for name in segments:
        res = archive.fetch(name)
        assert res.returncode == 0, res.stderr
        fetched = cluster.pgdata / "pg_wal" / "RECOVERYXLOG"
        assert _sha(fetched) == _sha(cluster.pgdata / "pg_wal" / name), name
        fetched.unlink()


def test_history_probe_for_missing_timeline_answers_not_found(archive: Archive) -> None:
    res = archive.fetch("00000002.history", "pg_wal/RECOVERYHISTORY")
    assert res.returncode == 1, res.stderr
    assert not (archive.cluster.pgdata / "pg_wal" / "RECOVERYHISTORY").exists()


def test_repushing_an_archived_segment_succeeds(archive: Archive) -> None:
    archive.cluster.wait_archived()
    name = _archived_segments(archive.cluster)[-1]
    res = archive.cloudbm("wal-push", f"pg_wal/{name}", config=archive.push_config)
    assert res.returncode == 0, res.stderr


def test_different_content_under_an_archived_name_is_refused_and_archive_untouched(
    archive: Archive,
) -> None:
    cluster = archive.cluster
    cluster.wait_archived()
    first, *_, last = _archived_segments(cluster)
    original = _sha(cluster.pgdata / "pg_wal" / first)
    impostor_dir = archive.workdir / "impostor" / "pg_wal"
    impostor_dir.mkdir(parents=True)
    shutil.copy(cluster.pgdata / "pg_wal" / last, impostor_dir / first)  # same cluster, wrong bytes
    chown_tree(archive.workdir / "impostor")
    res = archive.cloudbm("wal-push", str(impostor_dir / first), config=archive.push_config)
    assert res.returncode == 5, res.stderr
    assert "different content" in res.stderr
    fetched = archive.fetch(first)
    assert fetched.returncode == 0, fetched.stderr
    assert _sha(cluster.pgdata / "pg_wal" / "RECOVERYXLOG") == original
    (cluster.pgdata / "pg_wal" / "RECOVERYXLOG").unlink()


def test_segment_from_another_cluster_is_refused(archive: Archive) -> None:
    other = postgres_dir("cloudbm-other-")
    try:
        as_postgres(
            [
                "/usr/lib/postgresql/15/bin/initdb",
                "-D",
                str(other / "data"),
                "--wal-segsize=1",
                "--no-sync",
                "-U",
                "postgres",
            ]
        )
        foreign = sorted((other / "data" / "pg_wal").glob("0000000*"))[0]
        res = archive.cloudbm("wal-push", str(foreign), config=archive.push_config)
        assert res.returncode == 5, res.stderr
        assert "system identifier" in res.stderr
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_missing_segment_answers_not_found_and_writes_nothing(archive: Archive) -> None:
    res = archive.fetch("0000000100000099000000FF")
    assert res.returncode == 1, res.stderr
    assert not (archive.cluster.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_unreachable_storage_never_answers_not_found(archive: Archive) -> None:
    broken = dict(archive.keys)
    if archive.backend == "local":
        broken["repository"] = f"file://{archive.workdir}/no-such-dir"
    else:
        broken["repository"] = archive.target.url
        broken.update(archive.target.keys)
        dead = "http://127.0.0.1:9"  # discard port: nothing listens
        broken.update({"s3_endpoint_url": dead} if archive.backend == "s3" else {})
        broken.update({"gcs_endpoint_url": dead} if archive.backend == "gcs" else {})
    broken.update(
        {
            "connect_timeout": 1,
            "operation_timeout": 3,
            "max_attempts": 2,
            "spool_directory": str(archive.workdir / "spool-broken"),
        }
    )
    if archive.keys.get("encryption") == "public-key":
        broken["private_key_file"] = str(archive.workdir / "repo.key")
    config = write_config(archive.workdir / "broken.toml", "main", broken)
    env = {}
    if archive.backend == "azure":
        env["AZURE_STORAGE_CONNECTION_STRING"] = archive.target.env[
            "AZURE_STORAGE_CONNECTION_STRING"
        ].replace(
            archive.target.env["LOCALSTACK_AZURE_BLOB_URL"].split("/devstore")[0],
            "http://127.0.0.1:9",
        )
    res = archive.cloudbm(
        "wal-fetch", "000000010000000000000002", "pg_wal/RECOVERYXLOG", config=config, env=env
    )
    assert res.returncode > 125, (res.returncode, res.stderr)
    assert not (archive.cluster.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def _stored_object(archive: Archive, name: str) -> tuple[Any, str]:
    from cloudbm.config import load_settings
    from cloudbm.storage.url import open_storage

    env_backup = dict(os.environ)
    os.environ.update(archive.target.env)
    try:
        settings = load_settings(config_path=str(archive.fetch_config))
        storage = open_storage(settings.repository, settings.storage_options())
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return storage, f"wal/{name[:16]}/{name}"


def test_corrupt_object_fails_with_integrity_status(archive: Archive) -> None:
    archive.cluster.wait_archived()
    name = _archived_segments(archive.cluster)[1]
    storage, key = _stored_object(archive, name)
    with storage.get(key) as reader:
        blob = bytearray(reader.read())
        meta = dict(reader.info.metadata)
    try:
        blob[len(blob) // 2] ^= 0x01
        storage.put(key, bytes(blob), metadata=meta)
        config = archive.isolated_fetch_config("corrupt")
        res = archive.cloudbm("wal-fetch", name, "pg_wal/RECOVERYXLOG", config=config)
        assert res.returncode > 125, (res.returncode, res.stderr)
        assert not (archive.cluster.pgdata / "pg_wal" / "RECOVERYXLOG").exists()
    finally:
        blob[len(blob) // 2] ^= 0x01
        storage.put(key, bytes(blob), metadata=meta)
        storage.close()


def test_wrong_key_fails_with_integrity_status(archive: Archive) -> None:
    if archive.keys["encryption"] == "none":
        pytest.skip("this backend's profile stores plaintext objects; other profiles cover keys")
    archive.cluster.wait_archived()
    name = _archived_segments(archive.cluster)[1]
    wrong = dict(archive.keys)
    wrong.update(
        {
            "repository": archive.target.url,
            **archive.target.keys,
            "spool_directory": str(archive.workdir / "spool-wrong"),
        }
    )
    if archive.keys["encryption"] == "public-key":
        subprocess.run([str(CLOUDBM), "keygen", str(archive.workdir / "other.key")], check=True)
        wrong["private_key_file"] = str(archive.workdir / "other.key")
    elif archive.keys["encryption"] == "keyfile":
        subprocess.run(
            [str(CLOUDBM), "keygen", "--type", "symmetric", str(archive.workdir / "other.key")],
            check=True,
        )
        wrong["key_file"] = str(archive.workdir / "other.key")
    else:
        (archive.workdir / "wrongpass").write_text("not the passphrase\n")
        wrong["passphrase_file"] = str(archive.workdir / "wrongpass")
    config = write_config(archive.workdir / "wrong.toml", "main", wrong)
    chown_tree(archive.workdir)
    res = archive.cloudbm("wal-fetch", name, "pg_wal/RECOVERYXLOG", config=config)
    assert res.returncode > 125, (res.returncode, res.stderr)
    assert "key" in res.stderr
    assert not (archive.cluster.pgdata / "pg_wal" / "RECOVERYXLOG").exists()
