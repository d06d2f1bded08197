"""Tar header bytes, built and parsed: the one module that knows how a member is laid out.

Headers are built by hand in the common case (tarfile's `tobuf` costs ~10x more per file) and by
tarfile otherwise, byte for byte the same either way. They are parsed here too, with
`tarfile.TarInfo.frombuf` for the ustar block and a small pax parser, instead of through
`tarfile.open(mode="r|")`: tarfile's stream mode re-copies its whole read buffer on every small
read, which is quadratic for parts of small files, and reading member data straight from the
caller's stream avoids one more copy.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from cloudbm.errors import IntegrityError

BLOCK = tarfile.BLOCKSIZE  # 512
ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)
REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)  # the types with data
_MAX_META = 1 << 20  # largest pax / GNU long-name header accepted: names are never that long
_META_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)

# --- building ------------------------------------------------------------------------------


def build_header(path: str, type_: bytes, size: int, mode: int, mtime: int, link: str) -> bytes:
    """A pax-format header, byte for byte what `TarInfo.tobuf(PAX_FORMAT)` gives."""
    name = path + "/" if type_ == tarfile.DIRTYPE else path
    fast = _ustar_header(name, link, type_, mode, size, mtime)
    if fast is not None:
        return fast
    info = tarfile.TarInfo(path)
    info.type = type_
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0  # ownership is the restoring user's; keep headers deterministic
    info.uname = info.gname = ""
    info.linkname = link
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


_USTAR_IDS = b"0000000\x00" * 2  # uid, gid
# magic, empty uname/gname, devmajor/devminor left NUL (not a device), empty prefix, padding
_USTAR_TAIL = tarfile.POSIX_MAGIC + bytes(64) + bytes(16) + bytes(155 + 12)
_OCTAL_LIMIT = 8**11  # what fits in the 12-byte size and mtime fields


def _ustar_header(
    name: str, link: str, type_: bytes, mode: int, size: int, mtime: int
) -> bytes | None:
    """Plain ustar header for the common case (tarfile.tobuf costs ~10x more per file).

    None when pax records are needed: non-ASCII or long names, huge sizes, odd times.
    """
    if not (name.isascii() and link.isascii() and len(name) <= 100 and len(link) <= 100):
        return None
    if not (0 <= size < _OCTAL_LIMIT and 0 <= mtime < _OCTAL_LIMIT):
        return None
    head = b"".join(
        (
            name.encode("ascii").ljust(100, b"\x00"),
            b"%07o\x00" % mode,
            _USTAR_IDS,
            b"%011o\x00" % size,
            b"%011o\x00" % mtime,
            b"        ",
            type_,
            link.encode("ascii").ljust(100, b"\x00"),
            _USTAR_TAIL,
        )
    )
    checksum = sum(head)  # with the checksum field as spaces, as the format defines it
    return head[:148] + b"%06o\x00 " % checksum + head[156:]


# --- parsing -------------------------------------------------------------------------------


@dataclass
class Member:
    """One member's header with its extended headers applied, as the extractor needs it."""

    name: str
    type: bytes
    size: int
    mode: int
    mtime: float
    linkname: str


class TarStream:
    """Pulls headers and data out of a tar byte stream without buffering data itself.

    The extractor reads member data straight from `stream`; `next_member` parses what comes
    between two members.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) == n:
            return data
        pieces = [data]
        have = len(data)
        while have < n:
            more = self.stream.read(n - have)
            if not more:
                raise IntegrityError(f"tar stream truncated in {what}")
            pieces.append(more)
            have += len(more)
        return b"".join(pieces)

    def skip(self, n: int, what: str) -> None:
        while n:
            data = self.stream.read(min(n, 1 << 20))
            if not data:
                raise IntegrityError(f"tar stream truncated in {what}")
            n -= len(data)

    def next_member(self) -> Member | None:
        """The next member with pax / GNU long-name headers applied, or None at the end."""
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self.stream.read(BLOCK)
            if len(block) < BLOCK:
                if not block:
                    raise IntegrityError("tar stream ends without an end-of-archive marker")
                block += self.read_exact(BLOCK - len(block), "a header")
            if block == ZERO_BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise IntegrityError(f"corrupt tar header: {exc}") from None
            if info.type in _META_TYPES:
                if info.size > _MAX_META:
                    raise IntegrityError(f"tar extended header of {info.size} bytes refused")
                raw = self.read_exact(info.size + (-info.size % BLOCK), "an extended header")
                raw = raw[: info.size]
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(raw))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = _decode(raw.split(b"\x00", 1)[0])
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = _decode(raw.split(b"\x00", 1)[0])
                # global pax headers (XGLTYPE) carry nothing we use
                continue
            name = pax.get("path", long_name if long_name is not None else info.name)
            link = pax.get("linkpath", long_link if long_link is not None else info.linkname)
            try:
                size = int(pax["size"]) if "size" in pax else info.size
                mtime = float(pax["mtime"]) if "mtime" in pax else float(info.mtime)
            except ValueError:
                raise IntegrityError(f"tar member {name!r} has a corrupt pax header") from None
            if size < 0:
                raise IntegrityError(f"tar member {name!r} has a negative size")
            if info.type not in REGULAR_TYPES:
                size = 0  # only regular files carry data (as tarfile reads it); others refused
            return Member(name.rstrip("/"), info.type, size, info.mode, mtime, link)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(raw: bytes) -> dict[str, str]:
    """Records of the form b'<len> <key>=<value>\\n'."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        space = raw.find(b" ", pos)
        try:
            length = int(raw[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(raw) or raw[end - 1 : end] != b"\n":
            raise IntegrityError("corrupt pax extended header")
        key, eq, value = raw[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise IntegrityError("corrupt pax extended header")
        out[_decode(key)] = _decode(value)
        pos = end
    return out
