"""cloudbm at several commits side by side: exported source trees and an adapter for each.

The venv (CLOUDBM_VENV) has every dependency and an editable install of the checkout; a source
tree exported with `git archive` and put first on PYTHONPATH shadows that install (the editable
install is a .pth entry, which comes after PYTHONPATH on sys.path: `Source.check` verifies it as
the postgres user). Each tree is precompiled as root and left read-only to postgres, so no call
of any version compiles anything (a stale .pyc in a directory postgres cannot write would be
recompiled in memory by every process).

The timed calls execve the venv's python with `-m cloudbm` and PYTHONPATH set (no shell in
between); `run-cloudbm` beside each tree is the same thing as a wrapper script, for humans and
archive_command lines. `python -m cloudbm` works for every version (the console script's entry
moved from cloudbm.fastpath:main to cloudbm.entry:main).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cluster import PgUser
from .common import CLOUDBM_VENV, REPO_DIR, log, mkdirs, write_script
from .tools import Cloudbm, Role, Site

PYTHON = CLOUDBM_VENV / "bin" / "python3"


def _git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_DIR), *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass
class Source:
    """One version of cloudbm: a label and a directory holding its `cloudbm/` package."""

    label: str
    dir: Path
    rev: str = ""  # the commit it was exported from, when known

    @property
    def wrapper(self) -> Path:
        return self.dir / "run-cloudbm"

    @property
    def describe(self) -> str:
        return f"{self.dir}" + (f" @ {self.rev}" if self.rev else "")

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.dir)}

    def argv(self) -> list[str]:
        return [str(PYTHON), "-m", "cloudbm"]

    def check(self, user: PgUser) -> None:
        """As the postgres user: `import cloudbm` must come from this tree, every module of it
        must have a current .pyc, and `--version` must answer."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/", **self.env()}
        r = user.run(
            [PYTHON, "-c", "import cloudbm; print(cloudbm.__file__)"], env=env, cwd=Path("/")
        )
        got = r.stdout.strip().splitlines()[-1]
        want = str(self.dir / "cloudbm" / "__init__.py")
        if got != want:
            raise SystemExit(f"{self.label}: import cloudbm gives {got}, not {want}")
        # importlib's own test: the cached bytecode it would load is the source's
        probe = (
            "import importlib.util,pathlib,sys\n"
            "root=pathlib.Path(sys.argv[1])\n"
            "stale=[]\n"
            "for p in root.rglob('*.py'):\n"
            "    c=pathlib.Path(importlib.util.cache_from_source(str(p)))\n"
            "    if not c.exists() or c.stat().st_mtime < p.stat().st_mtime: stale.append(str(p))\n"
            "print(len(stale)); print('\\n'.join(stale[:5]))\n"
        )
        r = user.run([PYTHON, "-c", probe, self.dir / "cloudbm"], env=env, cwd=Path("/"))
        if r.stdout.split()[0] != "0":
            raise SystemExit(f"{self.label}: modules without a current .pyc:\n{r.stdout}")
        r = user.run([*self.argv(), "--version"], env=env, cwd=Path("/"))
        log(f"source {self.label}: {self.describe}: {r.stdout.strip().splitlines()[-1]}")


def prepare_source(spec: str, workdir: Path) -> Source:
    """`LABEL=DIR` (a directory holding cloudbm/) or `LABEL=rev:REV` / `rev:REV` (the commit's
    cloudbm/ exported to <workdir>/src-<short rev>, reused if there). An empty label becomes
    the short commit."""
    label, eq, what = spec.partition("=")
    if not eq:
        label, what = "", spec
    rev = ""
    if what.startswith("rev:"):
        rev = _git("rev-parse", "--short", f"{what[4:]}^{{commit}}")
        dest = workdir / f"src-{rev}"
        if not (dest / "cloudbm" / "__init__.py").exists():
            tmp = workdir / f".src-{rev}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            mkdirs(tmp)
            with subprocess.Popen(
                ["git", "-C", str(REPO_DIR), "archive", rev, "cloudbm"], stdout=subprocess.PIPE
            ) as ga:
                subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=ga.stdout, check=True)
            if ga.returncode:
                raise SystemExit(f"git archive {rev} failed")
            tmp.rename(dest)
            log(f"exported cloudbm/ at {rev} to {dest}")
        directory = dest
    else:
        directory = Path(what).resolve()
        if (directory / ".git").exists() or directory == REPO_DIR.resolve():
            raise SystemExit(
                f"{directory}: a working checkout changes under the run; export a commit "
                "(LABEL=rev:REV) instead"
            )
    if not (directory / "cloudbm" / "__init__.py").exists():
        raise SystemExit(f"{directory} holds no cloudbm/ package")
    src = Source(label or rev or directory.name, directory, rev)
    # precompile (as root: postgres cannot write here), then readable by everyone
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(directory / "cloudbm")], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    user_ok = all(os.stat(d).st_mode & 0o001 for d in [directory, *directory.parents])
    if not user_ok:
        raise SystemExit(f"{directory} is not traversable by everyone (postgres runs from it)")
    write_script(
        src.wrapper,
        f"PYTHONPATH='{directory}' exec {PYTHON} -m cloudbm \"$@\"\n",
    )
    return src


class CloudbmAt(Cloudbm):
    """The cloudbm adapter of benchlib.tools, run from one Source instead of the venv's
    console script (configuration, repository layout and measurements unchanged)."""

    def __init__(self, site: Site, src: Source, **kw: int | str) -> None:
        super().__init__(site, pythonpath=str(src.dir), source=src.describe, **kw)  # type: ignore[arg-type]
        self.src = src
        self.key = f"cloudbm-{src.label}"

    def label(self, role: Role) -> str:
        return f"cloudbm {self.src.label}"

    def version(self, role: Role) -> str:
        return self.src.describe

    def command(self) -> list[str]:
        return self.src.argv()


CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE, MS_BIND = 0x4000, 1 << 18, 0x1000
_isolated = False


def _mount(src: str | None, dst: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(src and src.encode(), dst.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} {dst}: {os.strerror(err)}")


def private_var_tmp(work: Path) -> None:
    """Give this process (and every process it starts) its own /var/tmp, so the cloudbm cache
    directory (/var/tmp/cloudbm-<uid>) the bench drops and fills is not the one other people's
    tests and servers use as the same user on this machine. A private mount namespace: an
    empty <work>/ns-var-tmp (mode 1777) is bound over /var/tmp, with `work` bound back into it
    at the same path when it lives under /var/tmp. Needs root; call it before any thread."""
    global _isolated
    libc = ctypes.CDLL(None, use_errno=True)
    priv = work / "ns-var-tmp"
    shutil.rmtree(priv, ignore_errors=True)  # what the previous run's cloudbm calls left
    priv.mkdir(parents=True)
    os.chmod(priv, 0o1777)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing here propagates to the machine
    var_tmp = Path("/var/tmp").resolve()
    try:
        rel = work.resolve().relative_to(var_tmp)
    except ValueError:
        rel = None
    if rel is not None:
        inner = priv / rel
        inner.mkdir(parents=True, exist_ok=True)
        for d in [inner, *inner.parents]:
            if d == priv:
                break
            os.chmod(d, 0o755)
        _mount(str(work.resolve()), str(inner), MS_BIND | MS_REC)
    _mount(str(priv), str(var_tmp), MS_BIND | MS_REC)
    _isolated = True
    log(f"private /var/tmp for this run: {priv} (cloudbm's cache dir is not the machine's)")


def cache_dir(user: PgUser) -> Path:
    """cloudbm's per-user cache (the fast path's settings, the parsed configuration): the same
    directory for every version so far (localstate.cache_dir, fastpath._cache_dir)."""
    return Path(f"/var/tmp/cloudbm-{user.uid}")


def drop_cache(user: PgUser) -> None:
    """Forget every version's cached settings: the next call of any version is a first call.
    (Newer versions also delete older versions' cache files, so a driver that alternates
    versions drops the cache before each version's block of calls.) Only inside the private
    /var/tmp: the machine's is in use by others."""
    if not _isolated:
        raise RuntimeError("drop_cache outside private_var_tmp() would touch the machine's")
    shutil.rmtree(cache_dir(user), ignore_errors=True)
