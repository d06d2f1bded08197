"""What the cloud backends share at their edge, where SDK exceptions become typed errors.

A backend maps exceptions in one place (`mapping_errors`, its only edge); what must cross SDK
code and the part-retry runner untouched travels as a `PassThrough` and is raised again by
the operation's outer edge. Standard library only: no SDK is imported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from cloudbm.errors import CloudbmError, ObjectExistsError, StorageError


def oneline(text: object, limit: int = 200) -> str:
    """`text` on one line of at most `limit` characters, for error messages."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def exists_error(op: str, where: str) -> ObjectExistsError:
    """The conflict of a put-if-absent, whether the server refused it or a look-up found it."""
    return ObjectExistsError(
        f"{op} {where}: object already exists", hint="cloudbm never overwrites it"
    )


class PassThrough(Exception):
    """Carries `error` across SDK code and the part-retry runner, which let it through (it is
    no StorageError: nothing maps or retries it), to the operation's outer edge, which raises
    `error` itself."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SourceError(PassThrough):
    """An exception raised by the caller's stream: the caller's own, never a storage error."""


@contextlib.contextmanager
def mapping_errors(
    to_storage_error: Callable[[Exception], StorageError], *, inner: bool = False
) -> Iterator[None]:
    """Map every exception escaping the block with `to_storage_error`; cloudbm's own errors
    pass as they are, and a PassThrough gives up what it carries.

    `inner`: the block is one retried request of a larger operation, whose PassThrough must
    reach the operation's outer edge (another `mapping_errors`) still wrapped.
    """
    try:
        yield
    except PassThrough as exc:
        if inner:
            raise
        raise exc.error from None
    except CloudbmError:
        raise
    except Exception as exc:
        raise to_storage_error(exc) from exc


def framing_problem(method: str, status: int, headers: Mapping[str, str]) -> str | None:
    """Why a response cannot be known complete, or None: a body with neither Content-Length
    nor chunked encoding is what a response cut inside its header block looks like to
    `http.client` (a complete answer whose body ran "until close"). GCS and Azure frame every
    response, so they never send one."""
    if method.upper() == "HEAD" or status < 200 or status in (204, 304):
        return None
    if "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    return f"HTTP {status} response without Content-Length or chunked encoding"
