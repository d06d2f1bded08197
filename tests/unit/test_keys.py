"""Repository keys: sources, file formats, ids, wrapping and the keyring."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cloudbm.codec import keys as K
from cloudbm.errors import ConfigError, DecryptionError, WrongKeyError

RAW = bytes(range(32))
SALT = bytes(16)
FAST = {"n": 2**10, "r": 8, "p": 1}  # scrypt cost for tests; the default is checked once


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- key files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        RAW,
        RAW.hex().encode(),
        RAW.hex().upper().encode() + b"\n",
        b"  " + RAW.hex()[:32].encode() + b"\n" + RAW.hex()[32:].encode() + b"\n",
        base64.b64encode(RAW),
        base64.b64encode(RAW) + b"\r\n",
    ],
    ids=["raw", "hex", "hex-upper-newline", "hex-wrapped", "base64", "base64-crlf"],
)
def test_keyfile_formats_give_the_same_key(tmp_path, content):
    path = tmp_path / "key"
    path.write_bytes(content)
    assert K.key_from_keyfile(path).key_id == K.SymmetricKey(RAW).key_id


def test_raw_keyfile_with_whitespace_bytes_is_still_raw(tmp_path):
    # 32 raw bytes can contain newline or space bytes: they must not be stripped.
    raw = b"\n" * 4 + b" " * 4 + os.urandom(24)
    path = tmp_path / "key"
    path.write_bytes(raw)
    assert K.key_from_keyfile(path).key_id == K.SymmetricKey(raw).key_id


@pytest.mark.parametrize(
    "content",
    [b"", b"short", os.urandom(31), os.urandom(33), b"zz" * 32, base64.b64encode(os.urandom(16))],
    ids=["empty", "short", "31-raw", "33-raw", "bad-hex", "base64-16"],
)
def test_bad_keyfiles(tmp_path, content):
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="expected 32 raw bytes, 64 hexadecimal") as err:
        K.key_from_keyfile(path)
    assert str(path) in str(err.value)


def test_missing_keyfile(tmp_path):
    with pytest.raises(ConfigError, match="cannot read key file"):
        K.key_from_keyfile(tmp_path / "nope")


def test_generate_keyfile(tmp_path):
    path = tmp_path / "key"
    old = os.umask(0)  # even a permissive umask must not widen a secret
    try:
        key = K.generate_keyfile(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert K.key_from_keyfile(path).key_id == key.key_id
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        K.generate_keyfile(path)
    assert path.read_bytes() == before


# --- passphrase ---------------------------------------------------------------------------


def test_passphrase_is_deterministic_per_salt():
    a = K.key_from_passphrase(b"correct horse", SALT, **FAST)
    b = K.key_from_passphrase(b"correct horse", SALT, **FAST)
    assert a.key_id == b.key_id
    assert K.key_from_passphrase(b"correct horse", bytes([1]) * 16, **FAST).key_id != a.key_id
    assert K.key_from_passphrase(b"correct horsf", SALT, **FAST).key_id != a.key_id
    # Wrapped by one derivation, unwrapped by another.
    assert b.unwrap(a.wrap(b"k" * 32, b"aad"), b"aad") == b"k" * 32


def test_passphrase_default_cost():
    key = K.key_from_passphrase(b"pw", SALT)
    assert key.key_id == K.key_from_passphrase(b"pw", SALT, n=2**15, r=8, p=1).key_id
    assert key.key_id != K.key_from_passphrase(b"pw", SALT, **FAST).key_id


def test_passphrase_errors():
    with pytest.raises(ConfigError, match="empty"):
        K.key_from_passphrase(b"", SALT)
    with pytest.raises(ConfigError, match="salt"):
        K.key_from_passphrase(b"pw", b"short")
    with pytest.raises(ConfigError, match="scrypt"):
        K.key_from_passphrase(b"pw", SALT, n=1000)  # not a power of two


def test_new_salt():
    assert len(K.new_salt()) == 16
    assert K.new_salt() != K.new_salt()


# --- key ids ------------------------------------------------------------------------------


def test_key_ids():
    sym = K.SymmetricKey(RAW)
    priv = K.X25519PrivateKey(RAW)
    assert len(sym.key_id) == len(priv.key_id) == 8
    assert priv.key_id == priv.public().key_id
    assert sym.key_id != priv.key_id
    assert K.SymmetricKey(bytes(32)).key_id != sym.key_id
    assert sym.key_id not in RAW  # the id is not a slice of the key
    import hashlib

    assert priv.key_id == hashlib.sha256(b"cloudbm-key-id\0" + priv.public().raw).digest()[:8]
    assert RAW.hex() not in repr(sym) and sym.key_id.hex() in repr(sym)


def test_hkdf_matches_rfc5869():
    # RFC 5869 test case 1
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = K.hkdf_sha256(ikm, info, 42, salt)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    ref = HKDF(hashes.SHA256(), 32, None, b"cloudbm key id").derive(RAW)
    assert K.hkdf_sha256(RAW, b"cloudbm key id") == ref


# --- wrapping -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symmetric", "x25519"])
def test_wrap_unwrap(kind):
    if kind == "symmetric":
        wrapper: K.KeyWrapper = K.SymmetricKey(RAW)
        unwrapper: K.KeyUnwrapper = K.SymmetricKey(RAW)
        size = 60
    else:
        priv = K.X25519PrivateKey(RAW)
        wrapper, unwrapper, size = priv.public(), priv, 92
    data_key = os.urandom(32)
    wrapped = wrapper.wrap(data_key, b"aad")
    assert len(wrapped) == size
    assert wrapped != wrapper.wrap(data_key, b"aad")  # fresh randomness each time
    assert unwrapper.unwrap(wrapped, b"aad") == data_key
    with pytest.raises(DecryptionError):
        unwrapper.unwrap(wrapped, b"other aad")
    for pos in range(len(wrapped)):
        bad = bytearray(wrapped)
        bad[pos] ^= 0x80
        with pytest.raises(DecryptionError):
            unwrapper.unwrap(bytes(bad), b"aad")
    with pytest.raises(DecryptionError):
        unwrapper.unwrap(wrapped[:20], b"aad")


def test_x25519_low_order_point_rejected():
    priv = K.X25519PrivateKey(RAW)
    with pytest.raises(DecryptionError):
        priv.unwrap(bytes(32) + os.urandom(60), b"aad")


def test_public_key_cannot_unwrap():
    assert not hasattr(K.X25519PrivateKey(RAW).public(), "unwrap")


def test_bad_raw_sizes():
    for cls in (K.SymmetricKey, K.X25519PublicKey, K.X25519PrivateKey):
        with pytest.raises(ConfigError):
            cls(b"x" * 31)


# --- key pair files -----------------------------------------------------------------------


def test_generate_keypair(tmp_path):
    priv_path, pub_path = tmp_path / "repo.key", tmp_path / "repo.pub"
    priv = K.generate_keypair(priv_path, pub_path)
    assert mode_of(priv_path) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub_path.read_bytes()
    loaded_priv = K.private_key_from_file(priv_path)
    loaded_pub = K.public_key_from_file(pub_path)
    assert loaded_priv.key_id == loaded_pub.key_id == priv.key_id
    assert loaded_priv.unwrap(loaded_pub.wrap(b"d" * 32, b"a"), b"a") == b"d" * 32
    # Never overwrite either half.
    with pytest.raises(ConfigError, match="already exists"):
        K.generate_keypair(priv_path, tmp_path / "other.pub")
    with pytest.raises(ConfigError, match="already exists"):
        K.generate_keypair(tmp_path / "other.key", pub_path)
    assert not (tmp_path / "other.key").exists() and not (tmp_path / "other.pub").exists()
    assert K.private_key_from_file(priv_path).key_id == priv.key_id


def test_raw_base64_key_files(tmp_path):
    priv = K.X25519PrivateKey(RAW)
    (tmp_path / "priv").write_bytes(base64.b64encode(priv.private_raw()) + b"\n")
    (tmp_path / "pub").write_bytes(base64.b64encode(priv.public().raw) + b"\n")
    assert K.private_key_from_file(tmp_path / "priv").key_id == priv.key_id
    assert K.public_key_from_file(tmp_path / "pub").key_id == priv.key_id


def _pem_files(tmp_path: Path) -> Path:
    x = x25519.X25519PrivateKey.generate()
    ed = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = serialization.PrivateFormat.PKCS8
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    files = {
        "x-priv": x.private_bytes(pem, pkcs8, serialization.NoEncryption()),
        "x-pub": x.public_key().public_bytes(pem, spki),
        "x-priv-encrypted": x.private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(b"pw")
        ),
        "ed-priv": ed.private_bytes(pem, pkcs8, serialization.NoEncryption()),
        "ed-pub": ed.public_key().public_bytes(pem, spki),
        "garbage-pem": b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
        "garbage-priv-pem": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "text": b"hello world\n",
        "short-b64": base64.b64encode(b"x" * 16),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x-priv", "holds a private key where a public key was expected"),
        ("ed-pub", "not X25519"),
        ("garbage-pem", "not a valid PEM public key"),
        ("text", "expected PEM"),
        ("short-b64", "expected PEM"),
    ],
)
def test_bad_public_key_files(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        K.public_key_from_file(_pem_files(tmp_path) / name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x-pub", "holds a public key where the private key was expected"),
        ("x-priv-encrypted", "password-protected"),
        ("ed-priv", "not X25519"),
        ("garbage-priv-pem", "not a valid PEM private key"),
        ("text", "expected PEM"),
        ("short-b64", "expected PEM"),
    ],
)
def test_bad_private_key_files(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        K.private_key_from_file(_pem_files(tmp_path) / name)


def test_pem_files_load(tmp_path):
    files = _pem_files(tmp_path)
    priv = K.private_key_from_file(files / "x-priv")
    assert K.public_key_from_file(files / "x-pub").key_id == priv.key_id


def test_missing_key_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read public key file"):
        K.public_key_from_file(tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read private key file"):
        K.private_key_from_file(tmp_path / "nope")


# --- keyring ------------------------------------------------------------------------------


def test_keyring():
    sym = K.SymmetricKey(RAW)
    priv = K.X25519PrivateKey(RAW)
    ring = K.Keyring([sym, priv])
    assert len(ring) == 2
    assert ring.find(sym.key_id, K.SCHEME_SYMMETRIC) is sym
    assert ring.find(priv.key_id, K.SCHEME_X25519) is priv
    with pytest.raises(WrongKeyError) as err:
        ring.find(sym.key_id, K.SCHEME_X25519)
    other = K.SymmetricKey(bytes(32)).key_id
    with pytest.raises(WrongKeyError) as err:
        ring.find(other, K.SCHEME_SYMMETRIC)
    text = str(err.value)
    assert other.hex() in text and sym.key_id.hex() in text and priv.key_id.hex() in text
    with pytest.raises(WrongKeyError, match="configured keys are: none"):
        K.Keyring([]).find(other, K.SCHEME_SYMMETRIC)
