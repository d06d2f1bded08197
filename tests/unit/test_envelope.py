"""The object envelope and the compression layer: round trips and every way to break an object."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudbm.codec import compression as C
from cloudbm.codec import envelope as E
from cloudbm.codec.keys import Keyring, SymmetricKey, X25519PrivateKey
from cloudbm.errors import ConfigError, DecryptionError, IntegrityError, WrongKeyError

SYM = SymmetricKey(bytes(range(32)))
OTHER_SYM = SymmetricKey(bytes(range(1, 33)))
PRIV = X25519PrivateKey(hashlib.sha256(b"test private key").digest())
KEYS = {
    "plain": (None, None),
    "symmetric": (SYM, Keyring([SYM])),
    "x25519": (PRIV.public(), Keyring([PRIV])),
}
BOUNDED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Arbitrary bytes, plus compressible data so compressed streams span several chunks.
payloads = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(1, 400)),
)
read_sizes = st.lists(st.integers(1, 2500), min_size=1, max_size=8)


def encode(data: bytes, comp: str = "zstd", mode: str = "symmetric", chunk: int = 64, **kw):
    key, _ = KEYS[mode]
    params = E.EncodeParams(compression=comp, key=key, chunk_size=chunk, **kw)
    return E.encode_bytes(data, name="wal/000000010000000000000001", params=params)


def drain(reader: io.BufferedIOBase, sizes=(1000,)) -> bytes:
    parts: list[bytes] = []
    for n in itertools.cycle(sizes):
        piece = reader.read(n)
        if not piece:
            return b"".join(parts)
        assert len(piece) <= n
        parts.append(piece)
    raise AssertionError("unreachable")


def decode_stream(blob: bytes, name="wal/000000010000000000000001", keyring=None, **kw) -> bytes:
    return drain(E.DecodingReader(io.BytesIO(blob), name=name, keyring=keyring, **kw))


class Trickle(io.RawIOBase):
    """A source that returns short reads, like a network stream."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


# --- round trips --------------------------------------------------------------------------


@BOUNDED
@given(
    data=payloads,
    comp=st.sampled_from(C.ALGORITHMS),
    mode=st.sampled_from(sorted(KEYS)),
    chunk=st.sampled_from([7, 64, 1000]),
    enc_reads=read_sizes,
    dec_reads=read_sizes,
    trickle=st.integers(1, 5000),
)
def test_round_trip(data, comp, mode, chunk, enc_reads, dec_reads, trickle):
    key, ring = KEYS[mode]
    params = E.EncodeParams(compression=comp, key=key, chunk_size=chunk)
    name = "backups/20240101T000000/data/part-00001"
    encoder = E.EncodingReader(Trickle(data, trickle), name=name, params=params)
    blob = drain(encoder, enc_reads)
    assert encoder.plaintext_size == len(data)
    assert encoder.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert encoder.encoded_size == len(blob)
    # The streaming and whole-buffer paths produce interchangeable objects.
    assert E.decode_bytes(blob, name=name, keyring=ring) == data
    whole = E.encode_bytes(data, name=name, params=params)
    decoder = E.DecodingReader(
        Trickle(whole, trickle), name=name, keyring=ring, expected_sha256=encoder.plaintext_sha256
    )
    assert drain(decoder, dec_reads) == data
    assert decoder.plaintext_size == len(data)
    assert decoder.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert decoder.read(10) == b""


@pytest.mark.parametrize("mode", sorted(KEYS))
def test_multithreaded_zstd_writes_an_ordinary_object(mode):
    """Backups give zstd worker threads so one huge relation file uses every core; what they
    write must decode like any other object (the threads are not part of the format)."""
    key, ring = KEYS[mode]
    # several MiB of mixed data, so libzstd really splits the work into jobs
    data = b"".join(
        hashlib.sha256(str(i).encode()).hexdigest().encode() * (1 + i % 7) for i in range(60000)
    )
    name = "backups/20240101T000000/data/part-00002"
    params = E.EncodeParams(compression="zstd", key=key, chunk_size=1 << 20, threads=2)
    blob = drain(E.EncodingReader(io.BytesIO(data), name=name, params=params), (1 << 20,))
    assert E.decode_bytes(blob, name=name, keyring=ring) == data
    with pytest.raises(ConfigError):
        E.EncodeParams(threads=-1)


@pytest.mark.parametrize("mode", sorted(KEYS))
def test_header_fields(mode):
    key, _ = KEYS[mode]
    blob = encode(b"hello" * 100, comp="lz4", mode=mode, chunk=4096)
    header = E.read_header(blob)
    assert blob.startswith(header.raw)
    assert (header.version, header.compression) == (1, "lz4")
    if key is None:
        assert not header.encrypted
        assert (header.encryption, header.key_scheme, header.chunk_size) == (0, 0, 0)
        assert header.key_id == bytes(8) and header.wrapped_key == b""
        assert header.size == E.FIXED_HEADER_SIZE
    else:
        assert header.encrypted and header.encryption == 1
        assert header.key_scheme == key.scheme
        assert header.key_id == key.key_id
        assert header.chunk_size == 4096
        assert len(header.nonce_prefix) == 7
        assert header.size == E.FIXED_HEADER_SIZE + len(header.wrapped_key)


def test_empty_plaintext_has_one_final_chunk():
    blob = encode(b"", comp="none", chunk=64)
    header = E.read_header(blob)
    assert len(blob) == header.size + E.TAG_SIZE
    assert (
        E.decode_bytes(blob, name="wal/000000010000000000000001", keyring=KEYS["symmetric"][1])
        == b""
    )


def test_exact_multiple_of_chunk_size_ends_with_empty_final_chunk():
    blob = encode(b"x" * 128, comp="none", chunk=64)
    assert len(blob) == E.read_header(blob).size + 2 * (64 + 16) + 16


def test_fresh_data_key_and_nonce_per_object():
    a, b = encode(b"same"), encode(b"same")
    assert a != b
    assert E.read_header(a).nonce_prefix != E.read_header(b).nonce_prefix


# --- tampering ----------------------------------------------------------------------------


@BOUNDED
@given(data=st.binary(min_size=1, max_size=400), mode=st.sampled_from(["symmetric", "x25519"]),
       pos=st.integers(min_value=0), bit=st.integers(0, 7))  # fmt: skip
def test_any_flipped_bit_fails_before_its_chunk_is_released(data, mode, pos, bit):
    name = "wal/000000010000000000000001"
    blob = bytearray(encode(data, comp="none", mode=mode, chunk=7))
    pos %= len(blob)
    blob[pos] ^= 1 << bit
    header_size = E.read_header(encode(data, comp="none", mode=mode, chunk=7)).size
    # Plaintext of the chunks before the tampered one may be released, nothing after.
    allowed = max(0, (pos - header_size) // (7 + 16)) * 7
    released = bytearray()
    with pytest.raises(IntegrityError):
        reader = E.DecodingReader(io.BytesIO(bytes(blob)), name=name, keyring=KEYS[mode][1])
        while piece := reader.read(1):
            released += piece
    assert len(released) <= allowed
    assert data.startswith(released)
    with pytest.raises(IntegrityError):
        E.decode_bytes(bytes(blob), name=name, keyring=KEYS[mode][1])


@pytest.mark.parametrize("comp", C.ALGORITHMS)
def test_tampered_first_chunk_releases_nothing(comp):
    data = os.urandom(5000)
    blob = bytearray(encode(data, comp=comp, chunk=1000))
    blob[E.read_header(blob).size + 5] ^= 0x40
    reader = E.DecodingReader(io.BytesIO(bytes(blob)), name="wal/000000010000000000000001",
                              keyring=KEYS["symmetric"][1])  # fmt: skip
    with pytest.raises(DecryptionError, match="chunk 0 failed authentication"):
        reader.read(1)


@pytest.mark.parametrize("comp", C.ALGORITHMS)
@pytest.mark.parametrize("mode", sorted(KEYS))
def test_unencrypted_and_encrypted_tampering_caught_with_expected_sha256(comp, mode):
    data = b"pgbench row 1|2|3|" * 50 + os.urandom(50)
    digest = hashlib.sha256(data).hexdigest()
    blob = encode(data, comp=comp, mode=mode, chunk=64)
    _, ring = KEYS[mode]
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        if mode != "plain":
            with pytest.raises(IntegrityError):
                decode_stream(bytes(bad), keyring=ring, expected_sha256=digest)
            continue
        # Unauthenticated streams can have redundant encodings (an LZ4 match offset pointing at
        # an identical earlier copy): a flip may decode to the very same bytes, never to others.
        with contextlib.suppress(IntegrityError):
            assert decode_stream(bytes(bad), keyring=ring, expected_sha256=digest) == data


@pytest.mark.parametrize("comp", C.ALGORITHMS)
@pytest.mark.parametrize("mode", sorted(KEYS))
def test_truncated_at_every_position(comp, mode):
    data = b"0123456789abcdef" * 40 + os.urandom(100)
    blob = encode(data, comp=comp, mode=mode, chunk=64)
    _, ring = KEYS[mode]
    # Without a checksum to compare, only "none" without encryption cannot see its own end.
    self_delimiting = comp != "none" or mode != "plain"
    for cut in range(len(blob)):
        with pytest.raises(IntegrityError):
            decode_stream(
                blob[:cut], keyring=ring, expected_sha256=hashlib.sha256(data).hexdigest()
            )
        if self_delimiting:
            with pytest.raises(IntegrityError):
                decode_stream(blob[:cut], keyring=ring)
            with pytest.raises(IntegrityError):
                E.decode_bytes(blob[:cut], name="wal/000000010000000000000001", keyring=ring)


@pytest.mark.parametrize("comp", C.ALGORITHMS)
@pytest.mark.parametrize("mode", sorted(KEYS))
def test_trailing_garbage(comp, mode):
    blob = encode(b"abc" * 1000, comp=comp, mode=mode, chunk=64)
    _, ring = KEYS[mode]
    if comp == "none" and mode == "plain":
        pytest.skip("a raw unencrypted body has no end marker: metadata SHA-256 covers it")
    for junk in (b"\0", b"x" * 15, b"y" * 16, b"z" * 80):
        with pytest.raises(IntegrityError):
            decode_stream(blob + junk, keyring=ring)
        with pytest.raises(IntegrityError):
            E.decode_bytes(blob + junk, name="wal/000000010000000000000001", keyring=ring)


def _chunks(blob: bytes, chunk: int) -> tuple[bytes, list[bytes]]:
    size = E.read_header(blob).size
    body = blob[size:]
    step = chunk + E.TAG_SIZE
    return blob[:size], [body[i : i + step] for i in range(0, len(body), step)]


@pytest.mark.parametrize("mode", ["symmetric", "x25519"])
def test_reordered_dropped_or_duplicated_chunks(mode):
    data = os.urandom(64 * 5 + 10)
    header, chunks = _chunks(encode(data, comp="none", mode=mode, chunk=64), 64)
    assert len(chunks) == 6
    variants = [
        [chunks[1], chunks[0], *chunks[2:]],  # swapped
        [chunks[0], *chunks[2:]],  # middle chunk dropped
        [chunks[0], chunks[0], *chunks[1:]],  # duplicated
        chunks[:-1],  # final chunk dropped: ends on a chunk boundary
        [*chunks[:-2], chunks[-1]],  # final chunk moved up
        [*chunks[:-1], chunks[-1], chunks[-1]],  # final chunk repeated
    ]
    for variant in variants:
        with pytest.raises(DecryptionError):
            decode_stream(header + b"".join(variant), keyring=KEYS[mode][1])


@pytest.mark.parametrize("mode", ["symmetric", "x25519"])
def test_object_served_under_another_name(mode):
    blob = encode(b"segment A", mode=mode)
    with pytest.raises(DecryptionError):
        decode_stream(blob, name="wal/000000010000000000000002", keyring=KEYS[mode][1])
    with pytest.raises(DecryptionError):
        E.decode_bytes(blob, name="wal/000000010000000000000002", keyring=KEYS[mode][1])


def test_headers_swapped_between_objects():
    a = encode(b"a" * 300, comp="none", chunk=64)
    b = encode(b"b" * 300, comp="none", chunk=64)
    size = E.read_header(a).size
    with pytest.raises(DecryptionError):
        decode_stream(a[:size] + b[size:], keyring=KEYS["symmetric"][1])


# --- keys ---------------------------------------------------------------------------------


def test_wrong_key():
    blob = encode(b"secret", mode="symmetric")
    with pytest.raises(WrongKeyError) as err:
        decode_stream(blob, keyring=Keyring([OTHER_SYM]))
    assert SYM.key_id.hex() in str(err.value)
    assert OTHER_SYM.key_id.hex() in str(err.value)
    with pytest.raises(WrongKeyError):
        E.decode_bytes(blob, name="wal/000000010000000000000001", keyring=Keyring([PRIV]))


def test_public_key_encodes_private_key_decodes():
    blob = encode(b"archived by a host without the private key", mode="x25519")
    with pytest.raises(WrongKeyError):
        decode_stream(blob, keyring=Keyring([]))
    assert decode_stream(blob, keyring=Keyring([PRIV])).startswith(b"archived")


@pytest.mark.parametrize("mode", ["symmetric", "x25519"])
def test_encrypted_object_without_keyring(mode):
    blob = encode(b"secret", mode=mode)
    with pytest.raises(DecryptionError, match=r"is encrypted .*key id") as err:
        decode_stream(blob, keyring=None)
    assert E.read_header(blob).key_id.hex() in str(err.value)


def test_plain_object_ignores_keyring():
    blob = encode(b"plain", mode="plain")
    assert decode_stream(blob, keyring=Keyring([SYM])) == b"plain"


# --- header validation --------------------------------------------------------------------


def _patched(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + bytes([value]) + blob[offset + 1 :]


@pytest.mark.parametrize(
    ("offset", "value", "what"),
    [(4, 2, "format version"), (5, 9, "compression id"), (6, 7, "encryption id"),
     (7, 5, "key scheme")],
)  # fmt: skip
def test_unknown_ids_are_reported_as_newer(offset, value, what):
    blob = _patched(encode(b"data"), offset, value)
    for decode in (
        lambda: E.read_header(blob),
        lambda: decode_stream(blob, keyring=KEYS["symmetric"][1]),
        lambda: E.decode_bytes(blob, name="x", keyring=KEYS["symmetric"][1]),
    ):
        with pytest.raises(IntegrityError, match=what) as err:
            decode()
        assert "newer cloudbm" in str(err.value)


@pytest.mark.parametrize("junk", [b"", b"C", b"PK\x03\x04 a zip file", b"\x28\xb5\x2f\xfd...."])
def test_not_a_cloudbm_object(junk):
    with pytest.raises(IntegrityError):
        E.read_header(junk)
    with pytest.raises(IntegrityError):
        decode_stream(junk)
    if len(junk) >= 4:
        with pytest.raises(IntegrityError, match="not a cloudbm object"):
            E.read_header(junk)


def test_unencrypted_header_with_key_fields_rejected():
    blob = encode(b"data", mode="plain")
    with pytest.raises(IntegrityError, match="corrupt header"):
        E.read_header(_patched(blob, 12, 1))  # a key id byte


def test_header_survives_any_prefix_length():
    blob = encode(b"data" * 100, mode="x25519")
    header = E.read_header(blob)
    for cut in range(header.size):
        with pytest.raises(IntegrityError):
            E.read_header(blob[:cut])
    assert E.read_header(blob[: header.size]) == header


def test_expected_sha256_mismatch_withholds_and_raises():
    blob = encode(b"abc")
    with pytest.raises(IntegrityError, match="SHA-256"):
        decode_stream(blob, keyring=KEYS["symmetric"][1], expected_sha256="00" * 32)
    with pytest.raises(IntegrityError, match="SHA-256"):
        E.decode_bytes(blob, name="wal/000000010000000000000001", keyring=KEYS["symmetric"][1],
                       expected_sha256="00" * 32)  # fmt: skip


def test_bad_params():
    with pytest.raises(ConfigError, match="zstd, lz4, gzip"):
        E.EncodeParams(compression="brotli")
    with pytest.raises(ConfigError):
        E.EncodeParams(chunk_size=0)
    with pytest.raises(ConfigError):
        E.encode_bytes(b"", name="x", params=E.EncodeParams(level=99))


def test_sha256_before_eof_is_an_error():
    reader = E.EncodingReader(io.BytesIO(b"x" * 10), name="x", params=E.EncodeParams())
    with pytest.raises(RuntimeError):
        _ = reader.plaintext_sha256


def test_reader_is_a_binary_stream(tmp_path):
    data = os.urandom(3000)
    params = E.EncodeParams(key=SYM, chunk_size=100)
    src = io.BytesIO(data)
    with E.EncodingReader(src, name="n", params=params) as encoder:
        buf = bytearray(50000)
        got = encoder.readinto(buf)
        blob = bytes(buf[:got]) + encoder.read()
    assert src.closed  # closing the reader closes its source
    path = tmp_path / "obj"
    path.write_bytes(blob)
    with path.open("rb") as f, E.DecodingReader(f, name="n", keyring=Keyring([SYM])) as decoder:
        assert decoder.readable() and not decoder.seekable()
        assert decoder.read(0) == b""
        assert decoder.read() == data
    with pytest.raises(ValueError):
        decoder.read(1)


# --- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("comp", ["zstd", "lz4", "gzip"])
def test_decoding_highly_compressible_data_stays_bounded(comp):
    # 64 MiB of zero pages (a freshly extended relation) compresses to a few KiB; decoding it
    # must not materialise it all at once.
    size = 64 << 20
    params = E.EncodeParams(compression=comp, key=SYM)
    encoder = E.EncodingReader(io.BytesIO(bytes(size)), name="z", params=params)
    blob = encoder.read()
    assert len(blob) < size // 100
    tracemalloc.start()
    try:
        reader = E.DecodingReader(io.BytesIO(blob), name="z", keyring=Keyring([SYM]))
        total = 0
        while piece := reader.read(256 << 10):
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def test_encoding_reader_memory_is_bounded():
    size = 48 << 20
    source = io.BytesIO(os.urandom(1 << 20) * 48)
    tracemalloc.start()
    try:
        encoder = E.EncodingReader(source, name="n", params=E.EncodeParams("none", key=SYM))
        total = 0
        while piece := encoder.read(64 << 10):
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > size
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


# --- compression layer --------------------------------------------------------------------


@BOUNDED
@given(data=payloads, comp=st.sampled_from(C.ALGORITHMS), cuts=read_sizes, outs=read_sizes)
def test_streaming_compression_round_trip(data, comp, cuts, outs):
    c = C.compressor(comp, None)
    parts, pos = [], 0
    for n in itertools.cycle(cuts):
        if pos >= len(data):
            break
        parts.append(c.compress(data[pos : pos + n]))
        pos += n
    parts.append(c.flush())
    stream = b"".join(parts)
    assert C.decompress_bytes(comp, stream) == data
    # Feed the stream in pieces, asking for bounded output each time.
    d = C.decompressor(comp)
    out = []
    sizes = itertools.cycle(outs)
    chunks = [stream[i : i + 13] for i in range(0, len(stream), 13)]
    for chunk in chunks:
        want = next(sizes)
        piece = d.decompress(chunk, want)
        assert len(piece) <= want
        out.append(piece)
        while not d.needs_input:
            piece = d.decompress(b"", want)
            assert len(piece) <= want
            out.append(piece)
    out.append(d.flush())
    assert b"".join(out) == data


@pytest.mark.parametrize("comp", ["zstd", "lz4", "gzip"])
def test_decompressor_detects_truncation_and_trailing_data(comp):
    stream = C.compress_bytes(comp, b"hello world " * 1000)
    for cut in (1, len(stream) // 2, len(stream) - 1):
        d = C.decompressor(comp)
        d.decompress(stream[:cut])
        with pytest.raises(IntegrityError, match=r"truncated|corrupt"):
            d.flush()
        with pytest.raises(IntegrityError):
            C.decompress_bytes(comp, stream[:cut])
    d = C.decompressor(comp)
    with pytest.raises(IntegrityError, match="after the end"):
        d.decompress(stream + b"junk")
        d.flush()
    with pytest.raises(IntegrityError):
        C.decompress_bytes(comp, stream + b"junk")


def test_zstd_frame_without_content_size():
    import zstandard

    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"w" * 100000)
    assert zstandard.get_frame_parameters(streamed).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert C.decompress_bytes("zstd", streamed) == b"w" * 100000


def test_zstd_writes_checksums():
    import zstandard

    assert zstandard.get_frame_parameters(C.compress_bytes("zstd", b"abc")).has_checksum
    c = C.compressor("zstd", 1)
    stream = c.compress(b"abc") + c.flush()
    assert zstandard.get_frame_parameters(stream).has_checksum
    bad = bytearray(stream)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        C.decompress_bytes("zstd", bytes(bad))


@pytest.mark.parametrize("call", [C.compressor, C.compress_bytes, C.decompressor])
def test_unknown_algorithm(call):
    args = {"compressor": ("brotli", None), "compress_bytes": ("brotli", b"", None),
            "decompressor": ("brotli",)}[call.__name__]  # fmt: skip
    with pytest.raises(ConfigError, match="allowed values: none, zstd, lz4, gzip"):
        call(*args)


@pytest.mark.parametrize(("comp", "level"), [("zstd", 23), ("zstd", -8), ("lz4", 17), ("gzip", 10)])
def test_bad_levels(comp, level):
    with pytest.raises(ConfigError, match="level must be between"):
        C.compressor(comp, level)
    with pytest.raises(ConfigError):
        E.EncodeParams(compression=comp, level=level)


def test_level_ignored_without_compression():
    assert C.compress_bytes("none", b"abc", 5) == b"abc"


def test_layout_constants():
    assert E.FIXED_HEADER_SIZE == 29
    assert E.MAGIC == b"CBM\x01"
    blob = encode(b"", comp="gzip", mode="symmetric", chunk=1 << 20)
    assert blob[:4] == b"CBM\x01"
    assert struct.unpack(">BBBBI", blob[4:12]) == (1, 3, 1, 1, 1 << 20)
