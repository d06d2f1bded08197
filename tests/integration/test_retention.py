"""Retention end to end on a real cluster and every backend: several backups with WAL between
them, a policy applied, the removed objects gone, and recovery from the oldest kept backup to
the latest point still works."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from tests.integration.pgcluster import chown_tree, postgres_dir
from tests.integration.recovery import snapshot
from tests.integration.repos import BACKENDS
from tests.integration.test_backup_push import Site, make_site
from tests.integration.test_recover import History, _insert, _recover_and_compare

pytestmark = pytest.mark.integration


def _backups_with_wal_between(site: Site, count: int) -> list[dict[str, Any]]:
    c = site.cluster
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE ts")
    shown = []
    for i in range(count):
        _insert(c, i * 1000 + 1, 1000)
        c.psql("SELECT pg_switch_wal()")
        res = site.cloudbm("--json", "backup-push", "--no-progress")
        assert res.returncode == 0, res.stderr
        shown.append(json.loads(res.stdout))
        _insert(c, i * 1000 + 500_000, 200)
        c.psql("SELECT pg_switch_wal()")
    c.wait_archived()
    return shown


def _set(site: Site, **keys: Any) -> None:
    text = site.config.read_text()
    for key, value in keys.items():
        text += f"{key} = {json.dumps(value)}\n"
    site.config.write_text(text)


def _archived(site: Site) -> set[str]:
    from tests.integration.backup_checks import open_repo

    repo = open_repo(site.config)
    try:
        return {info.key for info in repo.storage.list("")}
    finally:
        repo.storage.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_policy_removes_old_backups_and_their_wal_and_recovery_still_works(
    backend: str, localstack_endpoints: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_site(backend, localstack_endpoints) as site:
        for key, value in site.target.env.items():
            monkeypatch.setenv(key, value)
        first, second, third = _backups_with_wal_between(site, 3)
        _set(site, retention_policy="REDUNDANCY 2", minimum_redundancy=1)
        dry = site.cloudbm("retention", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"removing {first['backup_id']}" in dry.stdout
        assert f"keeping {second['backup_id']}" in dry.stdout
        assert "nothing removed" in dry.stdout
        before = _archived(site)
        assert any(k.startswith(f"backups/{first['backup_id']}/") for k in before)

        res = site.cloudbm("--json", "retention")
        assert res.returncode == 0, res.stderr
        after = _archived(site)
        assert not any(k.startswith(f"backups/{first['backup_id']}/") for k in after)
        assert any(k.startswith(f"backups/{second['backup_id']}/") for k in after)
        oldest_needed = second["start_wal"]
        wal = sorted(k.rsplit("/", 1)[-1] for k in after if k.startswith("wal/"))
        segments = [n for n in wal if len(n) == 24]
        assert segments and min(segments) >= oldest_needed, (segments[:3], oldest_needed)
        assert any(
            n < oldest_needed
            for n in (k.rsplit("/", 1)[-1] for k in before if k.startswith("wal/"))
            if len(n) == 24
        )
        listed = json.loads(site.cloudbm("--json", "backup-list").stdout)["backups"]
        assert [r["backup_id"] for r in listed] == [second["backup_id"], third["backup_id"]]

        expected = snapshot(site.cluster)
        h = History(site, second["backup_id"], restores=postgres_dir("cloudbm-restores-"))
        try:
            cluster = _recover_and_compare(
                h, "after-retention", expected, [], backup=second["backup_id"]
            )
            cluster.stop("immediate")
        finally:
            shutil.rmtree(h.restores, ignore_errors=True)


def test_keep_wins_delete_guards_and_append_only_credentials(monkeypatch: Any) -> None:
    with make_site("local", None) as site:
        first, second = _backups_with_wal_between(site, 2)
        assert site.cloudbm("keep", first["backup_id"], "--target", "full").returncode == 0
        listed = json.loads(site.cloudbm("--json", "backup-list").stdout)["backups"]
        assert listed[0]["keep"] == "full"
        _set(site, retention_policy="REDUNDANCY 1")
        res = site.cloudbm("retention")
        assert res.returncode == 0, res.stderr
        assert f"keeping {first['backup_id']}" in res.stdout
        refused = site.cloudbm("delete", first["backup_id"])
        assert refused.returncode == 3 and "kept" in refused.stderr
        assert site.cloudbm("keep", "--release", first["backup_id"]).returncode == 0
        assert site.cloudbm("delete", "no-such-backup").returncode == 1

        # An archiving host with append-only credentials: deletes fail cleanly, nothing lost.
        append_only = site.workdir / "append-only.toml"
        append_only.write_text(site.config.read_text() + "append_only = true\n")
        from tests.integration.pgcluster import chown_tree

        chown_tree(site.workdir)
        res = site.cloudbm("--config", str(append_only), "delete", first["backup_id"])
        assert res.returncode == 3, res.stderr
        assert "append-only" in res.stderr or "append_only" in res.stderr
        assert "\n" not in res.stderr.strip()
        assert (
            json.loads(site.cloudbm("--json", "backup-list").stdout)["backups"][0]["backup_id"]
            == first["backup_id"]
        )

        res = site.cloudbm("delete", first["backup_id"])
        assert res.returncode == 0, res.stderr
        last = site.cloudbm("delete", "latest")
        assert last.returncode == 3 and "last DONE backup" in last.stderr
        assert site.cloudbm("delete", "latest", "--force").returncode == 0
        assert json.loads(site.cloudbm("--json", "backup-list").stdout)["backups"] == []
        del second


def test_a_history_object_that_is_not_a_history_stops_the_plan_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.integration.backup_checks import open_repo

    with make_site("local", None) as site:
        _backups_with_wal_between(site, 1)
        _set(site, retention_policy="REDUNDANCY 1")
        repo = open_repo(site.config)
        try:  # an object an older wal-push stored without checking it
            repo.put_bytes("wal/00000005.history", b"this is not a timeline history\n")
        finally:
            repo.storage.close()
        chown_tree(site.workdir)  # planted as root; the server's user must read it
        res = site.cloudbm("retention", "--dry-run")
        assert res.returncode == 5, res.stderr
        assert "wal/00000005.history is not a valid timeline history" in res.stderr
        assert "unexpected" not in res.stderr
