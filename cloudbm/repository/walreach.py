"""Whether the WAL archive can take one backup to a recovery target: which timeline recovery
follows, how far the archive reaches along it, and that every segment from the backup's start
to the target is archived (following the timeline history). What `cloudbm recover` checks
before it writes anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cloudbm.errors import CheckFailed, IntegrityError, NotFoundError
from cloudbm.pg import recovery_target, timeline, walnames
from cloudbm.pg.recovery_target import Reach
from cloudbm.repository import wal
from cloudbm.repository.objects import Repository

if TYPE_CHECKING:
    from cloudbm.catalog import Manifest
    from cloudbm.pg.recovery_conf import RecoveryTarget
    from cloudbm.storage.base import ObjectInfo


def _history(repo: Repository, tli: int) -> list[timeline.Switch]:
    """The switch points of timeline `tli`, from the one history file recovery along it reads
    (PostgreSQL reads the target timeline's only: it lists every ancestor)."""
    name = walnames.history_name(tli)
    raw = wal.read(repo, name)
    try:
        return timeline.read_history(raw, tli)
    except timeline.HistoryError as exc:
        raise IntegrityError(
            f"{repo.where(wal.key_of(name))} is not a valid history of timeline {tli}: {exc}",
            hint=f"recovery along timeline {tli} needs it (PostgreSQL would refuse it too); "
            "put a good copy in place, or choose another timeline with --target-tli",
        ) from None


def _target_timeline(
    repo: Repository, manifest: Manifest, goal: str, listing: dict[str, ObjectInfo]
) -> tuple[int, dict[int, list[timeline.Switch]]]:
    """The timeline recovery follows and its history, checked to lead on from the backup."""
    start = walnames.parse_lsn(manifest.start_lsn)
    if goal == "current":
        tli = manifest.timeline
    elif goal == "latest":
        # As PostgreSQL does: probe the history files after the backup's timeline, one by one.
        tli = manifest.timeline
        while walnames.history_name(tli + 1) in listing:
            tli += 1
    else:
        tli = int(goal)
        if tli != manifest.timeline and walnames.history_name(tli) not in listing:
            raise NotFoundError(
                f"timeline {tli} has no history file ({walnames.history_name(tli)}) in the archive",
                hint="choose an archived timeline or 'latest'",
            )
    histories: dict[int, list[timeline.Switch]] = {}
    if tli > 1 and walnames.history_name(tli) in listing:
        histories[tli] = _history(repo, tli)
    if not timeline.reachable(manifest.timeline, start, tli, histories):
        if goal == "latest":
            raise CheckFailed(
                f"the newest timeline in the archive, {tli}, branched off before backup "
                f"{manifest.backup_id} started, so PostgreSQL could not follow it",
                hint="pass --target-tli with the timeline to recover along (e.g. current)",
            )
        raise CheckFailed(
            f"timeline {tli} does not lead on from backup {manifest.backup_id} (timeline "
            f"{manifest.timeline} at {manifest.start_lsn}): it branched off before the backup "
            "started",
            hint="choose an older backup for that timeline",
        )
    return tli, histories


def _reach(
    manifest: Manifest,
    tli: int,
    histories: dict[int, list[timeline.Switch]],
    listing: dict[str, ObjectInfo],
    segments: set[str],
) -> Reach:
    """What recovery along `tli` can reach: up to the newest archived segment on the path."""
    size = manifest.wal_segment_size
    start = walnames.parse_lsn(manifest.start_lsn)
    path, _ = timeline.needed_segments(start, None, tli, histories, size, segments)
    present = [n for n in path if n in segments] or [manifest.stop_wal]
    newest = present[-1]
    uploads = [listing[n].modified if n in listing else None for n in present]
    latest_upload = None
    if uploads and all(u is not None for u in uploads):
        latest_upload = max(_aware(u) for u in uploads if u is not None)
    number = walnames.segment_number(walnames.parse(newest), size)
    return Reach(
        backup_id=manifest.backup_id,
        timeline=tli,
        earliest_lsn=walnames.parse_lsn(manifest.stop_lsn),
        earliest_time=recovery_target.earliest_time(manifest.end),
        latest_lsn=(number + 1) * size,
        latest_segment=newest,
        latest_upload=latest_upload,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def check_wal(
    repo: Repository, manifest: Manifest, target: RecoveryTarget
) -> tuple[int, int, Reach]:
    """The target must lie within what the backup and the archive can reach, and every segment
    from the backup's start to the target must be archived (following the timeline history to
    the target timeline). Returns (target timeline, segments checked, reach)."""
    listing = wal.listing(repo)
    segments = {n for n in listing if walnames.is_segment_name(n)}
    tli, histories = _target_timeline(repo, manifest, target.timeline, listing)
    start = walnames.parse_lsn(manifest.start_lsn)
    stop = walnames.parse_lsn(manifest.stop_lsn)
    size = manifest.wal_segment_size
    # Consistency needs start..stop: without it nothing at all is reachable.
    consistency, gaps = timeline.needed_segments(start, stop, manifest.timeline, {}, size, segments)
    _refuse_gaps(manifest, gaps)
    reach = _reach(manifest, tli, histories, listing, segments)
    problem = recovery_target.unreachable(target, reach)
    if problem:
        raise CheckFailed(
            f"{problem}; {reach.explain()}",
            hint="nothing was written; choose a target in that range, or another backup",
        )
    # Bounded by the reach: a target LSN lies before the end of the archive.
    end_lsn: int | None = None
    if target.immediate:
        end_lsn = stop
    elif target.lsn is not None:
        end_lsn = max(recovery_target.parse_lsn(target.lsn), stop)
    names, gaps = timeline.needed_segments(start, end_lsn, tli, histories, size, segments)
    _refuse_gaps(manifest, gaps)
    return tli, len(set(names) | set(consistency)), reach


def _refuse_gaps(manifest: Manifest, gaps: list[timeline.WalGap]) -> None:
    if gaps:
        listed = "; ".join(str(g) for g in gaps[:5])
        more = f" and {len(gaps) - 5} more gaps" if len(gaps) > 5 else ""
        raise NotFoundError(
            f"the archive lacks WAL that recovery from backup {manifest.backup_id} needs: "
            f"{listed}{more}",
            hint="nothing was written; restore the missing segments or choose another backup "
            "or target",
        )
