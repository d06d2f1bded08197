"""Recovery configuration for PostgreSQL 12+: settings in postgresql.auto.conf, one signal file.

Stale recovery settings already in postgresql.auto.conf are commented out with a marker (the
last value wins, and a forgotten recovery_target from an earlier restore is dangerous).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cloudbm.errors import ConfigError

MARKER = "# cloudbm recover:"
RECOVERY_KEYS = (
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_end_command",
    "archive_cleanup_command",
)
TARGET_ACTIONS = ("pause", "promote", "shutdown")


@dataclass(frozen=True)
class RecoveryTarget:
    """At most one of time/xid/lsn/name/immediate; None everywhere = end of the archive."""

    time: str | None = None
    xid: str | None = None
    lsn: str | None = None
    name: str | None = None
    immediate: bool = False
    inclusive: bool = True
    timeline: str = "latest"  # 'latest', 'current' or a number
    action: str | None = None

    def kind(self) -> str | None:
        for kind in ("time", "xid", "lsn", "name"):
            if getattr(self, kind) is not None:
                return kind
        return "immediate" if self.immediate else None


@dataclass(frozen=True)
class RecoveryConfig:
    restore_command: str
    target: RecoveryTarget = field(default_factory=RecoveryTarget)
    standby: bool = False
    archive_mode_off: bool = False


def quote(value: str) -> str:
    """A postgresql.conf string literal; ConfigError for a value no literal can hold (the
    file's strings end at a line break, and a NUL ends them early)."""
    if any(c in value for c in "\n\r\x00"):
        raise ConfigError(
            f"{value!r} cannot be written to postgresql.auto.conf: it contains a line break or NUL",
            hint="give the value on one line",
        )
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def settings(config: RecoveryConfig) -> dict[str, str]:
    """The parameters to write, already quoted."""
    out = {"restore_command": quote(config.restore_command)}
    t = config.target
    kind = t.kind()
    if kind == "immediate":
        out["recovery_target"] = quote("immediate")
    elif kind is not None:
        out[f"recovery_target_{kind}"] = quote(str(getattr(t, kind)))
        out["recovery_target_inclusive"] = "on" if t.inclusive else "off"
    out["recovery_target_timeline"] = quote(t.timeline)
    if t.action and kind is not None:
        out["recovery_target_action"] = quote(t.action)
    if config.archive_mode_off:
        out["archive_mode"] = "off"
    return out


def render_auto_conf(existing: str, params: Mapping[str, str], note: str) -> str:
    """postgresql.auto.conf with stale recovery lines neutralised and `params` appended."""
    neutral = set(RECOVERY_KEYS) | set(params)
    lines = []
    for line in existing.splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if key in neutral and not line.lstrip().startswith("#"):
            lines.append(f"{MARKER} {line}")
        else:
            lines.append(line)
    lines.append(f"# {note}")
    lines.extend(f"{k} = {v}" for k, v in params.items())
    return "\n".join(lines) + "\n"


def write_recovery(pgdata: Path, config: RecoveryConfig, note: str) -> list[Path]:
    """Write postgresql.auto.conf and exactly one signal file; returns the files written."""
    auto = pgdata / "postgresql.auto.conf"
    existing = auto.read_text() if auto.exists() else ""
    written = [write_private_file(auto, render_auto_conf(existing, settings(config), note))]
    wanted, other = ("standby.signal", "recovery.signal")
    if not config.standby:
        wanted, other = other, wanted
    (pgdata / other).unlink(missing_ok=True)
    (pgdata / "recovery.conf").unlink(missing_ok=True)  # PG 12+ refuses to start with it
    written.append(write_private_file(pgdata / wanted, ""))
    return written


def write_private_file(path: Path, text: str) -> Path:
    """Write a 0600 file durably: temp file, fsync, rename."""
    tmp = path.with_name(path.name + ".cloudbm-tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
