"""The object envelope: a self-describing header, then a compressed and optionally encrypted body.

Byte layout and the reasoning behind it are in docs/format.md ("Object envelope"). In short:

    header = magic "CBM\\x01" | version u8 | compression u8 | encryption u8 | key scheme u8
             | chunk size u32 | key id 8 | nonce prefix 7 | wrapped key length u16 | wrapped key
    body   = the compressed stream, as is (encryption 0), or cut into chunk-size pieces each
             sealed with AES-256-GCM under a per-object data key (encryption 1, STREAM nonces)

Decoding reads everything it needs from the header, never from current settings. Encrypted
chunks are authenticated before any of their bytes are released, the last chunk carries a
"final" flag so truncation is detected, and the object's name is bound into every tag.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from cloudbm.codec.compression import (
    ALGORITHMS,
    Decompressor,
    check_level,
    compress_bytes,
    compressor,
    decompress_bytes,
    decompressor,
)
from cloudbm.codec.keys import KEY_ID_SIZE, SCHEME_NAMES, Keyring, KeyWrapper
from cloudbm.errors import ConfigError, DecryptionError, IntegrityError, WrongKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CBM\x01"
VERSION = 1
ENCRYPTION_NONE = 0
ENCRYPTION_AES256GCM = 1
SCHEME_NONE = 0

_FIXED = struct.Struct(">4sBBBBI8s7sH")  # everything up to and including the wrapped-key length
FIXED_HEADER_SIZE = _FIXED.size  # 29
MAX_HEADER_SIZE = FIXED_HEADER_SIZE + 0xFFFF
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
DATA_KEY_SIZE = 32
MAX_CHUNK_SIZE = 64 << 20  # bounds what a corrupt header can make a reader allocate
DEFAULT_CHUNK_SIZE = 1 << 20
READ_SIZE = 1 << 20  # how much plaintext/ciphertext to pull from a source at a time
_MAX_CHUNKS = 1 << 32  # the nonce counter is a u32

COMPRESSION_IDS = {"none": 0, "zstd": 1, "lz4": 2, "gzip": 3}
_COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_IDS.items()}
assert set(COMPRESSION_IDS) == set(ALGORITHMS)


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class EncodeParams:
    """How to write new objects (reading never looks at these)."""

    compression: str = "zstd"
    level: int | None = None
    key: KeyWrapper | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # zstd worker threads for streamed objects (0: the calling thread). Not part of the
    # format: a multi-threaded encoder writes an ordinary frame.
    threads: int = 0

    def __post_init__(self) -> None:
        check_level(self.compression, self.level)
        if self.threads < 0:
            raise ConfigError("compression threads cannot be negative")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")


@dataclass(frozen=True)
class Header:
    """A parsed envelope header; `raw` holds its exact bytes (they are authenticated)."""

    version: int
    compression: str
    encryption: int
    key_scheme: int
    key_id: bytes
    chunk_size: int
    wrapped_key: bytes
    nonce_prefix: bytes
    raw: bytes

    @property
    def encrypted(self) -> bool:
        return self.encryption != ENCRYPTION_NONE

    @property
    def size(self) -> int:
        return len(self.raw)


# --- header -------------------------------------------------------------------------------


def _name_bytes(name: str) -> bytes:
    data = name.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ConfigError(f"object name is too long ({len(data)} bytes, at most 65535)")
    return len(data).to_bytes(2, "big") + data


def _wrap_aad(fixed: bytes, name: str) -> bytes:
    # The wrapped key cannot authenticate itself, so the data key's wrapping covers the header
    # up to (not including) the wrapped-key length; the chunks then cover the whole header.
    return hashlib.sha256(fixed[: FIXED_HEADER_SIZE - 2] + _name_bytes(name)).digest()


def _chunk_aad(raw: bytes, name: str) -> bytes:
    return hashlib.sha256(raw + _name_bytes(name)).digest()


def _newer(what: str, value: int, name: str | None) -> IntegrityError:
    where = f"object {name}" if name else "the object"
    return IntegrityError(
        f"{where} uses unknown {what} {value}",
        hint="was it written by a newer cloudbm? upgrade cloudbm to read it",
    )


def _header_length(prefix: bytes, name: str | None = None) -> int:
    """Total header size, from the first FIXED_HEADER_SIZE bytes (magic checked)."""
    magic = prefix[:4]
    if magic != MAGIC[: len(magic)]:
        where = f"object {name} is" if name else "this is"
        raise IntegrityError(f"{where} not a cloudbm object (bad magic {magic.hex()})")
    if len(prefix) < FIXED_HEADER_SIZE:
        where = f"object {name}" if name else "the object"
        raise IntegrityError(f"{where} is truncated inside its header ({len(prefix)} bytes)")
    return FIXED_HEADER_SIZE + int.from_bytes(prefix[FIXED_HEADER_SIZE - 2 : FIXED_HEADER_SIZE])


def read_header(prefix_bytes: bytes | bytearray | memoryview, *, name: str | None = None) -> Header:
    """Parse the header at the start of `prefix_bytes` (the body may follow; it is ignored).

    IntegrityError for a foreign object ("not a cloudbm object"), a truncated header, or ids this
    version does not know. Nothing is authenticated here: decoding does that.
    """
    prefix = bytes(prefix_bytes[:MAX_HEADER_SIZE])
    total = _header_length(prefix, name)
    (_, version, comp_id, enc, scheme, chunk_size, key_id, nonce_prefix, wlen) = _FIXED.unpack(
        prefix[:FIXED_HEADER_SIZE]
    )
    if version != VERSION:
        raise _newer("format version", version, name)
    if comp_id not in _COMPRESSION_NAMES:
        raise _newer("compression id", comp_id, name)
    if len(prefix) < total:
        raise IntegrityError(f"truncated header ({len(prefix)} of {total} bytes)")
    if enc == ENCRYPTION_NONE:
        if scheme or chunk_size or wlen or any(key_id) or any(nonce_prefix):
            raise IntegrityError("corrupt header: key fields set on an unencrypted object")
    elif enc == ENCRYPTION_AES256GCM:
        if scheme not in SCHEME_NAMES:
            raise _newer("key scheme", scheme, name)
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"corrupt header: chunk size {chunk_size} out of range")
    else:
        raise _newer("encryption id", enc, name)
    return Header(
        version=version,
        compression=_COMPRESSION_NAMES[comp_id],
        encryption=enc,
        key_scheme=scheme,
        key_id=key_id,
        chunk_size=chunk_size,
        wrapped_key=prefix[FIXED_HEADER_SIZE:total],
        nonce_prefix=nonce_prefix,
        raw=prefix[:total],
    )


# --- chunk cipher ---------------------------------------------------------------------------


class _Stream:
    """STREAM construction: nonce = prefix (7) || chunk counter (u32 BE) || final flag (u8)."""

    def __init__(self, data_key: bytes, prefix: bytes, aad: bytes, name: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead: AESGCM = AESGCM(data_key)
        self._prefix = prefix
        self._aad = aad
        self._name = name
        self.index = 0

    def _nonce(self, final: bool) -> bytes:
        if self.index >= _MAX_CHUNKS:
            raise IntegrityError(f"object {self._name} has more than 2**32 chunks")
        return self._prefix + struct.pack(">IB", self.index, final)

    def seal(self, chunk: bytes | memoryview, final: bool) -> bytes:
        out = self._aead.encrypt(self._nonce(final), chunk, self._aad)
        self.index += 1
        return out

    def open(self, chunk: bytes | memoryview, final: bool) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            out = self._aead.decrypt(self._nonce(final), chunk, self._aad)
        except InvalidTag:
            raise DecryptionError(
                f"object {self._name}: chunk {self.index} failed authentication "
                "(tampered, truncated, reordered, or stored under another name)"
            ) from None
        self.index += 1
        return out


def _build_header(params: EncodeParams, name: str) -> tuple[bytes, _Stream | None]:
    """The header bytes, and the chunk cipher when the object is encrypted."""
    comp_id = COMPRESSION_IDS[params.compression]
    key = params.key
    if key is None:
        fixed = _FIXED.pack(MAGIC, VERSION, comp_id, 0, 0, 0, bytes(8), bytes(7), 0)
        return fixed, None
    key_id = bytes(key.key_id)
    if len(key_id) != KEY_ID_SIZE:
        raise ConfigError(f"key id must be {KEY_ID_SIZE} bytes")
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    fixed = _FIXED.pack(
        MAGIC, VERSION, comp_id, ENCRYPTION_AES256GCM, key.scheme, params.chunk_size,
        key_id, prefix, 0,
    )  # fmt: skip
    data_key = os.urandom(DATA_KEY_SIZE)
    wrapped = key.wrap(data_key, _wrap_aad(fixed, name))
    if len(wrapped) > 0xFFFF:
        raise ConfigError("wrapped key is too long")
    raw = fixed[:-2] + len(wrapped).to_bytes(2, "big") + wrapped
    return raw, _Stream(data_key, prefix, _chunk_aad(raw, name), name)


def _open_stream(header: Header, name: str, keyring: Keyring | None) -> _Stream:
    kind = SCHEME_NAMES.get(header.key_scheme, str(header.key_scheme))
    if keyring is None:
        raise WrongKeyError(
            f"object {name} is encrypted ({kind} key id {header.key_id.hex()}); "
            "configure its key to read it"
        )
    unwrapper = keyring.find(header.key_id, header.key_scheme)
    try:
        data_key = unwrapper.unwrap(header.wrapped_key, _wrap_aad(header.raw, name))
    except DecryptionError as exc:
        raise DecryptionError(f"object {name}: {exc.message}", hint=exc.hint) from None
    if len(data_key) != DATA_KEY_SIZE:
        raise DecryptionError(f"object {name}: the unwrapped data key has the wrong size")
    return _Stream(data_key, header.nonce_prefix, _chunk_aad(header.raw, name), name)


# --- whole buffers ------------------------------------------------------------------------


def encode_bytes(data: bytes, *, name: str, params: EncodeParams) -> bytes:
    """Encode a whole buffer (the WAL fast path): header + compressed (+ sealed) body."""
    header, stream = _build_header(params, name)
    body = compress_bytes(params.compression, data, params.level)
    if stream is None:
        return header + body
    size = params.chunk_size
    parts = [header]
    with memoryview(body) as view:
        full = len(body) // size
        for i in range(full):
            parts.append(stream.seal(view[i * size : (i + 1) * size], False))
        # The final chunk holds 0..size-1 bytes: it always exists, so losing it is detected.
        parts.append(stream.seal(view[full * size :], True))
    return b"".join(parts)


def decode_bytes(
    blob: bytes, *, name: str, keyring: Keyring | None, expected_sha256: str | None = None
) -> bytes:
    """Decode a whole encoded object; errors as for DecodingReader."""
    header = read_header(blob, name=name)
    with memoryview(blob) as view:
        body = view[header.size :]
        if header.encrypted:
            stream = _open_stream(header, name, keyring)
            sealed = header.chunk_size + TAG_SIZE
            full, rest = divmod(len(body), sealed)
            if rest < TAG_SIZE:
                raise DecryptionError(f"object {name} is truncated (its final chunk is missing)")
            parts = [stream.open(body[i * sealed : (i + 1) * sealed], False) for i in range(full)]
            parts.append(stream.open(body[full * sealed :], True))
            compressed = b"".join(parts)
        else:
            compressed = bytes(body)
    try:
        data = decompress_bytes(header.compression, compressed)
    except IntegrityError as exc:
        raise IntegrityError(f"object {name}: {exc.message}") from None
    if expected_sha256 is not None:
        _check_sha256(name, hashlib.sha256(data).hexdigest(), expected_sha256)
    return data


def _check_sha256(name: str, actual: str, expected: str) -> None:
    if actual != expected.lower():
        raise IntegrityError(
            f"object {name}: plaintext SHA-256 {actual} does not match the expected {expected}"
        )


# --- streams ------------------------------------------------------------------------------


def _read_exactly(source: _Readable, n: int) -> bytes:
    """Read up to `n` bytes, looping over short reads; fewer only at end of stream."""
    data = source.read(n)
    if data is None:
        raise IntegrityError("source stream returned no data (non-blocking read?)")
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = source.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _OutBuffer:
    """Bytes produced but not yet read, kept as the pieces they were produced in.

    A read that lines up with a piece returns it without copying; others copy only what they
    return, so a stream costs O(total) however the caller sizes its reads.
    """

    def __init__(self) -> None:
        self._parts: deque[bytes] = deque()
        self._off = 0  # bytes of _parts[0] already returned
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._len += len(data)

    def take(self, n: int) -> bytes:
        n = self._len if n < 0 else min(n, self._len)
        out: list[bytes] = []
        need = n
        while need:
            head, off = self._parts[0], self._off
            avail = len(head) - off
            if avail <= need:
                out.append(head[off:] if off else head)
                self._parts.popleft()
                self._off = 0
                need -= avail
            else:
                out.append(head[off : off + need])
                self._off += need
                need = 0
        self._len -= n
        return out[0] if len(out) == 1 else b"".join(out)


class _ReaderBase(io.BufferedIOBase):
    """A read-only, non-seekable binary stream (shutil, tarfile, boto3 all accept it).

    Closing it closes the source too unless `close_source=False` was given.
    """

    _out: _OutBuffer
    _eof: bool
    _source: _Readable
    _close_source: bool

    def _fill(self, n: int) -> None:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1, /) -> bytes:
        """`n` bytes (all when n is negative or None); fewer only at the end, then b""."""
        if self.closed:
            raise ValueError("read from a closed stream")
        if n is None or n < 0:
            while not self._eof:
                self._fill(READ_SIZE)
            return self._out.take(-1)
        if len(self._out) < n and not self._eof:
            self._fill(n)
        return self._out.take(n)

    def read1(self, n: int = -1, /) -> bytes:
        return self.read(READ_SIZE if n < 0 else n)

    def readinto(self, buffer: Any, /) -> int:
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self.read(len(target))
            target[: len(data)] = data
        return len(data)

    def readinto1(self, buffer: Any, /) -> int:
        return self.readinto(buffer)

    def close(self) -> None:
        if not self.closed and self._close_source:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        super().close()


class _NoHash:
    def update(self, data: bytes) -> None:
        pass

    def hexdigest(self) -> str:
        raise RuntimeError("this EncodingReader was told not to hash its plaintext")


class EncodingReader(_ReaderBase):
    """Reads plaintext from `source` and serves the encoded object, produced on demand.

    Memory stays around a few chunks whatever the object size. After EOF: `plaintext_size`,
    `plaintext_sha256` (hex) and `encoded_size` describe what went through.
    """

    def __init__(
        self,
        source: BinaryIO | _Readable,
        *,
        name: str,
        params: EncodeParams,
        close_source: bool = True,
        hash_plaintext: bool = True,
    ) -> None:
        super().__init__()
        self._source = source
        self._close_source = close_source
        self._params = params
        header, self._stream = _build_header(params, name)
        self._comp = compressor(params.compression, params.level, threads=params.threads)
        # Callers that hash the content themselves (backup parts hash each file) skip this.
        self._sha: hashlib._Hash | _NoHash = hashlib.sha256() if hash_plaintext else _NoHash()
        self._out = _OutBuffer()
        self._out.append(header)
        self._pending = bytearray()  # compressed bytes waiting to fill a chunk
        self._eof = False
        self.plaintext_size = 0
        self.encoded_size = len(header)

    @property
    def plaintext_sha256(self) -> str:
        if not self._eof:
            raise RuntimeError("plaintext_sha256 is known only after the whole object was read")
        return self._sha.hexdigest()

    def _emit(self, data: bytes) -> None:
        if data:
            self.encoded_size += len(data)
            self._out.append(data)

    def _fill(self, n: int) -> None:
        while len(self._out) < n and not self._eof:
            data = self._source.read(READ_SIZE)
            if data:
                self._sha.update(data)
                self.plaintext_size += len(data)
                self._body(self._comp.compress(data), final=False)
            else:
                self._body(self._comp.flush(), final=True)
                self._eof = True

    def _body(self, compressed: bytes, *, final: bool) -> None:
        stream = self._stream
        if stream is None:
            self._emit(compressed)
            return
        size = self._params.chunk_size
        pending = self._pending
        pending += compressed
        if len(pending) < size and not final:
            return
        full = len(pending) // size
        with memoryview(pending) as view:
            for i in range(full):
                self._emit(stream.seal(view[i * size : (i + 1) * size], False))
            if final:
                # The final chunk holds 0..size-1 bytes, so it always exists.
                self._emit(stream.seal(view[full * size :], True))
        if final:
            pending.clear()
        else:  # bytearray drops a prefix in O(1) (it moves its start): no tail copy
            del pending[: full * size]


class DecodingReader(_ReaderBase):
    """Reads an encoded object from `source` and serves its plaintext.

    Everything comes from the object's header. Each encrypted chunk is authenticated before
    any of its bytes are returned; a missing final chunk, trailing bytes, a swapped name or the
    wrong key raise (DecryptionError / WrongKeyError). With `expected_sha256`, a mismatch at the
    end raises IntegrityError instead of returning the last bytes. After EOF: `plaintext_size`
    and `plaintext_sha256` (hex).
    """

    def __init__(
        self,
        source: BinaryIO | _Readable,
        *,
        name: str,
        keyring: Keyring | None,
        expected_sha256: str | None = None,
        close_source: bool = True,
        hash_plaintext: bool = True,
    ) -> None:
        super().__init__()
        self._source = source
        self._close_source = close_source
        self._name = name
        self._expected = expected_sha256
        if expected_sha256 is not None and not hash_plaintext:
            raise ValueError("expected_sha256 needs the plaintext hashed")
        prefix = _read_exactly(source, FIXED_HEADER_SIZE)
        total = _header_length(prefix, name)
        rest = _read_exactly(source, total - FIXED_HEADER_SIZE)
        self.header = read_header(prefix + rest, name=name)
        self._stream = _open_stream(self.header, name, keyring) if self.header.encrypted else None
        self._dec: Decompressor = decompressor(self.header.compression)
        # Callers that verify every file of a tar part themselves (restore) skip this.
        self._sha: hashlib._Hash | _NoHash = hashlib.sha256() if hash_plaintext else _NoHash()
        self._out = _OutBuffer()
        self._eof = False
        self._body_done = False
        self.plaintext_size = 0

    @property
    def plaintext_sha256(self) -> str:
        if not self._eof:
            raise RuntimeError("plaintext_sha256 is known only after the whole object was read")
        return self._sha.hexdigest()

    def _next_body(self) -> bytes | None:
        """The next piece of authenticated compressed stream; None after the last one."""
        if self._body_done:
            return None
        stream = self._stream
        if stream is None:
            data = self._source.read(READ_SIZE)
            if not data:
                self._body_done = True
                return None
            return data
        sealed = self.header.chunk_size + TAG_SIZE
        chunk = _read_exactly(self._source, sealed)
        if len(chunk) == sealed:
            return stream.open(chunk, False)
        # A short chunk must be the final one, and the source must end right after it (it
        # does: _read_exactly only stops short at end of stream).
        if len(chunk) < TAG_SIZE:
            raise DecryptionError(
                f"object {self._name} is truncated: its final chunk is missing"
                + (" or cut short" if chunk else "")
            )
        self._body_done = True
        return stream.open(chunk, True)

    def _deliver(self, piece: bytes) -> None:
        if piece:
            self._sha.update(piece)
            self.plaintext_size += len(piece)
            self._out.append(piece)

    def _fill(self, n: int) -> None:
        while len(self._out) < n and not self._eof:
            want = n - len(self._out)
            if not self._dec.needs_input:  # drain what the decompressor holds before feeding
                piece = self._decompress(b"", want)
                if piece:
                    self._deliver(piece)
                    continue
            compressed = self._next_body()
            if compressed is None:
                self._deliver(self._decompress(None, -1))
                self._finish()
            else:
                self._deliver(self._decompress(compressed, want))

    def _decompress(self, data: bytes | None, want: int) -> bytes:
        """Decompress (None: end of input), naming the object in any error."""
        try:
            return self._dec.flush() if data is None else self._dec.decompress(data, want)
        except IntegrityError as exc:
            raise IntegrityError(f"object {self._name}: {exc.message}") from None

    def _finish(self) -> None:
        if self._expected is not None:
            actual = self._sha.hexdigest()
            if actual != self._expected.lower():
                self._out = _OutBuffer()  # withhold the tail that failed verification
                _check_sha256(self._name, actual, self._expected)
        self._eof = True


def is_encoded(prefix: bytes) -> bool:
    """True if `prefix` starts like a cloudbm object (a cheap sniff for diagnose/verify)."""
    return bytes(prefix[:4]) == MAGIC
