"""Smoke-check the PostgreSQL server majors of the test matrix (not a pytest module).

    /opt/cloudbm/venv/bin/python tests/integration/pgversions_check.py 13 14 16 17 18
    /opt/cloudbm/venv/bin/python tests/integration/pgversions_check.py --pgbench 13 18

For each major (default: 13 14 15 16 17 18), with the binaries from `pgversions/bindir MAJOR`:
initdb a 1 MiB-segment cluster in a postgres-owned dir under /var/tmp, start it with pg_ctl on a
private unix socket (listen_addresses=''), and with Debian's v15 /usr/bin/psql run SELECT
version(), CREATE TABLESPACE, and a non-exclusive base backup start/stop in one session; with
--pgbench also `pgbench -i` plus a short run using Debian's v15 /usr/bin/pgbench. Then stop and
remove everything. Prints one row per major and exits 1 if any failed. Must run as root.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINDIR = REPO / "pgversions" / "bindir"
PSQL = "/usr/bin/psql"
PGBENCH = "/usr/bin/pgbench"
DEFAULT_MAJORS = ["13", "14", "15", "16", "17", "18"]


class CheckFailed(Exception):
    pass


def as_postgres(args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Run args as the postgres OS user; return stdout, raise CheckFailed with output on error."""
    full_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "10"}
    full_env.update(env or {})
    cmd = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "env",
        "-i",
        *(f"{k}={v}" for k, v in full_env.items()),
        *args,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if proc.returncode != 0:
        output = f"{proc.stdout.strip()}\n{proc.stderr.strip()}".strip()
        raise CheckFailed(f"exit {proc.returncode}: {' '.join(args)}\n{output}")
    return proc.stdout


def bindir(major: str) -> Path:
    proc = subprocess.run([str(BINDIR), major], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(proc.stderr.strip() or f"{BINDIR} {major} failed")
    return Path(proc.stdout.strip())


def free_port() -> int:
    # With listen_addresses='' the port only names the socket file in our private socket dir,
    # but a free TCP port keeps the cluster from looking like someone else's in logs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_dir(parent: Path | None = None, prefix: str = "cloudbm-pgv-") -> Path:
    pw = pwd.getpwnam("postgres")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent or "/var/tmp"))
    os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(0o700 if parent else 0o755)
    return path


def check_major(major: str, *, pgbench: bool) -> tuple[str, list[str]]:
    """Return (server version, notes); raise CheckFailed on any failure."""
    bins = bindir(major)
    notes: list[str] = []
    base = postgres_dir()
    data, sock, tblspc = base / "data", base / "sock", base / "tblspc"
    started = False
    try:
        for d in (sock, tblspc):
            d.mkdir()
            shutil.chown(d, "postgres", "postgres")
            d.chmod(0o700)
        as_postgres(
            [
                str(bins / "initdb"),
                "-D",
                str(data),
                "--wal-segsize=1",
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ]
        )
        port = free_port()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# pgversions_check\nlisten_addresses = ''\nport = {port}\n"
                f"unix_socket_directories = '{sock}'\nfsync = off\n"
            )
        as_postgres(
            [
                str(bins / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        started = True

        conn = ["-h", str(sock), "-p", str(port), "-U", "postgres", "-d", "postgres"]
        psql = [PSQL, *conn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]

        version = as_postgres([*psql, "-c", "SELECT version()"]).strip()
        server_num = int(as_postgres([*psql, "-c", "SHOW server_version_num"]).strip())
        if server_num // 10000 != int(major):
            raise CheckFailed(f"asked for {major}, server says {server_num}: {version}")

        as_postgres([*psql, "-c", f"CREATE TABLESPACE ts LOCATION '{tblspc}'"])
        as_postgres(
            [
                *psql,
                "-c",
                "CREATE TABLE t (i int) TABLESPACE ts",
                "-c",
                "INSERT INTO t SELECT generate_series(1, 1000)",
            ]
        )

        if int(major) >= 15:
            start, stop = "SELECT pg_backup_start('x', true)", "SELECT * FROM pg_backup_stop()"
        else:
            start, stop = (
                "SELECT pg_start_backup('x', true, false)",
                "SELECT * FROM pg_stop_backup(false)",
            )
        out = as_postgres([*psql, "-F", "|", "-c", start, "-c", stop])
        if "START WAL LOCATION" not in out or "LABEL: x" not in out:
            raise CheckFailed(f"backup stop returned no backup_label:\n{out}")
        ts_oid = as_postgres(
            [*psql, "-c", "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'"]
        ).strip()
        if f"{ts_oid} {tblspc}" not in out:
            raise CheckFailed(f"backup stop returned no tablespace_map line for {ts_oid}:\n{out}")

        if pgbench:
            bench = [PGBENCH, *conn]
            as_postgres([*bench, "-i", "-s", "1", "-q"], timeout=300)
            out = as_postgres([*bench, "-c", "2", "-j", "2", "-T", "3", "-n"], timeout=120)
            tps = next(
                (
                    line.split("=")[1].split()[0]
                    for line in out.splitlines()
                    if line.startswith("tps")
                ),
                "?",
            )
            notes.append(f"pgbench ok ({tps} tps)")

        as_postgres([str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        started = False
        return version, notes
    except CheckFailed:
        log = base / "server.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise CheckFailed("\n".join(["server.log tail:", *tail])) from sys.exc_info()[1]
        raise
    finally:
        if started:
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(bins / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
            )
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("majors", nargs="*", default=DEFAULT_MAJORS)
    parser.add_argument(
        "--pgbench",
        action="store_true",
        help="also pgbench -i and a 3 s run with Debian's v15 pgbench",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (servers run as the postgres user via runuser)")

    rows, failures = [], []
    for major in args.majors:
        t0 = time.monotonic()
        try:
            version, notes = check_major(major, pgbench=args.pgbench)
            short = version.split()[1]  # "PostgreSQL 17.10 on x86_64..."
            rows.append((major, short, "ok", time.monotonic() - t0, "; ".join(notes)))
        except CheckFailed as exc:
            detail = str(exc)
            if exc.__cause__ is not None:
                detail = f"{exc.__cause__}\n{detail}"
            failures.append((major, detail))
            rows.append((major, "-", "fail", time.monotonic() - t0, detail.splitlines()[0][:60]))
        print(f"  {major}: {rows[-1][2]}", file=sys.stderr, flush=True)

    print(f"{'major':<6} {'version':<10} {'result':<7} {'seconds':>7}  notes")
    for major, version, result, secs, note in rows:
        print(f"{major:<6} {version:<10} {result:<7} {secs:>7.1f}  {note}")
    for major, detail in failures:
        print(f"\n--- {major} failed:\n{detail}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
