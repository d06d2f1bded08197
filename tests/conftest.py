"""Helpers shared by unit and integration tests (kept small on purpose)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK_MODULE = "cloudbm_localstack"
FAULTPROXY_MODULE = "cloudbm_faultproxy"


def _load_by_path(module_name: str, path: Path) -> ModuleType:
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def load_localstack() -> ModuleType:
    """localstack/stack.py (standard library only, not part of the package), loaded by path."""
    return _load_by_path(LOCALSTACK_MODULE, REPO_ROOT / "localstack" / "stack.py")


def load_faultproxy() -> ModuleType:
    """localstack/faultproxy.py, the fault-injecting HTTP proxy, loaded by path."""
    return _load_by_path(FAULTPROXY_MODULE, REPO_ROOT / "localstack" / "faultproxy.py")


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, reproducible from the seed)."""
    return random.Random(seed).randbytes(size)


class ChunkedStream:
    """A forward-only, non-seekable binary stream whose read(n) returns at most `chunk` bytes
    (short reads, like a pipe or a codec layer): code under test must read until EOF and never
    rely on seek/tell/len. read() / read(-1) return everything left."""

    def __init__(self, data: bytes, chunk: int = 64 * 1024) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        left = len(self._data) - self._pos
        size = left if size is None or size < 0 else min(size, self._chunk)
        out = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(out)
        return out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *_args: object) -> int:
        raise OSError("ChunkedStream is not seekable")

    def tell(self) -> int:
        raise OSError("ChunkedStream is not seekable")

    def close(self) -> None:
        self._data = memoryview(b"")
