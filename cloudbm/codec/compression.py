"""Compression algorithms as streaming byte layers, plus whole-buffer fast paths.

Every codec module is imported lazily, inside the function that needs it: `wal-push` runs once
per WAL segment and must not pay for algorithms it does not use.

Decompressors produce bounded output (`max_length`) so a highly compressible object (a
relation file full of zero pages compresses ~30000:1 with zstd) never balloons memory, and they
report a truncated or corrupt stream as IntegrityError at `flush()`, and trailing data after the
end of the compressed stream as IntegrityError as soon as it is seen.
"""

from __future__ import annotations

from typing import Any, Protocol

from cloudbm.errors import ConfigError, IntegrityError

ALGORITHMS = ("none", "zstd", "lz4", "gzip")

# Level ranges accepted per algorithm, and the default when the level is None.
_LEVELS: dict[str, tuple[int, int, int]] = {
    # name: (minimum, maximum, default)
    # zstd 1, not the library's 3: on PostgreSQL heap and index pages it is both faster
    # and smaller (docs/backup.md, "Compression level").
    "zstd": (-7, 22, 1),
    "lz4": (0, 16, 0),
    "gzip": (0, 9, 6),
}

_GZIP_WBITS = 31  # zlib with a gzip header and CRC32 trailer
_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_BLOCK_MAX = 128 * 1024


class Compressor(Protocol):
    """A streaming compressor: feed `compress()` repeatedly, then `flush()` exactly once."""

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Decompressor(Protocol):
    """A streaming decompressor with bounded output.

    `decompress(data, max_length)` returns at most `max_length` bytes (all available when
    negative); while `needs_input` is False more output is buffered, and callers fetch it with
    `decompress(b"", max_length)`. `flush()` marks the end of input: it returns what is left and
    raises IntegrityError if the stream was incomplete. `eof` is True once the stream's end
    marker has been read.
    """

    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...

    def flush(self) -> bytes: ...


def check_algorithm(name: str) -> str:
    """Return `name` if it is a known algorithm, else raise ConfigError listing the valid ones."""
    if name not in ALGORITHMS:
        allowed = ", ".join(ALGORITHMS)
        raise ConfigError(f"unknown compression {name!r}; allowed values: {allowed}")
    return name


def check_level(name: str, level: int | None) -> int:
    """The effective level for `name` (its default when None); ConfigError if out of range."""
    check_algorithm(name)
    if name == "none":
        return 0  # a level set for another algorithm is harmless here: ignore it
    low, high, default = _LEVELS[name]
    if level is None:
        return default
    if not low <= level <= high:
        raise ConfigError(f"{name} compression level must be between {low} and {high}, not {level}")
    return level


# --- compressors ----------------------------------------------------------------------------


class _NoCompressor:
    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


class _Lz4Compressor:
    def __init__(self, level: int) -> None:
        import lz4.frame

        self._c = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
        self._started = False

    def compress(self, data: bytes) -> bytes:
        head = b""
        if not self._started:
            head = self._c.begin()
            self._started = True
        out: bytes = self._c.compress(data)
        return head + out if head else out

    def flush(self) -> bytes:
        head = b"" if self._started else self._c.begin()
        self._started = True
        out: bytes = self._c.flush()
        return head + out


def compressor(name: str, level: int | None = None, *, threads: int = 0) -> Compressor:
    """A streaming compressor for `name` (one of ALGORITHMS) at `level` (None: the default).

    `threads` > 0 gives zstd that many worker threads: one large relation file (PostgreSQL
    writes 1 GiB segment files) is a single tar member, so without them the part holding it
    compresses on one core while the others wait."""
    lvl = check_level(name, level)
    if name == "zstd":
        import zstandard

        # A content checksum makes unencrypted objects self-verifying.
        cctx = zstandard.ZstdCompressor(level=lvl, write_checksum=True, threads=threads)
        zobj: Compressor = cctx.compressobj()
        return zobj
    if name == "lz4":
        return _Lz4Compressor(lvl)
    if name == "gzip":
        import zlib

        gobj: Compressor = zlib.compressobj(lvl, zlib.DEFLATED, _GZIP_WBITS)
        return gobj
    return _NoCompressor()


# --- decompressors --------------------------------------------------------------------------


def _corrupt(algorithm: str, exc: BaseException | str) -> IntegrityError:
    return IntegrityError(f"corrupt {algorithm} stream: {exc}")


def _trailing(algorithm: str) -> IntegrityError:
    return IntegrityError(f"unexpected data after the end of the {algorithm} stream")


def _truncated(algorithm: str) -> IntegrityError:
    return IntegrityError(f"truncated {algorithm} stream: it ends before its end marker")


class _NoDecompressor:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def needs_input(self) -> bool:
        return not self._buf

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if not self._buf and (max_length < 0 or len(data) <= max_length):
            return bytes(data)  # common case: no copy into the buffer
        self._buf += data
        n = len(self._buf) if max_length < 0 else max_length
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def flush(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        self._eof = True
        return out


class _GzipDecompressor:
    def __init__(self) -> None:
        import zlib

        self._zlib = zlib
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self._tail = b""  # input zlib has not consumed yet (its unconsumed_tail)

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def needs_input(self) -> bool:
        return not self._tail

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self._tail:
            data = self._tail + data
            self._tail = b""
        if self._d.eof:
            if data:
                raise _trailing("gzip")
            return b""
        if max_length == 0:  # zlib reads 0 as "unlimited"
            self._tail = bytes(data)
            return b""
        try:
            out = self._d.decompress(data, max(max_length, 0))
        except self._zlib.error as exc:
            raise _corrupt("gzip", exc) from exc
        if self._d.unused_data:
            raise _trailing("gzip")
        self._tail = self._d.unconsumed_tail
        return out

    def flush(self) -> bytes:
        out = self.decompress(b"") if self._tail else b""
        try:
            out += self._d.flush()
        except self._zlib.error as exc:
            raise _corrupt("gzip", exc) from exc
        if not self._d.eof:
            raise _truncated("gzip")
        if self._d.unused_data:
            raise _trailing("gzip")
        return out


class _Lz4Decompressor:
    def __init__(self) -> None:
        import lz4.frame

        self._d = lz4.frame.LZ4FrameDecompressor()

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def needs_input(self) -> bool:
        # python-lz4 leaves needs_input False after the end of the frame, with nothing buffered.
        return bool(self._d.needs_input) or bool(self._d.eof)

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self._d.eof:
            if data:
                raise _trailing("lz4")
            return b""
        try:
            out: bytes = self._d.decompress(data, max_length)
        except RuntimeError as exc:  # python-lz4 reports every LZ4F error as RuntimeError
            raise _corrupt("lz4", exc) from exc
        if self._d.unused_data:
            raise _trailing("lz4")
        return out

    def flush(self) -> bytes:
        out = b"" if self._d.needs_input or self._d.eof else self.decompress(b"")
        if not self._d.eof:
            raise _truncated("lz4")
        return out


class _ZstdDecompressor:
    """zstd with bounded output and exact end-of-frame detection.

    zstandard's decompressobj has no max_length and its stream_reader silently accepts a
    truncated frame, so we walk the frame's own structure (a header, then blocks that each
    announce their size and decode to at most 128 KiB, then an optional checksum). Each call
    hands zstd as many whole blocks as `max_length` has room for, in one piece, and returns
    zstd's output as it is: the walk costs one small parse per block, never per byte, and the
    output is not copied again.
    """

    _HEADER, _BLOCK, _CHECKSUM, _DONE = range(4)

    def __init__(self) -> None:
        import zstandard

        self._zstd = zstandard
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._in = bytearray()  # input not yet handed to zstd
        self._pos = 0  # read offset into self._in
        self._spill = b""  # decoded bytes beyond a small max_length, returned next
        self._state = self._HEADER
        self._todo = 0  # bytes of the current frame element still to hand to zstd
        self._has_checksum = False

    @property
    def eof(self) -> bool:
        return self._state == self._DONE and self._todo == 0

    @property
    def needs_input(self) -> bool:
        return not self._spill and (self._pos >= len(self._in) or self._waiting(self._pos))

    def _waiting(self, pos: int) -> bool:
        """True when the buffered input from `pos` is too short to take the next step."""
        avail = len(self._in) - pos
        if self._todo:
            return False
        if self._state == self._HEADER:
            return avail < 6 or avail < self._header_size(pos)
        if self._state == self._BLOCK:
            return avail < 3
        return avail == 0 or self._state == self._DONE

    def _header_size(self, pos: int) -> int:
        fhd = self._in[pos + 4]
        single_segment = (fhd >> 5) & 1
        fcs_size = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
        return 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + fcs_size

    def _plan(self, blocks: int) -> int:
        """Walk element headers from self._pos, taking at most `blocks` blocks (each decodes
        to at most 128 KiB); returns where the input to hand zstd ends. Raises on a corrupt
        structure; stops early when the input runs out mid-element."""
        buf = self._in
        end = self._pos
        size = len(buf)
        while True:
            if self._todo:
                n = min(self._todo, size - end)
                end += n
                self._todo -= n
                if self._todo:
                    return end  # the element continues in input not received yet
                continue
            avail = size - end
            if self._state == self._DONE:
                if avail:
                    raise _trailing("zstd")
                return end
            if self._state == self._HEADER:
                if avail < 4:
                    return end
                if int.from_bytes(buf[end : end + 4], "little") != _ZSTD_MAGIC:
                    raise _corrupt("zstd", "bad frame magic")
                if avail < 6 or avail < self._header_size(end):
                    return end
                fhd = buf[end + 4]
                if fhd & 0x08:
                    raise _corrupt("zstd", "reserved frame header bit set")
                self._has_checksum = bool(fhd & 0x04)
                self._todo = self._header_size(end)
                self._state = self._BLOCK
                continue
            if self._state == self._BLOCK:
                if blocks <= 0 or avail < 3:
                    return end
                head = int.from_bytes(buf[end : end + 3], "little")
                kind, block = (head >> 1) & 3, head >> 3
                if kind == 3 or block > _ZSTD_BLOCK_MAX:
                    raise _corrupt("zstd", "invalid block header")
                self._todo = 3 + (1 if kind == 1 else block)  # an RLE block stores one byte
                blocks -= 1
                if head & 1:
                    self._state = self._CHECKSUM if self._has_checksum else self._DONE
                continue
            # _CHECKSUM
            self._todo = 4
            self._state = self._DONE

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if data:
            if self._pos:
                del self._in[: self._pos]  # O(1): bytearray drops a prefix by moving its start
                self._pos = 0
            self._in += data
        out, self._spill = self._spill, b""
        if 0 <= max_length <= len(out):
            return self._cut(out, max_length)
        room = -1 if max_length < 0 else max_length - len(out)
        blocks = (1 << 62) if room < 0 else max(1, room // _ZSTD_BLOCK_MAX)
        end = self._plan(blocks)
        if end > self._pos:
            # A released memoryview: self._in must stay resizable.
            with memoryview(self._in) as view, view[self._pos : end] as piece:
                try:
                    produced: bytes = self._d.decompress(piece)
                except self._zstd.ZstdError as exc:
                    raise _corrupt("zstd", exc) from exc
            self._pos = end
            out = produced if not out else out + produced
        if self._pos >= len(self._in) and self._state == self._DONE and not self._todo:
            self._in.clear()
            self._pos = 0
        return self._cut(out, max_length)

    def _cut(self, out: bytes, max_length: int) -> bytes:
        """`out` up to max_length; the rest is kept for the next call."""
        if 0 <= max_length < len(out):
            self._spill = out[max_length:]
            return out[:max_length]
        return out

    def flush(self) -> bytes:
        parts = []
        while True:
            piece = self.decompress(b"")
            if not piece:
                break
            parts.append(piece)
        if not self.eof:
            raise _truncated("zstd")
        return b"".join(parts)


def decompressor(name: str) -> Decompressor:
    """A streaming decompressor for `name` (one of ALGORITHMS)."""
    check_algorithm(name)
    if name == "zstd":
        return _ZstdDecompressor()
    if name == "lz4":
        return _Lz4Decompressor()
    if name == "gzip":
        return _GzipDecompressor()
    return _NoDecompressor()


# --- whole buffers --------------------------------------------------------------------------


def compress_bytes(name: str, data: bytes, level: int | None = None) -> bytes:
    """Compress a whole buffer in one call (a WAL segment is read whole)."""
    lvl = check_level(name, level)
    if name == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=lvl, write_checksum=True, threads=0)
        return cctx.compress(data)
    if name == "lz4":
        import lz4.frame

        return lz4.frame.compress(  # type: ignore[no-any-return]
            data, compression_level=lvl, content_checksum=True, store_size=True
        )
    if name == "gzip":
        import zlib

        c = zlib.compressobj(lvl, zlib.DEFLATED, _GZIP_WBITS)
        return c.compress(data) + c.flush()
    return bytes(data)


def decompress_bytes(name: str, data: bytes) -> bytes:
    """Decompress a whole buffer, insisting on one complete stream and nothing after it."""
    check_algorithm(name)
    if name == "zstd":
        import zstandard

        # decompressobj copes with frames that do not record their content size (streamed
        # ones) and tells us whether the frame ended.
        d: Any = zstandard.ZstdDecompressor().decompressobj()
        try:
            out: bytes = d.decompress(data)
        except zstandard.ZstdError as exc:
            raise _corrupt("zstd", exc) from exc
        if not d.eof:
            raise _truncated("zstd")
        if d.unused_data:
            raise _trailing("zstd")
        return out
    if name == "none":
        return bytes(data)
    dec = decompressor(name)
    out = dec.decompress(data)
    return out + dec.flush()
