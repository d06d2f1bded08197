"""HashingReader: the digest and size cover exactly the bytes read."""

from __future__ import annotations

import hashlib
import io

from cloudbm.codec.hashing import HashingReader


def test_the_digest_and_size_cover_every_byte_read_in_any_chunking() -> None:
    data = bytes(range(256)) * 1000
    reader = HashingReader(io.BytesIO(data))
    while reader.read(777):
        pass
    assert reader.size == len(data)
    assert reader.sha.hexdigest() == hashlib.sha256(data).hexdigest()


def test_each_chunk_is_reported_and_close_reaches_the_inner_stream() -> None:
    seen: list[int] = []
    inner = io.BytesIO(b"x" * 10)
    reader = HashingReader(inner, seen.append)
    assert reader.read(4) == b"xxxx"
    assert reader.read() == b"x" * 6
    assert reader.read() == b""
    assert seen == [4, 6]
    reader.close()
    assert inner.closed
