"""Progress for long transfers: a bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time

from cloudbm.logs import log

LOG_EVERY_SECONDS = 30.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Thread-safe byte counter that renders itself at most a few times a second."""

    def __init__(self, what: str, total: int, *, enabled: bool = True) -> None:
        self.what = what
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._tty = enabled and sys.stderr.isatty()
        self._enabled = enabled
        self._last_render = 0.0
        self._last_log = self.started

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self._tty and now - self._last_render >= 0.25:
                self._last_render = now
                self._render(now)
            elif self._enabled and not self._tty and now - self._last_log >= LOG_EVERY_SECONDS:
                self._last_log = now
                log.info("%s: %s", self.what, self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        pct = min(100.0, 100.0 * self.done / self.total)
        eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0
        return (
            f"{pct:5.1f}% {human_bytes(self.done)} / {human_bytes(self.total)} "
            f"{human_bytes(rate)}/s ETA {human_duration(eta)}"
        )

    def _render(self, now: float) -> None:
        width = 30
        filled = int(width * min(1.0, self.done / self.total))
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{self.what} [{bar}] {self._line(now)}  ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self._tty:
            self._render(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


class RateLimiter:
    """Token bucket shared by all upload threads (bandwidth_limit, KiB/s)."""

    def __init__(self, kib_per_second: int | None) -> None:
        self.rate = (kib_per_second or 0) * 1024
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = time.monotonic()

    def __call__(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= nbytes
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
