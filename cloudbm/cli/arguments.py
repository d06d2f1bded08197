"""The arguments of each command: one function per command, called with its subparser.

Global options (--config, --server, --repo, --pgdata, --json, -v, -q) are added by
cloudbm.cli.parser to every command; these are the command's own. Completion for bash
(cloudbm/data/completion/cloudbm.bash) lists the same options: tests/unit/test_packaged_files.py
compares the two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from argparse import ArgumentParser

ID_HELP = "a backup id, latest/last or oldest/first"
SERVER_HELP = "a server name or 'all'"


def nothing(p: ArgumentParser) -> None:
    """A command without arguments of its own."""


def wal_push(p: ArgumentParser) -> None:
    p.add_argument("path", help="WAL file path, relative to the data directory as %%p is")
    p.add_argument("--compression", choices=("zstd", "lz4", "gzip", "none"))


def wal_fetch(p: ArgumentParser) -> None:
    p.add_argument("name", help="WAL file name (%%f)")
    p.add_argument("dest", help="destination path (%%p)")


def wal_prefetch(p: ArgumentParser) -> None:
    p.add_argument("--wait-first", type=float, default=0.0)


def wal_push_ahead(p: ArgumentParser) -> None:
    p.add_argument("pg_wal")
    p.add_argument("--skip", action="append", default=[])


def check(p: ArgumentParser) -> None:
    p.add_argument("--nagios", action="store_true", help="Nagios plugin output and statuses")
    p.add_argument("target", nargs="?", metavar="SERVER", help=SERVER_HELP)


def one_or_all_servers(p: ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="SERVER", help=SERVER_HELP)


def retention(p: ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    p.add_argument("target", nargs="?", metavar="SERVER", help=SERVER_HELP)


def delete(p: ArgumentParser) -> None:
    p.add_argument("backup_id", metavar="ID", help=ID_HELP)
    p.add_argument(
        "--force",
        action="store_true",
        help="allow deleting the last DONE backup or going below minimum_redundancy",
    )


def keep(p: ArgumentParser) -> None:
    p.add_argument("backup_id", metavar="ID", help=ID_HELP)
    p.add_argument(
        "--target",
        choices=("full", "standalone"),
        help="full: with all WAL from it onward; standalone: only the WAL for consistency",
    )
    p.add_argument("--release", action="store_true", help="let retention manage it again")


def one_backup(p: ArgumentParser) -> None:
    p.add_argument("backup_id", metavar="ID", help=ID_HELP)


def wal_verify(p: ArgumentParser) -> None:
    p.add_argument(
        "--deep",
        action="store_true",
        help="compare every segment's first page with its name (a HEAD or a first-chunk read each)",
    )


def recover(p: ArgumentParser) -> None:
    p.add_argument(
        "ids",
        nargs="+",
        metavar="[ID] DEST",
        help="backup id (latest/oldest; default: the newest DONE backup that "
        "ended before the target) and the directory to restore into",
    )
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-time", help="recover up to this time (with a time zone)")
    tgt.add_argument("--target-xid", help="recover up to this transaction id")
    tgt.add_argument("--target-lsn", help="recover up to this WAL location")
    tgt.add_argument("--target-name", help="recover up to this named restore point")
    tgt.add_argument(
        "--target-immediate", action="store_true", help="stop as soon as the backup is consistent"
    )
    p.add_argument(
        "--exclusive",
        action="store_true",
        help="stop just before the target (recovery_target_inclusive = off)",
    )
    p.add_argument(
        "--target-tli",
        default="latest",
        help="timeline to follow: latest (default), current or a number",
    )
    p.add_argument(
        "--target-action",
        choices=("pause", "promote", "shutdown"),
        help="what PostgreSQL does at the target (its default: pause)",
    )
    p.add_argument(
        "--tablespace",
        action="append",
        default=[],
        metavar="NAME:DIR",
        help="restore tablespace NAME into DIR (repeatable)",
    )
    p.add_argument(
        "--standby", action="store_true", help="write standby.signal instead of recovery.signal"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--delta",
        action="store_true",
        help="reuse files in DEST that match "
        "the backup, rewrite the rest, remove what the backup lacks",
    )
    mode.add_argument("--force", action="store_true", help="restore into a non-empty DEST")
    p.add_argument(
        "--archive-mode",
        choices=("on", "off"),
        help="off: the recovered "
        "cluster does not archive (a clone must not push into production's archive)",
    )
    p.add_argument(
        "--restore-command",
        help="restore_command to write (default: this "
        "cloudbm's wal-fetch with the same configuration)",
    )
    p.add_argument("--jobs", type=int, help="parts downloaded in parallel (default: jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def backup_push(p: ArgumentParser) -> None:
    p.add_argument("--label", help="backup label (default: 'cloudbm backup <ID>')")
    ckpt = p.add_mutually_exclusive_group()
    ckpt.add_argument(
        "--immediate-checkpoint",
        dest="immediate_checkpoint",
        action="store_true",
        default=None,
        help="start with an immediate checkpoint (default: immediate_checkpoint)",
    )
    ckpt.add_argument(
        "--no-immediate-checkpoint",
        dest="immediate_checkpoint",
        action="store_false",
        help="wait for a spread checkpoint",
    )
    p.add_argument(
        "--bandwidth-limit",
        type=int,
        metavar="KIB_PER_S",
        help="upload rate limit in KiB/s (default: bandwidth_limit)",
    )
    p.add_argument(
        "--keep",
        choices=("full", "standalone"),
        help="keep this backup out of retention (see 'cloudbm keep')",
    )
    p.add_argument("--jobs", type=int, help="parts uploaded in parallel (default: jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def keygen(p: ArgumentParser) -> None:
    p.add_argument("--type", choices=("symmetric", "x25519"), default="x25519")
    p.add_argument(
        "output",
        help="key file to create (x25519: the private key; the public key goes to OUTPUT.pub)",
    )
