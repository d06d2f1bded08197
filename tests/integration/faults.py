"""Putting the fault-injecting proxy (localstack/faultproxy.py) between cloudbm and an emulator.

`start_proxy(backend, endpoints, ...)` starts a FaultProxy in front of that backend's emulator;
`through_proxy` rewrites a StorageTarget (unit-level storage tests) or a RepoTarget (end-to-end
tests with a cloudbm configuration) so that every request goes through the proxy.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, TypeVar

from tests.conftest import load_faultproxy

T = TypeVar("T")

PROXIED_BACKENDS = ("s3", "gcs", "azure")


def upstream_url(backend: str, endpoints: Any) -> str:
    """http://127.0.0.1:PORT of the emulator behind `backend`."""
    if backend == "s3":
        return str(endpoints.s3_url)
    if backend == "gcs":
        return str(endpoints.gcs_url)
    if backend == "azure":
        return str(endpoints.azure_blob_url).rsplit("/", 1)[0]
    raise ValueError(f"no emulator behind backend {backend!r}")


def start_proxy(backend: str, endpoints: Any, **kwargs: Any) -> Any:
    """A running FaultProxy in front of `backend`'s emulator (close() it, or use `with`)."""
    return load_faultproxy().FaultProxy(upstream_url(backend, endpoints), **kwargs)


def _azure_via(connection_string: str, proxy_url: str) -> str:
    return re.sub(r"BlobEndpoint=http://[^/;]+/", f"BlobEndpoint={proxy_url}/", connection_string)


def through_proxy(target: T, proxy: Any) -> T:
    """The same location, reached through `proxy` (a StorageTarget or a RepoTarget)."""
    url = str(proxy.url)
    backend = target.backend  # type: ignore[attr-defined]
    if hasattr(target, "options"):  # StorageTarget
        options = target.options
        if backend == "s3":
            options = replace(options, s3_endpoint_url=url)
        elif backend == "gcs":
            options = replace(options, gcs_endpoint_url=url)
        elif backend == "azure":
            assert options.azure_connection_string
            options = replace(
                options, azure_connection_string=_azure_via(options.azure_connection_string, url)
            )
        return replace(target, options=options)  # type: ignore[type-var]
    keys = dict(target.keys)  # type: ignore[attr-defined]
    env = dict(target.env)  # type: ignore[attr-defined]
    if backend == "s3":
        keys["s3_endpoint_url"] = url
    elif backend == "gcs":
        keys["gcs_endpoint_url"] = url
    elif backend == "azure":
        env["AZURE_STORAGE_CONNECTION_STRING"] = _azure_via(
            env["AZURE_STORAGE_CONNECTION_STRING"], url
        )
    return replace(target, keys=keys, env=env)  # type: ignore[type-var]
