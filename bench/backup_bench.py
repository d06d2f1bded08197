#!/usr/bin/env python3
"""Base backup, restore and WAL replay benchmark: cloudbm side by side with pgBackRest and
barman-cloud, in one run, through the same moto S3 server behind the same stunnel TLS endpoint.

Phases (each can be selected with --phases):

* backup:  a running PostgreSQL 15 cluster (a copy of a cached data set) is backed up by each
  tool; the cluster's archive_command points at the tool under test while its backup runs
  (ALTER SYSTEM + pg_reload_conf). Per tool: wall time, CPU (the tool's process tree, kernel
  accounting via wait4), stored bytes (ListObjectsV2 under its prefix), peak RSS.
* restore: each tool's backup of data set "a100" is restored into an empty directory, then the
  server is started on another port and timed until it accepts connections (recovery to
  consistency, then promotion).
* replay:  every tool archives the same ~200 segments (a multiplexing archive_command) after a
  fresh base backup by each tool; each backup is restored and recovered to the end of the
  archive through the tool's own restore_command; timed from server start to promotion.

The machinery (tools under test, emulator stack, clusters, measurements, the tables) is in
bench/benchlib, shared with bench/wal_bench.py; this driver is the method.
Run as root; ``bench/backup_bench.py --help`` for flags. Results: bench/results/backup-<id>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.cluster import Cluster, PgUser
from benchlib.common import (
    BENCH_VENV,
    BUCKET,
    DEFAULT_WORKDIR,
    RESULTS_DIR,
    SEG_SIZE,
    du,
    log,
    mkdirs,
    new_run_id,
    start_driver,
    write_script,
)
from benchlib.datasets import DataSet
from benchlib.measure import (
    Reaper,
    host_info,
    my_children,
    profile_command,
    timed_command,
    wait_quiet,
    write_results,
)
from benchlib.report import backup_markdown
from benchlib.stack import Stack
from benchlib.tools import (
    BACKUP_TOOLS,
    Barman,
    Cloudbm,
    Floor,
    PgBackRest,
    Site,
    Tool,
    cloudbm_source,
    pin_cloudbm,
)


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.user = PgUser()
        self.work = Path(opts.workdir).resolve()
        mkdirs(self.work)
        self.run_id = new_run_id()
        self.run_dir = self.work / "backup-runs" / self.run_id
        self.home = self.work / "home"
        mkdirs(self.run_dir, self.home)
        self.user.chown(self.run_dir, self.home)
        self.user.check_traversable(self.run_dir)
        self.stack = Stack(self.work)
        self.reaper = Reaper()
        self.results: list[dict[str, Any]] = []
        self.clusters: list[Cluster] = []
        self.datasets: dict[str, dict[str, Any]] = {}
        self.replay_count = self.run_dir / "a100" / "replay-count"
        self.cloudbm_source = cloudbm_source(opts.cloudbm_src)

    def tool(self, name: str, ds: str) -> Tool:
        """The adapter of `name` for data set `ds` (its own prefix and directory)."""
        site = Site(
            self.user, self.home, self.run_dir / ds / name, self.stack, f"{self.run_id}/{ds}/{name}"
        )
        o = self.opts
        if name in ("cloudbm", "cloudbm-keyfile"):
            return Cloudbm(
                site,
                encryption="none" if name == "cloudbm" else "keyfile",
                jobs=o.jobs,
                pythonpath=o.cloudbm_src,
                source=self.cloudbm_source,
            )
        if name == "pgbackrest":
            return PgBackRest(site, process_max=o.jobs)
        if name == "barman":
            return Barman(site, wal_compression=o.barman_wal_compression, jobs=o.jobs)
        return Floor(site)

    def cluster(self, pgdata: Path, name: str) -> Cluster:
        return Cluster(self.user, self.reaper, self.work / "sock", pgdata, name)

    def wait_quiet(self) -> float:
        # Dirty pages of the step before (a 1.5 GB cluster copy, another tool's restore) would
        # otherwise be written back during this one and charged to whichever tool runs next.
        os.sync()
        return round(wait_quiet(self.opts.quiet_busy, self.opts.quiet_wait), 1)

    # ---- one timed command of a tool
    def measure(
        self, tool: Tool, argv: list[str], cwd: Path, what: str, drop_caches: bool = False
    ) -> dict[str, Any]:
        self.reaper.reap()  # leftovers (e.g. archive_command helpers) are not this step's
        busy_before = self.wait_quiet()
        if drop_caches:
            # Right after gigabytes were written (a cluster copy, the previous restore) the
            # kernel spends seconds of system time reclaiming while the next writer runs; it
            # was charged to whichever tool came next (3.9 vs 0.9 s of sys for one cloudbm
            # restore). Every restore starts from the same clean, empty page cache instead.
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        logpath = tool.dir / f"{what}.log"
        return timed_command(
            self.user, argv, cwd, tool.env(), logpath, self.stack.server_cpu, busy_before
        )

    # ---- server start, watched through its log
    def start_and_watch(self, tool: Tool, dest: Path, name: str) -> dict[str, Any]:
        c = self.cluster(dest, name)
        self.clusters.append(c)
        res, ready_cpu = c.start_watched(tool.env(), "-c archive_mode=off", self.opts.start_timeout)
        if "error" not in res:
            try:
                n = c.psql("SELECT count(*) FROM pgbench_branches")
                res["check_branches"] = int(n)
            except Exception as e:
                res["error"] = f"query after start failed: {e}"
        c.stop()
        self.clusters.remove(c)
        # the detached helpers (pgBackRest's archive-get:async, cloudbm's prefetch worker)
        helpers = self.reaper.reap(block=True, timeout=60)
        res["server_cpu_to_ready_s"] = round(ready_cpu, 2) if ready_cpu is not None else None
        res["detached_helpers_cpu_s"] = round(helpers[0] + helpers[1], 2)
        res["log"] = str(c.logfile)
        return res

    # ---- phases
    def data_cluster(self, ds: str) -> Cluster:
        dataset = DataSet(self.work, self.user, self.reaper, ds)
        self.datasets[ds] = dataset.ensure()
        dst = self.run_dir / ds / "pgdata"
        mkdirs(dst.parent)
        self.user.chown(dst.parent)
        log(f"{ds}: copying the cached cluster to {dst}")
        subprocess.run(["cp", "-a", str(dataset.pgdata), str(dst)], check=True)
        c = self.cluster(dst, "primary")
        c.start()
        self.clusters.append(c)
        return c

    def backup(self, tool: Tool, ds: str, c: Cluster, phase: str = "backup") -> dict[str, Any]:
        label = tool.label("backup")
        c.set_archive_command(tool.archive_cmd())
        log(f"{ds}: {label} backup ...")
        r = self.measure(tool, tool.backup_argv(), tool.dir, f"{phase}-{ds}")
        if "error" not in r:
            r.update(tool.backup_stored())
            r["stored_mb"] = round(r["backup_bytes"] / 1e6, 1)
        rec = {
            "phase": phase,
            "dataset": ds,
            "tool": tool.key,
            "label": label,
            "version": tool.version("backup"),
            **r,
        }
        log(
            f"{ds}: {label} backup: {r['wall_s']} s, cpu {r['cpu_s']} s, "
            f"stored {r.get('stored_mb')} MB, peak rss {r['peak_rss_mib']} MiB "
            f"(tree {r['peak_tree_rss_mib']}), others {r['others_busy_pct']}% busy"
            + (f" ERROR {r['error']}" if r.get("error") else "")
        )
        if self.opts.py_spy and tool.key.startswith("cloudbm") and not r.get("error"):
            rec["profile"] = self.profile(tool, ds)
        c.set_archive_command("/bin/true")
        return rec

    def profile(self, tool: Tool, ds: str) -> dict[str, Any]:
        """A second, untimed backup sampled by py-spy: where the CPU goes. The raw collapsed
        stacks go next to the results JSON."""
        out = RESULTS_DIR / f"backup-{self.run_id}-{ds}-{tool.key}.pyspy.txt"
        mkdirs(out.parent)
        argv = tool.backup_argv()
        res = profile_command(
            self.user, argv, tool.dir, tool.env(), self.opts.py_spy, out, tool.dir
        )
        log(f"{ds}: {tool.label('backup')} profiled backup: {res['samples']} samples -> {out}")
        return res

    def restore(self, tool: Tool, ds: str, mode: str) -> dict[str, Any]:
        base = self.run_dir / ds / f"restore-{mode}-{tool.key}"
        mkdirs(base)
        self.user.chown(base)
        dest = base / "pgdata"
        mkdirs(dest, mode=0o700)
        self.user.chown(dest)
        self.reaper.reap(block=True, timeout=30)  # archive helpers of earlier steps
        label = tool.label("backup")
        log(f"{ds}: {label} restore ({mode}) ...")
        r = self.measure(
            tool, tool.restore_argv(dest, mode), base, f"restore-{mode}-{ds}", drop_caches=True
        )
        rec = {
            "phase": "restore" if mode == "immediate" else "replay",
            "dataset": ds,
            "tool": tool.key,
            "label": label,
            "mode": mode,
            **{f"restore_{k}": v for k, v in r.items() if k != "error"},
        }
        if r.get("error"):
            rec["error"] = "restore " + r["error"]
        else:
            rec["restored_mb"] = round(du(dest) / 1e6, 1)
            tool.post_restore(dest, mode)
            self.user.chown(dest, recursive=True)
            s = self.start_and_watch(tool, dest, "restored")
            rec.update({f"start_{k}": v for k, v in s.items() if k != "error"})
            if s.get("error"):
                rec["error"] = "start " + s["error"]
            elif s.get("start_to_ready_s") is not None:
                rec["total_s"] = round(r["wall_s"] + s["start_to_ready_s"], 2)
                if mode == "latest":
                    m = s["marks_s"]
                    rec["replay_s"] = s["start_to_ready_s"]
                    rec["segments"] = s["segments_restored"]
                    rec["segments_per_s"] = round(s["segments_restored"] / rec["replay_s"], 2)
                    if "redo_start" in m and "redo_done" in m:
                        rec["redo_s"] = round(m["redo_done"] - m["redo_start"], 2)
                    rec["replay_cpu_s"] = round(
                        (s.get("server_cpu_to_ready_s") or 0) + s.get("detached_helpers_cpu_s", 0),
                        2,
                    )
        log(
            f"{ds}: {label} {mode}: restore {r['wall_s']} s (cpu {r['cpu_s']}, rss "
            f"{r['peak_rss_mib']} MiB), start->ready {rec.get('start_start_to_ready_s')} s"
            + (
                f", {rec.get('segments')} segs, {rec.get('segments_per_s')}/s"
                if mode == "latest"
                else ""
            )
            + (f" ERROR {rec['error']}" if rec.get("error") else "")
        )
        if not self.opts.keep:
            shutil.rmtree(base, ignore_errors=True)
        return rec

    def generate_wal(self, c: Cluster, nseg: int) -> dict[str, Any]:
        """Bulk UPDATEs of pgbench_accounts in 250k-row ranges until nseg segments of WAL."""
        start = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        lsn0 = c.psql("SELECT pg_current_wal_lsn()")
        self.replay_count.write_text("0\n")
        os.chmod(self.replay_count, 0o666)
        t0 = time.monotonic()
        rows = int(c.psql("SELECT max(aid) FROM pgbench_accounts"))
        lo = 1
        while True:
            done = float(c.psql(f"SELECT pg_current_wal_lsn() - '{lsn0}'::pg_lsn")) / SEG_SIZE
            if done >= nseg:
                break
            hi = lo + 249_999
            c.psql(
                f"UPDATE pgbench_accounts SET abalance = abalance + 1 "
                f"WHERE aid BETWEEN {lo} AND {hi}",
                timeout=600,
            )
            lo = hi + 1 if hi < rows else 1
        c.psql("SELECT pg_switch_wal()")
        end = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
        gen_s = time.monotonic() - t0
        log(
            f"replay: {done:.0f} segments generated in {gen_s:.0f} s ({start}..{end}); "
            "waiting for the three archivers"
        )
        c.wait_archived(timeout=self.opts.archive_timeout)
        return {
            "first": start,
            "last": end,
            "segments": round(done),
            "generate_s": round(gen_s, 1),
            "archived_s": round(time.monotonic() - t0, 1),
        }

    def main(self) -> int:
        o = self.opts
        tools = [t for t in o.tools.split(",") if t]
        phases = set(o.phases.split(","))
        started = time.time()
        replay_info = None
        try:
            # data sets first (cached): generation is not part of any figure
            for ds in o.datasets.split(","):
                self.datasets[ds] = DataSet(self.work, self.user, self.reaper, ds).ensure()
            if o.datasets_only:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                return 0
            self.stack.start()
            self.stack.make_bucket(BUCKET)
            self.reaper.exclude.update(self.stack.server_pids)
            self.reaper.exclude.update(my_children())
            for ds in o.datasets.split(","):
                ds_tools = (
                    tools
                    if ds not in ("a200", "a400")
                    else [t for t in o.a200_tools.split(",") if t]
                )
                c = self.data_cluster(ds)
                try:
                    objs = {t: self.tool(t, ds) for t in ds_tools}
                    for t, tool in list(objs.items()):
                        try:
                            tool.setup_backup(c)
                        except Exception as e:
                            log(f"{ds}: {tool.label('backup')} setup failed: {e}")
                            self.results.append(
                                {
                                    "phase": "backup",
                                    "dataset": ds,
                                    "tool": t,
                                    "label": tool.label("backup"),
                                    "error": f"setup failed: {e}"[:2000],
                                }
                            )
                            del objs[t]
                    pgdata_b = du(c.pgdata, skip=("pg_wal",))
                    if "backup" in phases or ds == "a100":
                        for tool in objs.values():
                            rec = self.backup(tool, ds, c)
                            rec["pgdata_mb"] = round(pgdata_b / 1e6, 1)
                            if rec.get("backup_bytes"):
                                rec["stored_ratio"] = round(rec["backup_bytes"] / pgdata_b, 4)
                            self.results.append(rec)
                    ok = {
                        t
                        for t in objs
                        if not any(
                            r.get("error")
                            for r in self.results
                            if r["dataset"] == ds and r["tool"] == t
                        )
                    }
                    if ds == "a100" and "restore" in phases:
                        for t, tool in objs.items():
                            if t in ok:
                                self.results.append(self.restore(tool, ds, "immediate"))
                    if ds == "a100" and "replay" in phases:
                        replay_info = self.replay(c, objs, ok)
                finally:
                    c.stop()
                    self.clusters.remove(c)
                    if not o.keep:
                        shutil.rmtree(self.run_dir / ds, ignore_errors=True)
        finally:
            for c in list(self.clusters):
                c.stop("immediate")
            self.stack.stop()
            self.reaper.reap(block=True, timeout=30)
        out = {
            "run_id": self.run_id,
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "host": host_info(),
            "options": dict(vars(o)),
            "cloudbm_source": self.cloudbm_source,
            "endpoint": {"s3": "moto_server via stunnel TLS", "started_by": self.stack.how},
            "datasets": self.datasets,
            "replay_wal": replay_info,
            "load_during_backup": "none (the cluster is idle apart from the tool)",
            "results": self.results,
        }
        path = write_results(f"backup-{self.run_id}", out)
        print(backup_markdown(out))
        log(f"results: {path}")
        if not o.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if any(r.get("error") for r in self.results) else 0

    def replay(self, c: Cluster, objs: dict[str, Tool], ok: set[str]) -> dict[str, Any]:
        o = self.opts
        rtools = {
            t: objs[t]
            for t in ("cloudbm", "pgbackrest", "barman", "floor")
            if t in objs and t in ok
        }
        if not rtools:
            return {}
        # every segment to every tool, in parallel; barman-cloud (~1 s per segment) only the
        # first --barman-replay-segments of the generated WAL (counted from cnt = 0)
        cnt = self.replay_count
        lines = []
        for i, (t, tool) in enumerate(rtools.items()):
            call = f'{tool.archive} "$1" & p{i}=$!\n'
            if t == "barman":
                call = (
                    f"n=$(cat {cnt} 2>/dev/null || echo -1)\n"
                    f'if [ "$n" -lt {o.barman_replay_segments} ]; then\n'
                    f'  [ "$n" -ge 0 ] && echo $((n + 1)) > {cnt}\n'
                    f'  {call}else p{i}=""\nfi\n'
                )
            lines.append(call)
        waits = "".join(
            f'[ -n "$p{i}" ] && {{ wait $p{i} || rc=1; }}\n' for i in range(len(rtools))
        )
        multi = write_script(
            self.run_dir / "a100" / "archive-all-pgbackrest-cloudbm-barman.sh",
            "rc=0\n" + "".join(lines) + waits + "exit $rc\n",
        )
        c.set_archive_command(f"{multi} %p")
        c.psql("SELECT pg_switch_wal()")
        failed = set()
        for t, tool in rtools.items():  # a fresh base backup per tool, archived by all
            r = self.backup_untimed(tool)
            if r:
                log(f"replay: {tool.label('backup')} base backup failed: {r}")
                self.results.append(
                    {
                        "phase": "replay",
                        "dataset": "a100",
                        "tool": t,
                        "label": tool.label("backup"),
                        "error": f"base backup: {r}",
                    }
                )
                failed.add(t)
        info = self.generate_wal(c, o.replay_segments)
        c.set_archive_command("/bin/true")
        for t, tool in rtools.items():
            if t not in failed:
                rec = self.restore(tool, "a100", "latest")
                self.results.append(rec)
        return info

    def backup_untimed(self, tool: Tool) -> str | None:
        fd = os.open(tool.dir / "replay-base-backup.log", os.O_WRONLY | os.O_CREAT, 0o666)
        pid = self.user.spawn(tool.backup_argv(), tool.dir, tool.env(), fd)
        _, st, _ = os.wait4(pid, 0)
        os.close(fd)
        rc = os.waitstatus_to_exitcode(st)
        return None if rc == 0 else f"exit {rc} (see {tool.dir}/replay-base-backup.log)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument(
        "--datasets",
        default="a100,b100,a200",
        help="a100 (pgbench -s 100), b100 (random filler), a200, a400 (pgbench -s 200, 400)",
    )
    p.add_argument(
        "--tools", default=",".join(BACKUP_TOOLS), help="subset of " + ",".join(BACKUP_TOOLS)
    )
    p.add_argument(
        "--a200-tools", default="cloudbm", help="tools run on a200 and a400 (RSS flatness)"
    )
    p.add_argument(
        "--phases",
        default="backup,restore,replay",
        help="backup always runs on a100 when restore/replay need it",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="cloudbm jobs, pgBackRest process-max, barman-cloud --jobs",
    )
    p.add_argument("--replay-segments", type=int, default=200)
    p.add_argument(
        "--barman-replay-segments",
        type=int,
        default=60,
        help="barman-cloud archives only this many of the replay segments (serial, "
        "~1 s each: the same per-segment rate from a shorter run)",
    )
    p.add_argument(
        "--barman-wal-compression",
        default="lz4",
        choices=["gzip", "bzip2", "xz", "snappy", "zstd", "lz4"],
    )
    p.add_argument(
        "--cloudbm-src",
        default=os.environ.get("CLOUDBM_SRC", ""),
        help="PYTHONPATH for cloudbm (e.g. this checkout); default: what the venv has",
    )
    p.add_argument(
        "--cloudbm-pin",
        action="store_true",
        help="run cloudbm from an export of this checkout's HEAD (sets --cloudbm-src)",
    )
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--archive-timeout", type=float, default=900)
    p.add_argument("--quiet-busy", type=float, default=20.0)
    p.add_argument("--quiet-wait", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep the run's directories")
    p.add_argument(
        "--py-spy",
        nargs="?",
        const=str(BENCH_VENV / "bin" / "py-spy"),
        default="",
        help="after cloudbm's timed backup, profile a second one with py-spy",
    )
    p.add_argument("--datasets-only", action="store_true", help="only build the cached data sets")
    return p.parse_args(argv)


def main() -> int:
    start_driver("backup_bench")
    opts = parse_args()
    if opts.cloudbm_pin:
        opts.cloudbm_src = pin_cloudbm(opts.workdir)
    for t in opts.tools.split(","):
        if t and t not in BACKUP_TOOLS:
            raise SystemExit(f"unknown tool {t!r}")
    return Bench(opts).main()


if __name__ == "__main__":
    sys.exit(main())
