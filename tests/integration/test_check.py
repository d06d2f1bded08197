"""`cloudbm check` on a healthy setup and on deliberately broken ones, each failing with the
right line and exit status; `diagnose` and `metrics` on the same setup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.pgcluster import chown_tree
from tests.integration.test_backup_push import Site, make_site

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def healthy(localstack_endpoints: Any) -> Iterator[Site]:
    with make_site("local", localstack_endpoints) as site:
        site.config.write_text(
            site.config.read_text() + 'last_backup_maximum_age = "1 DAYS"\nminimum_redundancy = 1\n'
        )
        site.cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        assert site.cloudbm("backup-push", "--no-progress").returncode == 0
        site.cluster.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        site.cluster.wait_archived()
        yield site


def _variant(site: Site, name: str, extra: str, replace: tuple[str, str] = ("", "")) -> str:
    text = site.config.read_text()
    if replace[0]:
        text = text.replace(*replace)
    path = site.workdir / f"{name}.toml"
    path.write_text(text + extra)
    chown_tree(site.workdir)
    return str(path)


def _failed_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "FAILED" in line]


def test_healthy_setup_passes_every_check(healthy: Site) -> None:
    res = healthy.cloudbm("check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _failed_lines(res.stdout) == []
    for name in (
        "repository writable",
        "last backup age",
        "WAL continuity",
        "archive_command",
        "archiver",
        "cluster matches repository",
    ):
        assert f"{name}: OK" in res.stdout
    nagios = healthy.cloudbm("check", "--nagios")
    assert nagios.returncode == 0 and nagios.stdout.startswith("CLOUDBM OK")


def test_wrong_archive_command_fails_its_line(healthy: Site) -> None:
    c = healthy.cluster
    c.psql("ALTER SYSTEM SET archive_command = '/bin/true %p'")
    c.psql("SELECT pg_reload_conf()")
    try:
        res = healthy.cloudbm("check")
        assert res.returncode == 3
        assert [line.split(":")[1].strip() for line in _failed_lines(res.stdout)] == [
            "archive_command"
        ]
        nagios = healthy.cloudbm("check", "--nagios")
        assert nagios.returncode == 2 and nagios.stdout.startswith("CLOUDBM CRITICAL")
    finally:
        c.psql("ALTER SYSTEM RESET archive_command")
        c.psql("SELECT pg_reload_conf()")


def test_missing_repository_fails_cleanly(healthy: Site) -> None:
    config = _variant(healthy, "gone", "", ('/repo"', '/no-such-repo"'))
    res = healthy.cloudbm("--config", config, "--json", "check")
    assert res.returncode == 3, res.stderr
    report = json.loads(res.stdout)
    failed = {r["name"] for r in report["servers"]["main"] if not r["ok"]}
    assert "repository reachable and initialised" in failed


def test_stale_backup_fails_the_age_check(healthy: Site) -> None:
    config = _variant(healthy, "stale", "", ('"1 DAYS"', '"0 HOURS"'))
    res = healthy.cloudbm("--config", config, "check")
    assert res.returncode == 3
    assert any("last backup age: FAILED" in line for line in _failed_lines(res.stdout))


def test_wal_gap_fails_the_continuity_check(healthy: Site) -> None:
    from pathlib import Path

    repo = Path(healthy.target.url.removeprefix("file://"))
    segments = sorted(p for p in repo.glob("wal/*/0*") if len(p.name) == 24)
    victim = segments[-2]
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        res = healthy.cloudbm("check")
        assert res.returncode == 3
        lines = _failed_lines(res.stdout)
        assert any("WAL continuity: FAILED" in line and victim.name in line for line in lines)
    finally:
        moved.rename(victim)


def test_diagnose_masks_secrets_and_metrics_expose_the_backup(healthy: Site) -> None:
    res = healthy.cloudbm("diagnose")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    server = report["servers"]["main"]
    assert server["last_backup"] and report["versions"]["cloudbm"]
    assert "(path only)" in server["configuration"]["key_file"]
    metrics = healthy.cloudbm("metrics")
    assert metrics.returncode == 0, metrics.stderr
    assert 'cloudbm_up{server="main"} 1' in metrics.stdout
    assert "# TYPE cloudbm_last_backup_age_seconds gauge" in metrics.stdout
    assert 'cloudbm_backups{server="main",status="DONE"} 1' in metrics.stdout


def test_init_creates_a_missing_file_repository_directory(healthy: Site) -> None:
    # issue 9, defect 10: like pgBackRest's stanza-create, when the parent exists
    fresh = healthy.workdir / "fresh-repo"
    config = _variant(healthy, "fresh", "", ('/repo"', '/fresh-repo"'))
    res = healthy.cloudbm("--config", config, "init")
    assert res.returncode == 0, res.stderr
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700
    assert (fresh / "cloudbm.json").is_file()
    again = healthy.cloudbm("--config", config, "init")
    assert again.returncode == 0 and "already initialised" in again.stdout, again.stderr


def test_init_names_a_missing_parent_directory(healthy: Site) -> None:
    config = _variant(healthy, "orphan", "", ('/repo"', '/no-parent/repo"'))
    res = healthy.cloudbm("--config", config, "init")
    assert res.returncode != 0
    assert str(healthy.workdir / "no-parent") in res.stderr, res.stderr
    assert not (healthy.workdir / "no-parent").exists()
