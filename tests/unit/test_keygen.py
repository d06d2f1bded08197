"""`cloudbm keygen` as a library call: codec.keys.keygen writes a key file or a key pair and
says which files it wrote; it never overwrites one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cloudbm.codec import keys as K
from cloudbm.errors import ConfigError


def test_symmetric_writes_one_private_key_file(tmp_path: Path) -> None:
    out = str(tmp_path / "repo.key")
    written = K.keygen("symmetric", out)
    assert written == K.KeyFiles("symmetric", out, None)
    assert stat.S_IMODE(Path(out).stat().st_mode) == 0o600
    assert K.key_from_keyfile(out).key_id


def test_x25519_writes_the_pair_public_half_beside_it(tmp_path: Path) -> None:
    out = str(tmp_path / "repo.key")
    written = K.keygen("x25519", out)
    assert written == K.KeyFiles("x25519", out, out + ".pub")
    assert stat.S_IMODE(Path(out).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(out + ".pub").stat().st_mode) == 0o644
    private = K.private_key_from_file(out)
    assert K.public_key_from_file(out + ".pub").key_id == private.key_id


@pytest.mark.parametrize("kind", K.KEY_TYPES)
def test_never_overwrites(kind: str, tmp_path: Path) -> None:
    out = str(tmp_path / "repo.key")
    K.keygen(kind, out)
    before = Path(out).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        K.keygen(kind, out)
    assert Path(out).read_bytes() == before


def test_unknown_type_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one of symmetric, x25519"):
        K.keygen("rsa", str(tmp_path / "k"))
    assert list(tmp_path.iterdir()) == []
