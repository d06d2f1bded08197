"""Command-line parsing and the one place where errors become exit codes.

Each command is a function in cloudbm.commands; modules load only for the command that runs,
so archive_command and restore_command pay for nothing they do not use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cloudbm import __version__
from cloudbm.errors import EXIT_USAGE, CloudbmError, NotFoundError
from cloudbm.logs import configure as configure_logs
from cloudbm.logs import log

if TYPE_CHECKING:
    import argparse

# Flags that override configuration keys of the same name.
FLAG_KEYS = ("repository", "pgdata", "compression", "jobs")
DEFAULT_FETCH_ERROR_EXIT = 126
# Output to a pipe whose reader has gone (`cloudbm backup-list | head`): the status a shell
# reports for a program that SIGPIPE ended (128 + 13), without a word on stderr.
EXIT_STDOUT_CLOSED = 141


# Parsed arguments: an argparse.Namespace, or a SimpleNamespace from parse_hot.
Args = Any


class _UsageError(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM (systemctl stop, a timeout wrapper) during a long command: unwinds like Ctrl-C,
    so the command records how it ended (backup-push writes failed.json and gives its lease
    back) instead of vanishing mid-write."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM")


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _stop_cleanly_on_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)


class _StdoutClosed(Exception):
    """Standard output is a pipe nobody reads any more (never a storage connection's EPIPE:
    only writes to sys.stdout raise it)."""


def _write(text: str) -> None:
    """Write to standard output now (not at exit, where a closed pipe can no longer be
    handled)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None


def _detach_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's final flush of what is still
    buffered fails no more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def parse_hot(argv: Sequence[str]) -> SimpleNamespace | None:
    """`[global flags] wal-push PATH` / `wal-fetch NAME DEST` without argparse, whose import
    alone costs more than a call served from local state; None for anything else."""
    from cloudbm.fastpath import parse_hot as parse

    parsed = parse(list(argv))
    return None if parsed is None else SimpleNamespace(**parsed)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse that raises instead of exiting, so wal-fetch can map usage errors too."""

        def error(self, message: str) -> Any:
            raise _UsageError(f"{self.prog}: {message}")

    parser = _Parser(
        prog="cloudbm",
        description="Keeps PostgreSQL recoverable from cloud object storage.",
    )
    parser.add_argument("--version", action="version", version=f"cloudbm {__version__}")
    parser.add_argument(
        "--config",
        help="configuration file (default $CLOUDBM_CONFIG, then /etc/cloudbm/cloudbm.toml)",
    )
    parser.add_argument("--server", help="server section to use (default: the only one)")
    parser.add_argument(
        "--repo", dest="repository", help="repository URL (file:///dir, s3://, gs://, azure://)"
    )
    parser.add_argument("--pgdata", help="the cluster's data directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "wal-push", help="archive one WAL file (archive_command = 'cloudbm wal-push %%p')"
    )
    p.add_argument("path", help="WAL file path, relative to the data directory as %%p is")
    p.add_argument("--compression", choices=("zstd", "lz4", "gzip", "none"))

    p = sub.add_parser(
        "wal-fetch", help="restore one WAL file (restore_command = 'cloudbm wal-fetch %%f %%p')"
    )
    p.add_argument("name", help="WAL file name (%%f)")
    p.add_argument("dest", help="destination path (%%p)")

    # Internal workers that wal-push and wal-fetch start (no help: not listed).
    p = sub.add_parser("wal-prefetch")
    p.add_argument("--wait-first", type=float, default=0.0)
    p = sub.add_parser("wal-push-ahead")
    p.add_argument("pg_wal")
    p.add_argument("--skip", action="append", default=[])

    p = sub.add_parser("init", help="bind the repository to this cluster and key")

    p = sub.add_parser("check", help="health checks: OK/FAILED per line, exit 3 on failure")
    p.add_argument("--nagios", action="store_true", help="Nagios plugin output and statuses")
    p.add_argument("target", nargs="?", metavar="SERVER", help="a server name or 'all'")

    sub.add_parser(
        "diagnose",
        help="versions, configuration (secrets masked), server status as JSON, for bug reports",
    )

    p = sub.add_parser("metrics", help="Prometheus text-format metrics")
    p.add_argument("target", nargs="?", metavar="SERVER", help="a server name or 'all'")

    p = sub.add_parser("retention", help="apply the retention policy (backups, then WAL)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    p.add_argument("target", nargs="?", metavar="SERVER", help="a server name or 'all'")

    p = sub.add_parser("delete", help="remove one backup and the WAL only it needed")
    p.add_argument("backup_id", metavar="ID", help="a backup id, latest/last or oldest/first")
    p.add_argument(
        "--force",
        action="store_true",
        help="allow deleting the last DONE backup or going below minimum_redundancy",
    )

    p = sub.add_parser("keep", help="keep a backup out of retention, or release it")
    p.add_argument("backup_id", metavar="ID", help="a backup id, latest/last or oldest/first")
    p.add_argument(
        "--target",
        choices=("full", "standalone"),
        help="full: with all WAL from it onward; standalone: only the WAL for consistency",
    )
    p.add_argument("--release", action="store_true", help="let retention manage it again")

    p = sub.add_parser("verify", help="download and check every part of a backup and its WAL")
    p.add_argument("backup_id", metavar="ID", help="a backup id, latest/last or oldest/first")

    p = sub.add_parser("wal-verify", help="gaps and unexpected timelines in the WAL archive")
    p.add_argument(
        "--deep",
        action="store_true",
        help="compare every segment's first page with its name (a HEAD or a first-chunk read each)",
    )

    p = sub.add_parser(
        "recover",
        help="rebuild a data directory from a backup and configure point-in-time recovery",
    )
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

    p = sub.add_parser("backup-push", help="take a base backup of the running cluster")
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

    p = sub.add_parser("backup-list", help="the backups in the repository")
    p.add_argument("target", nargs="?", metavar="SERVER", help="a server name or 'all'")

    p = sub.add_parser("backup-show", help="details of one backup")
    p.add_argument("backup_id", metavar="ID", help="a backup id, latest/last or oldest/first")

    p = sub.add_parser("keygen", help="create a key file or an X25519 key pair")
    p.add_argument("--type", choices=("symmetric", "x25519"), default="x25519")
    p.add_argument(
        "output",
        help="key file to create (x25519: the private key; the public key goes to OUTPUT.pub)",
    )

    sub.add_parser("list-servers", help="configured servers")
    sub.add_parser("show-config", help="effective configuration for the server")
    return parser


def _global_args(args: Args, absolute: bool = False) -> list[str]:
    """The global flags of this invocation, for helper processes started on its behalf (and,
    with absolute paths, for the restore_command a recovery writes)."""
    out: list[str] = []
    config = args.config or (os.environ.get("CLOUDBM_CONFIG") if absolute else None)
    if absolute and config:
        config = os.path.abspath(config)
    server = args.server or (os.environ.get("CLOUDBM_SERVER") if absolute else None)
    for flag, value in (
        ("--config", config),
        ("--server", server),
        ("--repo", args.repository),
        ("--pgdata", None if absolute else args.pgdata),
    ):
        if value:
            out += [flag, value]
    return out


def _settings(args: Args) -> Any:
    from cloudbm.config import load_settings

    overrides = {k: getattr(args, k, None) for k in FLAG_KEYS}
    return load_settings(config_path=args.config, server=args.server, overrides=overrides)


def _remember_for_fast_path(args: Args, settings: Any) -> None:
    """Let later calls with the same flags, environment and files skip this work."""
    from cloudbm.localstate import KEY_FLAGS, remember_settings

    flags = {k: getattr(args, k, None) for k in KEY_FLAGS}
    remember_settings(
        flags,
        {
            "spool_root": str(settings.spool_dir()),
            "wal_push_ahead": settings.wal_push_ahead,
            "wal_prefetch": settings.wal_prefetch,
        },
    )


def _each_server(args: Args, target: str | None) -> list[Any]:
    """Settings of one server, or of every configured one for 'all'."""
    if target != "all":
        if target:
            args.server = target
        return [_settings(args)]
    from cloudbm.config import find_config_path, read_config_file, server_names, settings_for

    cfg = read_config_file(find_config_path(args.config, os.environ))
    if not cfg.servers:
        return [_settings(args)]  # no file, or no sections: the one server flags describe
    overrides = {k: getattr(args, k, None) for k in FLAG_KEYS}
    return [settings_for(cfg, name, overrides, os.environ) for name in server_names(cfg)]


def _emit(args: Args, text: str, data: dict[str, Any]) -> None:
    import json

    if args.json:
        _write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif text:
        _write(text + "\n")


def run(args: Args) -> int:
    """Dispatch one parsed command; returns the exit status."""
    command = args.command
    if command == "wal-push":
        from cloudbm.commands.wal_push import wal_push

        settings = _settings(args)
        _remember_for_fast_path(args, settings)
        result = wal_push(settings, args.path, _global_args(args))
        log.debug("archived %s (%d -> %d bytes)", result.name, result.size, result.stored)
        return 0
    if command == "wal-fetch":
        from cloudbm.commands.wal_fetch import wal_fetch

        settings = _settings(args)
        _remember_for_fast_path(args, settings)
        source = wal_fetch(settings, args.name, args.dest, _global_args(args))
        log.debug("restored %s from %s", args.name, source)
        return 0
    if command == "wal-prefetch":
        from cloudbm.commands.wal_fetch import prefetch_worker

        prefetch_worker(_settings(args), wait_first=args.wait_first)
        return 0
    if command == "wal-push-ahead":
        from pathlib import Path

        from cloudbm.commands.wal_push_ahead import push_ahead

        push_ahead(_settings(args), Path(args.pg_wal), frozenset(args.skip))
        return 0
    if command == "backup-push":
        import time

        from cloudbm.commands.backup_push import BackupOptions, backup_push, summary_line

        _stop_cleanly_on_sigterm()
        began = time.monotonic()
        manifest = backup_push(
            _settings(args),
            BackupOptions(
                label=args.label,
                immediate_checkpoint=args.immediate_checkpoint,
                bandwidth_limit=args.bandwidth_limit,
                keep=args.keep,
                progress=not (args.no_progress or args.json or args.quiet),
            ),
        )
        from dataclasses import asdict

        _emit(args, summary_line(manifest, time.monotonic() - began), asdict(manifest))
        return 0
    if command == "backup-list":
        from cloudbm.commands.backup_list import format_rows, list_backups

        rows: list[dict[str, Any]] = []
        for settings in _each_server(args, args.target):
            rows += list_backups(settings)
        _emit(args, format_rows(rows), {"backups": rows})
        return 0
    if command == "backup-show":
        from cloudbm.commands.backup_list import format_show, show_backup

        doc = show_backup(_settings(args), args.backup_id)
        _emit(args, format_show(doc), doc)
        return 0
    if command == "recover":
        return _recover(args)
    if command == "check":
        from cloudbm.commands.check import as_json, nagios, run_checks

        results = {s.server: run_checks(s) for s in _each_server(args, args.target)}
        failed = any(not r.ok for rs in results.values() for r in rs)
        if args.nagios:
            text, status = nagios(results)
            _write(text + "\n")
            return status
        lines = [r.line(server) for server, rs in results.items() for r in rs]
        _emit(args, "\n".join(lines), {"ok": not failed, "servers": as_json(results)})
        return 3 if failed else 0
    if command == "diagnose":
        import json

        from cloudbm.commands.diagnose import diagnose

        _write(
            json.dumps(
                diagnose(_each_server(args, "all" if not args.server else None)),
                indent=2,
                sort_keys=True,
                default=str,
            )
            + "\n"
        )
        return 0
    if command == "metrics":
        from cloudbm.commands.metrics import metrics

        _write(metrics(_each_server(args, args.target)))
        return 0
    if command == "retention":
        from cloudbm.commands.retention import retention

        docs: list[dict[str, Any]] = []
        texts: list[str] = []
        for settings in _each_server(args, args.target):
            applied = retention(settings, dry_run=args.dry_run)
            texts += applied.plan.explain()
            texts.append(
                "dry run: nothing removed"
                if applied.dry_run
                else f"removed {len(applied.backups_removed)} backup(s) and "
                f"{applied.wal_removed} WAL file(s)"
            )
            docs.append(
                {
                    "server": settings.server,
                    "dry_run": applied.dry_run,
                    "plan": applied.plan.explain(),
                    "backups_removed": applied.backups_removed,
                    "wal_removed": applied.wal_removed,
                }
            )
        _emit(args, "\n".join(texts), {"servers": docs})
        return 0
    if command == "delete":
        from cloudbm.commands.retention import delete

        applied = delete(_settings(args), args.backup_id, force=args.force)
        _emit(
            args,
            f"deleted backup {applied.backups_removed[0]} and {applied.wal_removed} "
            "WAL file(s) no other backup needs",
            {"deleted": applied.backups_removed, "wal_removed": applied.wal_removed},
        )
        return 0
    if command == "keep":
        from cloudbm.commands.retention import keep

        kept = keep(_settings(args), args.backup_id, target=args.target, release=args.release)
        verb = "released" if args.release else f"kept ({args.target})"
        _emit(
            args,
            f"backup {kept} {verb}",
            {"backup_id": kept, "keep": None if args.release else args.target},
        )
        return 0
    if command == "verify":
        from dataclasses import asdict

        from cloudbm.commands.verify import verify_backup

        report = verify_backup(_settings(args), args.backup_id)
        _emit(
            args,
            f"backup {report.backup_id} OK: {report.parts} part(s), {report.files} "
            f"files ({report.bytes} bytes) match the manifest; its WAL is archived",
            asdict(report),
        )
        return 0
    if command == "wal-verify":
        from cloudbm.commands.wal_verify import wal_verify

        wal_report = wal_verify(_settings(args), deep=args.deep)
        lines = [
            f"timeline {t}: {d['first']} .. {d['last']}, {d['segments']} segments, "
            + ("no gaps" if not d["gaps"] else f"{len(d['gaps'])} gap(s)")
            for t, d in wal_report["timelines"].items()
        ]
        lines += [f"FAILED: {p}" for p in wal_report["problems"]]
        lines.append("WAL archive OK" if wal_report["ok"] else "WAL archive has problems")
        _emit(args, "\n".join(lines), wal_report)
        return 0 if wal_report["ok"] else 3
    if command == "init":
        from cloudbm.commands.init import init

        res = init(_settings(args))
        d = res.descriptor
        verb = "initialised" if res.created else "already initialised for this cluster:"
        _emit(
            args,
            f"{verb} {res.url} (system identifier {d.system_identifier}, PostgreSQL "
            f"{d.pg_major}, encryption {d.encryption}"
            + (f", key id {d.key_id})" if d.key_id else ")"),
            {"created": res.created, "repository": res.url, "descriptor": d.as_dict()},
        )
        return 0
    if command == "keygen":
        from cloudbm.codec import keys

        if args.type == "symmetric":
            keys.generate_keyfile(args.output)
            _emit(
                args,
                f"wrote key file {args.output} (keep it secret, keep a copy)",
                {"key_file": args.output},
            )
        else:
            keys.generate_keypair(args.output, args.output + ".pub")
            _emit(
                args,
                f"wrote private key {args.output} (restore hosts only) and public "
                f"key {args.output}.pub (database hosts)",
                {"private_key_file": args.output, "public_key_file": args.output + ".pub"},
            )
        return 0
    if command == "list-servers":
        from cloudbm.config import find_config_path, read_config_file, server_names

        cfg = read_config_file(find_config_path(args.config, os.environ))
        names = server_names(cfg)
        _emit(args, "\n".join(names), {"servers": names})
        return 0
    if command == "show-config":
        settings = _settings(args).as_dict()
        _emit(args, "\n".join(f"{k} = {v!r}" for k, v in sorted(settings.items())), settings)
        return 0
    raise CloudbmError(f"unknown command {command}")


def _recover(args: Args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from cloudbm.commands.recover import RecoverOptions, recover
    from cloudbm.errors import ConfigError
    from cloudbm.pg.recovery_conf import RecoveryTarget

    if len(args.ids) > 2:
        raise ConfigError("recover takes at most a backup id and a destination")
    backup_id, dest = (args.ids[0], args.ids[1]) if len(args.ids) == 2 else (None, args.ids[0])
    if not dest.strip():
        raise ConfigError("the destination directory is empty", hint="give DEST")
    if backup_id is None:
        _check_lone_destination(dest)
    targets = (args.target_time, args.target_xid, args.target_lsn, args.target_name)
    if backup_id is None and not args.target_immediate and all(t is None for t in targets):
        backup_id = "latest"
    spaces: dict[str, str] = {}
    for item in args.tablespace:
        name, sep, directory = item.partition(":")
        if not sep or not name or not directory:
            raise ConfigError(f"--tablespace {item!r} is not NAME:DIR")
        spaces[name] = directory
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
    settings = _settings(args)
    if args.jobs:
        settings = settings.replace(jobs=args.jobs)
    result = recover(
        settings,
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
            global_args=tuple(_global_args(args, absolute=True)),
            progress=not (args.no_progress or args.json or args.quiet),
        ),
    )
    text = (
        f"recovered backup {result.backup_id} into {result.dest}: {result.files_written} files "
        f"written, {result.files_kept} kept, {result.files_removed} removed; "
        f"{result.wal_checked} WAL segments checked in the archive.\n"
        f"recovery target: {result.target['kind']}"
        + (f" {result.target['value']}" if result.target["value"] else "")
        + f", timeline {result.target['timeline']}\n"
        + (
            "WAL prefetch started for PostgreSQL's restore_command (it waits 2 minutes for the "
            "first request)\n"
            if result.prefetching
            else ""
        )
        + f"next: {result.start_command}"
    )
    _emit(args, text, asdict(result))
    return 0


def _check_lone_destination(dest: str) -> None:
    """`recover latest` (DEST forgotten) must not restore into ./latest."""
    import re

    from cloudbm.catalog import LATEST_ALIASES, OLDEST_ALIASES
    from cloudbm.errors import ConfigError

    if "/" in dest:
        return
    if dest.lower() in LATEST_ALIASES + OLDEST_ALIASES or re.fullmatch(
        r"[0-9]{8}T[0-9]{6}(-[0-9]+)?", dest
    ):
        raise ConfigError(
            f"recover needs a destination directory; {dest!r} looks like a backup id",
            hint=f"cloudbm recover {dest} DEST (to restore into a directory of that name, "
            f"write ./{dest})",
        )


def _fetch_error_exit() -> int:
    """Exit status for wal-fetch failures, readable even when the configuration is broken."""
    raw = os.environ.get("CLOUDBM_FETCH_ERROR_EXIT_CODE", "")
    return int(raw) if raw.isdigit() and 126 <= int(raw) <= 255 else DEFAULT_FETCH_ERROR_EXIT


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cloudbm` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    is_fetch = "wal-fetch" in argv
    try:
        args = parse_hot(argv) or build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"cloudbm: {exc}", file=sys.stderr)
        return _fetch_error_exit() if is_fetch else EXIT_USAGE
    except SystemExit as done:  # --help, --version: printed, now flush while we can handle it
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _detach_stdout()
            return EXIT_STDOUT_CLOSED
        raise done from None
    except BrokenPipeError:  # parsing touches no storage: this is --help into a closed pipe
        _detach_stdout()
        return EXIT_STDOUT_CLOSED
    configure_logs(verbose=args.verbose, quiet=args.quiet, command=args.command)
    try:
        return run(args)
    except _StdoutClosed:
        _detach_stdout()
        return EXIT_STDOUT_CLOSED
    except NotFoundError as exc:
        # For wal-fetch a miss is routine (the end of the archive), not an error.
        if args.command == "wal-fetch":
            log.debug("%s", exc)
        else:
            log.error("%s", exc)
        return exc.exit_code
    except CloudbmError as exc:
        log.error("%s", exc)
        if args.command == "wal-fetch":
            return _fetch_code(args)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Terminated as exc:
        log.error("%s", exc)
        return 143  # 128 + SIGTERM, as a shell reports a process the signal ended
    except Exception as exc:  # a bug: say so in one line, keep the traceback for -v
        log.error("unexpected %s: %s (run with -v for details)", type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        if args.command == "wal-fetch":
            return _fetch_code(args)
        return 70  # EX_SOFTWARE


def _fetch_code(args: Args) -> int:
    try:
        return int(_settings(args).fetch_error_exit_code)
    except Exception:
        return _fetch_error_exit()
