"""Repository keys: they wrap and unwrap the random per-object data keys.

Three sources: a passphrase (scrypt), a key file (32 random bytes), and an X25519 key pair so a
database host holding only the public half can archive without being able to read anything back.

`cryptography` is imported inside the methods that need it, so building a key id or merely
importing this module stays cheap on the `wal-push` hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cloudbm.errors import ConfigError, DecryptionError, WrongKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import x25519

SCHEME_SYMMETRIC = 1
SCHEME_X25519 = 2
SCHEME_NAMES = {SCHEME_SYMMETRIC: "symmetric", SCHEME_X25519: "x25519"}

KEY_SIZE = 32
KEY_ID_SIZE = 8
SALT_SIZE = 16
_NONCE_SIZE = 12
_TAG_SIZE = 16

_ID_INFO = b"cloudbm key id"
_WRAP_INFO = b"cloudbm key wrap v1"
_X25519_INFO = b"cloudbm x25519 wrap v1\0"
_X25519_ID_PREFIX = b"cloudbm-key-id\0"


class KeyWrapper(Protocol):
    """What an encoder needs (wal-push, backup-push): wrap a fresh data key."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def scheme(self) -> int: ...

    def wrap(self, data_key: bytes, aad: bytes) -> bytes: ...


class KeyUnwrapper(Protocol):
    """What a decoder needs (wal-fetch, recover): recover a data key or raise DecryptionError."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def scheme(self) -> int: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869) with the standard library, to keep key ids free of imports."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _aes_gcm_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _aes_gcm_open(key: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(sealed) < _NONCE_SIZE + _TAG_SIZE:
        raise DecryptionError(f"{what} is too short ({len(sealed)} bytes)")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_SIZE], sealed[_NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionError(
            f"{what} failed authentication: the object header or wrapped key was altered, "
            "or the object was stored under another name"
        ) from None


class SymmetricKey:
    """A 32-byte secret (from a passphrase or a key file): wraps and unwraps with AES-256-GCM.

    Wrapped form: nonce (12) || ciphertext (32) || tag (16). The wrapping key and the key id are
    both derived from the secret with HKDF, so the secret itself is used for nothing else and
    the id reveals nothing about it.
    """

    scheme = SCHEME_SYMMETRIC

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ConfigError(f"a symmetric key must be {KEY_SIZE} bytes, not {len(key)}")
        self._wrap_key = hkdf_sha256(bytes(key), _WRAP_INFO)
        self._key_id = hashlib.sha256(hkdf_sha256(bytes(key), _ID_INFO)).digest()[:KEY_ID_SIZE]

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return _aes_gcm_seal(self._wrap_key, data_key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return _aes_gcm_open(self._wrap_key, wrapped, aad, "the wrapped data key")

    def __repr__(self) -> str:  # never show key material
        return f"SymmetricKey(key_id={self._key_id.hex()})"


def _x25519_key_id(public_raw: bytes) -> bytes:
    return hashlib.sha256(_X25519_ID_PREFIX + public_raw).digest()[:KEY_ID_SIZE]


def _x25519_kek(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    # Binding both public keys into the derivation ties the wrapping key to this exchange.
    return hkdf_sha256(shared, _X25519_INFO + eph_pub + recipient_pub)


class X25519PublicKey:
    """The public half: can wrap (ECIES: ephemeral X25519, HKDF-SHA256, AES-256-GCM), not unwrap.

    Wrapped form: ephemeral public key (32) || nonce (12) || ciphertext (32) || tag (16).
    """

    scheme = SCHEME_X25519

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise ConfigError(f"an X25519 public key must be {KEY_SIZE} bytes, not {len(raw)}")
        self.raw = bytes(raw)
        self._key_id = _x25519_key_id(self.raw)

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import x25519

        eph = x25519.X25519PrivateKey.generate()
        eph_pub = _raw_public(eph.public_key())
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(self.raw))
        return eph_pub + _aes_gcm_seal(_x25519_kek(shared, eph_pub, self.raw), data_key, aad)

    def __repr__(self) -> str:
        return f"X25519PublicKey(key_id={self._key_id.hex()})"


class X25519PrivateKey:
    """The private half: unwraps what its public half wrapped."""

    scheme = SCHEME_X25519

    def __init__(self, raw: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import x25519

        if len(raw) != KEY_SIZE:
            raise ConfigError(f"an X25519 private key must be {KEY_SIZE} bytes, not {len(raw)}")
        self._key = x25519.X25519PrivateKey.from_private_bytes(bytes(raw))
        self._public = X25519PublicKey(_raw_public(self._key.public_key()))

    @property
    def key_id(self) -> bytes:
        return self._public.key_id

    def public(self) -> X25519PublicKey:
        return self._public

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import x25519

        if len(wrapped) < KEY_SIZE + _NONCE_SIZE + _TAG_SIZE:
            raise DecryptionError(f"the wrapped data key is too short ({len(wrapped)} bytes)")
        eph_pub = bytes(wrapped[:KEY_SIZE])
        try:
            shared = self._key.exchange(x25519.X25519PublicKey.from_public_bytes(eph_pub))
        except ValueError:  # a low-order point gives an all-zero secret: tampering
            raise DecryptionError("the wrapped data key holds an invalid public key") from None
        kek = _x25519_kek(shared, eph_pub, self._public.raw)
        return _aes_gcm_open(kek, wrapped[KEY_SIZE:], aad, "the wrapped data key")

    def private_raw(self) -> bytes:
        """The 32 raw private bytes (for writing key files)."""
        return _raw_private(self._key)

    def __repr__(self) -> str:
        return f"X25519PrivateKey(key_id={self.key_id.hex()})"


def _raw_private(key: x25519.X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: x25519.X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- key sources ----------------------------------------------------------------------------


def new_salt() -> bytes:
    """16 random bytes for scrypt; the salt is stored in the repository descriptor."""
    return os.urandom(SALT_SIZE)


def key_from_passphrase(
    passphrase: bytes, salt: bytes, *, n: int = 2**15, r: int = 8, p: int = 1
) -> SymmetricKey:
    """Derive the repository key from a passphrase with scrypt (same inputs, same key)."""
    if not passphrase:
        raise ConfigError("the passphrase is empty")
    if len(salt) < SALT_SIZE:
        raise ConfigError(f"the scrypt salt must be at least {SALT_SIZE} bytes")
    # OpenSSL's default 32 MiB cap is exactly 128*n*r for the defaults; leave headroom.
    maxmem = 128 * n * r * (p + 1) + (1 << 20)
    try:
        key = hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=KEY_SIZE)
    except ValueError as exc:
        raise ConfigError(f"invalid scrypt parameters (n={n}, r={r}, p={p}): {exc}") from exc
    return SymmetricKey(key)


def _read_key_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _decode_32(data: bytes) -> bytes | None:
    """32 raw bytes, 64 hex characters or base64 of 32 bytes; None if it is none of them."""
    if len(data) == KEY_SIZE:
        return data
    text = b"".join(data.split())
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_SIZE else None


def key_from_keyfile(path: str | Path) -> SymmetricKey:
    """Load a symmetric key file: 32 raw bytes, 64 hex characters or base64 of 32 bytes.

    Surrounding whitespace is ignored. Keep the file readable by its owner only (0600): cloudbm
    does not check, because archive_command may legitimately run under a group-readable setup.
    """
    data = _read_key_file(path, "key file")
    raw = _decode_32(data)
    if raw is None:
        raise ConfigError(
            f"key file {path} holds no usable key ({len(data)} bytes): expected 32 raw bytes, "
            "64 hexadecimal characters or the base64 of 32 bytes",
            hint="create one with: cloudbm keygen --type symmetric FILE",
        )
    return SymmetricKey(raw)


def public_key_from_file(path: str | Path) -> X25519PublicKey:
    """Load an X25519 public key: PEM SubjectPublicKeyInfo, or base64 of the 32 raw bytes."""
    data = _read_key_file(path, "public key file")
    if b"-----BEGIN" in data:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        if b"PRIVATE KEY" in data:
            raise ConfigError(f"{path} holds a private key where a public key was expected")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"public key file {path} is not a valid PEM public key") from exc
        if not isinstance(key, x25519.X25519PublicKey):
            raise ConfigError(f"public key file {path} holds a {type(key).__name__}, not X25519")
        return X25519PublicKey(_raw_public(key))
    raw = _decode_b64_32(data)
    if raw is None:
        raise ConfigError(
            f"public key file {path} is not an X25519 public key: expected PEM "
            "(BEGIN PUBLIC KEY) or the base64 of 32 raw bytes"
        )
    return X25519PublicKey(raw)


def private_key_from_file(path: str | Path) -> X25519PrivateKey:
    """Load an X25519 private key: unencrypted PEM PKCS#8, or base64 of the 32 raw bytes."""
    data = _read_key_file(path, "private key file")
    if b"-----BEGIN" in data:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        if b"PRIVATE KEY" not in data:
            raise ConfigError(f"{path} holds a public key where the private key was expected")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # encrypted PEM
            raise ConfigError(
                f"private key file {path} is password-protected; cloudbm needs it unencrypted"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"private key file {path} is not a valid PEM private key") from exc
        if not isinstance(key, x25519.X25519PrivateKey):
            raise ConfigError(f"private key file {path} holds a {type(key).__name__}, not X25519")
        return X25519PrivateKey(_raw_private(key))
    raw = _decode_b64_32(data)
    if raw is None:
        raise ConfigError(
            f"private key file {path} is not an X25519 private key: expected PEM "
            "(BEGIN PRIVATE KEY) or the base64 of 32 raw bytes"
        )
    return X25519PrivateKey(raw)


def _decode_b64_32(data: bytes) -> bytes | None:
    try:
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_SIZE else None


def _write_new(path: str | Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; never overwrite (a lost key makes a repository unreadable)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; cloudbm never overwrites a key file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or the caller widened it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keyfile(path: str | Path) -> SymmetricKey:
    """Write a new random key file (base64 text, mode 0600, never overwriting); return the key."""
    raw = os.urandom(KEY_SIZE)
    _write_new(path, base64.b64encode(raw) + b"\n", 0o600)
    return SymmetricKey(raw)


def generate_keypair(private_path: str | Path, public_path: str | Path) -> X25519PrivateKey:
    """Write a new X25519 key pair as PEM (private 0600, public 0644); return the private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    key = x25519.X25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if Path(public_path).exists():  # check both before writing either
        raise ConfigError(f"{public_path} already exists; cloudbm never overwrites a key file")
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return X25519PrivateKey(_raw_private(key))


KEY_TYPES = ("symmetric", "x25519")


@dataclass(frozen=True)
class KeyFiles:
    """The files `keygen` wrote: a symmetric key file, or an X25519 private key and its public
    half."""

    kind: str
    private: str  # the key file (symmetric) or the private key (x25519)
    public: str | None = None  # x25519: OUTPUT.pub


def keygen(kind: str, output: str) -> KeyFiles:
    """`cloudbm keygen`: a symmetric key file at `output`, or an X25519 key pair (the private
    key at `output`, the public key at `output`.pub). Never overwrites (ConfigError)."""
    if kind == "symmetric":
        generate_keyfile(output)
        return KeyFiles(kind, output)
    if kind == "x25519":
        public = output + ".pub"
        generate_keypair(output, public)
        return KeyFiles(kind, output, public)
    raise ConfigError(f"key type {kind!r} is not one of {', '.join(KEY_TYPES)}")


class Keyring:
    """The keys a decoder may use, looked up by the key id an object's header names."""

    def __init__(self, unwrappers: Sequence[KeyUnwrapper]) -> None:
        self._keys = {(k.key_id, k.scheme): k for k in unwrappers}

    @property
    def key_ids(self) -> list[bytes]:
        return [key_id for key_id, _ in self._keys]

    def find(self, key_id: bytes, scheme: int) -> KeyUnwrapper:
        """The unwrapper for `key_id`, or WrongKeyError naming it and the configured ids."""
        key = self._keys.get((bytes(key_id), scheme))
        if key is None:
            configured = ", ".join(i.hex() for i in self.key_ids) or "none"
            kind = SCHEME_NAMES.get(scheme, f"scheme {scheme}")
            raise WrongKeyError(
                f"the object is encrypted with {kind} key {bytes(key_id).hex()}, "
                f"but the configured keys are: {configured}",
                hint="configure the key this repository was written with",
            )
        return key

    def __len__(self) -> int:
        return len(self._keys)
