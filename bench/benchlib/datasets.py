"""What the tools are fed, generated once and cached under the workdir.

* Corpus: archived 16 MiB WAL segments of a pgbench run (the WAL benchmark)
* DataSet: stopped clusters of a given pgbench scale (the base backup benchmark)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .cluster import Cluster, PgUser
from .common import PG_BIN, SEG_SIZE, du, free_port, is_segment_name, log, mkdirs, sha256_file
from .measure import Reaper


class Corpus:
    """A PG15 cluster under pgbench load, its archived 16 MiB segments kept in corpus/wal."""

    def __init__(self, work: Path, user: PgUser) -> None:
        self.dir = work / "corpus"
        self.pgdata = self.dir / "pgdata"
        self.wal = self.dir / "wal"
        self.meta_path = self.dir / "meta.json"
        self.user = user
        self.meta: dict[str, Any] = {}

    def segments(self) -> list[str]:
        """The complete segments, in order."""
        if not self.wal.is_dir():
            return []
        return sorted(
            n
            for n in os.listdir(self.wal)
            if is_segment_name(n) and (self.wal / n).stat().st_size == SEG_SIZE
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

    def _pg(self, *argv: object, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.user.run([str(PG_BIN / str(argv[0])), *map(str, argv[1:])], **kw)

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
        """sha256 of each segment (cached in corpus/sha256.json)."""
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


DATASETS = {
    # name: (scale, random filler)
    "a100": (100, False),
    "b100": (100, True),
    "a200": (200, False),
    "a400": (400, False),  # not in the default run: --datasets a100,a200,a400 for RSS flatness
}


class DataSet:
    """A stopped cluster cached under <workdir>/backup-data/<name>, copied per run."""

    CONF = """
# cloudbm backup bench data set
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 2GB
shared_buffers = 256MB
log_checkpoints = on
"""

    def __init__(self, work: Path, user: PgUser, reaper: Reaper, name: str) -> None:
        self.work = work
        self.user = user
        self.reaper = reaper
        self.name = name
        self.scale, self.random_filler = DATASETS[name]
        self.dir = work / "backup-data" / name
        self.pgdata = self.dir / "pgdata"
        self.meta_path = self.dir / "meta.json"

    def ensure(self) -> dict[str, Any]:
        if self.meta_path.exists() and (self.pgdata / "global" / "pg_control").exists():
            meta: dict[str, Any] = json.loads(self.meta_path.read_text())
            log(f"data set {self.name}: reusing {self.pgdata} ({meta['pgdata_mb']} MB)")
            return meta
        if self.dir.exists():
            shutil.rmtree(self.dir)
        mkdirs(self.dir)
        self.user.chown(self.dir)
        t0 = time.monotonic()
        log(
            f"data set {self.name}: initdb + pgbench scale {self.scale}"
            + (" with random filler" if self.random_filler else "")
        )
        self.user.run(
            [
                PG_BIN / "initdb",
                "-D",
                self.pgdata,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(self.CONF)
        c = Cluster(self.user, self.reaper, self.work / "sock", self.pgdata, "gen")
        c.start(extra="-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        env = c.pgenv()
        pgbench = PG_BIN / "pgbench"
        try:
            if not self.random_filler:
                self.user.run([pgbench, "-i", "-s", self.scale, "-q"], env=env, timeout=1800)
            else:
                s = self.scale
                self.user.run([pgbench, "-i", "-s", s, "-I", "dt"], env=env)
                c.psql(
                    f"INSERT INTO pgbench_branches(bid,bbalance) "
                    f"SELECT g,0 FROM generate_series(1,{s}) g",
                    timeout=1800,
                )
                c.psql(
                    f"INSERT INTO pgbench_tellers(tid,bid,tbalance) "
                    f"SELECT g,(g-1)/10+1,0 FROM generate_series(1,{10 * s}) g",
                    timeout=1800,
                )
                c.psql(
                    "INSERT INTO pgbench_accounts(aid,bid,abalance,filler) "
                    "SELECT g,(g-1)/100000+1,0,"
                    "substr(md5(random()::text)||md5(random()::text),1,84) "
                    f"FROM generate_series(1,{100000 * s}) g",
                    timeout=1800,
                )
                self.user.run([pgbench, "-i", "-s", s, "-I", "vp"], env=env, timeout=1800)
            c.psql("CHECKPOINT")
        finally:
            c.stop()
        meta = {
            "name": self.name,
            "scale": self.scale,
            "random_filler": self.random_filler,
            "generator": (
                f"pgbench -i -s {self.scale}"
                if not self.random_filler
                else f"pgbench -I dt; INSERT ... filler = substr(md5(random())||md5(random()),1,84)"
                f" for {100000 * self.scale} rows; pgbench -I vp"
            ),
            "pgdata_mb": round(du(self.pgdata, skip=("pg_wal",)) / 1e6, 1),
            "generation_s": round(time.monotonic() - t0, 1),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        log(f"data set {self.name}: {meta['pgdata_mb']} MB in {meta['generation_s']} s")
        return meta
