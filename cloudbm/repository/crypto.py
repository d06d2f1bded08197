"""The repository's keys: which key a new descriptor names, which key encrypts new objects
(checked against the descriptor, so a wrong key never writes) and which keys can decrypt."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudbm.errors import ConfigError, WrongKeyError

if TYPE_CHECKING:
    from cloudbm.codec.keys import Keyring, KeyWrapper
    from cloudbm.repository.config import RepositoryConfig
    from cloudbm.repository.descriptor import Descriptor

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def new_key_fields(config: RepositoryConfig) -> tuple[str, str | None, dict[str, Any] | None]:
    """(encryption scheme, key id, kdf) for a descriptor being created with `config`."""
    mode = config.encryption
    if mode == "none":
        return "none", None, None
    from cloudbm.codec import keys

    if mode == "passphrase":
        salt = keys.new_salt()
        kdf = {
            "name": "scrypt",
            "salt": base64.b64encode(salt).decode(),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
        }
        key = keys.key_from_passphrase(
            config.passphrase(), salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P
        )
        return "symmetric", key.key_id.hex(), kdf
    if mode == "keyfile":
        assert config.key_file
        return "symmetric", keys.key_from_keyfile(config.key_file).key_id.hex(), None
    if config.public_key_file:
        pub = keys.public_key_from_file(config.public_key_file)
        return "x25519", pub.key_id.hex(), None
    assert config.private_key_file
    priv = keys.private_key_from_file(config.private_key_file)
    return "x25519", priv.key_id.hex(), None


def _symmetric_key(config: RepositoryConfig, descriptor: Callable[[], Descriptor]) -> Any:
    from cloudbm.codec import keys

    if config.encryption == "passphrase":
        kdf = descriptor().kdf
        if not kdf or kdf.get("name") != "scrypt":
            raise ConfigError(
                f"repository {config.url} was not created with a passphrase",
                hint="set encryption to match the repository (see its cloudbm.json)",
            )
        return keys.key_from_passphrase(
            config.passphrase(),
            base64.b64decode(kdf["salt"]),
            n=int(kdf["n"]),
            r=int(kdf["r"]),
            p=int(kdf["p"]),
        )
    assert config.key_file
    return keys.key_from_keyfile(config.key_file)


def encryption_key(config: RepositoryConfig, descriptor: Descriptor) -> KeyWrapper | None:
    """The key new objects are encrypted with; refused unless it is the descriptor's key."""
    mode = config.encryption
    if mode == "none":
        if descriptor.key_id:
            raise ConfigError(
                f"repository {config.url} is encrypted (key id {descriptor.key_id}) but "
                "encryption = 'none' is configured",
                hint="configure the repository's key; cloudbm never downgrades to plaintext",
            )
        return None
    from cloudbm.codec import keys

    wrapper: KeyWrapper
    if mode == "public-key":
        if config.public_key_file:
            wrapper = keys.public_key_from_file(config.public_key_file)
        else:
            assert config.private_key_file
            wrapper = keys.private_key_from_file(config.private_key_file).public()
    else:
        wrapper = _symmetric_key(config, lambda: descriptor)
    if descriptor.key_id != wrapper.key_id.hex():
        raise WrongKeyError(
            f"the configured key (id {wrapper.key_id.hex()}) is not the repository's "
            f"key (id {descriptor.key_id})",
            hint="configure the key the repository was initialised with",
        )
    return wrapper


def decryption_keys(
    config: RepositoryConfig, descriptor: Callable[[], Descriptor]
) -> Keyring | None:
    """Keys able to decrypt, or None when no key is configured (plain repositories). The
    descriptor is read only when a passphrase needs its salt."""
    if config.encryption == "none":
        return None
    from cloudbm.codec import keys

    if config.encryption == "public-key":
        if not config.private_key_file:
            raise ConfigError(
                "reading encrypted objects needs private_key_file",
                hint="the public key can only encrypt; give this host the private key",
            )
        unwrapper: Any = keys.private_key_from_file(config.private_key_file)
    else:
        unwrapper = _symmetric_key(config, descriptor)
    return keys.Keyring([unwrapper])
