#!/usr/bin/env python3
"""WAL archive/restore benchmark: cloudbm side by side with pgBackRest and barman-cloud.

Reproduces what PostgreSQL does, not what is convenient for a tool:

* push: a fake PGDATA holds ``pg_wal/<seg>`` for every corpus segment and
  ``pg_wal/archive_status/<seg>.ready``; segments are archived in order, one process per
  segment, cwd = PGDATA, argument ``pg_wal/<seg>`` (``%p`` is relative), and after each success
  ``.ready`` is renamed to ``.done`` as the archiver does, so tools that push ahead see the real
  state of the queue.
* fetch: one process per segment, in order, ``<seg> pg_wal/RECOVERYXLOG`` as the startup process
  calls restore_command; the restored file is moved away after each call (PostgreSQL removes
  RECOVERYXLOG before the next call) and compared with the corpus afterwards (sha256).

Every tool talks to the same moto S3 server through the same stunnel TLS endpoint. Tools run
as the ``postgres`` OS user, like archive_command does. CPU is counted for the foreground
processes *and* for whatever they leave running (pgBackRest's detached async worker): the
driver makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so orphaned descendants are
re-parented to it and their rusage is collected with wait4() when they exit.

Run ``bench/setup`` first. ``bench/wal_bench.py --help`` lists the flags. Results go to
``bench/results/<run-id>.json``; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    import boto3  # noqa: F401  (used lazily; the check decides whether to re-exec)
except ImportError:  # run with a python that has boto3: cloudbm's venv, else barman's
    for _py in ("/opt/cloudbm/venv/bin/python3", "/opt/cloudbm/bench-venv/bin/python3"):
        if os.path.exists(_py) and os.path.realpath(sys.prefix) != os.path.realpath(
            Path(_py).parent.parent
        ):
            os.execv(_py, [_py, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit("wal_bench: boto3 is needed (run bench/setup)")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
CLOUDBM = os.environ.get("CLOUDBM_BIN", "/opt/cloudbm/venv/bin/cloudbm")
CLOUDBM_VENV = Path(os.environ.get("CLOUDBM_VENV", "/opt/cloudbm/venv"))
BENCH_VENV = Path(os.environ.get("BENCH_VENV", "/opt/cloudbm/bench-venv"))
PGBACKREST = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel") or "/usr/bin/stunnel4"
ACCESS_KEY = "benchaccesskey"
SECRET_KEY = "benchsecretkey"
REGION = "us-east-1"
SEG_SIZE = 16 * 1024 * 1024
ALL_TOOLS = ("cloudbm", "pgbackrest", "barman")
PR_SET_CHILD_SUBREAPER = 36


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- users, processes


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

    def run(self, argv, *, cwd=None, env=None, check=True, capture=True, timeout=600):
        kw = {}
        if self.switch:
            kw = dict(user=self.uid, group=self.gid, extra_groups=[])
        r = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            **kw,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {r.returncode}:\n{r.stdout}")
        return r

    def spawn(self, argv: list[str], cwd: Path, env: dict, out_fd: int) -> int:
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


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(")") + 2 :].split()


def my_children() -> list[int]:
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and int(st[1]) == me:
                out.append(int(d))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def proc_cpu(pid: int) -> float:
    """user+sys seconds of a live process including its waited-for children."""
    st = proc_stat(pid)
    if not st:
        return 0.0
    # fields after ')' : state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in st[11:15]) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


class Reaper:
    """Collects rusage of every descendant that ends up as our child (we are a subreaper)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.exclude: set[int] = set()

    def reap(
        self, block: bool = False, timeout: float = 120.0
    ) -> tuple[float, float, int, list[int]]:
        """Reap finished non-excluded children; with block, wait for all of them (up to timeout,
        then kill the stragglers). Returns (user, sys, count, pids still alive)."""
        user = sys_ = 0.0
        n = 0
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            alive = []
            for pid in my_children():
                if pid in self.exclude:
                    continue
                try:
                    rpid, _status, ru = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if rpid:
                    user += ru.ru_utime
                    sys_ += ru.ru_stime
                    n += 1
                else:
                    alive.append(pid)
            if not block or not alive:
                return user, sys_, n, alive
            if time.monotonic() > deadline:
                if killed:
                    return user, sys_, n, alive
                log(f"background processes still running after {timeout:.0f}s, killing {alive}")
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 10
            time.sleep(0.05)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def mkdirs(*paths: Path, mode: int = 0o755) -> None:
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, mode)


HEX = frozenset("0123456789ABCDEF")


def is_segment_object(key: str) -> bool:
    """An archived segment, whatever the tool's suffix (.zst, -<sha1>.zst, .lz4 ...)."""
    base = key.rsplit("/", 1)[-1]
    return len(base) >= 24 and set(base[:24]) <= HEX and (len(base) == 24 or base[24] in ".-")


def dir_bytes(p: Path) -> tuple[int, int, int]:
    """(bytes, objects, distinct segments) under a local repository directory."""
    total = n = 0
    segs: set[str] = set()
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
            n += 1
            if is_segment_object(f):
                segs.add(f[:24])
    return total, n, len(segs)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
        )
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"exit {r.returncode}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


# --------------------------------------------------------------------------- the corpus


class Corpus:
    """A PG15 cluster under pgbench load, its archived 16 MiB segments kept in corpus/wal."""

    def __init__(self, work: Path, user: PgUser) -> None:
        self.dir = work / "corpus"
        self.pgdata = self.dir / "pgdata"
        self.wal = self.dir / "wal"
        self.meta_path = self.dir / "meta.json"
        self.user = user
        self.meta: dict = {}

    def segments(self) -> list[str]:
        if not self.wal.is_dir():
            return []
        return sorted(
            n
            for n in os.listdir(self.wal)
            if len(n) == 24
            and all(c in "0123456789ABCDEF" for c in n)
            and (self.wal / n).stat().st_size == SEG_SIZE
        )

    def ensure(self, need: int) -> None:
        if self.meta_path.exists():
            self.meta = json.loads(self.meta_path.read_text())
            have = len(self.segments())
            if have >= need and (self.pgdata / "global" / "pg_control").exists():
                sysid = self.meta["system_identifier"]
                log(f"corpus: reusing {have} segments in {self.wal} (system id {sysid})")
                return
            log(f"corpus: {have} segments < {need} needed, regenerating")
        self.generate(need)

    def _pg(self, *argv, **kw):
        return self.user.run([str(PG_BIN / argv[0]), *map(str, argv[1:])], **kw)

    def generate(self, need: int) -> None:
        target = need + 4
        if self.dir.exists():
            self.stop_quietly()
            shutil.rmtree(self.dir)
        sock = self.dir / "sock"
        mkdirs(self.dir, self.wal, sock)
        self.user.chown(self.dir, self.wal, sock)
        log(f"corpus: initdb (16 MiB segments) in {self.pgdata}")
        self._pg(
            "initdb",
            "-D",
            self.pgdata,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        port = free_port()
        conf = f"""
# cloudbm bench corpus generator
port = {port}
listen_addresses = ''
unix_socket_directories = '{sock}'
wal_level = replica
archive_mode = on
archive_command = 'test ! -f {self.wal}/%f && cp %p {self.wal}/%f'
max_wal_size = 8GB
checkpoint_timeout = 60s
shared_buffers = 256MB
synchronous_commit = off
fsync = off
full_page_writes = on
autovacuum = on
"""
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(conf)
        logfile = self.dir / "postgres.log"
        self._pg("pg_ctl", "-D", self.pgdata, "-l", logfile, "-w", "-t", "120", "start")
        env = dict(
            os.environ, PGHOST=str(sock), PGPORT=str(port), PGUSER="postgres", PGDATABASE="postgres"
        )
        try:
            log("corpus: pgbench -i -s 40 (bulk load, then OLTP until enough WAL)")
            self._pg("pgbench", "-i", "-s", "40", "-q", env=env, timeout=900)
            t0 = time.monotonic()
            while len(self.segments()) < target:
                if time.monotonic() - t0 > 1500:
                    raise RuntimeError("corpus generation is taking too long")
                self._pg("pgbench", "-c", "4", "-j", "2", "-T", "20", "-n", env=env, timeout=300)
                log(f"corpus: {len(self.segments())}/{target} segments archived")
            self._pg("psql", "-XAtq", "-c", "select pg_switch_wal()", env=env)
            self._pg("psql", "-XAtq", "-c", "checkpoint", env=env)
            # let the archiver drain
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                r = self._pg(
                    "psql",
                    "-XAt",
                    "-c",
                    "select count(*) from pg_ls_archive_statusdir() where name like '%.ready'",
                    env=env,
                )
                if r.stdout.strip() == "0":
                    break
                time.sleep(1)
        finally:
            self._pg(
                "pg_ctl", "-D", self.pgdata, "-w", "-t", "120", "-m", "fast", "stop", check=False
            )
        cd = self._pg("pg_controldata", self.pgdata).stdout
        fields = dict(line.split(":", 1) for line in cd.splitlines() if ":" in line)
        sysid = fields["Database system identifier"].strip()
        segs = self.segments()
        self.meta = {
            "system_identifier": sysid,
            "pg_version": (self.pgdata / "PG_VERSION").read_text().strip(),
            "wal_segment_size": int(fields["Bytes per WAL segment"].strip()),
            "segments": len(segs),
            "first": segs[0],
            "last": segs[-1],
            "bytes": len(segs) * SEG_SIZE,
            "generator": "initdb; pgbench -i -s 40; pgbench -c4 -j2 -T20 (repeated); "
            "checkpoint_timeout=60s",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.meta_path.write_text(json.dumps(self.meta, indent=2) + "\n")
        log(f"corpus: {len(segs)} segments, system identifier {sysid}")

    def stop_quietly(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", self.pgdata, "-w", "-m", "immediate", "stop", check=False)

    def hashes(self, segs: list[str]) -> dict[str, str]:
        cache = self.dir / "sha256.json"
        known = json.loads(cache.read_text()) if cache.exists() else {}
        changed = False
        for s in segs:
            if s not in known:
                known[s] = sha256_file(self.wal / s)
                changed = True
        if changed:
            cache.write_text(json.dumps(known, indent=0, sort_keys=True))
        return {s: known[s] for s in segs}

    def make_pgdata(self, dest: Path, segs: list[str], ready: bool) -> None:
        """A fake PGDATA: PG_VERSION, global/pg_control, pg_wal/ with hard links to corpus
        segments (same page-cache pages for every tool) and .ready status files."""
        if dest.exists():
            shutil.rmtree(dest)
        mkdirs(dest / "global", dest / "pg_wal" / "archive_status", mode=0o700)
        os.chmod(dest, 0o700)
        shutil.copy2(self.pgdata / "global" / "pg_control", dest / "global" / "pg_control")
        shutil.copy2(self.pgdata / "PG_VERSION", dest / "PG_VERSION")
        for s in segs:
            os.link(self.wal / s, dest / "pg_wal" / s)
            if ready:
                (dest / "pg_wal" / "archive_status" / f"{s}.ready").touch()
        self.user.chown(dest, recursive=True)


# --------------------------------------------------------------------------- S3 emulator + TLS


class Stack:
    """moto S3 server + stunnel TLS front. Uses localstack/stack.py when it provides a usable
    S3 endpoint, else starts its own moto_server and stunnel."""

    def __init__(self, work: Path, user: PgUser) -> None:
        self.dir = work / "stack"
        self.user = user
        self.procs: list[subprocess.Popen] = []
        self.moto_port = self.tls_port = 0
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        self.server_pids: list[int] = []
        self.how = "own"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def _cert(self) -> None:
        if self.cert.exists() and self.key.exists():
            return
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "3650",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )
        os.chmod(self.cert, 0o644)
        os.chmod(self.key, 0o600)

    def start(self) -> None:
        mkdirs(self.dir)
        stack_py = REPO_DIR / "localstack" / "stack.py"
        if stack_py.exists() and not os.environ.get("BENCH_OWN_STACK"):
            try:
                self._start_localstack(stack_py)
                return
            except Exception as e:
                log(f"stack: localstack/stack.py failed ({e}); starting moto + stunnel myself")
                self.stop()
        self._start_own()

    def _start_localstack(self, stack_py: Path) -> None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("cloudbm_localstack", stack_py)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses need the module registered
        spec.loader.exec_module(mod)
        work = self.dir / "localstack"
        mkdirs(work)
        # stack.py prefers the running interpreter's moto: pin the project's venv instead
        os.environ.setdefault("CLOUDBM_VENV", str(CLOUDBM_VENV))
        ep, handle = mod.start(("s3", "s3-tls"), workdir=work, timeout=60)
        self._handle = handle
        self.moto_port = ep.ports["s3"]
        self.tls_port = ep.ports["s3-tls"]
        self.cert = Path(ep.tls_ca_file)
        for d in [self.cert.parent, *self.cert.parent.parents]:
            os.chmod(d, os.stat(d).st_mode | 0o005)  # postgres reads the CA file
        os.chmod(self.cert, 0o644)
        self.server_pids = [svc.pid for svc in handle.services]
        self.how = "localstack/stack.py"
        log(f"stack (localstack/stack.py): moto {self.http_url}, stunnel TLS {self.https_url}")

    def _start_own(self) -> None:
        self._cert()
        logf = open(self.dir / "servers.log", "ab")  # noqa: SIM115 (kept open by the servers)
        self.moto_port = free_port()
        moto = [
            str(CLOUDBM_VENV / "bin" / "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(self.moto_port),
        ]
        if not Path(moto[0]).exists():
            moto = [
                sys.executable,
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.moto_port),
            ]
        p = subprocess.Popen(moto, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(self.moto_port, 60, p)
        self.tls_port = free_port()
        conf = self.dir / "stunnel.conf"
        conf.write_text(f"""foreground = yes
pid =
output = {self.dir / "stunnel.log"}
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[s3]
accept = 127.0.0.1:{self.tls_port}
connect = 127.0.0.1:{self.moto_port}
cert = {self.cert}
key = {self.key}
""")
        p = subprocess.Popen(
            [STUNNEL, str(conf)], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL
        )
        self.procs.append(p)
        wait_port(self.tls_port, 30, p)
        self.server_pids = [p.pid for p in self.procs]
        log(f"stack: moto {self.http_url}, stunnel TLS {self.https_url} (cert {self.cert})")

    def server_cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.server_pids)

    def s3(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.http_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> None:
        c = self.s3()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=name)

    def usage(self, bucket: str, prefix: str) -> tuple[int, int, int]:
        """(bytes, objects, distinct segments) under a bucket prefix."""
        c = self.s3()
        total = n = 0
        segs: set[str] = set()
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                total += o["Size"]
                n += 1
                if is_segment_object(o["Key"]):
                    segs.add(o["Key"].rsplit("/", 1)[-1][:24])
        return total, n, len(segs)

    def stop(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.stop()
            self._handle = None
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


# --------------------------------------------------------------------------- tools


class Tool:
    name = "?"
    label = "?"

    def __init__(self, bench: Bench, target: str) -> None:
        self.b = bench
        self.target = target  # "s3" (through TLS) or "local"
        self.dir = bench.run_dir / f"{self.name}-{target}"
        mkdirs(self.dir)
        bench.user.chown(self.dir)

    def env(self) -> dict:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.b.home),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
        }

    def prepare(self, push_pgdata: Path, fetch_pgdata: Path) -> None: ...
    def push_argv(self, seg: str) -> list[str]: ...
    def fetch_argv(self, seg: str) -> list[str]: ...
    def stored(self) -> tuple[int, int, int]: ...
    def version(self) -> str: ...


class S3Mixin:
    def s3_env(self) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CA_BUNDLE": str(self.b.stack.cert),
            "AWS_EC2_METADATA_DISABLED": "true",
        }


class Cloudbm(Tool, S3Mixin):
    name = "cloudbm"
    label = "cloudbm"

    def version(self) -> str:
        return tool_version([CLOUDBM, "--version"])

    def env(self) -> dict:
        e = super().env()
        if self.target == "s3":
            e.update(self.s3_env())
        return e

    def _toml(self, pgdata: Path, phase: str) -> str:
        o = self.b.opts
        spool = self.dir / f"spool-{phase}"  # fresh per phase, like pgBackRest's spool-path
        mkdirs(spool, mode=0o750)
        self.b.user.chown(spool)
        if self.target == "s3":
            bucket = self.b.bucket
            repo = f"s3://{bucket}/{self.b.prefix}cloudbm"
            s3 = (
                f's3_endpoint_url = "{self.b.stack.https_url}"\n'
                f's3_region = "{REGION}"\n'
                's3_addressing_style = "path"\n'
            )
        else:
            repo = f"file://{self.dir / 'repo'}"
            s3 = ""
        return (
            f"# generated by bench/wal_bench.py\n[servers.bench]\n"
            f'repository = "{repo}"\n'
            f'pgdata = "{pgdata}"\n{s3}'
            f'compression = "{o.cloudbm_compression}"\n'
            'encryption = "none"\n'
            f"wal_push_ahead = {o.cloudbm_push_ahead}\n"
            f"wal_prefetch = {o.cloudbm_prefetch}\n"
            f'spool_directory = "{spool}"\n'
        )

    def prepare(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        self.push_cfg = self.dir / "push.toml"
        self.fetch_cfg = self.dir / "fetch.toml"
        self.push_cfg.write_text(self._toml(push_pgdata, "push"))
        self.fetch_cfg.write_text(self._toml(fetch_pgdata, "fetch"))
        if self.target == "local":
            mkdirs(self.dir / "repo")
            self.b.user.chown(self.dir / "repo")
        for f in (self.push_cfg, self.fetch_cfg):
            os.chmod(f, 0o644)
        self.b.user.run(
            [CLOUDBM, "--config", self.push_cfg, "init"], cwd=push_pgdata, env=self.env()
        )

    def push_argv(self, seg: str) -> list[str]:
        return [CLOUDBM, "--config", str(self.push_cfg), "wal-push", f"pg_wal/{seg}"]

    def fetch_argv(self, seg: str) -> list[str]:
        return [CLOUDBM, "--config", str(self.fetch_cfg), "wal-fetch", seg, "pg_wal/RECOVERYXLOG"]

    def stored(self) -> tuple[int, int, int]:
        if self.target == "s3":
            return self.b.stack.usage(self.b.bucket, f"{self.b.prefix}cloudbm/")
        return dir_bytes(self.dir / "repo")


class PgBackRest(Tool):
    name = "pgbackrest"

    def __init__(self, bench: Bench, target: str, async_: bool | None = None) -> None:
        super().__init__(bench, target)
        self.async_ = bench.opts.pgbackrest_async if async_ is None else async_

    @property
    def label(self) -> str:
        return "pgBackRest (async)" if self.async_ else "pgBackRest (sync)"

    def version(self) -> str:
        return tool_version([PGBACKREST, "version"])

    def _conf(self, pgdata: Path, phase: str) -> Path:
        o = self.b.opts
        spool = self.dir / f"spool-{phase}"
        logd = self.dir / "log"
        lock = self.dir / f"lock-{phase}"
        for d in (spool, logd, lock):
            mkdirs(d, mode=0o750)
            self.b.user.chown(d)
        if self.target == "s3":
            repo = (
                f"repo1-type=s3\nrepo1-path=/{self.b.prefix}pgbackrest\n"
                f"repo1-s3-bucket={self.b.bucket}\nrepo1-s3-endpoint=127.0.0.1\n"
                f"repo1-storage-port={self.b.stack.tls_port}\nrepo1-s3-region={REGION}\n"
                f"repo1-s3-key={ACCESS_KEY}\nrepo1-s3-key-secret={SECRET_KEY}\n"
                "repo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n"
            )
        else:
            repo = f"repo1-type=posix\nrepo1-path={self.dir / 'repo'}\n"
        text = (
            f"# generated by bench/wal_bench.py\n[global]\n{repo}"
            f"archive-async={'y' if self.async_ else 'n'}\n"
            f"spool-path={spool}\nprocess-max={o.pgbackrest_process_max}\n"
            f"compress-type={o.pgbackrest_compress}\n"
            f"log-path={logd}\nlock-path={lock}\n"
            "log-level-console=warn\nlog-level-stderr=warn\nlog-level-file=warn\n"
            f"[bench]\npg1-path={pgdata}\n"
        )
        p = self.dir / f"pgbackrest-{phase}.conf"
        p.write_text(text)
        os.chmod(p, 0o640)
        self.b.user.chown(p)
        return p

    def prepare(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        if self.target == "local":
            mkdirs(self.dir / "repo", mode=0o750)
            self.b.user.chown(self.dir / "repo")
        self.push_conf = self._conf(push_pgdata, "push")
        self.fetch_conf = self._conf(fetch_pgdata, "fetch")
        # --no-online: the corpus cluster is stopped; pgBackRest reads the system id and
        # version from pg1-path/global/pg_control (the fake PGDATA holds the corpus' copy).
        self.b.user.run(
            [
                PGBACKREST,
                f"--config={self.push_conf}",
                "--stanza=bench",
                "--no-online",
                "stanza-create",
            ],
            env=self.env(),
        )

    def push_argv(self, seg: str) -> list[str]:
        return [
            PGBACKREST,
            f"--config={self.push_conf}",
            "--stanza=bench",
            "archive-push",
            f"pg_wal/{seg}",
        ]

    def fetch_argv(self, seg: str) -> list[str]:
        return [
            PGBACKREST,
            f"--config={self.fetch_conf}",
            "--stanza=bench",
            "archive-get",
            seg,
            "pg_wal/RECOVERYXLOG",
        ]

    def stored(self) -> tuple[int, int, int]:
        if self.target == "s3":
            return self.b.stack.usage(self.b.bucket, f"{self.b.prefix}pgbackrest/archive/")
        return dir_bytes(self.dir / "repo" / "archive")


class Barman(Tool, S3Mixin):
    name = "barman"
    label = "barman-cloud"

    def version(self) -> str:
        return tool_version([str(BENCH_VENV / "bin" / "barman-cloud-wal-archive"), "--version"])

    def env(self) -> dict:
        e = super().env()
        e.update(self.s3_env())
        return e

    def _common(self) -> list[str]:
        return [
            "--cloud-provider",
            "aws-s3",
            "--endpoint-url",
            self.b.stack.https_url,
            "--addressing-style",
            "path",
        ]

    def prepare(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        if self.target != "s3":
            raise RuntimeError("barman-cloud has no local-directory target")
        self.url = f"s3://{self.b.bucket}/{self.b.prefix}barman"
        self.spool = self.dir / "spool"
        mkdirs(self.spool, mode=0o750)
        self.b.user.chown(self.spool)

    def push_argv(self, seg: str) -> list[str]:
        comp = (
            []
            if self.b.opts.barman_compression == "none"
            else [f"--{self.b.opts.barman_compression}"]
        )
        return [
            str(BENCH_VENV / "bin" / "barman-cloud-wal-archive"),
            *self._common(),
            *comp,
            self.url,
            "bench",
            f"pg_wal/{seg}",
        ]

    def fetch_argv(self, seg: str) -> list[str]:
        par = []
        if self.b.opts.barman_parallel:
            par = ["--parallel", str(self.b.opts.barman_parallel), "--spool-dir", str(self.spool)]
        return [
            str(BENCH_VENV / "bin" / "barman-cloud-wal-restore"),
            *self._common(),
            *par,
            self.url,
            "bench",
            seg,
            "pg_wal/RECOVERYXLOG",
        ]

    def stored(self) -> tuple[int, int, int]:
        return self.b.stack.usage(self.b.bucket, f"{self.b.prefix}barman/")


TOOL_CLASSES = {"cloudbm": Cloudbm, "pgbackrest": PgBackRest, "barman": Barman}


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, opts) -> None:
        self.opts = opts
        self.user = PgUser()
        self.work = Path(opts.workdir).resolve()
        mkdirs(self.work)
        for d in [self.work, *self.work.parents]:
            if os.stat(d).st_mode & 0o001 == 0 and self.user.switch:
                raise SystemExit(
                    f"{d} is not traversable by {self.user.name}: choose another --workdir"
                )
        self.run_id = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        self.run_dir = self.work / "runs" / self.run_id
        self.home = self.work / "home"
        mkdirs(self.run_dir, self.home)
        self.user.chown(self.run_dir, self.home)
        self.corpus = Corpus(self.work, self.user)
        self.stack = Stack(self.work, self.user)
        self.bucket = "cloudbm-bench"
        self.prefix = f"{self.run_id}/"
        self.reaper: Reaper | None = None
        self.results: list[dict] = []
        self.single: list[dict] = []
        self.logfd = -1

    # ---- one direction for one tool
    def phase(
        self, tool: Tool, direction: str, segs: list[str], pgdata: Path, hashes: dict[str, str]
    ) -> dict:
        assert self.reaper
        self.reaper.reap(block=True, timeout=60)  # leftovers of setup steps are not counted
        load_before = self.wait_quiet()
        env = tool.env()
        fetched = self.run_dir / "fetched" / f"{tool.name}-{tool.target}"
        if direction == "fetch":
            if fetched.exists():
                shutil.rmtree(fetched)
            mkdirs(fetched)
        status = pgdata / "pg_wal" / "archive_status"
        dest = pgdata / "pg_wal" / "RECOVERYXLOG"
        lat: list[float] = []
        fg_u = fg_s = bg_u = bg_s = 0.0
        bg_n = 0
        retries = 0
        error = None
        truncated = False
        done = 0
        srv0 = self.stack.server_cpu() if tool.target == "s3" else 0.0
        busy0 = machine_busy_s()
        t_start = time.perf_counter()
        for seg in segs:
            argv = tool.push_argv(seg) if direction == "push" else tool.fetch_argv(seg)
            for attempt in range(3):
                t0 = time.perf_counter()
                pid = self.user.spawn(argv, pgdata, env, self.logfd)
                _, st, ru = os.wait4(pid, 0)
                lat.append(time.perf_counter() - t0)
                fg_u += ru.ru_utime
                fg_s += ru.ru_stime
                rc = os.waitstatus_to_exitcode(st)
                ok = rc == 0 and (
                    direction == "push" or (dest.exists() and dest.stat().st_size == SEG_SIZE)
                )
                if ok:
                    break
                retries += 1
                os.write(
                    self.logfd,
                    f"!! {tool.name} {direction} {seg}: exit {rc} "
                    f"(attempt {attempt + 1})\n".encode(),
                )
                if direction == "fetch" and dest.exists():
                    dest.unlink()
                time.sleep(1.0)  # the archiver/startup process waits too before retrying
            else:
                error = (
                    f"{direction} {seg} failed 3 times (last exit {rc}); "
                    f"see {self.run_dir / 'tools.log'}"
                )
                break
            if direction == "push":
                os.rename(status / f"{seg}.ready", status / f"{seg}.done")
            else:
                os.rename(
                    dest, fetched / seg
                )  # PostgreSQL removes RECOVERYXLOG before the next call
            done += 1
            u, s, n, _ = self.reaper.reap()
            bg_u += u
            bg_s += s
            bg_n += n
            if time.perf_counter() - t_start > self.opts.phase_timeout and done < len(segs):
                truncated = True  # the rate stays meaningful: calls are independent and in order
                log(
                    f"{tool.label} [{tool.target}] {direction}: "
                    f"--phase-timeout reached after {done} segments"
                )
                break
        wall = time.perf_counter() - t_start
        busy = machine_busy_s() - busy0
        u, s, n, _alive = self.reaper.reap(block=True, timeout=120)
        bg_u += u
        bg_s += s
        bg_n += n
        srv = (self.stack.server_cpu() - srv0) if tool.target == "s3" else 0.0
        res = {
            "tool": tool.name,
            "label": tool.label,
            "target": tool.target,
            "direction": direction,
            "segments": done,
            "requested": len(segs),
            "wall_s": round(wall, 3),
            "segments_per_s": round(done / wall, 3) if wall and done else 0.0,
            "mb_per_s": round(done * SEG_SIZE / 1e6 / wall, 2) if wall and done else 0.0,
            "cpu_s": round(fg_u + fg_s + bg_u + bg_s, 3),
            "cpu_user_s": round(fg_u + bg_u, 3),
            "cpu_sys_s": round(fg_s + bg_s, 3),
            "cpu_foreground_s": round(fg_u + fg_s, 3),
            "cpu_background_s": round(bg_u + bg_s, 3),
            "background_processes": bg_n,
            "server_cpu_s": round(srv, 3),
            "call_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
            "call_p95_ms": round(sorted(lat)[int(0.95 * (len(lat) - 1))] * 1000, 1)
            if lat
            else None,
            "call_max_ms": round(max(lat) * 1000, 1) if lat else None,
            "retries": retries,
            "error": error,
            "truncated": truncated,
            # CPU the rest of the machine used meanwhile (not this tool, not the emulator):
            # the contention figure to read the wall-clock rate against
            "others_cpu_s": round(max(0.0, busy - (fg_u + fg_s + bg_u + bg_s) - srv), 2),
            "others_busy_pct": round(
                100 * max(0.0, busy - (fg_u + fg_s + bg_u + bg_s) - srv) / (wall * NCPU), 1
            )
            if wall
            else None,
            "machine_idle_before_pct": load_before,
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        if direction == "push" and not error:
            # a push-ahead tool may have stored more segments than the calls that returned
            # (when --phase-timeout cut the phase): the ratio is over the segments stored
            res["stored_bytes"], res["stored_objects"], res["stored_segments"] = tool.stored()
            res["stored_mb"] = round(res["stored_bytes"] / 1e6, 1)
            nstored = max(done, res["stored_segments"])
            res["ratio_vs_raw"] = (
                round(res["stored_bytes"] / (nstored * SEG_SIZE), 4) if nstored else None
            )
        if direction == "fetch":
            t0 = time.perf_counter()
            bad = [s for s in segs[:done] if sha256_file(fetched / s) != hashes[s]]
            res["verified"] = not bad
            res["mismatched"] = bad[:10]
            res["verify_s"] = round(time.perf_counter() - t0, 2)
            shutil.rmtree(fetched)
            if bad:
                res["error"] = (res["error"] or "") + f" {len(bad)} segments differ from the corpus"
        log(
            f"{tool.label} [{tool.target}] {direction}: {done} segs in {wall:.1f}s = "
            f"{res['segments_per_s']}/s, cpu {res['cpu_s']}s (bg {res['cpu_background_s']}s), "
            f"server cpu {res['server_cpu_s']}s, others {res['others_busy_pct']}% busy"
            + (f" ERROR {res['error']}" if res["error"] else "")
        )
        return res

    def tool_run(self, name: str, target: str, segs: list[str], hashes: dict[str, str]) -> None:
        tool = TOOL_CLASSES[name](self, target)
        push_pg = self.run_dir / "pgdata" / f"{name}-{target}-push"
        fetch_pg = self.run_dir / "pgdata" / f"{name}-{target}-fetch"
        mkdirs(push_pg.parent)
        self.corpus.make_pgdata(push_pg, segs, ready=True)
        self.corpus.make_pgdata(fetch_pg, [], ready=False)
        version = tool.version()
        base = {"tool": name, "label": tool.label, "target": target, "version": version}
        try:
            tool.prepare(push_pg, fetch_pg)
        except Exception as e:
            log(f"{tool.label} [{target}]: setup failed: {e}")
            for d in ("push", "fetch"):
                self.results.append({**base, "direction": d, "error": f"setup failed: {e}"})
            return
        r = self.phase(tool, "push", segs, push_pg, hashes)
        self.results.append({**base, **r})
        if r["error"] or not r["segments"]:
            self.results.append({**base, "direction": "fetch", "error": "skipped: push failed"})
        else:  # fetch what was pushed (all of it unless the push phase hit --phase-timeout)
            self.results.append(
                {**base, **self.phase(tool, "fetch", segs[: r["segments"]], fetch_pg, hashes)}
            )
        if not self.opts.keep:
            shutil.rmtree(push_pg, ignore_errors=True)
            shutil.rmtree(fetch_pg, ignore_errors=True)

    def wait_quiet(self) -> float:
        """Other work on the machine skews wall times. Between phases the bench itself is idle,
        so the machine's busy share over 2 s is other people's work: wait (at most
        --quiet-wait s) until it is under --quiet-busy %, and return the idle % found."""
        deadline = time.monotonic() + self.opts.quiet_wait
        warned = False
        while True:
            b0, t0 = machine_busy_s(), time.monotonic()
            time.sleep(2)
            pct = 100 * (machine_busy_s() - b0) / ((time.monotonic() - t0) * NCPU)
            if pct <= self.opts.quiet_busy or time.monotonic() > deadline:
                return round(100 - pct, 1)
            if not warned:
                log(
                    f"machine {pct:.0f}% busy with other work: waiting up to "
                    f"{self.opts.quiet_wait:.0f}s for <= {self.opts.quiet_busy:.0f}%"
                )
                warned = True

    # ---- cold single-segment push latency to a local directory repository
    def single_push(self, name: str, seg: str, runs: int, **variant) -> None:
        times: list[float] = []
        err = None
        label = name
        for i in range(runs):
            tool = TOOL_CLASSES[name](self, "local", **variant)
            label = tool.label
            tool.dir = self.run_dir / f"single-{name}-{i}"
            mkdirs(tool.dir)
            self.user.chown(tool.dir)
            pg = tool.dir / "pgdata"
            self.corpus.make_pgdata(pg, [seg], ready=True)
            try:
                tool.prepare(pg, pg)
            except Exception as e:
                err = f"setup failed: {e}"
                break
            self.reaper.reap(block=True, timeout=60)
            t0 = time.perf_counter()
            pid = self.user.spawn(tool.push_argv(seg), pg, tool.env(), self.logfd)
            _, st, _ru = os.wait4(pid, 0)
            dt_ = time.perf_counter() - t0
            self.reaper.reap(block=True, timeout=60)
            rc = os.waitstatus_to_exitcode(st)
            if rc != 0:
                err = f"exit {rc}"
                break
            times.append(dt_)
            if not self.opts.keep:
                shutil.rmtree(tool.dir, ignore_errors=True)
        rec = {
            "tool": name,
            "label": label,
            "runs": len(times),
            "error": err,
            "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
            "min_ms": round(min(times) * 1000, 1) if times else None,
            "max_ms": round(max(times) * 1000, 1) if times else None,
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        log(
            f"single push {label} -> local dir: median {rec['median_ms']} ms over {len(times)} runs"
            + (f" ERROR {err}" if err else "")
        )
        self.single.append(rec)

    def baseline_latency(self, runs: int) -> None:
        """Process start floors on this machine, for context."""
        py = "/usr/bin/python3"
        for label, argv in (
            ("python3 -c pass", [py, "-c", "pass"]),
            ("python3 -I -S -c pass", [py, "-I", "-S", "-c", "pass"]),
            (
                "python3 -c 'import boto3'",
                [str(CLOUDBM_VENV / "bin" / "python3"), "-c", "import boto3"],
            ),
            ("/bin/true", ["/bin/true"]),
        ):
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                pid = self.user.spawn(argv, self.home, {"PATH": "/usr/bin:/bin"}, self.logfd)
                os.wait4(pid, 0)
                ts.append(time.perf_counter() - t0)
            self.single.append(
                {
                    "tool": "baseline",
                    "label": label,
                    "runs": runs,
                    "error": None,
                    "median_ms": round(statistics.median(ts) * 1000, 1),
                    "min_ms": round(min(ts) * 1000, 1),
                    "max_ms": round(max(ts) * 1000, 1),
                }
            )

    def main(self) -> int:
        o = self.opts
        tools = [t for t in o.tools.split(",") if t]
        if o.only_peers:
            tools = [t for t in tools if t != "cloudbm"]
        for t in tools:
            if t not in TOOL_CLASSES:
                raise SystemExit(f"unknown tool {t!r} (choose from {', '.join(ALL_TOOLS)})")
        if "cloudbm" in tools and not os.access(CLOUDBM, os.X_OK):
            log(f"{CLOUDBM} does not exist yet: skipping cloudbm")
            tools.remove("cloudbm")
        self.corpus.ensure(o.segments)
        if o.corpus_only:
            return 0
        segs = self.corpus.segments()[: o.segments]
        log(f"hashing {len(segs)} corpus segments")
        hashes = self.corpus.hashes(segs)
        self.logfd = os.open(
            self.run_dir / "tools.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666
        )
        os.chmod(self.run_dir / "tools.log", 0o666)
        # warm the page cache once so the first tool is not penalised by disk reads
        for s in segs:
            with open(self.corpus.wal / s, "rb") as f:
                while f.read(1 << 22):
                    pass
        started = time.time()
        try:
            if not o.skip_s3:
                self.stack.start()
                self.stack.make_bucket(self.bucket)
            self.reaper = Reaper()  # after the servers exist: they are excluded by pid
            self.reaper.exclude.update(self.stack.server_pids)
            self.reaper.exclude.update(my_children())
            if not o.skip_s3:
                for t in tools:
                    n = o.barman_segments if t == "barman" and o.barman_segments else len(segs)
                    self.tool_run(t, "s3", segs[:n], hashes)
            if not o.skip_local:
                for t in tools:
                    if t == "barman":
                        continue
                    self.tool_run(t, "local", segs, hashes)
                self.baseline_latency(o.single_runs)
                self.wait_quiet()
                for t in tools:
                    if t == "pgbackrest":
                        self.single_push(t, segs[0], o.single_runs, async_=True)
                        self.single_push(t, segs[0], o.single_runs, async_=False)
                    elif t != "barman":
                        self.single_push(t, segs[0], o.single_runs)
        finally:
            self.stack.stop()
            if self.reaper:
                self.reaper.reap(block=True, timeout=30)
            os.close(self.logfd)
        out = {
            "run_id": self.run_id,
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "host": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "mem_gib": round(
                    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
                ),
                "python": platform.python_version(),
            },
            "options": {k: v for k, v in vars(o).items()},
            "corpus": self.corpus.meta | {"used": len(segs)},
            "endpoint": {
                "s3": "moto_server via stunnel TLS",
                "started_by": self.stack.how,
                "tls_url": self.stack.https_url if not o.skip_s3 else None,
            },
            "results": self.results,
            "single_push_local": self.single,
        }
        res_dir = BENCH_DIR / "results"
        mkdirs(res_dir)
        path = res_dir / f"wal-{self.run_id}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(render_markdown(out))
        log(f"results: {path}")
        failed = any(r.get("error") for r in self.results)
        if failed:
            log(f"some phases failed: kept {self.run_dir} (tools' output in tools.log)")
        elif not o.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if failed else 0


def render_markdown(out: dict) -> str:
    res = out["results"]
    lines = []
    c = out["corpus"]
    lines.append(
        f"WAL benchmark {out['run_id']}: {c['used']} x 16 MiB segments of pgbench WAL, "
        f"{out['host']['cpus']} CPUs, one process per segment as PostgreSQL calls it.\n"
    )
    for target, title in (
        ("s3", "S3 (moto) through the stunnel TLS endpoint"),
        ("local", "local directory repository"),
    ):
        rows = [r for r in res if r.get("target") == target]
        if not rows:
            continue
        lines.append(f"### {title}\n")
        lines.append(
            "| tool | segments | push seg/s | x pgBackRest | push CPU s "
            "| fetch seg/s | x pgBackRest | fetch CPU s | stored MB | stored/raw | others busy % |"
        )
        lines.append(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        ref = {
            d: next(
                (
                    r
                    for r in rows
                    if r["tool"] == "pgbackrest" and r["direction"] == d and not r.get("error")
                ),
                None,
            )
            for d in ("push", "fetch")
        }
        for name in ALL_TOOLS:
            by = {r["direction"]: r for r in rows if r["tool"] == name}
            if not by:
                continue
            label = next(iter(by.values())).get("label", name)
            p0 = by.get("push") or {}
            nseg = f"{p0.get('segments', '-')}" + (" (cut)" if p0.get("truncated") else "")
            cells = [label, nseg]
            for d in ("push", "fetch"):
                r = by.get(d)
                if not r or r.get("error"):
                    err = (r or {}).get("error", "not run")
                    cells += [f"failed: {err[:40]}" if err else "-", "-", "-"]
                    continue
                rr = ref[d]
                ratio = (
                    f"{r['segments_per_s'] / rr['segments_per_s']:.2f}"
                    if rr and rr["segments_per_s"]
                    else "-"
                )
                cut = f" ({r['segments']}, cut)" if r.get("truncated") else ""
                cells += [f"{r['segments_per_s']:.2f}{cut}", ratio, f"{r['cpu_s']:.1f}"]
            p = by.get("push") or {}
            cells += [
                f"{p['stored_mb']:.1f}" if "stored_mb" in p else "-",
                f"{p['ratio_vs_raw']:.3f}" if p.get("ratio_vs_raw") else "-",
                "/".join(
                    f"{by[d]['others_busy_pct']:.0f}"
                    if by.get(d, {}).get("others_busy_pct") is not None
                    else "-"
                    for d in ("push", "fetch")
                ),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if out.get("single_push_local"):
        lines.append("### Cold start: one `wal-push` of one segment to a fresh local repository\n")
        lines.append("| command | median ms | min ms | max ms | runs |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for r in out["single_push_local"]:
            if r.get("error"):
                lines.append(f"| {r['label']} | failed: {r['error'][:60]} | | | {r['runs']} |")
            else:
                cells = (r["label"], r["median_ms"], r["min_ms"], r["max_ms"], r["runs"])
                lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--segments", type=int, default=200, help="segments pushed and fetched per tool")
    p.add_argument(
        "--tools",
        default=",".join(ALL_TOOLS),
        help="comma-separated subset of " + ",".join(ALL_TOOLS),
    )
    p.add_argument("--only-peers", action="store_true", help="leave cloudbm out")
    p.add_argument(
        "--workdir",
        default=os.environ.get("CLOUDBM_BENCH_WORK", "/var/tmp/cloudbm-bench"),
        help="corpus cache and scratch space (must be traversable by postgres)",
    )
    p.add_argument("--skip-s3", action="store_true", help="skip the S3/TLS runs")
    p.add_argument(
        "--skip-local", action="store_true", help="skip local-directory runs and cold-start latency"
    )
    p.add_argument(
        "--single-runs", type=int, default=10, help="runs of the cold single-segment push"
    )
    p.add_argument(
        "--corpus-only", action="store_true", help="only build (or check) the WAL corpus"
    )
    p.add_argument("--keep", action="store_true", help="keep the run's scratch directories")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=120,
        help="end a push/fetch phase after this many seconds; the rate is computed over the "
        "segments done (marked 'cut' in the table)",
    )
    p.add_argument(
        "--quiet-busy",
        type=float,
        default=20.0,
        help="before each phase wait until other work keeps the machine at most this %% busy",
    )
    p.add_argument("--quiet-wait", type=float, default=10, help="... but at most this many seconds")
    p.add_argument("--cloudbm-compression", default="zstd")
    p.add_argument("--cloudbm-push-ahead", type=int, default=8)
    p.add_argument("--cloudbm-prefetch", type=int, default=8)
    p.add_argument("--pgbackrest-process-max", type=int, default=2)
    p.add_argument("--pgbackrest-compress", default="zst")
    p.add_argument("--no-pgbackrest-async", dest="pgbackrest_async", action="store_false")
    p.add_argument(
        "--barman-compression",
        default="lz4",
        choices=["none", "gzip", "bzip2", "xz", "snappy", "zstd", "lz4"],
    )
    p.add_argument(
        "--barman-segments",
        type=int,
        default=60,
        help="barman-cloud is strictly serial (no state between calls), so a shorter run gives "
        "the same segments/s and keeps the whole run bounded; 0 = --segments",
    )
    p.add_argument(
        "--barman-parallel",
        type=int,
        default=0,
        help="barman-cloud-wal-restore --parallel (0 = its default, serial)",
    )
    return p.parse_args(argv)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop the emulator, reap children


def main() -> int:
    # started with `nohup ... &` a script inherits SIGINT ignored: make both signals clean up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    opts = parse_args()
    if opts.segments < 1:
        raise SystemExit("--segments must be >= 1")
    return Bench(opts).main()


if __name__ == "__main__":
    sys.exit(main())
