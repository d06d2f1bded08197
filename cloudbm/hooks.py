"""User hook scripts (pre/post archive, pre/post backup) run with CLOUDBM_* variables."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cloudbm import __version__
from cloudbm.errors import CloudbmError
from cloudbm.logs import log

if TYPE_CHECKING:
    from typing import Protocol

    # Defined for the type checker only: building a Protocol class costs every archive_command
    # call time at import, and nothing checks it at run time.
    class ArchiveSettings(Protocol):
        """What the archive hooks need of the settings (cloudbm.config.Settings has it)."""

        @property
        def server(self) -> str: ...
        @property
        def repository(self) -> str: ...
        @property
        def compression(self) -> str: ...
        @property
        def pre_archive_script(self) -> str | None: ...
        @property
        def post_archive_script(self) -> str | None: ...


HOOK_TIMEOUT = 300.0


class HookError(CloudbmError):
    """A pre-hook refused the operation (non-zero exit) or could not run."""


def run_hook(script: str | None, phase: str, env: Mapping[str, str], *, fatal: bool) -> None:
    """Run `script` with CLOUDBM_PHASE=phase plus `env`; a failing fatal hook raises HookError,
    a failing non-fatal one is logged."""
    if not script:
        return
    full_env = dict(os.environ)
    full_env.update({"CLOUDBM_PHASE": phase, "CLOUDBM_VERSION": __version__})
    full_env.update(env)
    try:
        result = subprocess.run(
            shlex.split(script),
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=HOOK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"hook {script!r} ({phase}) could not run: {exc}"
        if fatal:
            raise HookError(problem) from exc
        log.warning(problem)
        return
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        problem = f"hook {script!r} ({phase}) exited {result.returncode}"
        if detail:
            problem += f": {detail[-1]}"
        if fatal:
            raise HookError(problem)
        log.warning(problem)


class ArchiveHooks:
    """pre_archive_script and post_archive_script around the archiving of one WAL file.

    The pre hook runs first and is fatal (HookError: nothing is archived); the post hook runs
    once the file is archived, or once archiving failed with a CloudbmError, which it gets in
    CLOUDBM_ERROR (empty on success); its own failure is only logged. wal-push and the
    background pusher both archive through it:

        hooks = ArchiveHooks(settings, name, path, len(data))
        with hooks.around():
            archive(data)
    """

    def __init__(self, settings: ArchiveSettings, name: str, path: Path, size: int) -> None:
        self.pre = settings.pre_archive_script
        self.post = settings.post_archive_script
        self.env = {
            "CLOUDBM_SERVER": settings.server,
            "CLOUDBM_SEGMENT": name,
            "CLOUDBM_PATH": str(path),
            "CLOUDBM_SIZE": str(size),
            "CLOUDBM_COMPRESSION": settings.compression,
            "CLOUDBM_REPOSITORY": settings.repository,
        }

    def before(self) -> None:
        """The pre hook; HookError if it refuses."""
        run_hook(self.pre, "pre", self.env, fatal=True)

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """The post hook once the block ends: with the CloudbmError that ended it (re-raised),
        or with none."""
        try:
            yield
        except CloudbmError as exc:
            run_hook(self.post, "post", {**self.env, "CLOUDBM_ERROR": str(exc)}, fatal=False)
            raise
        run_hook(self.post, "post", {**self.env, "CLOUDBM_ERROR": ""}, fatal=False)

    @contextmanager
    def around(self) -> Iterator[None]:
        """The pre hook, then the block, reported to the post hook."""
        self.before()
        with self.reporting():
            yield
