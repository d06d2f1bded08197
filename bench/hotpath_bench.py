#!/usr/bin/env python3
"""WAL hot paths of several cloudbm versions side by side (issue 10: before/after the redesign).

For each version (`--src LABEL=rev:REV` exports a commit's cloudbm/, `--src LABEL=DIR` takes a
directory holding one; see benchlib/versions.py), as the postgres user, one process per call
exactly as wal_bench.py starts them (bare fork+exec, cwd = a fake PGDATA, `%p` relative):

(a) `wal-push` latency of one call, the wall time PostgreSQL's archiver waits for:
    * cold: the first call after cloudbm's per-user cache (the fast path's settings, the parsed
      configuration) was dropped, with a fresh spool and a freshly initialised file://
      repository (wal_push_ahead = 8, as configured for the 200-segment run);
    * warm, full path: repeated calls with the settings cache in place and wal_push_ahead = 0,
      so every call uploads its own segment to the file:// repository;
    * warm, fast path answers: wal_push_ahead = 8, the background pusher has already archived
      the segment (its marker is there, its lock held): the call only checks and returns.
(b) `--segments` (200) segments pushed then fetched, as archive_command and restore_command
    are called (wal_bench.py's push and fetch phases, reused as they are: .ready -> .done
    renames, RECOVERYXLOG moved away, every fetched segment checked against the corpus), to a
    file:// repository.

Versions alternate inside every round (the order rotates), so drift on a shared machine is
spread over all of them. The table gives medians with their spread and the speed-up of each
version against the first (> 1 = faster). Results: bench/results/hotpath-<run-id>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ["TZ"] = "UTC"  # run ids and log lines in UTC
time.tzset()

import wal_bench  # noqa: E402  (bench/ is this script's directory)
from benchlib.common import DEFAULT_WORKDIR, SEG_SIZE, log, mkdirs, start_driver  # noqa: E402
from benchlib.measure import (  # noqa: E402
    Reaper,
    host_info,
    machine_busy_s,
    my_children,
    others_busy_pct,
    write_results,
)
from benchlib.tools import Site  # noqa: E402
from benchlib.versions import (  # noqa: E402
    CloudbmAt,
    Source,
    cache_dir,
    drop_cache,
    prepare_source,
    private_var_tmp,
)

CASES = {
    "cold": "wal-push, cold: first call, settings cache dropped, fresh spool and repository",
    "warm_full": "wal-push, warm, full path (wal_push_ahead = 0: the call uploads, file://)",
    "warm_fast": "wal-push, warm, fast path answers (segment already pushed ahead)",
}


class HotBench(wal_bench.Bench):
    def __init__(self, opts: argparse.Namespace, sources: list[Source]) -> None:
        wal_opts = wal_bench.parse_args(
            [
                "--workdir",
                opts.workdir,
                "--segments",
                str(max(opts.segments, 1)),
                "--phase-timeout",
                str(opts.phase_timeout),
                "--quiet-busy",
                str(opts.quiet_busy),
                "--quiet-wait",
                str(opts.quiet_wait),
                *(["--keep"] if opts.keep else []),
            ]
        )
        super().__init__(wal_opts)
        self.hot = opts
        self.sources = sources
        self.by_name: dict[str, Source] = {}
        self.latency: list[dict[str, Any]] = []
        self.window = [0.0, 0.0, 0.0]

    # ---- the adapters: wal_bench's phases ask for a tool by name
    def tool(
        self, name: str, target: str, directory: Path | None = None, async_: bool | None = None
    ) -> CloudbmAt:
        return self.cloudbm(self.by_name[name], directory or self.run_dir / f"{name}-{target}")

    def cloudbm(self, src: Source, directory: Path, push_ahead: int | None = None) -> CloudbmAt:
        o = self.opts
        site = Site(self.user, self.home, directory, None, prefix=f"{self.run_id}/{src.label}")
        return CloudbmAt(
            site,
            src,
            compression=o.cloudbm_compression,
            push_ahead=o.cloudbm_push_ahead if push_ahead is None else push_ahead,
            prefetch=o.cloudbm_prefetch,
        )

    # ---- one timed call
    def call(self, tool: CloudbmAt, seg: str, pgdata: Path) -> tuple[float, int, float]:
        """(seconds, exit status, foreground CPU s) of one `wal-push pg_wal/<seg>`; the
        machine's busy time meanwhile is added to self.window (for "others busy %")."""
        b0 = machine_busy_s()
        t0 = time.perf_counter()
        pid = self.user.spawn(tool.push_argv(seg), pgdata, tool.env(), self.logfd)
        _, st, ru = os.wait4(pid, 0)
        elapsed = time.perf_counter() - t0
        cpu = ru.ru_utime + ru.ru_stime
        self.window[0] += machine_busy_s() - b0
        self.window[1] += elapsed
        self.window[2] += cpu
        return elapsed, os.waitstatus_to_exitcode(st), cpu

    def background_alive(self) -> bool:
        assert self.reaper
        return any(p not in self.reaper.exclude for p in my_children())

    def done(self, pgdata: Path, seg: str) -> None:
        status = pgdata / "pg_wal" / "archive_status"
        os.rename(status / f"{seg}.ready", status / f"{seg}.done")

    def setup_case(
        self, src: Source, case: str, rnd: int, segs: list[str], push_ahead: int
    ) -> tuple[CloudbmAt, Path]:
        tool = self.cloudbm(
            src, self.run_dir / "latency" / src.label / f"{case}-r{rnd}", push_ahead
        )
        pg = tool.dir / "pgdata"
        self.corpus.make_pgdata(pg, segs, ready=True)
        tool.prepare_wal(pg, pg)
        assert self.reaper
        self.reaper.reap(block=True, timeout=30)
        drop_cache(self.user)
        return tool, pg

    def latency_block(self, src: Source, case: str, rnd: int, segs: list[str]) -> None:
        """One version's samples of one case in one round."""
        assert self.reaper
        o = self.hot
        samples: list[float] = []
        cpu: list[float] = []
        notes: list[str] = []
        errors: list[str] = []
        self.window = [0.0, 0.0, 0.0]  # machine busy s, wall s, the calls' CPU s
        t_block = time.perf_counter()
        bg_cpu = 0.0
        if case == "cold":
            for i in range(o.cold_per_round):
                tool, pg = self.setup_case(src, f"cold{i}", rnd, segs[:1], 8)
                s, rc, c = self.call(tool, segs[0], pg)
                u, sy, _n, _ = self.reaper.reap(block=True, timeout=30)  # the pusher it started
                bg_cpu += u + sy
                if rc:
                    errors.append(f"exit {rc}")
                else:
                    samples.append(s)
                    cpu.append(c)
                self.cleanup(tool.dir)
        else:
            n = o.batch
            use = segs[: n + 1]
            tool, pg = self.setup_case(src, case, rnd, use, 0 if case == "warm_full" else 8)
            # the first call of the series (untimed) writes the settings cache and, with
            # push-ahead, starts the pusher that archives the others ahead of their calls
            _s, rc, _c = self.call(tool, use[0], pg)
            if rc:
                errors.append(f"priming call: exit {rc}")
            else:
                self.done(pg, use[0])
            cached = (
                sorted(os.listdir(cache_dir(self.user))) if cache_dir(self.user).is_dir() else []
            )
            if not cached:
                notes.append("no settings cache after the first call")
            if case == "warm_fast" and not errors:
                spool = tool.dir / "spool-push"
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not all(
                    glob.glob(f"{spool}/*/archived/{s}") for s in use[1:]
                ):
                    time.sleep(0.005)
                if not all(glob.glob(f"{spool}/*/archived/{s}") for s in use[1:]):
                    errors.append("the pusher did not archive the segments ahead within 120 s")
            for seg in use[1:] if not errors else []:
                s, rc, c = self.call(tool, seg, pg)
                if rc:
                    errors.append(f"{seg}: exit {rc}")
                    break
                self.done(pg, seg)
                if case == "warm_fast" and not self.background_alive():
                    # the pusher idled out: its lock is gone, the fast path could not answer
                    notes.append(f"{seg}: pusher gone, sample dropped")
                    continue
                samples.append(s)
                cpu.append(c)
            u, sy, _n, _ = self.reaper.reap(block=True, timeout=30)
            bg_cpu += u + sy
            self.cleanup(tool.dir)
        wall = time.perf_counter() - t_block
        busy, in_calls, calls_cpu = self.window
        rec = {
            "source": src.label,
            "case": case,
            "round": rnd,
            "samples_ms": [round(s * 1000, 2) for s in samples],
            "cpu_ms": [round(c * 1000, 1) for c in cpu],
            "background_cpu_s": round(bg_cpu, 3),
            "errors": errors,
            "notes": notes,
            # during the timed calls: the machine's busy time less the calls' own CPU (a
            # pusher working meanwhile counts as "others": it is charged to no call)
            "others_busy_pct": others_busy_pct(busy, calls_cpu, 0.0, in_calls),
            "block_s": round(wall, 2),
        }
        self.latency.append(rec)
        med = f"{statistics.median(samples) * 1000:.1f} ms" if samples else "-"
        log(
            f"{src.label} {case} r{rnd}: median {med} over {len(samples)} calls"
            + (f" ERRORS {errors}" if errors else "")
            + (f" ({'; '.join(notes)})" if notes else "")
        )

    def cleanup(self, d: Path) -> None:
        if not self.hot.keep:
            shutil.rmtree(d, ignore_errors=True)

    def stream(self, src: Source, rnd: int, segs: list[str], hashes: dict[str, str]) -> None:
        name = f"{src.label}.r{rnd}"
        self.by_name[name] = src
        drop_cache(self.user)  # a newer version deletes an older one's cache files
        n0 = len(self.results)
        self.tool_run(name, "local", segs, hashes)
        for r in self.results[n0:]:
            r["source"], r["round"] = src.label, rnd
        self.cleanup(self.run_dir / f"{name}-local")

    def run(self) -> int:
        o = self.hot
        need = max(o.segments, o.batch + 1)
        self.corpus.ensure(need)
        segs = self.corpus.segments()[:need]
        hashes = self.corpus.hashes(segs[: o.segments])
        self.logfd = os.open(
            self.run_dir / "tools.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666
        )
        os.chmod(self.run_dir / "tools.log", 0o666)
        for s in segs:  # the page cache holds the corpus for every version alike
            with open(self.corpus.wal / s, "rb") as f:
                while f.read(1 << 22):
                    pass
        for src in self.sources:
            src.check(self.user)
        started = time.time()
        self.reaper = Reaper()
        self.reaper.exclude.update(my_children())
        cases = [c for c in CASES if c not in o.skip]
        try:
            for rnd in range(o.repeats):
                k = rnd % len(self.sources)
                order = self.sources[k:] + self.sources[:k]
                idle = self.wait_quiet()
                log(
                    f"round {rnd + 1}/{o.repeats}: {', '.join(s.label for s in order)} "
                    f"(machine {100 - idle:.0f}% busy before)"
                )
                for case in cases:
                    for src in order:
                        self.latency_block(src, case, rnd, segs)
                if o.segments and "stream" not in o.skip and rnd < o.stream_repeats:
                    for src in order:
                        self.stream(src, rnd, segs[: o.segments], hashes)
        finally:
            self.reaper.reap(block=True, timeout=30)
            os.close(self.logfd)
            drop_cache(self.user)
        out = {
            "run_id": self.run_id,
            "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "host": host_info(python=True),
            "options": dict(vars(o)),
            "sources": [
                {"label": s.label, "dir": str(s.dir), "rev": s.rev, "wrapper": str(s.wrapper)}
                for s in self.sources
            ],
            "corpus": self.corpus.meta | {"segment_bytes": SEG_SIZE},
            "cases": CASES,
            "latency": self.latency,
            "stream": self.results,
        }
        out["summary"] = summarise(out)
        path = write_results(f"hotpath-{self.run_id}", out)
        print(markdown(out))
        log(f"results: {path}")
        failed = any(r["errors"] for r in self.latency) or any(r.get("error") for r in self.results)
        if failed:
            log(f"some measurements failed: kept {self.run_dir} (tools' output in tools.log)")
        elif not o.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return 1 if failed else 0


# ---- summary and table
def _q(v: list[float], q: float) -> float:
    s = sorted(v)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats(v: list[float]) -> dict[str, Any]:
    if not v:
        return {"n": 0}
    return {
        "n": len(v),
        "median": round(statistics.median(v), 3),
        "p25": round(_q(v, 0.25), 3),
        "p75": round(_q(v, 0.75), 3),
        "min": round(min(v), 3),
        "max": round(max(v), 3),
    }


# metric key: (row label, unit, higher is better, from the stream results: direction, field)
STREAM_METRICS = {
    "push_wall_s": ("push wall s", "s", False, "push", "wall_s"),
    "push_seg_s": ("push segments/s", "/s", True, "push", "segments_per_s"),
    "push_call_p50_ms": ("push call p50 ms", "ms", False, "push", "call_p50_ms"),
    "push_cpu_s": ("push CPU s (calls + pusher)", "s", False, "push", "cpu_s"),
    "fetch_wall_s": ("fetch wall s", "s", False, "fetch", "wall_s"),
    "fetch_seg_s": ("fetch segments/s", "/s", True, "fetch", "segments_per_s"),
    "fetch_call_p50_ms": ("fetch call p50 ms", "ms", False, "fetch", "call_p50_ms"),
    "fetch_cpu_s": ("fetch CPU s (calls + prefetcher)", "s", False, "fetch", "cpu_s"),
}


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for s in out["sources"]:
        lab = s["label"]
        per: dict[str, Any] = {}
        for case in CASES:
            v = [
                x
                for r in out["latency"]
                if r["source"] == lab and r["case"] == case
                for x in r["samples_ms"]
            ]
            busy = [
                r["others_busy_pct"]
                for r in out["latency"]
                if r["source"] == lab and r["case"] == case and r["others_busy_pct"] is not None
            ]
            per[f"{case}_cpu"] = _stats(
                [
                    x
                    for r in out["latency"]
                    if r["source"] == lab and r["case"] == case
                    for x in r["cpu_ms"]
                ]
            )
            per[case] = _stats(v) | {
                "others_busy_pct_median": round(statistics.median(busy), 1) if busy else None
            }
        for key, (_row, _u, _hi, direction, field) in STREAM_METRICS.items():
            v = [
                r[field]
                for r in out["stream"]
                if r.get("source") == lab
                and r.get("direction") == direction
                and not r.get("error")
                and r.get(field)
            ]
            per[key] = _stats(v)
        busy = [
            r["others_busy_pct"]
            for r in out["stream"]
            if r.get("source") == lab and r.get("others_busy_pct") is not None
        ]
        per["stream_others_busy_pct_median"] = round(statistics.median(busy), 1) if busy else None
        summary[lab] = per
    return summary


def markdown(out: dict[str, Any]) -> str:
    labels = [s["label"] for s in out["sources"]]
    base = labels[0]
    sm = out["summary"]
    head = (
        "| measure | "
        + " | ".join(labels)
        + " | "
        + " | ".join(f"speed-up {lab} vs {base}" for lab in labels[1:])
        + " |"
    )
    sep = "| --- |" + " ---: |" * (2 * len(labels) - 1)
    lines = [
        f"Run `{out['run_id']}` ({out['duration_s']:.0f} s; {out['host']['cpus']} CPUs, "
        f"{out['options']['repeats']} rounds, versions alternating). Cells: median "
        "[p25-p75] (n samples); for the push+fetch runs median [min-max] (n runs). "
        "Speed-up: base median / this median for times, this / base for rates (> 1 = faster).",
        "",
        head,
        sep,
    ]

    def cell(st: dict[str, Any], nd: int, rng: tuple[str, str]) -> str:
        if not st.get("n"):
            return "—"
        return f"{st['median']:.{nd}f} [{st[rng[0]]:.{nd}f}-{st[rng[1]]:.{nd}f}] ({st['n']})"

    def ratio(key: str, lab: str, higher: bool) -> str:
        a, b = sm[base][key], sm[lab][key]
        if not a.get("n") or not b.get("n") or not a["median"] or not b["median"]:
            return "—"
        r = b["median"] / a["median"] if higher else a["median"] / b["median"]
        return f"**{r:.2f}x**"

    for case, text in CASES.items():
        lines.append(
            f"| {text}, ms | "
            + " | ".join(cell(sm[lab][case], 1, ("p25", "p75")) for lab in labels)
            + " | "
            + " | ".join(ratio(case, lab, False) for lab in labels[1:])
            + " |"
        )
        lines.append(
            "| ... its CPU (user+sys of the call), ms | "
            + " | ".join(cell(sm[lab][f"{case}_cpu"], 1, ("p25", "p75")) for lab in labels)
            + " | "
            + " | ".join(ratio(f"{case}_cpu", lab, False) for lab in labels[1:])
            + " |"
        )
    nseg = out["options"]["segments"]
    for key, (row, _u, higher, _d, _f) in STREAM_METRICS.items():
        nd = 1 if _u in ("s", "ms") else 2
        lines.append(
            f"| {nseg} segments: {row} | "
            + " | ".join(cell(sm[lab][key], nd, ("min", "max")) for lab in labels)
            + " | "
            + " | ".join(ratio(key, lab, higher) for lab in labels[1:])
            + " |"
        )
    busy_lat = "; ".join(
        f"{lab} " + "/".join(str(sm[lab][c]["others_busy_pct_median"]) for c in CASES)
        for lab in labels
    )
    busy_stream = "; ".join(f"{lab} {sm[lab]['stream_others_busy_pct_median']}" for lab in labels)
    lines += [
        "",
        f"Others busy % (median over blocks; rest of the machine, not cloudbm): latency "
        f"cold/full/fast {busy_lat}; {nseg}-segment phases {busy_stream}.",
        "Sources: " + "; ".join(f"`{s['label']}` = {s['dir']}" for s in out["sources"]) + ".",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--src",
        action="append",
        required=True,
        metavar="LABEL=DIR|LABEL=rev:REV",
        help="a version under test (repeat; the first is the base of the ratios): a directory "
        "holding cloudbm/, or a commit of this checkout exported to <workdir>/src-<rev>",
    )
    p.add_argument(
        "--segments", type=int, default=200, help="segments of the push+fetch runs (0: none)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="rounds; every round measures every version"
    )
    p.add_argument(
        "--stream-repeats",
        type=int,
        default=None,
        help="rounds that also run the push+fetch of --segments (default: all of --repeats)",
    )
    p.add_argument("--cold-per-round", type=int, default=3, help="cold calls per version per round")
    p.add_argument("--batch", type=int, default=10, help="warm calls per version, case and round")
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated cases to leave out: cold,warm_full,warm_fast,stream",
    )
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument("--phase-timeout", type=float, default=120)
    p.add_argument("--quiet-busy", type=float, default=20.0)
    p.add_argument("--quiet-wait", type=float, default=10)
    p.add_argument("--keep", action="store_true")
    o = p.parse_args(argv)
    o.skip = [s for s in o.skip.split(",") if s]
    if o.stream_repeats is None:
        o.stream_repeats = o.repeats
    return o


def main() -> int:
    start_driver("hotpath_bench")
    opts = parse_args()
    if opts.repeats < 1 or opts.batch < 1:
        raise SystemExit("--repeats and --batch must be >= 1")
    work = Path(opts.workdir).resolve()
    mkdirs(work)
    private_var_tmp(work)  # before anything runs cloudbm
    sources = [prepare_source(spec, work) for spec in opts.src]
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"labels must differ: {labels}")
    return HotBench(opts, sources).run()


if __name__ == "__main__":
    sys.exit(main())
