"""Byte streams the backends share: the caller's stream on its way up, a download on its way
down. Standard library only: no SDK is imported here.

Up: `Prepended` is the bytes a put already read (to learn whether the object is small)
followed by the rest of the caller's stream; `guarded` marks the stream's own errors for
reads made inside SDK code or an edge, which must hand them back to the caller unmapped (see
`edge.SourceError`).

Down: `ChunkReader` is an ObjectReader over a download that arrives in chunks of its own
size, re-blocked to the sizes the caller asks for.

(`base.read_upto`, which fills a read from a stream that may return short reads, lives in
base: the file backend's path, one process per WAL segment, loads base and not this module.)
"""

from __future__ import annotations

from collections.abc import Callable

from cloudbm.storage.base import Closing, MiB, ObjectInfo, read_upto
from cloudbm.storage.edge import SourceError

Read = Callable[[int], bytes]


def guarded(read: Read) -> Read:
    """`read` whose exceptions surface as SourceError: the caller's stream read where an edge
    maps exceptions (or SDK code might catch them)."""

    def read_source(size: int) -> bytes:
        try:
            return read(size)
        except Exception as exc:
            raise SourceError(exc) from exc

    return read_source


class Prepended:
    """`head` (bytes a put has read already), then what `read` gives (the rest of the caller's
    stream; None when `head` is the whole object). Reads fill: fewer bytes only at the end."""

    def __init__(self, head: bytes, read: Read | None) -> None:
        self._head = memoryview(head)
        self._read = read

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes (all that is left when negative or None)."""
        if size is None or size < 0:
            parts = [self._take(len(self._head))]
            while self._read is not None and (chunk := self._read(MiB)):
                parts.append(chunk)
            return b"".join(parts)
        data = self._take(size)
        if len(data) == size or self._read is None:
            return data
        rest = read_upto(self._read, size - len(data))
        return data + rest if data else rest

    def _take(self, size: int) -> bytes:
        taken = bytes(self._head[:size])
        self._head = self._head[len(taken) :]
        return taken


class ChunkReader(Closing):
    """ObjectReader over a download that arrives in chunks of its own size (`_next_chunk`),
    re-blocked to the sizes the caller asks for."""

    def __init__(self, info: ObjectInfo) -> None:
        self.info = info
        self._buf = b""
        self._off = 0

    def _next_chunk(self) -> bytes | None:
        """The next chunk of the download; None after the last."""
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        whole = size is None or size < 0
        available = len(self._buf) - self._off
        if not whole and size <= available:
            out = self._buf[self._off : self._off + size]
            self._off += size
            return out
        parts = bytearray(memoryview(self._buf)[self._off :])
        self._buf, self._off = b"", 0
        while whole or len(parts) < size:
            chunk = self._next_chunk()
            if chunk is None:
                break
            take = len(chunk) if whole else min(size - len(parts), len(chunk))
            parts += memoryview(chunk)[:take]
            self._buf, self._off = chunk, take
        return bytes(parts)

    def close(self) -> None:
        self._buf, self._off = b"", 0
