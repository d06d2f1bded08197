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

The machinery (tools under test, emulator stack, corpus, measurements, the table) is in
bench/benchlib; this driver is the method. Run ``bench/setup`` first.
``bench/wal_bench.py --help`` lists the flags. Results go to ``bench/results/wal-<run-id>.json``;
a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.cluster import PgUser
from benchlib.common import (
    BUCKET,
    CLOUDBM,
    CLOUDBM_VENV,
    DEFAULT_WORKDIR,
    SEG_SIZE,
    log,
    mkdirs,
    new_run_id,
    sha256_file,
    start_driver,
)
from benchlib.datasets import Corpus
from benchlib.measure import (
    Reaper,
    host_info,
    machine_busy_s,
    my_children,
    others_busy_pct,
    others_cpu_s,
    wait_quiet,
    write_results,
)
from benchlib.report import wal_markdown
from benchlib.stack import Stack
from benchlib.tools import WAL_TOOLS, Barman, Cloudbm, PgBackRest, Site, Tool


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.user = PgUser()
        self.work = Path(opts.workdir).resolve()
        mkdirs(self.work)
        self.user.check_traversable(self.work)
        self.run_id = new_run_id()
        self.run_dir = self.work / "runs" / self.run_id
        self.home = self.work / "home"
        mkdirs(self.run_dir, self.home)
        self.user.chown(self.run_dir, self.home)
        self.corpus = Corpus(self.work, self.user)
        self.stack = Stack(self.work)
        self.reaper: Reaper | None = None
        self.results: list[dict[str, Any]] = []
        self.single: list[dict[str, Any]] = []
        self.logfd = -1

    def tool(
        self, name: str, target: str, directory: Path | None = None, async_: bool | None = None
    ) -> Tool:
        """The adapter of `name` on `target` ("s3": through the TLS endpoint, or "local": a
        directory repository), configured from the command line."""
        site = Site(
            self.user,
            self.home,
            directory or self.run_dir / f"{name}-{target}",
            self.stack if target == "s3" else None,
            prefix=f"{self.run_id}/{name}",
        )
        o = self.opts
        if name == "cloudbm":
            return Cloudbm(
                site,
                compression=o.cloudbm_compression,
                push_ahead=o.cloudbm_push_ahead,
                prefetch=o.cloudbm_prefetch,
            )
        if name == "pgbackrest":
            return PgBackRest(
                site,
                async_=o.pgbackrest_async if async_ is None else async_,
                process_max=o.pgbackrest_process_max,
                compress=o.pgbackrest_compress,
            )
        return Barman(site, wal_compression=o.barman_compression, parallel=o.barman_parallel)

    # ---- one direction for one tool
    def phase(
        self,
        tool: Tool,
        target: str,
        direction: str,
        segs: list[str],
        pgdata: Path,
        hashes: dict[str, str],
    ) -> dict[str, Any]:
        assert self.reaper
        self.reaper.reap(block=True, timeout=60)  # leftovers of setup steps are not counted
        load_before = self.wait_quiet()
        label = tool.label("wal")
        env = tool.env()
        fetched = self.run_dir / "fetched" / f"{tool.key}-{target}"
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
        srv0 = self.stack.server_cpu() if target == "s3" else 0.0
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
                note = f"!! {tool.key} {direction} {seg}: exit {rc} (attempt {attempt + 1})\n"
                os.write(self.logfd, note.encode())
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
            else:  # PostgreSQL removes RECOVERYXLOG before the next call
                os.rename(dest, fetched / seg)
            done += 1
            u, s, n, _ = self.reaper.reap()
            bg_u += u
            bg_s += s
            bg_n += n
            if time.perf_counter() - t_start > self.opts.phase_timeout and done < len(segs):
                truncated = True  # the rate stays meaningful: calls are independent and in order
                log(
                    f"{label} [{target}] {direction}: --phase-timeout reached after {done} segments"
                )
                break
        wall = time.perf_counter() - t_start
        busy = machine_busy_s() - busy0
        u, s, n, _alive = self.reaper.reap(block=True, timeout=120)
        bg_u += u
        bg_s += s
        bg_n += n
        srv = (self.stack.server_cpu() - srv0) if target == "s3" else 0.0
        cpu = fg_u + fg_s + bg_u + bg_s
        res: dict[str, Any] = {
            "tool": tool.key,
            "label": label,
            "target": target,
            "direction": direction,
            "segments": done,
            "requested": len(segs),
            "wall_s": round(wall, 3),
            "segments_per_s": round(done / wall, 3) if wall and done else 0.0,
            "mb_per_s": round(done * SEG_SIZE / 1e6 / wall, 2) if wall and done else 0.0,
            "cpu_s": round(cpu, 3),
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
            "others_cpu_s": round(others_cpu_s(busy, cpu, srv), 2),
            "others_busy_pct": others_busy_pct(busy, cpu, srv, wall),
            "machine_idle_before_pct": load_before,
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        if direction == "push" and not error:
            # a push-ahead tool may have stored more segments than the calls that returned
            # (when --phase-timeout cut the phase): the ratio is over the segments stored
            res["stored_bytes"], res["stored_objects"], res["stored_segments"] = tool.wal_stored()
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
            f"{label} [{target}] {direction}: {done} segs in {wall:.1f}s = "
            f"{res['segments_per_s']}/s, cpu {res['cpu_s']}s (bg {res['cpu_background_s']}s), "
            f"server cpu {res['server_cpu_s']}s, others {res['others_busy_pct']}% busy"
            + (f" ERROR {res['error']}" if res["error"] else "")
        )
        return res

    def tool_run(self, name: str, target: str, segs: list[str], hashes: dict[str, str]) -> None:
        tool = self.tool(name, target)
        push_pg = self.run_dir / "pgdata" / f"{name}-{target}-push"
        fetch_pg = self.run_dir / "pgdata" / f"{name}-{target}-fetch"
        mkdirs(push_pg.parent)
        self.corpus.make_pgdata(push_pg, segs, ready=True)
        self.corpus.make_pgdata(fetch_pg, [], ready=False)
        label = tool.label("wal")
        base = {"tool": name, "label": label, "target": target, "version": tool.version("wal")}
        try:
            tool.prepare_wal(push_pg, fetch_pg)
        except Exception as e:
            log(f"{label} [{target}]: setup failed: {e}")
            for d in ("push", "fetch"):
                self.results.append({**base, "direction": d, "error": f"setup failed: {e}"})
            return
        r = self.phase(tool, target, "push", segs, push_pg, hashes)
        self.results.append({**base, **r})
        if r["error"] or not r["segments"]:
            self.results.append({**base, "direction": "fetch", "error": "skipped: push failed"})
        else:  # fetch what was pushed (all of it unless the push phase hit --phase-timeout)
            fetch = self.phase(tool, target, "fetch", segs[: r["segments"]], fetch_pg, hashes)
            self.results.append({**base, **fetch})
        if not self.opts.keep:
            shutil.rmtree(push_pg, ignore_errors=True)
            shutil.rmtree(fetch_pg, ignore_errors=True)

    def wait_quiet(self) -> float:
        """Wait for other work to calm down (--quiet-busy, --quiet-wait); the idle % found."""
        return round(100 - wait_quiet(self.opts.quiet_busy, self.opts.quiet_wait), 1)

    # ---- cold single-segment push latency to a local directory repository
    def single_push(self, name: str, seg: str, runs: int, async_: bool | None = None) -> None:
        assert self.reaper
        times: list[float] = []
        err = None
        label = name
        for i in range(runs):
            tool = self.tool(name, "local", self.run_dir / f"single-{name}-{i}", async_)
            label = tool.label("wal")
            pg = tool.dir / "pgdata"
            self.corpus.make_pgdata(pg, [seg], ready=True)
            try:
                tool.prepare_wal(pg, pg)
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
            ts: list[float] = []
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
            if t not in WAL_TOOLS:
                raise SystemExit(f"unknown tool {t!r} (choose from {', '.join(WAL_TOOLS)})")
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
                self.stack.make_bucket(BUCKET)
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
            "host": host_info(python=True),
            "options": dict(vars(o)),
            "corpus": self.corpus.meta | {"used": len(segs)},
            "endpoint": {
                "s3": "moto_server via stunnel TLS",
                "started_by": self.stack.how,
                "tls_url": self.stack.https_url if not o.skip_s3 else None,
            },
            "results": self.results,
            "single_push_local": self.single,
        }
        path = write_results(f"wal-{self.run_id}", out)
        print(wal_markdown(out))
        log(f"results: {path}")
        failed = any(r.get("error") for r in self.results)
        if failed:
            log(f"some phases failed: kept {self.run_dir} (tools' output in tools.log)")
        elif not o.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--segments", type=int, default=200, help="segments pushed and fetched per tool")
    p.add_argument(
        "--tools",
        default=",".join(WAL_TOOLS),
        help="comma-separated subset of " + ",".join(WAL_TOOLS),
    )
    p.add_argument("--only-peers", action="store_true", help="leave cloudbm out")
    p.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
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


def main() -> int:
    start_driver("wal_bench")
    opts = parse_args()
    if opts.segments < 1:
        raise SystemExit("--segments must be >= 1")
    return Bench(opts).main()


if __name__ == "__main__":
    sys.exit(main())
