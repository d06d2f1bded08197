"""Whether this host may write to the repository: one new object, written and read back.

A new name each time, written once (put-if-absent): works with write-once buckets and with
credentials that may create but not overwrite or delete. The object is plain bytes (no
envelope): the probe must work before any key is configured.
"""

from __future__ import annotations

import os
import socket
import time

from cloudbm import __version__
from cloudbm.errors import NotFoundError
from cloudbm.repository.layout import PROBE_PREFIX
from cloudbm.repository.objects import Repository


def probe_key() -> str:
    """A key no probe used before: this host, this process, this instant."""
    return f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"


def write_probe(repo: Repository, *, remove: bool) -> str:
    """Write a new probe object and read it back (NotFoundError if it reads back
    differently); delete it again when `remove` (not in append-only repositories). Returns
    its key."""
    key = probe_key()
    payload = f"{__version__} {time.time()}".encode()
    repo.storage.put(key, payload, if_absent=True)
    with repo.storage.get(key) as reader:
        if reader.read() != payload:
            raise NotFoundError("the probe object read back differently")
    if remove:
        repo.storage.delete_many([key])
    return key
