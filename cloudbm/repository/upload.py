"""Streaming a large object into the repository, retried from its source.

A stream cannot be rewound, so the retrying storage hands a transient failure of a streamed put
back to its caller. Here the caller says how to produce the plaintext again (`open_source`), and
a failed attempt is repeated from a fresh source, bounded by the storage's RetryPolicy: the
attempt count, and a deadline that starts again whenever an attempt had been moving bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudbm.codec.hashing import HashingReader
from cloudbm.errors import StorageError
from cloudbm.logs import log
from cloudbm.repository.objects import Repository
from cloudbm.storage.base import StorageOptions
from cloudbm.storage.retry import RetryPolicy

if TYPE_CHECKING:
    from cloudbm.codec.envelope import EncodeParams


@dataclass(frozen=True)
class Streamed:
    """What a streamed object occupies in storage: its stored (encoded) size and SHA-256."""

    size: int
    sha256: str


def _no_limit(_: int) -> None:
    return None


def retry_policy(repo: Repository) -> RetryPolicy:
    """The retry policy the repository's storage is configured with."""
    return RetryPolicy.from_options(repo.config.storage_options or StorageOptions())


def put_stream(
    repo: Repository,
    key: str,
    open_source: Callable[[], Any],
    *,
    params: EncodeParams | None = None,
    on_stored: Callable[[int], None] = _no_limit,
    size_hint: int | None = None,
    on_retry: Callable[[StorageError], None] | None = None,
    policy: RetryPolicy | None = None,
) -> Streamed:
    """Encode the plaintext stream `open_source()` returns into `key` (the envelope binds it to
    the key), telling `on_stored` the length of each encoded chunk as storage reads it (a rate
    limit). A transient storage failure opens the source again and starts over, until the
    retry budget is spent; `on_retry` is told of each failure that is retried (by default, a
    warning). Returns the stored size and SHA-256."""
    from cloudbm.codec.envelope import EncodingReader

    params = params or repo.encode_params()
    policy = policy or retry_policy(repo)
    budget = policy.budget(f"put {key}")
    while True:
        encoded = EncodingReader(open_source(), name=key, params=params, hash_plaintext=False)
        stored = HashingReader(encoded, on_stored)
        try:
            repo.storage.put(key, stored, size_hint=size_hint)  # type: ignore[arg-type]
        except StorageError as exc:
            if stored.size:  # it was moving: the deadline runs from now, as for a read
                budget.started = policy.clock()
            budget.failed(exc)  # raises when permanent or out of time/attempts
            if on_retry is not None:
                on_retry(exc)
            else:
                log.warning("put %s failed (%s); retrying from its source", key, exc)
            continue
        return Streamed(stored.size, stored.sha.hexdigest())
