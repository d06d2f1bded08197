"""Typed errors. Each class owns its exit code; only the CLI turns them into a process status.

Exit codes are stable, documented in docs/operations.md ("Troubleshooting"):

0 success, 1 not found, 2 usage or configuration, 3 a check failed,
4 storage error that survived all retries, 5 integrity failure.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_STORAGE = 4
EXIT_INTEGRITY = 5


class CloudbmError(Exception):
    """Base of every error cloudbm reports to the user as one line."""

    exit_code: int = EXIT_STORAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ConfigError(CloudbmError):
    """Invalid configuration or command-line usage."""

    exit_code = EXIT_USAGE


class NotFoundError(CloudbmError):
    """The thing asked for does not exist (a WAL segment, a backup id)."""

    exit_code = EXIT_NOT_FOUND


class CheckFailed(CloudbmError):
    """A health check failed."""

    exit_code = EXIT_CHECK_FAILED


class IntegrityError(CloudbmError):
    """Checksum, authentication, identity or overwrite refusal."""

    exit_code = EXIT_INTEGRITY


class DecryptionError(IntegrityError):
    """An object failed authentication: tampered, truncated, swapped or the wrong key."""


class WrongKeyError(DecryptionError):
    """The object was encrypted with a key cloudbm was not given."""


class ForeignClusterError(IntegrityError):
    """A file or repository belongs to a different PostgreSQL cluster."""


class ConflictError(IntegrityError):
    """An object already exists with different content; cloudbm never overwrites it."""


# --- storage -------------------------------------------------------------------------------


class StorageError(CloudbmError):
    """A storage operation failed. `retryable` tells the retry wrapper whether to try again."""

    exit_code = EXIT_STORAGE
    retryable: bool = False


class TransientStorageError(StorageError):
    """Timeouts, throttling, 5xx, connection resets: worth retrying with backoff."""

    retryable = True


class StorageUnavailableError(StorageError):
    """The bucket/container does not exist or the endpoint refuses us: retrying will not help."""


class StoragePermissionError(StorageError):
    """Credentials are missing, wrong or not allowed to do this operation."""


class ObjectNotFoundError(StorageError, NotFoundError):
    """The object does not exist."""

    exit_code = EXIT_NOT_FOUND


class ObjectExistsError(StorageError):
    """put(if_absent=True) found the key already taken."""

    exit_code = EXIT_INTEGRITY


class ChecksumMismatchError(StorageError):
    """The server rejected an upload because its content checksum did not match (BadDigest)."""

    retryable = True
    exit_code = EXIT_INTEGRITY
