"""recover: its arguments read by cloudbm.pg.recovery_target (before any I/O, so a usage error
is exit 2 and touches neither storage nor the destination), then the command."""

from __future__ import annotations

from cloudbm.cli.context import Args, global_args, settings
from cloudbm.cli.output import recover as output


def recover(args: Args) -> int:
    from pathlib import Path

    from cloudbm.catalog import LATEST_ALIASES, OLDEST_ALIASES
    from cloudbm.commands.recover import RecoverOptions, recover
    from cloudbm.pg.recovery_conf import RecoveryTarget
    from cloudbm.pg.recovery_target import recover_operands, tablespace_map

    target = RecoveryTarget(
        time=args.target_time,
        xid=args.target_xid,
        lsn=args.target_lsn,
        name=args.target_name,
        immediate=args.target_immediate,
        inclusive=not args.exclusive,
        timeline=args.target_tli,
        action=args.target_action,
    )
    backup_id, dest = recover_operands(args.ids, target, LATEST_ALIASES + OLDEST_ALIASES)
    spaces = tablespace_map(args.tablespace)
    resolved = settings(args)
    if args.jobs:
        resolved = resolved.replace(jobs=args.jobs)
    result = recover(
        resolved,
        RecoverOptions(
            backup_id=backup_id,
            dest=Path(dest),
            target=target,
            tablespace_map=spaces,
            standby=args.standby,
            delta=args.delta,
            force=args.force,
            archive_mode_off=args.archive_mode == "off",
            restore_command=args.restore_command,
            global_args=tuple(global_args(args, absolute=True)),
            progress=not (args.no_progress or args.json or args.quiet),
        ),
    )
    return output.recover(args, result)
