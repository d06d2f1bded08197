"""Integration fixtures: the local cloud stack (once per session) and fresh storage targets.

Fixtures
--------
localstack_endpoints   session: the emulators of localstack/stack.py, started on first use and
                       stopped at session end (an `Endpoints`: s3_url, gcs_url, azure_blob_url,
                       azure_connection_string, credentials, env()). Sets AWS_ACCESS_KEY_ID /
                       AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION for the session. With
                       CLOUDBM_LOCALSTACK_ENDPOINTS=path/to/endpoints.json it reuses a stack
                       started by `localstack/start` instead. An emulator that does not start is
                       an error, never a skip.
s3_client, gcs_client, azure_service_client
                       session: raw SDK clients pointed at the emulators.
s3_bucket, gcs_bucket, azure_container
                       function: a freshly created, uniquely named bucket/container.
storage_target         function, parametrized over BACKENDS (ids local, s3, gcs, azure): a
                       `StorageTarget` (url + StorageOptions) for a fresh location; call
                       `.open(**option_overrides)` for a Storage, `.sibling(suffix)` for a
                       neighbouring prefix in the same bucket. Narrow it with
                       `@pytest.mark.parametrize("storage_target", ["s3"], indirect=True)`.
storage                function: `storage_target.open()`, closed at teardown.

A backend whose module does not exist yet is skipped with a reason; once the module exists the
parameter runs (an ImportError from inside the module is a failure, not a skip).
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cloudbm.storage.base import Storage, StorageOptions
from cloudbm.storage.url import open_storage
from tests.conftest import load_localstack

if TYPE_CHECKING:
    from localstack.stack import Endpoints

BACKENDS = ("local", "s3", "gcs", "azure")
BACKEND_MODULES = {
    "local": "cloudbm.storage.local",
    "s3": "cloudbm.storage.s3",
    "gcs": "cloudbm.storage.gcs",
    "azure": "cloudbm.storage.azure",
}
REPO_PREFIX = "pg/main"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def unique_name(prefix: str = "cbm") -> str:
    """A bucket/container name valid on S3, GCS and Azure (3-63 chars, lower-case, digits, -)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# --- the stack -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def localstack_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    stack = load_localstack()
    handle = None
    reuse = os.environ.get("CLOUDBM_LOCALSTACK_ENDPOINTS")
    if reuse:
        endpoints = stack.Endpoints.load(reuse)
    else:
        try:
            endpoints, handle = stack.start(
                stack.DEFAULT_SERVICES,
                tmp_path_factory.mktemp("localstack"),
                auto_install=True,
            )
        except stack.StackError as exc:
            pytest.fail(f"the local cloud stack did not start:\n{exc}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", endpoints.aws_access_key_id)
            mp.setenv("AWS_SECRET_ACCESS_KEY", endpoints.aws_secret_access_key)
            mp.setenv("AWS_DEFAULT_REGION", endpoints.region)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            # Nothing from the developer's own AWS setup may leak into the tests.
            for name in (
                "AWS_PROFILE",
                "AWS_SESSION_TOKEN",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
            ):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_CONFIG_FILE", os.devnull)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            mp.setenv("NO_PROXY", "127.0.0.1,localhost")
            yield endpoints
    finally:
        if handle is not None:
            handle.stop()


@pytest.fixture(scope="session")
def s3_client(localstack_endpoints: Endpoints) -> Any:
    import boto3
    from botocore.config import Config

    ep = localstack_endpoints
    return boto3.client(
        "s3",
        endpoint_url=ep.s3_url,
        region_name=ep.region,
        aws_access_key_id=ep.aws_access_key_id,
        aws_secret_access_key=ep.aws_secret_access_key,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def gcs_client(localstack_endpoints: Endpoints) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    ep = localstack_endpoints
    return gcs.Client(
        project=ep.gcs_project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": ep.gcs_url},
    )


@pytest.fixture(scope="session")
def azure_service_client(localstack_endpoints: Endpoints) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(localstack_endpoints.azure_connection_string)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = unique_name("s3")
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def gcs_bucket(gcs_client: Any) -> str:
    name = unique_name("gcs")
    gcs_client.create_bucket(name)
    return name


@pytest.fixture
def azure_container(azure_service_client: Any) -> str:
    name = unique_name("az")
    azure_service_client.create_container(name)
    return name


# --- storage targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageTarget:
    """A fresh repository location on one backend and the options that reach it."""

    backend: str
    url: str
    options: StorageOptions

    def open(self, **overrides: Any) -> Storage:
        return open_storage(self.url, replace(self.options, **overrides))

    def sibling(self, suffix: str) -> StorageTarget:
        """The location whose URL is this one's plus `suffix` (e.g. '-other'): same bucket,
        a prefix that shares this one's leading characters."""
        if self.backend == "local":
            Path(self.url.removeprefix("file://") + suffix).mkdir(parents=True, exist_ok=True)
        return replace(self, url=self.url + suffix)


def _require_backend(backend: str) -> None:
    module = BACKEND_MODULES[backend]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            pytest.skip(f"backend {backend!r}: {module} does not exist yet")
        raise


@pytest.fixture(params=BACKENDS)
def storage_target(request: pytest.FixtureRequest, tmp_path: Path) -> StorageTarget:
    backend: str = request.param
    _require_backend(backend)
    if backend == "local":
        root = tmp_path / "repo"
        root.mkdir()
        return StorageTarget("local", f"file://{root}", StorageOptions())
    ep: Endpoints = request.getfixturevalue("localstack_endpoints")
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return StorageTarget(
            "s3",
            f"s3://{bucket}/{REPO_PREFIX}",
            StorageOptions(
                s3_endpoint_url=ep.s3_url, s3_region=ep.region, s3_addressing_style="path"
            ),
        )
    if backend == "gcs":
        bucket = request.getfixturevalue("gcs_bucket")
        return StorageTarget(
            "gcs",
            f"gs://{bucket}/{REPO_PREFIX}",
            StorageOptions(gcs_endpoint_url=ep.gcs_url, gcs_project=ep.gcs_project),
        )
    container = request.getfixturevalue("azure_container")
    return StorageTarget(
        "azure",
        f"azure://{container}/{REPO_PREFIX}",
        StorageOptions(azure_connection_string=ep.azure_connection_string),
    )


@pytest.fixture
def storage(storage_target: StorageTarget) -> Iterator[Storage]:
    store = storage_target.open()
    try:
        yield store
    finally:
        store.close()
