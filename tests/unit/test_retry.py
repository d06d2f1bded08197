"""The retry wrapper: transient errors retried with backoff within a deadline, others not."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import pytest

from cloudbm.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    StoragePermissionError,
    TransientStorageError,
)
from cloudbm.storage.base import BytesReader, ObjectInfo, StorageOptions
from cloudbm.storage.retry import RetryingStorage, RetryPolicy


class Flaky:
    """A storage double failing the first `failures` calls of each operation."""

    url = "mem://"

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TransientStorageError("boom")
        self.calls: dict[str, int] = {}
        self.objects: dict[str, bytes] = {}

    def _tick(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.calls[op] <= self.failures:
            raise self.error

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        self._tick("put")
        self.objects[key] = payload

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        self._tick("get")
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        data = self.objects[key][start:end]
        return BytesReader(data, ObjectInfo(key, len(self.objects[key])))

    def head(self, key: str) -> ObjectInfo:
        self._tick("head")
        return ObjectInfo(key, len(self.objects[key]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._tick("list")
        return iter([ObjectInfo(k, len(v)) for k, v in sorted(self.objects.items())])

    def delete_many(self, keys: Iterable[str]) -> None:
        self._tick("delete")
        for k in keys:
            self.objects.pop(k, None)

    def close(self) -> None:
        pass


def _wrap(inner: Flaky, attempts: int = 5) -> RetryingStorage:
    return RetryingStorage(
        inner, RetryPolicy(attempts, deadline=10, base_delay=0, sleep=lambda s: None)
    )


def test_transient_errors_are_retried_until_success() -> None:
    inner = Flaky(failures=2)
    store = _wrap(inner)
    store.put("k", b"v")
    assert inner.objects["k"] == b"v"
    assert inner.calls["put"] == 3


def test_attempts_are_bounded_and_the_error_says_so() -> None:
    store = _wrap(Flaky(failures=10), attempts=3)
    with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
        store.head("k")


def test_permanent_errors_are_not_retried() -> None:
    inner = Flaky(failures=1, error=StoragePermissionError("denied"))
    with pytest.raises(StoragePermissionError):
        _wrap(inner).head("k")
    assert inner.calls["head"] == 1


def test_not_found_is_not_retried() -> None:
    inner = Flaky(failures=0)
    with pytest.raises(ObjectNotFoundError):
        _wrap(inner).get("missing")
    assert inner.calls["get"] == 1


def test_seekable_streams_are_rewound_between_attempts() -> None:
    import io

    inner = Flaky(failures=1)
    _wrap(inner).put("k", io.BytesIO(b"payload"))
    assert inner.objects["k"] == b"payload"


def test_deadline_bounds_total_time() -> None:
    slept: list[float] = []
    policy = RetryPolicy(100, deadline=0.0, base_delay=1, sleep=slept.append)
    with pytest.raises(TransientStorageError):
        RetryingStorage(Flaky(failures=100), policy).head("k")
    assert slept == []


def test_deletes_are_sliced_and_each_slice_retried() -> None:
    inner = Flaky(failures=1)
    inner.objects = {f"k{i}": b"" for i in range(2500)}
    _wrap(inner).delete_many(f"k{i}" for i in range(2500))
    assert inner.objects == {}
    assert inner.calls["delete"] == 4  # one failure + three slices


# --- the policy: back off, and spend the deadline ---------------------------------------------


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps or an attempt costs."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _policy(clock: FakeClock, max_attempts: int, deadline: float, **kw: float) -> RetryPolicy:
    return RetryPolicy(
        max_attempts,
        deadline=deadline,
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 0.5,  # the middle of the jitter range: delays are 3/4 of each cap
        **kw,
    )


# base 1 s, cap 4 s, rand 0.5: the pauses are 0.75, 1.5, 3, 3, 3 ... seconds.
@pytest.mark.parametrize(
    ("max_attempts", "deadline", "attempt_cost", "attempts", "gave_up_at"),
    [
        (100, 10.0, 0.0, 5, 8.25),  # retries until the next pause would cross the deadline
        (3, 10.0, 0.0, 3, 2.25),  # a cap on attempts still ends it first when it is lower
        (100, 10.0, 2.0, 3, 8.25),  # slow attempts (a held response) spend the deadline sooner
        (100, 0.5, 0.0, 1, 0.0),  # no time for even one pause: one attempt, no sleep
        (100, 40.0, 0.0, 15, 38.25),  # a longer deadline buys more attempts, not a fixed five
    ],
)
def test_retry_decision_table(
    max_attempts: int, deadline: float, attempt_cost: float, attempts: int, gave_up_at: float
) -> None:
    clock = FakeClock()
    policy = _policy(clock, max_attempts, deadline, base_delay=1.0, max_delay=4.0)
    calls: list[float] = []

    def fail() -> None:
        calls.append(clock.now)
        clock.now += attempt_cost
        raise TransientStorageError("boom")

    with pytest.raises(TransientStorageError, match=f"gave up after {attempts} attempts"):
        policy.run("op", fail)
    assert len(calls) == attempts
    assert clock.now == pytest.approx(gave_up_at)
    assert clock.now <= deadline


def test_default_policy_spends_the_deadline_instead_of_giving_up_after_five_quick_tries() -> None:
    clock = FakeClock()
    options = StorageOptions()
    policy = RetryPolicy.from_options(options, sleep=clock.sleep, clock=clock, rand=lambda: 0.5)
    attempts = 0

    def fail() -> None:
        nonlocal attempts
        attempts += 1
        raise TransientStorageError("boom")

    with pytest.raises(TransientStorageError):
        policy.run("op", fail)
    assert options.operation_timeout - policy.max_delay < clock.now <= options.operation_timeout
    assert attempts > 20


def test_pauses_grow_and_are_never_zero() -> None:
    clock = FakeClock()
    policy = RetryPolicy(8, deadline=1000, sleep=clock.sleep, clock=clock, rand=lambda: 0.0)
    with pytest.raises(TransientStorageError):
        policy.run("op", _always(TransientStorageError("boom")))
    assert clock.slept == sorted(clock.slept)
    assert all(s >= policy.base_delay / 2 for s in clock.slept)
    assert clock.slept[-1] > 4 * clock.slept[0]


def test_twenty_transient_failures_in_a_row_are_survived_by_default() -> None:
    clock = FakeClock()
    inner = Flaky(failures=20)
    policy = RetryPolicy.from_options(StorageOptions(), sleep=clock.sleep, clock=clock)
    RetryingStorage(inner, policy).put("k", b"v")
    assert inner.objects["k"] == b"v" and inner.calls["put"] == 21


def _always(exc: Exception) -> Callable[[], None]:
    def fail() -> None:
        raise exc

    return fail


# --- reads: complete or transient, resumed with backoff ----------------------------------------


class CuttingStore(Flaky):
    """Every opened reader delivers at most `per_open` bytes, then fails (`how`): 'raise' a
    transient error, or 'eof' (the body just ends, as a response cut in its headers does)."""

    def __init__(self, data: bytes, per_open: int, how: str, cuts: int) -> None:
        super().__init__(failures=0)
        self.objects["k"] = data
        self.per_open = per_open
        self.how = how
        self.cuts = cuts
        self.opens: list[tuple[int, int | None]] = []

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        self.opens.append((start, end))
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        data = self.objects[key]
        info = ObjectInfo(key, len(data), etag="e1")
        stop = len(data) if end is None else min(end, len(data))
        if self.cuts <= 0:
            return BytesReader(data[start:stop], info)
        self.cuts -= 1
        return _Cut(data[start : min(stop, start + self.per_open)], info, self.how)


class _Cut(BytesReader):
    def __init__(self, data: bytes, info: ObjectInfo, how: str) -> None:
        super().__init__(data, info)
        self._left = len(data)
        self._how = how

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        self._left -= len(chunk)
        if not chunk and self._how == "raise":
            raise TransientStorageError("connection reset")
        return chunk


def _clocked(inner: Any, deadline: float = 300.0) -> tuple[RetryingStorage, FakeClock]:
    clock = FakeClock()
    policy = RetryPolicy(100, deadline=deadline, sleep=clock.sleep, clock=clock)
    return RetryingStorage(inner, policy), clock


@pytest.mark.parametrize("how", ["raise", "eof"])
def test_a_read_cut_many_times_resumes_with_backoff_and_returns_every_byte(how: str) -> None:
    data = bytes(range(256)) * 40
    inner = CuttingStore(data, per_open=1000, how=how, cuts=8)
    store, clock = _clocked(inner)
    with store.get("k") as reader:
        assert reader.read() == data
    assert [start for start, _ in inner.opens] == [i * 1000 for i in range(9)]
    assert len(clock.slept) == 8 and all(s > 0 for s in clock.slept)


@pytest.mark.parametrize("how", ["raise", "eof"])
def test_a_ranged_read_cut_short_resumes_within_its_range(how: str) -> None:
    data = bytes(range(256)) * 40
    inner = CuttingStore(data, per_open=300, how=how, cuts=3)
    store, _ = _clocked(inner)
    with store.get("k", start=100, end=1500) as reader:
        got = b"".join(iter(lambda: reader.read(64), b""))
    assert got == data[100:1500]
    assert inner.opens == [(100, 1500), (400, 1500), (700, 1500), (1000, 1500)]


def test_a_body_that_ends_early_forever_is_a_transient_error_never_a_short_object() -> None:
    inner = CuttingStore(b"x" * 100, per_open=0, how="eof", cuts=10**6)
    store, clock = _clocked(inner, deadline=60)
    with store.get("k") as reader, pytest.raises(TransientStorageError, match="gave up"):
        reader.read()
    assert 60 - 10 < clock.now <= 60


def test_the_read_deadline_runs_from_the_last_byte_received() -> None:
    # 50 cuts, each after 10 bytes: far more than any deadline allows in one go, but every
    # reopen makes progress, so the read completes.
    data = b"y" * 500
    inner = CuttingStore(data, per_open=10, how="raise", cuts=50)
    store, clock = _clocked(inner, deadline=5)
    with store.get("k") as reader:
        assert reader.read() == data
    assert clock.now > 5


def test_a_reopened_read_of_a_replaced_object_is_refused() -> None:
    inner = CuttingStore(b"z" * 100, per_open=10, how="raise", cuts=1)
    store, _ = _clocked(inner)
    with store.get("k") as reader:
        assert reader.read(10) == b"z" * 10
        inner.objects["k"] = b"w" * 100
        original_get = inner.get

        def replaced(key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
            got = original_get(key, start=start, end=end)
            got.info = ObjectInfo(key, 100, etag="e2")
            return got

        inner.get = replaced  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="changed while it was being read"):
            reader.read()


# --- listings: resumed after the last key, with backoff and a deadline -----------------------


class CuttingLister(Flaky):
    """A listing that fails after `per_call` entries on each of the first `cuts` calls;
    `list_after` lets the wrapper resume where it stopped."""

    def __init__(self, keys: list[str], per_call: int, cuts: int) -> None:
        super().__init__(failures=0)
        self.objects = {k: b"" for k in keys}
        self.per_call = per_call
        self.cuts = cuts
        self.resumed_after: list[str] = []

    def _entries(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        cut = self.cuts > 0
        self.cuts -= 1
        n = 0
        for key in sorted(self.objects):
            if key.startswith(prefix) and key > after:
                if cut and n == self.per_call:
                    raise TransientStorageError("listing cut")
                n += 1
                yield ObjectInfo(key, 0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._entries(prefix, "")

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        self.resumed_after.append(after)
        return self._entries(prefix, after)


def test_a_listing_cut_mid_way_resumes_after_the_last_key_with_backoff() -> None:
    keys = [f"wal/{i:04d}" for i in range(100)]
    inner = CuttingLister(keys, per_call=7, cuts=9)
    store, clock = _clocked(inner)
    assert [i.key for i in store.list("wal/")] == keys
    assert inner.resumed_after == [keys[7 * n - 1] for n in range(1, 10)]
    assert len(clock.slept) == 9 and all(s > 0 for s in clock.slept)


def test_a_listing_that_never_gets_further_gives_up_at_the_deadline() -> None:
    inner = CuttingLister([f"k{i}" for i in range(10)], per_call=0, cuts=10**6)
    store, clock = _clocked(inner, deadline=30)
    with pytest.raises(TransientStorageError, match="gave up"):
        list(store.list(""))
    assert 30 - 10 < clock.now <= 30


# --- create-if-absent: a conflict with our own earlier attempt is success ---------------------


class LostResponses(Flaky):
    """put takes effect, then its response is lost `lost` times (a dropped response)."""

    def __init__(self, lost: int) -> None:
        super().__init__(failures=0)
        self.lost = lost
        self.gets = 0

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        size_hint: int | None = None,
    ) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        if if_absent and key in self.objects:
            raise ObjectExistsError(f"{key} exists")
        self.objects[key] = payload
        self.meta[key] = dict(metadata or {})
        if self.lost > 0:
            self.lost -= 1
            raise TransientStorageError("connection reset after the request was sent")

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> BytesReader:
        self.gets += 1
        reader = super().get(key, start=start, end=end)
        reader.info = ObjectInfo(key, len(self.objects[key]), self.meta.get(key, {}))
        return reader

    @property
    def meta(self) -> dict[str, dict[str, str]]:
        if not hasattr(self, "_meta"):
            self._meta: dict[str, dict[str, str]] = {}
        return self._meta


def test_if_absent_put_whose_first_response_was_lost_succeeds_when_the_object_is_ours() -> None:
    inner = LostResponses(lost=1)
    store, _ = _clocked(inner)
    store.put("backups/x/started.json", b'{"pid": 1}', metadata={"a": "1"}, if_absent=True)
    assert inner.objects["backups/x/started.json"] == b'{"pid": 1}' and inner.gets == 1


def test_if_absent_seekable_stream_is_compared_by_re_reading_it() -> None:
    import io

    inner = LostResponses(lost=1)
    store, _ = _clocked(inner)
    store.put("k", io.BytesIO(b"stream payload"), if_absent=True)
    assert inner.objects["k"] == b"stream payload"


def test_if_absent_conflict_with_different_content_after_a_lost_response_is_refused() -> None:
    inner = LostResponses(lost=0)
    inner.objects["k"] = b"someone else's"
    calls = 0
    original = inner.put

    def reset_first(key: str, data: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientStorageError("reset before the request was sent")
        original(key, data, **kw)

    inner.put = reset_first  # type: ignore[method-assign]
    store, _ = _clocked(inner)
    with pytest.raises(ObjectExistsError):
        store.put("k", b"ours", if_absent=True)
    assert inner.objects["k"] == b"someone else's"


def test_if_absent_conflict_with_other_metadata_is_refused() -> None:
    inner = LostResponses(lost=0)
    inner.objects["k"] = b"same"
    inner.meta["k"] = {"cloudbm-sha256": "other"}
    calls = 0
    original = inner.put

    def reset_first(key: str, data: Any, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientStorageError("reset")
        original(key, data, **kw)

    inner.put = reset_first  # type: ignore[method-assign]
    store, _ = _clocked(inner)
    with pytest.raises(ObjectExistsError):
        store.put("k", b"same", metadata={"cloudbm-sha256": "mine"}, if_absent=True)


def test_if_absent_conflict_without_an_earlier_failure_is_refused_without_reading() -> None:
    inner = LostResponses(lost=0)
    inner.objects["k"] = b"same"
    store, _ = _clocked(inner)
    with pytest.raises(ObjectExistsError):
        store.put("k", b"same", if_absent=True)
    assert inner.gets == 0


# --- deletes: a failing batch is retried in smaller pieces ------------------------------------


class OneRequestPerKey(Flaky):
    """A backend whose delete_many sends one request per key (GCS without its batch API), each
    failing one time in five: a batch of many keys almost never gets through whole."""

    def __init__(self, keys: int, seed: int = 3) -> None:
        super().__init__(failures=0)
        import random

        self.objects = {f"k{i:04d}": b"" for i in range(keys)}
        self.rng = random.Random(seed)
        self.batches: list[int] = []

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self.batches.append(len(batch))
        for key in batch:
            if self.rng.random() < 0.2:
                raise TransientStorageError(f"delete {key}: connection reset")
            self.objects.pop(key, None)


def test_a_batch_delete_that_keeps_failing_is_retried_in_halves_until_it_gets_through() -> None:
    inner = OneRequestPerKey(2500)
    store, clock = _clocked(inner, deadline=60)
    store.delete_many(sorted(inner.objects))
    assert inner.objects == {}
    assert min(inner.batches) < 10 and max(inner.batches) == 1000
    assert clock.slept and all(s > 0 for s in clock.slept)


def test_an_object_deleted_while_a_cut_read_resumes_is_an_error_not_not_found() -> None:
    inner = CuttingStore(b"z" * 100, per_open=10, how="raise", cuts=1)
    store, _ = _clocked(inner)
    with store.get("k") as reader:
        assert reader.read(10) == b"z" * 10
        del inner.objects["k"]
        with pytest.raises(StorageError, match="deleted while it was being read") as caught:
            reader.read()
        assert not isinstance(caught.value, ObjectNotFoundError)
