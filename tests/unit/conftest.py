"""Fixtures the unit tests of local state share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudbm import localstate


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache directory (the fast path's settings cache) in a private temporary directory,
    with no CLOUDBM_* variable set."""
    directory = tmp_path / "cache"
    monkeypatch.setattr(localstate, "cache_dir", lambda: str(directory))
    for name in list(os.environ):
        if name.startswith("CLOUDBM_"):
            monkeypatch.delenv(name)
    return directory
