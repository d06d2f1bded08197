"""The database session of a base backup: server checks and the non-exclusive backup API.

Start and stop must run in the same session, which must survive a copy of hours: statement,
idle and idle-in-transaction timeouts are disabled for it, TCP keepalives are on, and a light
keepalive query runs while the copy proceeds. If the session dies, PostgreSQL aborts the backup
server-side, which is safe.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass
from typing import Any

from cloudbm.errors import CheckFailed, ConfigError
from cloudbm.pg import walnames
from cloudbm.pg.archiver import ArchiverStats

SUPPORTED_MAJORS = range(13, 19)
KEEPALIVE_SECONDS = 60.0


@dataclass(frozen=True)
class ServerInfo:
    version_num: int
    version: str
    system_identifier: int
    data_directory: str
    wal_level: str
    archive_mode: str
    archive_command: str
    in_recovery: bool
    wal_segment_size: int
    timeline: int

    @property
    def major(self) -> int:
        return self.version_num // 10000


@dataclass(frozen=True)
class TablespaceInfo:
    oid: int
    name: str
    location: str


@dataclass(frozen=True)
class BackupStart:
    lsn: int
    timeline: int


@dataclass(frozen=True)
class BackupStop:
    lsn: int
    backup_label: str
    tablespace_map: str


@dataclass(frozen=True)
class LabelInfo:
    """What a backup_label says (see PostgreSQL's do_pg_backup_stop)."""

    start_lsn: int
    start_wal: str
    checkpoint_lsn: int | None
    start_timeline: int
    backup_from: str
    start_time: str
    label: str


_LABEL_START = re.compile(
    r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$", re.M
)
_LABEL_FIELD = re.compile(r"^([A-Z ]+): (.*)$", re.M)


def parse_backup_label(text: str) -> LabelInfo:
    """Parse the backup_label returned by the stop call."""
    m = _LABEL_START.search(text)
    if not m:
        raise ValueError("backup_label has no START WAL LOCATION line")
    fields = {k: v.strip() for k, v in _LABEL_FIELD.findall(text)}
    checkpoint = fields.get("CHECKPOINT LOCATION")
    return LabelInfo(
        start_lsn=walnames.parse_lsn(m.group(1)),
        start_wal=m.group(2),
        checkpoint_lsn=walnames.parse_lsn(checkpoint) if checkpoint else None,
        start_timeline=int(fields.get("START TIMELINE", "0") or 0)
        or walnames.parse(m.group(2)).timeline,
        backup_from=fields.get("BACKUP FROM", "primary"),
        start_time=fields.get("START TIME", ""),
        label=fields.get("LABEL", ""),
    )


def _size_setting(value: str, unit: str | None) -> int:
    """pg_settings value+unit (e.g. '16', 'MB' or '2048', '8kB') -> bytes."""
    factor = {None: 1, "": 1, "B": 1, "kB": 1024, "8kB": 8192, "MB": 1 << 20, "GB": 1 << 30}
    return int(value) * factor.get(unit, 1)


class BackupSession:
    """One psycopg connection held open from start to stop of a backup."""

    def __init__(self, conninfo: str | None, application_name: str = "cloudbm") -> None:
        import psycopg

        self._psycopg = psycopg
        try:
            self.conn: Any = psycopg.connect(
                conninfo or "",
                autocommit=True,
                application_name=application_name,
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=6,
                connect_timeout=30,
            )
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}",
                hint="check conninfo (or CLOUDBM_CONNINFO / libpq PG* variables)",
            ) from None
        self._lock = threading.Lock()
        self._stop_keepalive = threading.Event()
        self._keepalive: threading.Thread | None = None
        for setting in ("statement_timeout", "idle_in_transaction_session_timeout", "lock_timeout"):
            self.execute(f"SET {setting} = 0")
        if self.conn.info.server_version >= 140000:
            self.execute("SET idle_session_timeout = 0")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self.conn.cursor() as cur:
            try:
                cur.execute(sql, params)
            except self._psycopg.Error as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise CheckFailed(f"PostgreSQL refused {sql.split('(')[0]!r}: {message}") from None
            return list(cur.fetchall()) if cur.description else []

    def info(self) -> ServerInfo:
        """What backup-push checks before starting."""
        (row,) = self.execute(
            "SELECT current_setting('server_version_num')::int, version(),"
            " (SELECT system_identifier FROM pg_control_system()),"
            " current_setting('data_directory'), current_setting('wal_level'),"
            " current_setting('archive_mode'), current_setting('archive_command'),"
            " pg_is_in_recovery(),"
            " (SELECT setting || ':' || coalesce(unit, '') FROM pg_settings"
            "   WHERE name = 'wal_segment_size'),"
            " (SELECT timeline_id FROM pg_control_checkpoint())"
        )
        value, _, unit = str(row[8]).partition(":")
        return ServerInfo(
            version_num=int(row[0]),
            version=str(row[1]),
            system_identifier=int(row[2]),
            data_directory=str(row[3]),
            wal_level=str(row[4]),
            archive_mode=str(row[5]),
            archive_command=str(row[6]),
            in_recovery=bool(row[7]),
            wal_segment_size=_size_setting(value, unit or None),
            timeline=int(row[9]),
        )

    def tablespaces(self) -> list[TablespaceInfo]:
        rows = self.execute(
            "SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace"
            " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid"
        )
        return [TablespaceInfo(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def check(self, info: ServerInfo) -> None:
        """Refuse servers a backup cannot be taken from (or recovered with)."""
        if info.major not in SUPPORTED_MAJORS:
            raise CheckFailed(
                f"PostgreSQL {info.major} is not supported",
                hint="cloudbm backs up PostgreSQL 13 to 18",
            )
        if info.wal_level not in ("replica", "logical"):
            raise CheckFailed(
                f"wal_level is {info.wal_level!r}",
                hint="set wal_level = replica (needs a restart) to take base backups",
            )
        if info.archive_mode == "off":
            raise CheckFailed(
                "archive_mode is off: the backup would not be recoverable",
                hint="set archive_mode = on and archive_command = 'cloudbm wal-push %p'",
            )

    def start_backup(self, label: str, fast: bool, info: ServerInfo) -> BackupStart:
        if info.major >= 15:
            rows = self.execute("SELECT pg_backup_start(%s, %s)", (label, fast))
        else:
            rows = self.execute("SELECT pg_start_backup(%s, %s, false)", (label, fast))
        return BackupStart(walnames.parse_lsn(str(rows[0][0])), info.timeline)

    def stop_backup(self, info: ServerInfo, wait_for_archive: bool) -> BackupStop:
        """Stop in the same session; wait_for_archive makes a primary wait for the last
        segment to be archived (a standby never switches WAL here)."""
        self.stop_keepalive()
        if info.major >= 15:
            rows = self.execute(
                "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(%s)", (wait_for_archive,)
            )
        else:
            rows = self.execute(
                "SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, %s)",
                (wait_for_archive,),
            )
        lsn, label, spcmap = rows[0]
        return BackupStop(walnames.parse_lsn(str(lsn)), str(label), str(spcmap or ""))

    def archiver(self) -> ArchiverStats:
        """pg_stat_archiver and the archive settings in effect now (a reload may change them)."""
        (row,) = self.execute(
            "SELECT archived_count, last_archived_wal,"
            " extract(epoch FROM now() - last_archived_time),"
            " failed_count, last_failed_wal,"
            " coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false),"
            " current_setting('archive_command'),"
            " coalesce(current_setting('archive_library', true), '')"
            " FROM pg_stat_archiver"
        )
        return ArchiverStats(
            archived_count=int(row[0]),
            last_archived_wal=row[1],
            last_archived_age=None if row[2] is None else float(row[2]),
            failed_count=int(row[3]),
            last_failed_wal=row[4],
            failing=bool(row[5]),
            archive_command=str(row[6]),
            archive_library=str(row[7]),
        )

    def switch_wal(self) -> None:
        self.execute("SELECT pg_switch_wal()")

    def start_keepalive(self) -> None:
        """Touch the session periodically so idle connections are not reaped by middleboxes."""

        def loop() -> None:
            while not self._stop_keepalive.wait(KEEPALIVE_SECONDS):
                try:
                    self.execute("SELECT 1")
                except CheckFailed:
                    return

        self._keepalive = threading.Thread(target=loop, name="cloudbm-keepalive", daemon=True)
        self._keepalive.start()

    def stop_keepalive(self) -> None:
        self._stop_keepalive.set()
        if self._keepalive is not None:
            self._keepalive.join(timeout=5)

    def close(self) -> None:
        self.stop_keepalive()
        # Closing a broken connection must not mask the error that broke it.
        with contextlib.suppress(Exception):
            self.conn.close()
