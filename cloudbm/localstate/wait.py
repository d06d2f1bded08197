"""The one bounded wait on local state: the fast path, wal-push and wal-fetch poll with it.

Its own module, imported when a call has to wait: a call answered at once never pays for it.
Standard library only, like the rest of cloudbm.localstate, and without `from __future__
import annotations` (the fast path imports it).
"""

import time

# collections.abc itself would import the collections package; the interpreter has loaded the
# module behind it already.
from _collections_abc import Callable

LIVENESS_EVERY = 0.1


class BoundedWait:
    """A poll loop's pace and its bounds: a deadline, a pause between polls, and an optional
    liveness probe (is the worker that will answer still there?) run at most every
    `check_every` seconds, the first time at once.

        wait = BoundedWait(seconds=10, poll=0.003, alive=lambda: lock_is_held(lock))
        while not answered():
            if not wait.again():
                break  # wait.gone: the probe said so; otherwise the deadline passed

    `clock` and `sleep` are injectable, so a test runs one without waiting.
    """

    def __init__(
        self,
        seconds: float | None = None,
        *,
        poll: float,
        alive: Callable[[], bool] | None = None,
        deadline: float | None = None,
        check_every: float = LIVENESS_EVERY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        now = clock()
        if deadline is None:
            if seconds is None:
                raise TypeError("BoundedWait needs seconds or a deadline")
            deadline = now + seconds
        self.deadline = deadline
        self.poll = poll
        self.alive = alive  # may be dropped (None) once the loop no longer depends on it
        self.gone = False  # why the last again() returned False: the probe said so
        self.check_every = check_every
        self._clock = clock
        self._sleep = sleep
        self._next_check = now

    def expired(self) -> bool:
        return self._clock() >= self.deadline

    def again(self) -> bool:
        """Pause one poll interval and return True; False, without pausing, once the
        deadline has passed or the probe says the worker is gone."""
        self.gone = False
        now = self._clock()
        if now >= self.deadline:
            return False
        if self.alive is not None and now >= self._next_check:
            self._next_check = now + self.check_every
            if not self.alive():
                self.gone = True
                return False
        self._sleep(min(self.poll, max(0.0, self.deadline - now)))
        return True
