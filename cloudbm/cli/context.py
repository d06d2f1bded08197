"""What every handler needs from the parsed arguments: the settings they select, the servers
a command covers, and the global flags to hand on to helper processes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudbm.config import Settings

# Parsed arguments: an argparse.Namespace, or a SimpleNamespace from the hot-path parser.
Args = Any

# Flags that override configuration keys of the same name.
FLAG_KEYS = ("repository", "pgdata", "compression", "jobs")


def settings(args: Args) -> Settings:
    from cloudbm.config import load_settings

    overrides = {k: getattr(args, k, None) for k in FLAG_KEYS}
    return load_settings(config_path=args.config, server=args.server, overrides=overrides)


def each_server(args: Args, target: str | None) -> list[Settings]:
    """Settings of one server, or of every configured one for 'all'."""
    if target != "all":
        if target:
            args.server = target
        return [settings(args)]
    from cloudbm.config import find_config_path, read_config_file, server_names, settings_for

    cfg = read_config_file(find_config_path(args.config, os.environ))
    if not cfg.servers:
        return [settings(args)]  # no file, or no sections: the one server flags describe
    overrides = {k: getattr(args, k, None) for k in FLAG_KEYS}
    return [settings_for(cfg, name, overrides, os.environ) for name in server_names(cfg)]


def global_args(args: Args, absolute: bool = False) -> list[str]:
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


def remember_for_fast_path(args: Args, resolved: Settings) -> None:
    """Let later calls with the same flags, environment and files skip this work."""
    from cloudbm.localstate import KEY_FLAGS, remember_settings

    flags = {k: getattr(args, k, None) for k in KEY_FLAGS}
    remember_settings(
        flags,
        {
            "spool_root": str(resolved.spool_dir()),
            "wal_push_ahead": resolved.wal_push_ahead,
            "wal_prefetch": resolved.wal_prefetch,
        },
    )


class Terminated(BaseException):
    """SIGTERM (systemctl stop, a timeout wrapper) during a long command: unwinds like Ctrl-C,
    so the command records how it ended (backup-push writes failed.json and gives its lease
    back) instead of vanishing mid-write."""

    def __init__(self) -> None:
        super().__init__("stopped by SIGTERM")


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def stop_cleanly_on_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
