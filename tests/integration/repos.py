"""Repository targets for end-to-end tests: a cloudbm configuration per backend.

Each target is a fresh bucket/container/directory plus the config keys and environment that
point cloudbm at it, written so the `postgres` user (who runs archive_command) can read them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("local", "s3", "gcs", "azure")


@dataclass
class RepoTarget:
    backend: str
    url: str
    keys: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_target(backend: str, endpoints: Any, workdir: Path) -> RepoTarget:
    """Create an empty bucket (or directory) for `backend` and describe how to reach it."""
    if backend == "local":
        repo = workdir / "repo"
        repo.mkdir()
        return RepoTarget("local", f"file://{repo}")
    env = dict(endpoints.env())
    if backend == "s3":
        import boto3

        bucket = _unique("wal")
        boto3.client(
            "s3",
            endpoint_url=endpoints.s3_url,
            region_name=endpoints.region,
            aws_access_key_id=endpoints.aws_access_key_id,
            aws_secret_access_key=endpoints.aws_secret_access_key,
        ).create_bucket(Bucket=bucket)
        return RepoTarget(
            "s3",
            f"s3://{bucket}/pg/main",
            {
                "s3_endpoint_url": endpoints.s3_url,
                "s3_region": endpoints.region,
                "s3_addressing_style": "path",
            },
            env,
        )
    if backend == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        bucket = _unique("wal")
        storage.Client(
            project=endpoints.gcs_project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoints.gcs_url},
        ).create_bucket(bucket)
        return RepoTarget(
            "gcs",
            f"gs://{bucket}/pg/main",
            {"gcs_endpoint_url": endpoints.gcs_url, "gcs_project": endpoints.gcs_project},
            env,
        )
    if backend == "azure":
        from azure.storage.blob import BlobServiceClient

        container = _unique("wal")
        BlobServiceClient.from_connection_string(
            endpoints.azure_connection_string
        ).create_container(container)
        return RepoTarget("azure", f"azure://{container}/pg/main", {}, env)
    raise ValueError(backend)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, server: str, keys: dict[str, Any]) -> Path:
    """A one-server cloudbm.toml."""
    lines = [f"[servers.{server}]"] + [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path
