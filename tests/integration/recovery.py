"""Starting a recovered data directory and comparing its data with a snapshot."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.pgcluster import PgCluster, as_postgres, free_port

SNAPSHOT_SQL = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id::text || '=' || v, ',' ORDER BY id)), '')"
    " FROM t"
)


def snapshot(cluster: PgCluster) -> str:
    """Row count and a checksum over every row of table t."""
    return cluster.psql(SNAPSHOT_SQL)


def start_recovered(pgdata: Path, bin_dir: Path, env: dict[str, str]) -> PgCluster:
    """Start a recovered PGDATA on its own port and socket directory."""
    base = pgdata.parent
    cluster = PgCluster.__new__(PgCluster)
    cluster.base = base
    cluster.pgdata = pgdata
    cluster.port = free_port()
    cluster.bin_dir = bin_dir
    cluster.env = dict(env)
    cluster.log_path = base / f"{pgdata.name}.log"
    cluster.configure(
        {
            "port": str(cluster.port),
            "unix_socket_directories": f"'{base}'",
            "listen_addresses": "''",
        }
    )
    as_postgres(
        [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(cluster.log_path), "-W", "start"],
        env=cluster.env,
    )
    return cluster


def wait_promoted(cluster: PgCluster, timeout: float = 120) -> None:
    """Wait until recovery has ended and the server accepts writes."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        res = as_postgres(
            [
                "/usr/bin/psql",
                "-X",
                "-A",
                "-t",
                "-h",
                str(cluster.socket_dir),
                "-p",
                str(cluster.port),
                "-d",
                "postgres",
                "-c",
                "SELECT pg_is_in_recovery()",
            ],
            check=False,
        )
        last = res.stdout.strip() + res.stderr.strip()
        if res.returncode == 0 and res.stdout.strip() == "f":
            return
        if not (cluster.pgdata / "postmaster.pid").exists() and "No such file" in last:
            break
        time.sleep(0.3)
    raise AssertionError(f"recovery did not finish: {last}\n{cluster.server_log()[-4000:]}")
