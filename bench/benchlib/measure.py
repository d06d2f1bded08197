"""What the benchmarks measure with: kernel CPU accounting, RSS sampling, the machine's load.

CPU comes from the kernel, nothing is estimated: `wait4()` rusage for the processes the driver
starts (it includes the children they waited for), and for helpers that detach (pgBackRest's
async workers double-fork and `setsid()`) the driver makes itself a child subreaper, so orphaned
descendants are re-parented to it and reaped here with their rusage.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .common import RESULTS_DIR, log, mkdirs

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PR_SET_CHILD_SUBREAPER = 36


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state(0) ppid(1) ... utime(11) stime(12)."""
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


def proc_cpu(pid: int) -> float:
    """user+sys seconds of a live process including its waited-for children."""
    st = proc_stat(pid)
    if not st:
        return 0.0
    # utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in st[11:15]) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def others_cpu_s(busy: float, tool_cpu: float, server_cpu: float) -> float:
    """CPU seconds the rest of the machine used meanwhile (not the tool, not the emulator)."""
    return max(0.0, busy - tool_cpu - server_cpu)


def others_busy_pct(busy: float, tool_cpu: float, server_cpu: float, wall: float) -> float | None:
    """The share of the machine the rest of it used meanwhile: the contention figure to read a
    wall-clock rate against."""
    if not wall:
        return None
    return round(100 * others_cpu_s(busy, tool_cpu, server_cpu) / (wall * NCPU), 1)


def wait_quiet(max_busy: float, max_wait: float) -> float:
    """Other work on the machine skews wall times. Between steps the bench itself is idle, so
    the machine's busy share over 2 s is other people's work: wait (at most `max_wait` s) until
    it is at most `max_busy` %, and return the busy % last seen."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(2)
        pct = 100 * (machine_busy_s() - b0) / ((time.monotonic() - t0) * NCPU)
        if pct <= max_busy or time.monotonic() > deadline:
            return pct
        if not warned:
            log(
                f"machine {pct:.0f}% busy with other work: waiting up to "
                f"{max_wait:.0f}s for <= {max_busy:.0f}%"
            )
            warned = True


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


class RssSampler(threading.Thread):
    """Samples the process tree rooted at pid (by ppid) every `interval` s: peak of the summed
    VmRSS of the tree (what the tool occupies at once) and the largest VmHWM of any member."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_sum_kib = self.peak_hwm_kib = self.max_procs = 0
        self._halt = threading.Event()

    @staticmethod
    def _status(pid: int) -> tuple[int, int]:
        rss = hwm = 0
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
        except OSError:
            pass
        return rss, hwm

    def sample(self) -> None:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = proc_stat(int(d))
                if st:
                    kids.setdefault(int(st[1]), []).append(int(d))
        todo, tree = [self.pid], []
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(kids.get(p, ()))
        tot = 0
        for p in tree:
            rss, hwm = self._status(p)
            tot += rss
            self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)
        self.peak_sum_kib = max(self.peak_sum_kib, tot)
        self.max_procs = max(self.max_procs, len(tree))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Spawner(Protocol):
    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str], out_fd: int) -> int: ...


def timed_command(
    user: Spawner,
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    logpath: Path,
    server_cpu: Callable[[], float],
    busy_before: float,
) -> dict[str, Any]:
    """Run one command of a tool (as `user`, output to `logpath`) and measure it: wall time,
    CPU of its waited-for process tree, peak RSS two ways, the emulator's CPU meanwhile and the
    rest of the machine's. The caller waited for quiet (`busy_before`, in the result)."""
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    srv0 = server_cpu()
    busy0 = machine_busy_s()
    t0 = time.perf_counter()
    pid = user.spawn(argv, cwd, env, fd)
    sampler = RssSampler(pid)
    sampler.start()
    _, st, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    sampler.stop()
    os.close(fd)
    busy = machine_busy_s() - busy0
    srv = server_cpu() - srv0
    cpu = ru.ru_utime + ru.ru_stime
    rc = os.waitstatus_to_exitcode(st)
    tail = logpath.read_text(errors="replace").strip().splitlines()[-6:]
    res: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "exit": rc,
        "cpu_s": round(cpu, 2),
        "cpu_user_s": round(ru.ru_utime, 2),
        "cpu_sys_s": round(ru.ru_stime, 2),
        # ru_maxrss of wait4(): the largest resident set of the process or any waited-for
        # descendant (Linux keeps the max over the tree, not the sum)
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        # sampled every 0.2 s: the whole tree's VmRSS summed (processes at once)
        "peak_tree_rss_mib": round(sampler.peak_sum_kib / 1024, 1),
        "max_processes": sampler.max_procs,
        "server_cpu_s": round(srv, 2),
        "others_busy_pct": others_busy_pct(busy, cpu, srv, wall),
        "machine_busy_before_pct": busy_before,
        "log_tail": tail,
    }
    if rc != 0:
        res["error"] = f"exit {rc}: " + " | ".join(tail[-3:])
    return res


def profile_command(
    user: Spawner,
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    py_spy: str,
    out: Path,
    logdir: Path,
) -> dict[str, Any]:
    """Run the command again, untimed, sampled by py-spy (100 Hz, non-idle threads): where the
    CPU goes. The raw collapsed stacks go to `out`; the result ranks the top frames."""
    logf = open(logdir / "profile.log", "ab")  # noqa: SIM115 (closed after py-spy ends)
    fd = os.open(logdir / "profile-backup.log", os.O_WRONLY | os.O_CREAT, 0o666)
    t0 = time.perf_counter()
    pid = user.spawn(argv, cwd, env, fd)
    time.sleep(0.3)
    spy = subprocess.Popen(
        [
            *[py_spy, "record", "--pid", str(pid), "--rate", "100"],
            *["--format", "raw", "--nonblocking", "-o", str(out)],
        ],
        stdout=logf,
        stderr=logf,
        stdin=subprocess.DEVNULL,
    )
    _, st, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
    os.close(fd)
    logf.close()
    selft: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    if out.exists():
        for line in out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            k = int(n)
            total += k
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
            if frames:
                selft[frames[-1]] = selft.get(frames[-1], 0) + k
            for f in set(frames):
                incl[f] = incl.get(f, 0) + k

    def top(d: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(d.items(), key=lambda x: -x[1])[:25]
        return [{"frame": f, "pct": round(100 * n / total, 1)} for f, n in ranked] if total else []

    return {
        "file": str(out),
        "samples": total,
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "exit": os.waitstatus_to_exitcode(st),
        "self": top(selft),
        "inclusive": top(incl),
    }


def host_info(python: bool = False) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if python:
        info["python"] = platform.python_version()
    return info


def write_results(name: str, out: dict[str, Any]) -> Path:
    """bench/results/<name>.json (git-ignored)."""
    mkdirs(RESULTS_DIR)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path
