"""Real PostgreSQL clusters for integration tests, run as the `postgres` OS user.

PostgreSQL refuses to run as root, and archive_command runs as the server's user, so the
cluster, its repository and cloudbm's spool all live in postgres-owned directories under
/var/tmp (pytest's tmp_path is root-only).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.prefix) / "bin"
CLOUDBM = VENV_BIN / "cloudbm"


def postgres_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def postgres_dir(prefix: str) -> Path:
    """A fresh directory owned by postgres, traversable by everyone."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    uid, gid = postgres_ids()
    os.chown(path, uid, gid)
    path.chmod(0o755)
    return path


def chown_tree(path: Path) -> None:
    uid, gid = postgres_ids()
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def as_postgres(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command as the postgres user with an explicit environment."""
    full_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
    cmd = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "env",
        *(f"{k}={v}" for k, v in full_env.items()),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, check=check, timeout=timeout
    )


class PgCluster:
    """One initdb'd cluster with 1 MiB WAL segments, archiving through cloudbm."""

    def __init__(self, base: Path, port: int, bin_dir: Path = PG15_BIN) -> None:
        self.base = base
        self.pgdata = base / "data"
        self.port = port
        self.bin_dir = bin_dir
        self.env: dict[str, str] = {}
        self.log_path = base / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self.base

    def initdb(self) -> None:
        as_postgres(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.pgdata),
                "--wal-segsize=1",
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            timeout=120,
        )

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to postgresql.conf (later lines win)."""
        lines = [f"{k} = {v}" for k, v in settings.items()]
        conf = self.pgdata / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write("\n" + "\n".join(lines) + "\n")

    def base_settings(self) -> dict[str, str]:
        return {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "wal_level": "replica",
            "max_wal_size": "'64MB'",
            "shared_buffers": "'32MB'",
            "log_min_messages": "info",
            "logging_collector": "off",
        }

    def start(self, env: Mapping[str, str] | None = None) -> None:
        if env is not None:
            self.env = dict(env)
        as_postgres(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            env=self.env,
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            as_postgres(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ],
                check=False,
            )

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL with psql as postgres; returns unaligned, tuples-only output."""
        res = as_postgres(
            [
                "/usr/bin/psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-d",
                db,
                "-c",
                sql,
            ],
        )
        return res.stdout.strip()

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_archived(self, timeout: float = 60) -> str:
        """Switch WAL and wait until the archiver has archived everything up to it."""
        last = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if done and done >= last:
                return last
            time.sleep(0.1)
        raise AssertionError(
            f"archiver did not reach {last}; stats: "
            f"{self.psql('SELECT * FROM pg_stat_archiver')}\n{self.server_log()[-3000:]}"
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_cluster(
    archive_command: str | None,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    bin_dir: Path = PG15_BIN,
) -> Iterator[PgCluster]:
    """initdb + start a cluster archiving with `archive_command`; stopped and removed after."""
    base = postgres_dir("cloudbm-pg-")
    cluster = PgCluster(base, free_port(), bin_dir)
    try:
        cluster.initdb()
        settings = cluster.base_settings()
        if archive_command:
            settings.update(
                {
                    "archive_mode": "on",
                    "archive_command": f"'{archive_command}'",
                    "archive_timeout": "0",
                }
            )
        settings.update(extra or {})
        cluster.configure(settings)
        cluster.start(env)
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
