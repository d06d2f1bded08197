"""User hook scripts (pre/post archive, pre/post backup) run with CLOUDBM_* variables."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping

from cloudbm import __version__
from cloudbm.errors import CloudbmError
from cloudbm.logs import log

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
