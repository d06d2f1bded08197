"""The 'cloudbm' logger, imported lazily.

archive_command and restore_command start cloudbm once per WAL file; most calls log nothing,
so the logging package is imported (and the handler set up) only when something is logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

_settings: dict[str, Any] = {"level": 20, "command": ""}  # INFO until cli.main says


def configure(*, verbose: int, quiet: bool, command: str) -> None:
    """Record verbosity and the command name for log lines (no import yet)."""
    level = 30 if quiet else 20
    if verbose:
        level = 10
    _settings.update(level=level, command=command)
    _Lazy.instance = None


class _Lazy:
    """Stands in for logging.Logger; the real one is built on first use."""

    instance: logging.Logger | None = None

    def _real(self) -> logging.Logger:
        if _Lazy.instance is None:
            import logging
            import sys

            handler = logging.StreamHandler(sys.stderr)
            prefix = f"cloudbm {_settings['command']}".rstrip()
            handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s: %(message)s"))
            logger = logging.getLogger("cloudbm")
            logger.handlers[:] = [handler]
            logger.setLevel(int(_settings["level"]))
            logger.propagate = False
            _Lazy.instance = logger
        return _Lazy.instance

    def __getattr__(self, name: str) -> Any:
        level = _LEVELS.get(name)
        if level is not None and level < int(_settings["level"]):
            return _noop  # below the threshold: not worth importing logging for
        return getattr(self._real(), name)


_LEVELS = {"debug": 10, "info": 20, "warning": 30}


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


log: Any = _Lazy()
