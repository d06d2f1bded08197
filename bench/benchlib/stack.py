"""The one endpoint every tool talks to: moto S3 behind a stunnel TLS front."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import (
    ACCESS_KEY,
    CLOUDBM_VENV,
    REGION,
    REPO_DIR,
    SECRET_KEY,
    STUNNEL,
    free_port,
    is_segment_object,
    log,
    mkdirs,
    wait_port,
)
from .measure import proc_cpu


class Stack:
    """moto S3 server + stunnel TLS front. Uses localstack/stack.py when it provides a usable
    S3 endpoint, else starts its own moto_server and stunnel (or BENCH_OWN_STACK=1)."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "stack"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.moto_port = self.tls_port = 0
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        self.server_pids: list[int] = []
        self.how = "own"
        self._handle: Any = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def _cert(self) -> None:
        if self.cert.exists() and self.key.exists():
            return
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "3650",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )
        os.chmod(self.cert, 0o644)
        os.chmod(self.key, 0o600)

    def start(self) -> None:
        mkdirs(self.dir)
        stack_py = REPO_DIR / "localstack" / "stack.py"
        if stack_py.exists() and not os.environ.get("BENCH_OWN_STACK"):
            try:
                self._start_localstack(stack_py)
                return
            except Exception as e:
                log(f"stack: localstack/stack.py failed ({e}); starting moto + stunnel myself")
                self.stop()
        self._start_own()

    def _start_localstack(self, stack_py: Path) -> None:
        spec = importlib.util.spec_from_file_location("cloudbm_localstack", stack_py)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {stack_py}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses need the module registered
        spec.loader.exec_module(mod)
        work = self.dir / "localstack"
        mkdirs(work)
        # stack.py prefers the running interpreter's moto: pin the project's venv instead
        os.environ.setdefault("CLOUDBM_VENV", str(CLOUDBM_VENV))
        ep, handle = mod.start(("s3", "s3-tls"), workdir=work, timeout=60)
        self._handle = handle
        self.moto_port = ep.ports["s3"]
        self.tls_port = ep.ports["s3-tls"]
        self.cert = Path(ep.tls_ca_file)
        for d in [self.cert.parent, *self.cert.parent.parents]:
            os.chmod(d, os.stat(d).st_mode | 0o005)  # postgres reads the CA file
        os.chmod(self.cert, 0o644)
        self.server_pids = [svc.pid for svc in handle.services]
        self.how = "localstack/stack.py"
        log(f"stack (localstack/stack.py): moto {self.http_url}, stunnel TLS {self.https_url}")

    def _start_own(self) -> None:
        self._cert()
        logf = open(self.dir / "servers.log", "ab")  # noqa: SIM115 (kept open by the servers)
        self.moto_port = free_port()
        moto = [
            str(CLOUDBM_VENV / "bin" / "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(self.moto_port),
        ]
        if not Path(moto[0]).exists():
            moto = [
                sys.executable,
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.moto_port),
            ]
        p = subprocess.Popen(moto, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(self.moto_port, 60, p)
        self.tls_port = free_port()
        conf = self.dir / "stunnel.conf"
        conf.write_text(f"""foreground = yes
pid =
output = {self.dir / "stunnel.log"}
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[s3]
accept = 127.0.0.1:{self.tls_port}
connect = 127.0.0.1:{self.moto_port}
cert = {self.cert}
key = {self.key}
""")
        p = subprocess.Popen(
            [STUNNEL, str(conf)], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL
        )
        self.procs.append(p)
        wait_port(self.tls_port, 30, p)
        self.server_pids = [p.pid for p in self.procs]
        log(f"stack: moto {self.http_url}, stunnel TLS {self.https_url} (cert {self.cert})")

    def server_cpu(self) -> float:
        """CPU seconds moto and stunnel have used so far."""
        return sum(proc_cpu(pid) for pid in self.server_pids)

    def s3(self) -> Any:
        """A boto3 client on the plain-HTTP port (the bench's own listings, not timed)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.http_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> None:
        c = self.s3()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=name)

    def usage(self, bucket: str, prefix: str) -> tuple[int, int, int]:
        """(bytes, objects, distinct segments) under a bucket prefix."""
        c = self.s3()
        total = n = 0
        segs: set[str] = set()
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                total += o["Size"]
                n += 1
                if is_segment_object(o["Key"]):
                    segs.add(o["Key"].rsplit("/", 1)[-1][:24])
        return total, n, len(segs)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.stop()
            self._handle = None
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
