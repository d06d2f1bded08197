"""Configuration: TOML file + CLOUDBM_* environment + flags -> one typed Settings object.

Precedence, lowest first: built-in defaults, `[defaults]`, `[servers.NAME]`, `CLOUDBM_<KEY>`
environment variables, command-line flags. The file is `--config`, else `$CLOUDBM_CONFIG`, else
/etc/cloudbm/cloudbm.toml when it exists. `--repo URL` alone is enough for a local repository.
Secrets (passphrases, connection strings) come from files or the environment, never argv.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cloudbm import localstate
from cloudbm.errors import ConfigError

if TYPE_CHECKING:
    from cloudbm.repository import Repository, RepositoryConfig

DEFAULT_CONFIG_PATH = Path(localstate.DEFAULT_CONFIG_PATH)
ENV_PREFIX = "CLOUDBM_"
ENCRYPTION_MODES = ("none", "passphrase", "keyfile", "public-key")
COMPRESSIONS = ("zstd", "lz4", "gzip", "none")
S3_CHECKSUM_MODES = ("when_required", "when_supported")
S3_ADDRESSING = ("auto", "path", "virtual")


class Settings:
    """Everything one command needs for one server. Attribute names are the config keys.

    A plain class rather than a dataclass: archive_command imports this module once per WAL
    segment, and generating dataclass methods for fifty fields costs more than the rest of it.
    """

    server: str = "default"
    repository: str = ""
    pgdata: str | None = None
    conninfo: str | None = None
    compression: str = "zstd"
    compression_level: int | None = None
    # WAL is compressed on the database host once per segment, while PostgreSQL waits: zstd
    # level 1 halves the CPU of level 3 for about 25% more bytes (docs/wal.md).
    wal_compression_level: int | None = 1
    encryption: str = "none"
    passphrase_file: str | None = None
    key_file: str | None = None
    public_key_file: str | None = None
    private_key_file: str | None = None
    jobs: int = 2
    # WAL
    wal_push_ahead: int = 8
    wal_prefetch: int = 8
    spool_directory: str = ""  # default: /var/tmp/cloudbm-<uid>
    # Exit status for wal-fetch failures other than "not found": above 125 makes PostgreSQL
    # abort recovery instead of treating the segment as the end of the archive.
    fetch_error_exit_code: int = 126
    history_miss_cache_seconds: float = 10.0
    pre_archive_script: str | None = None
    post_archive_script: str | None = None
    # base backups
    backup_part_size: int = 1024 * 1024 * 1024
    immediate_checkpoint: bool = True
    bandwidth_limit: int | None = None  # KiB/s
    wal_wait_timeout: float = 600.0
    # One backup per server: a run's lease in the repository expires this long after its last
    # heartbeat (a heartbeat every quarter of it), so a dead run blocks no longer (lease.py).
    backup_lease_ttl: float = 300.0
    pre_backup_script: str | None = None
    post_backup_script: str | None = None
    # retention (docs/retention.md)
    retention_policy: str | None = None
    last_backup_maximum_age: str | None = None  # e.g. "2 DAYS": check fails beyond it
    # This host's credentials cannot delete (archiving hosts should not): refuse deletes early.
    append_only: bool = False
    minimum_redundancy: int = 0
    wal_retention: str = "backups"
    # A STARTED/WAITING backup younger than this may be running on another host: kept.
    unfinished_backup_grace_hours: float = 24.0
    # storage
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    operation_timeout: float = 300.0
    max_attempts: int = 100  # a cap; by default operation_timeout ends retrying first
    multipart_threshold: int = 64 * 1024 * 1024
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = "auto"
    s3_checksum_mode: str = "when_required"
    gcs_endpoint_url: str | None = None
    gcs_project: str | None = None
    azure_account_url: str | None = None
    azure_connection_string_file: str | None = None
    # where the values came from, for error messages and show-config
    source: str = ""

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - FIELDS
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        self.__dict__.update(values)
        if not self.spool_directory:
            self.spool_directory = localstate.cache_dir()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed."""
        return Settings(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Every setting, defaults included."""
        return {name: getattr(self, name) for name in sorted(FIELDS)}

    def __repr__(self) -> str:
        return f"Settings(server={self.server!r}, repository={self.repository!r})"

    def storage_options(self) -> Any:
        """StorageOptions for the backend (imported here to keep config import-light)."""
        from cloudbm.storage.base import StorageOptions

        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if self.azure_connection_string_file:
            conn = _read_secret(self.azure_connection_string_file, "azure_connection_string_file")
        return StorageOptions(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            operation_timeout=self.operation_timeout,
            max_attempts=self.max_attempts,
            multipart_threshold=self.multipart_threshold,
            max_concurrency=max(1, self.jobs),
            s3_checksum_mode=self.s3_checksum_mode,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            s3_addressing_style=self.s3_addressing_style,
            gcs_endpoint_url=self.gcs_endpoint_url,
            gcs_project=self.gcs_project,
            azure_account_url=self.azure_account_url,
            azure_connection_string=conn,
        )

    def repository_config(self) -> RepositoryConfig:
        """What the repository layer needs of these settings."""
        from cloudbm.repository import RepositoryConfig

        return RepositoryConfig(
            url=self.repository,
            storage_options=self.storage_options(),
            append_only=self.append_only,
            compression=self.compression,
            compression_level=self.compression_level,
            wal_compression_level=self.wal_compression_level,
            encryption=self.encryption,
            key_file=self.key_file,
            public_key_file=self.public_key_file,
            private_key_file=self.private_key_file,
            passphrase=self.passphrase,
        )

    def open_repository(self) -> Repository:
        """This server's repository over a retrying storage backend; a context manager."""
        from cloudbm.repository import open_repository

        return open_repository(self.repository_config())

    def spool_dir(self) -> Path:
        """Per-repository local state (locks, push markers, prefetched WAL), outside pg_wal."""
        from cloudbm.localstate.spool import spool_root

        return spool_root(self.spool_directory, self.server, self.repository)

    def pgdata_path(self) -> Path:
        """The data directory: configured `pgdata`, else the current directory when it is one
        (archive_command and restore_command run with cwd = PGDATA)."""
        if self.pgdata:
            return Path(self.pgdata)
        cwd = Path(os.getcwd())
        if (cwd / "global" / "pg_control").exists():
            return cwd
        raise ConfigError(
            "pgdata is not configured and the current directory is not a data directory",
            hint="set pgdata (or CLOUDBM_PGDATA, or --pgdata)",
        )

    def passphrase(self) -> bytes:
        """The repository passphrase from $CLOUDBM_PASSPHRASE or `passphrase_file`."""
        env = os.environ.get("CLOUDBM_PASSPHRASE")
        if env:
            return env.encode()
        if not self.passphrase_file:
            raise ConfigError(
                "encryption = 'passphrase' needs a passphrase",
                hint="set passphrase_file or the CLOUDBM_PASSPHRASE environment variable",
            )
        return _read_secret(self.passphrase_file, "passphrase_file").encode()


def _read_secret(path: str, key: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key} {path!r} cannot be read: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{key} {path!r} is empty")
    return value


# --- validation -----------------------------------------------------------------------------

FIELDS = frozenset(name for name in Settings.__annotations__)
FIELD_TYPES = frozenset(FIELDS - {"server", "source"})


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if not isinstance(value, str) or value.lower() not in options:
            raise ConfigError(
                f"{key} = {value!r} is not valid", hint=f"use one of: {', '.join(options)}"
            )
        return value.lower()

    return check


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a whole number >= 1")
    return value


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a whole number >= 0")
    return value


def _exit_code(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 126 <= value <= 255:
        raise ConfigError(
            f"{key} = {value!r} is not valid",
            hint="use 126..255: PostgreSQL aborts recovery only on statuses above 125",
        )
    return value


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a number > 0")
    return float(value)


def _non_negative_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a number >= 0")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "on",
        "yes",
        "1",
        "false",
        "off",
        "no",
        "0",
    ):
        return value.lower() in ("true", "on", "yes", "1")
    raise ConfigError(f"{key} = {value!r} is not valid", hint="use true or false")


def _policy(key: str, value: Any) -> str:
    from cloudbm.retention import parse_policy

    text = _string(key, value)
    parse_policy(text)
    return text


def _age(key: str, value: Any) -> str:
    from cloudbm.durations import parse_age

    text = _string(key, value)
    parse_age(text)
    return text


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a non-empty string")
    return value


def _level(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -7 <= value <= 22:
        raise ConfigError(f"{key} = {value!r} is not valid", hint="use a level from 1 to 22")
    return value


VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "compression": _choice(COMPRESSIONS),
    "compression_level": _level,
    "wal_compression_level": _level,
    "encryption": _choice(ENCRYPTION_MODES),
    "jobs": _positive_int,
    "wal_push_ahead": _non_negative_int,
    "wal_prefetch": _non_negative_int,
    "fetch_error_exit_code": _exit_code,
    "history_miss_cache_seconds": _non_negative_float,
    "connect_timeout": _positive_float,
    "read_timeout": _positive_float,
    "operation_timeout": _positive_float,
    "max_attempts": _positive_int,
    "multipart_threshold": _positive_int,
    "backup_part_size": _positive_int,
    "immediate_checkpoint": _bool,
    "bandwidth_limit": _positive_int,
    "wal_wait_timeout": _positive_float,
    "backup_lease_ttl": _positive_float,
    "retention_policy": _policy,
    "last_backup_maximum_age": _age,
    "append_only": _bool,
    "minimum_redundancy": _non_negative_int,
    "wal_retention": _choice(("backups", "all")),
    "unfinished_backup_grace_hours": _positive_float,
    "s3_addressing_style": _choice(S3_ADDRESSING),
    "s3_checksum_mode": _choice(S3_CHECKSUM_MODES),
}

INT_KEYS = {
    k for k, v in VALIDATORS.items() if v in (_positive_int, _non_negative_int, _exit_code, _level)
}
FLOAT_KEYS = {k for k, v in VALIDATORS.items() if v in (_positive_float, _non_negative_float)}

# Keys that name secrets directly are refused: secrets come from files or the environment.
FORBIDDEN_KEYS = {
    "passphrase": "passphrase_file or CLOUDBM_PASSPHRASE",
    "azure_connection_string": "azure_connection_string_file or AZURE_STORAGE_CONNECTION_STRING",
    "aws_secret_access_key": "the AWS SDK's credential chain (environment, profile, role)",
}


def _validate(key: str, value: Any, where: str) -> Any:
    if key in FORBIDDEN_KEYS:
        raise ConfigError(
            f"{key} in {where} would put a secret in the configuration",
            hint=f"use {FORBIDDEN_KEYS[key]}",
        )
    if key not in FIELD_TYPES:
        raise ConfigError(f"unknown key {key!r} in {where}", hint="check the spelling")
    try:
        check: Callable[[str, Any], Any] = VALIDATORS.get(key, _string)
        return check(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (in {where})", hint=exc.hint) from None


def _from_env_value(key: str, raw: str) -> Any:
    if key in INT_KEYS:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{key.upper()}={raw!r} is not a whole number") from None
    if key in FLOAT_KEYS:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{key.upper()}={raw!r} is not a number") from None
    return raw


# --- loading --------------------------------------------------------------------------------


class ConfigFile(NamedTuple):
    """The parsed TOML file (or nothing): defaults and per-server sections."""

    path: Path | None
    defaults: Mapping[str, Any]
    servers: Mapping[str, Mapping[str, Any]]


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, then $CLOUDBM_CONFIG, then /etc/cloudbm/cloudbm.toml if it exists."""
    if explicit:
        return Path(explicit)
    env = environ.get("CLOUDBM_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def read_config_file(path: Path | None) -> ConfigFile:
    """Parse and validate the TOML file; every problem is one ConfigError naming the key."""
    if path is None:
        return ConfigFile(None, {}, {})
    data = _parse_toml(path)
    for section in data:
        if section not in ("defaults", "servers"):
            raise ConfigError(
                f"unknown section [{section}] in {path}",
                hint="use [defaults] and [servers.NAME]",
            )
    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise ConfigError(f"[defaults] in {path} must be a table")
    defaults = {k: _validate(k, v, f"[defaults] of {path}") for k, v in defaults_raw.items()}
    servers: dict[str, dict[str, Any]] = {}
    servers_raw = data.get("servers", {})
    if not isinstance(servers_raw, dict):
        raise ConfigError(f"'servers' in {path} must hold [servers.NAME] tables")
    for name, section in servers_raw.items():
        if not isinstance(section, dict):
            raise ConfigError(f"[servers.{name}] in {path} must be a table")
        if name == "all" or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"server name {name!r} in {path} is not valid",
                hint="use letters, digits, '-' and '_' ('all' is reserved)",
            )
        servers[name] = {
            k: _validate(k, v, f"[servers.{name}] of {path}") for k, v in section.items()
        }
    return ConfigFile(path, defaults, servers)


def _parse_toml(path: Path) -> dict[str, Any]:
    """The TOML document, through a per-user JSON cache keyed by the file's identity: every
    archive_command call reads the configuration, and JSON parses ten times faster than
    importing tomllib and parsing TOML."""
    import json
    import zlib

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache_dir = Path(localstate.cache_dir())
    real = os.path.realpath(path)
    cache = cache_dir / f"config-{zlib.crc32(real.encode()):08x}.json"
    try:
        doc = json.loads(cache.read_text())
        if doc.get("path") == real and doc.get("identity") == identity:
            data: dict[str, Any] = doc["data"]
            return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    try:
        from cloudbm.fsutil import private_dir, write_private

        private_dir(str(cache_dir))
        doc = json.dumps({"path": real, "identity": identity, "data": data})
        write_private(str(cache), doc.encode())  # 0600, like every file of local state
    except (OSError, TypeError, ValueError):
        pass  # the cache is an optimisation; values that JSON cannot hold are not cached
    return data


def server_names(cfg: ConfigFile) -> list[str]:
    """Configured server names, sorted."""
    return sorted(cfg.servers)


def resolve_server(cfg: ConfigFile, requested: str | None, environ: Mapping[str, str]) -> str:
    """--server, then $CLOUDBM_SERVER, then the only configured server, else 'default'."""
    name = requested or environ.get("CLOUDBM_SERVER")
    if name:
        if cfg.servers and name not in cfg.servers:
            raise ConfigError(
                f"server {name!r} is not configured in {cfg.path}",
                hint=f"configured: {', '.join(server_names(cfg))}",
            )
        return name
    if len(cfg.servers) == 1:
        return next(iter(cfg.servers))
    if len(cfg.servers) > 1:
        raise ConfigError(
            f"{cfg.path} configures several servers",
            hint=f"choose one with --server ({', '.join(server_names(cfg))})",
        )
    return "default"


def load_settings(
    *,
    config_path: str | None = None,
    server: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the Settings for one server from file, environment and flag overrides."""
    env = os.environ if environ is None else environ
    cfg = read_config_file(find_config_path(config_path, env))
    return settings_for(cfg, resolve_server(cfg, server, env), overrides or {}, env)


def settings_for(
    cfg: ConfigFile, name: str, overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> Settings:
    """Merge the layers for server `name` and validate the result."""
    values: dict[str, Any] = dict(cfg.defaults)
    values.update(cfg.servers.get(name, {}))
    for key in FIELD_TYPES:
        raw = environ.get(ENV_PREFIX + key.upper())
        if raw is not None and raw != "":
            values[key] = _validate(key, _from_env_value(key, raw), f"${ENV_PREFIX}{key.upper()}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = _validate(key, value, f"--{key.replace('_', '-')}")
    settings = Settings(server=name, source=str(cfg.path or "environment/flags"), **values)
    if not settings.repository:
        raise ConfigError(
            f"no repository configured for server {name!r}",
            hint="set 'repository' in the configuration, CLOUDBM_REPOSITORY, or pass --repo URL",
        )
    if settings.encryption == "keyfile" and not settings.key_file:
        raise ConfigError("encryption = 'keyfile' needs key_file")
    if settings.encryption == "public-key" and not (
        settings.public_key_file or settings.private_key_file
    ):
        raise ConfigError(
            "encryption = 'public-key' needs public_key_file (to archive) "
            "and/or private_key_file (to restore)"
        )
    return settings
