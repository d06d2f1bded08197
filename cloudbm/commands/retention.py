"""`cloudbm retention [--dry-run]`, `cloudbm delete ID`, `cloudbm keep ID` / `keep --release`.

Planning is the pure function in cloudbm/retention/; this module reads the repository through
the repository layer, and applies the plan in the order that keeps the catalogue honest after a
crash: each backup removed manifest first (catalogue.remove_backup: it then stops being DONE),
then WAL no kept backup needs. Keep marks are events written once (the newest wins), never
rewritten, so repositories on Object Lock / versioned buckets work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cloudbm.catalog import (
    DONE,
    BackupEntry,
    resolve,
    utc_now,
)
from cloudbm.config import Settings
from cloudbm.errors import (
    CheckFailed,
    ConfigError,
    IntegrityError,
    NotFoundError,
    StorageError,
    StoragePermissionError,
)
from cloudbm.logs import log
from cloudbm.pg import timeline, walnames
from cloudbm.repository import Repository
from cloudbm.repository import wal as wal_archive
from cloudbm.repository.catalogue import load_catalogue, remove_backup, write_keep_mark
from cloudbm.repository.lease import backup_lease
from cloudbm.retention import Plan, parse_policy, plan

KEEP_TARGETS = ("full", "standalone")


@dataclass
class Applied:
    plan: Plan
    backups_removed: list[str]
    wal_removed: int
    dry_run: bool


def _histories(repo: Repository, names: list[str]) -> dict[int, list[timeline.Switch]]:
    """Switch points of every timeline: from the history objects' plain metadata (written by
    wal-push, so a public-key-only host can plan), else by decoding them. A history that does
    not parse stops the plan: which WAL each backup needs depends on it."""
    out: dict[int, list[timeline.Switch]] = {}
    for name in names:
        if not (name.endswith(".history") and walnames.is_wal_name(name)):
            continue
        try:
            out[walnames.parse(name).timeline] = wal_archive.history(repo, name)
        except IntegrityError as exc:
            raise type(exc)(
                exc.message,
                hint=(exc.hint or "run 'cloudbm wal-verify'")
                + "; retention removes nothing while a timeline's history is unknown",
            ) from None
    return out


def _deletes_refused(exc: StoragePermissionError) -> CheckFailed:
    return CheckFailed(
        f"the repository refused a delete: {exc.message}",
        hint="these credentials may be append-only (as archiving hosts' should be); run "
        "retention and delete with credentials allowed to delete (docs/operations.md)",
    )


def _plan(
    settings: Settings,
    repo: Repository,
    entries: list[BackupEntry],
    policy_text: str,
    now: Any = None,
) -> Plan:
    desc = repo.read_descriptor()
    names = wal_archive.listed_names(repo)
    return plan(
        entries,
        names,
        _histories(repo, names),
        parse_policy(policy_text),
        settings.minimum_redundancy,
        now or utc_now(),
        desc.wal_segment_size,
        wal_retention=settings.wal_retention,
        system_identifier=str(desc.system_identifier),
        unfinished_grace=timedelta(hours=settings.unfinished_backup_grace_hours),
    )


def retention(settings: Settings, *, dry_run: bool) -> Applied:
    """Plan with the configured policy; unless dry_run, apply the plan."""
    if not settings.retention_policy:
        raise ConfigError(
            f"no retention_policy configured for server {settings.server!r}",
            hint='e.g. retention_policy = "RECOVERY WINDOW OF 14 DAYS" or "REDUNDANCY 3"',
        )
    with settings.open_repository() as repo:
        the_plan = _plan(settings, repo, load_catalogue(repo), settings.retention_policy)
        removed: list[str] = []
        wal_removed = 0
        if not dry_run:
            try:
                for decision in the_plan.remove:
                    remove_backup(repo, decision.backup_id)
                    removed.append(decision.backup_id)
                    log.info("%s", decision.line())
                wal_removed = wal_archive.remove(repo, the_plan.wal_remove)
                _remove_superseded_leases(settings, repo)
            except StoragePermissionError as exc:
                raise _deletes_refused(exc) from None
        return Applied(the_plan, removed, wal_removed, dry_run)


def _remove_superseded_leases(settings: Settings, repo: Repository) -> None:
    """backup-push leaves the objects of its lease behind where it may not delete (append-only
    database hosts); every lease but the newest is history."""
    lease = backup_lease(repo, ttl=settings.backup_lease_ttl, can_delete=not settings.append_only)
    try:
        removed = lease.remove_superseded()
    except StorageError as exc:  # housekeeping: never what decides a retention run
        log.warning("could not remove the objects of finished backup leases: %s", exc)
        return
    if removed:
        log.info("removed %d object(s) of finished backup leases", removed)


def delete(settings: Settings, wanted: str, *, force: bool) -> Applied:
    """Remove one backup and the WAL no remaining backup needs."""
    with settings.open_repository() as repo:
        entries = load_catalogue(repo)
        entry = resolve(entries, wanted)
        done = [e for e in entries if e.status == DONE]
        if entry.status == DONE and not force:
            remaining = len(done) - 1
            if remaining == 0:
                raise CheckFailed(
                    f"backup {entry.backup_id} is the last DONE backup",
                    hint="pass --force to delete it anyway (the cluster would be unrecoverable "
                    "from this repository)",
                )
            if remaining < settings.minimum_redundancy:
                raise CheckFailed(
                    f"deleting backup {entry.backup_id} would leave {remaining} DONE backup(s), "
                    f"below minimum_redundancy {settings.minimum_redundancy}",
                    hint="pass --force to delete it anyway",
                )
        if entry.keep and not force:
            raise CheckFailed(
                f"backup {entry.backup_id} is kept ({entry.keep})",
                hint=f"release it first: cloudbm keep --release {entry.backup_id}",
            )
        others = [e for e in entries if e.backup_id != entry.backup_id]
        # Keep every other backup: what remains removable is the WAL only this one needed.
        the_plan = _plan(settings, repo, others, f"REDUNDANCY {max(1, len(others) + 1)}")
        try:
            remove_backup(repo, entry.backup_id)
            wal_removed = wal_archive.remove(repo, the_plan.wal_remove) if others else 0
        except StoragePermissionError as exc:
            raise _deletes_refused(exc) from None
        return Applied(the_plan, [entry.backup_id], wal_removed, dry_run=False)


def keep(settings: Settings, wanted: str, *, target: str | None, release: bool) -> str:
    """Mark a DONE backup as kept (full or standalone), or release it. Returns its id."""
    if release == (target is not None):
        raise ConfigError("keep needs --target full|standalone, or --release")
    with settings.open_repository() as repo:
        entry = resolve(load_catalogue(repo), wanted)
        if entry.status != DONE:
            raise CheckFailed(
                f"backup {entry.backup_id} is {entry.status}; only DONE backups can be kept"
            )
        if release and not entry.keep:
            raise NotFoundError(f"backup {entry.backup_id} is not kept")
        write_keep_mark(repo, entry.backup_id, "released" if release else str(target))
        return entry.backup_id
