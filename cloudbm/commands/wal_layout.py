"""Where WAL files live in the repository (DESIGN.md, "Repository layout")."""

from __future__ import annotations

from cloudbm.pg.walnames import WalKind, WalName

WAL_PREFIX = "wal/"


def wal_key(name: WalName) -> str:
    """`wal/<TLI>.history` for history files, else `wal/<TLI><LOG>/<file>`: one directory per
    4 GiB of WAL keeps listings and retention deletes paged and cheap."""
    if name.kind == WalKind.HISTORY:
        return f"{WAL_PREFIX}{name.name}"
    return f"{WAL_PREFIX}{name.name[:16]}/{name.name}"
