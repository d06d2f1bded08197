"""HashingReader: counts and hashes the bytes a stream passes on, for digests of what was
stored (as a part is uploaded) or of what arrived (as it is downloaded)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any


def _no_limit(_: int) -> None:
    return None


class HashingReader:
    """A read-only stream over `inner` whose SHA-256 (`sha`) and length (`size`) cover every
    byte read so far. `on_read` is told each chunk's length (a rate limit, say)."""

    def __init__(self, inner: Any, on_read: Callable[[int], None] = _no_limit) -> None:
        self._inner = inner
        self._on_read = on_read
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._inner.read(n)
        if data:
            self._on_read(len(data))
            self.sha.update(data)
            self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
