"""WAL archiving end to end: a real PostgreSQL 15 archives through `cloudbm wal-push` into each
backend (real servers on 127.0.0.1), and `cloudbm wal-fetch` brings every segment back.

One cluster per backend is shared by the tests of this module; each backend also exercises a
different key source and compression so the whole matrix is covered without repeating it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
    first = _archived_segments(cluster)[0]
    original = _sha(cluster.pgdata / "pg_wal" / first)
    impostor_dir = archive.workdir / "impostor" / "pg_wal"
    impostor_dir.mkdir(parents=True)
    # The same cluster and the same first page (so the name checks pass), other bytes after it.
    changed = bytearray((cluster.pgdata / "pg_wal" / first).read_bytes())
    changed[len(changed) // 2] ^= 0x01
    (impostor_dir / first).write_bytes(bytes(changed))
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


# --- wal-push accepts only what the name says (issue 9, defect 3) ----------------------------


@contextmanager
def _repository(archive: Archive) -> Iterator[Any]:
    """The archive's repository, opened in this process with the fetch configuration."""
    from cloudbm.config import load_settings

    saved = dict(os.environ)
    os.environ.update(archive.target.env)
    try:
        repo = load_settings(config_path=str(archive.fetch_config)).open_repository()
        try:
            yield repo
        finally:
            repo.storage.close()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if archive.backend == "local":
            chown_tree(archive.workdir / "repo")  # what root wrote, postgres must read


def _remove(archive: Archive, *names: str) -> None:
    """Delete objects a test planted (or that a defect let in), so later tests see a clean
    archive."""
    from cloudbm.pg import walnames
    from cloudbm.repository.layout import wal_key

    with _repository(archive) as repo:
        repo.storage.delete_many([wal_key(walnames.parse(n)) for n in names])


def _impostor(archive: Archive, tag: str, name: str, data: bytes) -> Path:
    """`data` as pg_wal/`name` in a directory of its own (not the cluster's pg_wal)."""
    directory = archive.workdir / f"impostor-{tag}" / "pg_wal"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
    chown_tree(directory.parent)
    return directory / name


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("00000009.history", b"this is not a timeline history\n"),
        ("00000005.history", b"7\t0/3000000\tno recovery target specified\n"),
    ],
    ids=["not-a-history", "parent-after-its-child"],
)
def test_a_history_file_that_is_not_one_is_refused_and_nothing_stored(
    archive: Archive, name: str, data: bytes
) -> None:
    path = _impostor(archive, "history", name, data)
    try:
        res = archive.cloudbm("wal-push", str(path), config=archive.push_config)
        assert res.returncode == 5, (res.returncode, res.stderr)
        assert name in res.stderr
        config = archive.isolated_fetch_config("history-refused")
        fetched = archive.cloudbm("wal-fetch", name, "pg_wal/RECOVERYHISTORY", config=config)
        assert fetched.returncode == 1, fetched.stderr
    finally:
        _remove(archive, name)


@pytest.mark.parametrize("wrong", ["later-segment", "other-timeline"])
def test_a_real_segment_under_another_name_is_refused_and_nothing_stored(
    archive: Archive, wrong: str
) -> None:
    from cloudbm.pg import walnames

    archive.cluster.wait_archived()
    source = _archived_segments(archive.cluster)[-1]
    parsed = walnames.parse(source)
    if wrong == "later-segment":
        number = walnames.segment_number(parsed, 1 << 20) + 40
        name = walnames.from_number(parsed.timeline, number, 1 << 20)
    else:  # a timeline no history file explains
        name = walnames.segment_name(0x3E, parsed.log, parsed.seg)
    data = (archive.cluster.pgdata / "pg_wal" / source).read_bytes()
    path = _impostor(archive, "segment", name, data)
    try:
        res = archive.cloudbm("wal-push", str(path), config=archive.push_config)
        assert res.returncode == 5, (res.returncode, res.stderr)
        assert name in res.stderr
        fetched = archive.cloudbm(
            "wal-fetch", name, "pg_wal/RECOVERYXLOG", config=archive.isolated_fetch_config("seg")
        )
        assert fetched.returncode == 1, fetched.stderr
    finally:
        _remove(archive, name)


def test_wal_verify_names_a_bad_history_and_a_misnamed_segment_already_archived(
    archive: Archive,
) -> None:
    """Objects an earlier cloudbm let in (stored with the metadata it wrote then) are named
    for what they are, and the misnamed segment is not taken for the end of a gap."""
    from cloudbm.pg import walnames
    from cloudbm.repository.layout import wal_key

    cluster = archive.cluster
    cluster.wait_archived()
    segments = _archived_segments(cluster)
    last = walnames.parse(segments[-1])
    bad_history = "0000003F.history"
    misnamed = walnames.from_number(1, walnames.segment_number(last, 1 << 20) + 3, 1 << 20)
    holds = segments[0]
    with _repository(archive) as repo:
        params = repo.encode_params(wal=True)
        repo.put_bytes(
            wal_key(walnames.parse(bad_history)),
            b"this is not a timeline history\n",
            metadata={"cloudbm-kind": "history", "cloudbm-switches": ""},
            params=params,
        )
        repo.put_bytes(
            wal_key(walnames.parse(misnamed)),
            (cluster.pgdata / "pg_wal" / holds).read_bytes(),
            metadata={"cloudbm-kind": "segment", "cloudbm-wal-segment-size": str(1 << 20)},
            params=params,
        )
    try:
        res = archive.cloudbm("--json", "wal-verify")
        assert res.returncode == 3, res.stdout + res.stderr
        problems = json.loads(res.stdout)["problems"]
        assert any(bad_history in p for p in problems), problems
        assert any(misnamed in p and holds in p for p in problems), problems
        assert not any("missing" in p for p in problems), problems  # no false gap
    finally:
        _remove(archive, bad_history, misnamed)
    res = archive.cloudbm("--json", "wal-verify")
    assert res.returncode == 0, res.stdout + res.stderr


def _wait_replayed(standby: PgCluster, lsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == "t":
            return
        time.sleep(0.1)
    raise AssertionError(f"standby did not replay up to {lsn}\n{standby.server_log()[-3000:]}")


def test_a_promoted_standby_archives_its_new_timeline_and_the_archive_verifies() -> None:
    """PostgreSQL starts the new timeline's first segment with the parent's pages (their
    headers carry the parent's timeline): wal-push must accept it, and the .partial of the old
    timeline, and wal-verify must find the archive sound."""
    from cloudbm.commands.wal_verify import wal_verify
    from cloudbm.config import load_settings
    from cloudbm.pg.walfile import read_segment_header

    workdir = postgres_dir("cloudbm-promote-")
    (workdir / "repo").mkdir()
    keys = {"repository": f"file://{workdir / 'repo'}", "compression": "zstd"}
    primary_config = write_config(
        workdir / "primary.toml", "main", {**keys, "spool_directory": str(workdir / "spool-p")}
    )
    standby_config = write_config(
        workdir / "standby.toml", "main", {**keys, "spool_directory": str(workdir / "spool-s")}
    )
    chown_tree(workdir)
    standby = PgCluster(postgres_dir("cloudbm-standby-"), free_port())
    try:
        with running_cluster(f"{CLOUDBM} --config {primary_config} wal-push %p") as primary:
            primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g")
            as_postgres(
                [
                    str(primary.bin_dir / "pg_basebackup"),
                    "-h",
                    str(primary.socket_dir),
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(standby.pgdata),
                    "-R",
                    "-X",
                    "stream",
                ]
            )
            standby.configure(
                {
                    **standby.base_settings(),
                    "archive_command": f"'{CLOUDBM} --config {standby_config} wal-push %p'",
                }
            )
            standby.start()
            primary.psql("INSERT INTO t SELECT g FROM generate_series(1, 3000) g")
            _wait_replayed(standby, primary.psql("SELECT pg_current_wal_lsn()"))
            as_postgres(
                [str(standby.bin_dir / "pg_ctl"), "-D", str(standby.pgdata), "-w", "promote"]
            )
            standby.psql("INSERT INTO t SELECT g FROM generate_series(1, 3000) g")
            standby.wait_archived()
            failed = standby.psql("SELECT failed_count FROM pg_stat_archiver")
            assert failed == "0", standby.server_log()[-3000:]

            pg_wal = standby.pgdata / "pg_wal"
            first = min(p.name for p in pg_wal.iterdir() if p.name.startswith("00000002000"))
            header = read_segment_header(pg_wal.joinpath(first).read_bytes(), first)
            assert header.timeline == 1  # what PostgreSQL wrote: the parent's page
            wal = workdir / "repo" / "wal"
            assert (wal / "00000002.history").exists()
            assert (wal / first[:16] / first).exists()
            partial = f"00000001{first[8:]}.partial"
            assert (wal / partial[:16] / partial).exists()

            # Pushed again from a directory without the history: the archived one places it.
            elsewhere = workdir / "elsewhere" / "pg_wal"
            elsewhere.mkdir(parents=True)
            shutil.copy(pg_wal / first, elsewhere / first)
            chown_tree(workdir / "elsewhere")
            res = as_postgres(
                [str(CLOUDBM), "--config", str(standby_config), "wal-push", str(elsewhere / first)],
                check=False,
            )
            assert res.returncode == 0, res.stderr

            res = as_postgres(
                [str(CLOUDBM), "--config", str(standby_config), "--json", "wal-verify"],
                check=False,
            )
            assert res.returncode == 0, res.stdout + res.stderr
            assert set(json.loads(res.stdout)["timelines"]) == {"1", "2"}
            deep = wal_verify(load_settings(config_path=str(standby_config)), deep=True)
            assert deep["ok"] and not deep["unchecked"], deep
    finally:
        standby.stop("immediate")
        shutil.rmtree(standby.base, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
