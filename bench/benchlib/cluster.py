"""The OS user the tools and PostgreSQL run as, and a PostgreSQL server run by the bench."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PG_BIN, free_port, mkdirs
from .measure import Reaper, proc_cpu, proc_stat


class PgUser:
    """The OS user the tools and PostgreSQL run as (postgres when we are root)."""

    def __init__(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(os.environ.get("BENCH_USER", "postgres"))
        else:
            pw = pwd.getpwuid(os.geteuid())
        self.name, self.uid, self.gid, self.home = pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir
        self.switch = os.geteuid() == 0 and self.uid != 0

    def chown(self, *paths: Path, recursive: bool = False) -> None:
        if not self.switch:
            return
        for p in paths:
            os.chown(p, self.uid, self.gid, follow_symlinks=False)
            if recursive and p.is_dir():
                for root, dirs, files in os.walk(p):
                    for n in dirs + files:
                        os.chown(os.path.join(root, n), self.uid, self.gid, follow_symlinks=False)

    def check_traversable(self, path: Path) -> None:
        """Every directory down to `path` must let the user through (not /root, most homes)."""
        for d in [path, *path.parents]:
            if os.stat(d).st_mode & 0o001 == 0 and self.switch:
                raise SystemExit(f"{d} is not traversable by {self.name}: choose another --workdir")

    def run(
        self,
        argv: Sequence[object],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        capture: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """A setup step as the user (not timed): output captured, a failure raises."""
        r = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            user=self.uid if self.switch else None,
            group=self.gid if self.switch else None,
            extra_groups=[] if self.switch else None,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout}")
        return r

    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str], out_fd: int) -> int:
        """fork/exec with no shell and no Python in between: as cheap as the archiver's system()."""
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.chdir(cwd)
                os.dup2(out_fd, 1)
                os.dup2(out_fd, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                if self.switch:
                    os.setgroups([])
                    os.setgid(self.gid)
                    os.setuid(self.uid)
                os.execve(argv[0], argv, env)
            except BaseException as e:
                os.write(2, f"exec {argv[0]} failed: {e}\n".encode())
            finally:
                os._exit(127)
        return pid


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[(\d+)\] (\w+):\s+(.*)$")
SEGNAME = re.compile(r'restored log file "([0-9A-F]{24})"')
# the server log lines a start is timed by (first occurrence of each)
MARKS = (
    ("redo_start", "redo starts at"),
    ("consistent", "consistent recovery state reached"),
    ("redo_done", "redo done at"),
    ("recovery_complete", "archive recovery complete"),
    ("ready", "database system is ready to accept connections"),
)


def log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


class Cluster:
    """A PostgreSQL data directory run as the user on a Unix socket and its own port."""

    count = 0

    def __init__(
        self, user: PgUser, reaper: Reaper, sock_root: Path, pgdata: Path, name: str
    ) -> None:
        self.user = user
        self.reaper = reaper
        self.pgdata = pgdata
        self.name = name
        self.port = free_port()
        # a short path: a Unix socket's path must fit in 107 bytes
        Cluster.count += 1
        self.sock = sock_root / f"{os.getpid()}-{Cluster.count}"
        self.logfile = pgdata.parent / f"{name}.log"
        mkdirs(self.sock.parent)
        mkdirs(self.sock)
        user.chown(self.sock)
        self.pid: int | None = None

    def pg(self, *argv: object, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.user.run([str(PG_BIN / str(argv[0])), *map(str, argv[1:])], **kw)

    def start(self, env: dict[str, str] | None = None, wait: bool = True, extra: str = "") -> None:
        opts = (
            f"-p {self.port} -k {self.sock} -c listen_addresses='' "
            f"-c log_line_prefix='%m [%p] ' -c log_timezone=UTC {extra}"
        )
        if self.logfile.exists():
            self.logfile.unlink()
        self.pg(
            "pg_ctl",
            "-D",
            self.pgdata,
            "-l",
            self.logfile,
            "-o",
            opts,
            *(["-w", "-t", "900"] if wait else ["-W"]),
            "start",
            env=env,
            timeout=960,
        )
        pidfile = self.pgdata / "postmaster.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.pid = int(pidfile.read_text().split("\n", 1)[0])
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        if self.pid:
            self.reaper.exclude.add(self.pid)  # the postmaster is re-parented to us

    def alive(self) -> bool:
        st = proc_stat(self.pid) if self.pid else None
        return st is not None and st[0] != "Z"

    def stop(self, mode: str = "fast") -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.pg("pg_ctl", "-D", self.pgdata, "-w", "-t", "300", "-m", mode, "stop", check=False)
        if self.pid:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    rpid, _st, _ru = os.wait4(self.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if rpid:
                    break
                time.sleep(0.05)
            self.reaper.exclude.discard(self.pid)
            self.pid = None
        shutil.rmtree(self.sock, ignore_errors=True)

    def psql(self, sql: str, db: str = "postgres", **kw: Any) -> str:
        return self.pg(
            "psql",
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.sock,
            "-p",
            self.port,
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
            **kw,
        ).stdout.strip()

    def pgenv(self) -> dict[str, str]:
        return dict(
            os.environ,
            PGHOST=str(self.sock),
            PGPORT=str(self.port),
            PGUSER="postgres",
            PGDATABASE="postgres",
        )

    def set_archive_command(self, cmd: str) -> None:
        """Switch archive_command (reloadable) once the archiver has nothing pending."""
        self.wait_archived(timeout=300)
        self.psql(f"ALTER SYSTEM SET archive_command = '{cmd}'")
        self.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        got = self.psql("SHOW archive_command")
        if got != cmd:
            time.sleep(1)
            got = self.psql("SHOW archive_command")
            if got != cmd:
                raise RuntimeError(f"archive_command did not switch: {got!r}")

    def wait_archived(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            n = self.psql(
                "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
            )
            if n == "0":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} segments still waiting for the archiver")
            time.sleep(0.5)

    def start_watched(
        self, env: dict[str, str], extra: str, timeout: float
    ) -> tuple[dict[str, Any], float | None]:
        """Start without waiting and follow the server log until it accepts connections, dies
        or `timeout` passes. Returns the marks (seconds from the start, MARKS) with the number
        of segments restored and any server errors, and the postmaster's CPU when it became
        ready: its own plus its reaped children's (the startup process, i.e. the redo, and
        every restore_command it ran)."""
        res: dict[str, Any] = {}
        t0 = time.time()
        self.start(env=env, wait=False, extra=extra)
        marks: dict[str, float] = {}
        segs: set[str] = set()
        pos = 0
        buf = ""
        deadline = time.monotonic() + timeout
        ready_cpu = None
        while True:
            try:
                with open(self.logfile, errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            buf += chunk
            lines = buf.split("\n")
            buf = lines.pop()
            for line in lines:
                m = LOG_TS.match(line)
                if not m:
                    continue
                ts, _pid, level, msg = m.groups()
                t = log_time(ts) - t0
                if s := SEGNAME.search(msg):
                    segs.add(s.group(1))
                for key, needle in MARKS:
                    if needle in msg and key not in marks:
                        marks[key] = round(t, 3)
                if level in ("FATAL", "PANIC") and "the database system is starting up" not in msg:
                    res.setdefault("server_errors", []).append(msg[:300])
            if "ready" in marks:
                res["ready_detected_s"] = round(time.time() - t0, 3)
                # the startup process has exited (promotion)
                ready_cpu = proc_cpu(self.pid) if self.pid else None
                break
            if not self.alive() and self.pid:
                res["error"] = "server exited before accepting connections: " + " | ".join(
                    res.get("server_errors", [])[-2:]
                )
                break
            if time.monotonic() > deadline:
                res["error"] = f"not ready after {timeout}s"
                break
            time.sleep(0.05)
        res["marks_s"] = marks
        res["segments_restored"] = len(segs)
        res["start_to_ready_s"] = marks.get("ready")
        return res, ready_cpu
