"""The tools under test, one adapter each: cloudbm, pgBackRest, barman-cloud and the floor.

An adapter knows its tool's commands, configuration and repository layout, for both
benchmarks:

* WAL (bench/wal_bench.py): `prepare_wal` writes the push and fetch configurations for two fake
  PGDATAs; `push_argv` / `fetch_argv` are one archive_command / restore_command call;
  `wal_stored` is what the archive holds. (The floor has no WAL role.)
* base backup (bench/backup_bench.py): `setup_backup` configures the tool for a running cluster
  and writes its archive_command script (`archive`); `backup_argv`, `restore_argv` and
  `post_restore` (recovery settings the tool does not write itself); `backup_stored`.

Where a tool works is a `Site`: its scratch directory and its repository, either a prefix of
the bucket behind the stack's TLS endpoint or a local directory `<dir>/repo`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cluster import Cluster, PgUser
from .common import (
    ACCESS_KEY,
    BENCH_VENV,
    BUCKET,
    CLOUDBM,
    GENERATED,
    PG_BIN,
    PGBACKREST,
    REGION,
    REPO_DIR,
    SECRET_KEY,
    dir_bytes,
    du,
    log,
    mkdirs,
    sh_env,
    tool_version,
    write_script,
)
from .stack import Stack

Role = Literal["wal", "backup"]
Usage = tuple[int, int, int]  # bytes, objects, distinct WAL segments
WAL_TOOLS = ("cloudbm", "pgbackrest", "barman")
BACKUP_TOOLS = ("cloudbm", "cloudbm-keyfile", "pgbackrest", "barman", "floor")
PEERS = ("pgbackrest", "barman")


@dataclass(frozen=True)
class Site:
    """Where one tool works: its scratch directory, the user it runs as (HOME = `home`), and
    its repository: `prefix` in the bucket behind `stack`'s TLS endpoint, or, without a stack,
    the local directory <dir>/repo."""

    user: PgUser
    home: Path
    dir: Path
    stack: Stack | None
    prefix: str = ""
    bucket: str = BUCKET

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def usage(self, sub: str) -> Usage:
        """What the repository holds under <prefix>/<sub> (ListObjectsV2 on the emulator)."""
        if self.stack is None:
            raise RuntimeError(f"{self.dir}: a local repository has no bucket")
        return self.stack.usage(self.bucket, f"{self.prefix}/{sub}")


class Tool:
    """One tool under test (see the module docstring for the two roles)."""

    key = "?"
    # takes its S3 credentials and CA bundle from the environment (boto3 does)
    reads_aws_env = False

    def __init__(self, site: Site) -> None:
        self.site = site
        self.user = site.user
        self.dir = site.dir
        mkdirs(self.dir)
        self.user.chown(self.dir)
        self.archive = Path("/bin/false")  # the archive_command script, from setup_backup

    @property
    def stack(self) -> Stack:
        if self.site.stack is None:
            raise RuntimeError(f"{self.key}: this run has no S3 endpoint")
        return self.site.stack

    def env(self) -> dict[str, str]:
        e = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.site.home),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
        }
        if self.reads_aws_env and self.site.stack is not None:
            e.update(
                AWS_ACCESS_KEY_ID=ACCESS_KEY,
                AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_DEFAULT_REGION=REGION,
                AWS_CA_BUNDLE=str(self.site.stack.cert),
                AWS_EC2_METADATA_DISABLED="true",
            )
        return e

    def label(self, role: Role) -> str:
        raise NotImplementedError

    def version(self, role: Role) -> str:
        raise NotImplementedError

    def _unsupported(self, what: str) -> RuntimeError:
        return RuntimeError(f"{self.key} has no {what}")

    # ---- WAL archive and restore, one process per segment
    def prepare_wal(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        raise self._unsupported("WAL role")

    def push_argv(self, seg: str) -> list[str]:
        raise self._unsupported("WAL role")

    def fetch_argv(self, seg: str) -> list[str]:
        raise self._unsupported("WAL role")

    def wal_stored(self) -> Usage:
        raise self._unsupported("WAL role")

    # ---- base backup, restore, replay of a running cluster
    def setup_backup(self, cluster: Cluster) -> None:
        raise self._unsupported("backup role")

    def archive_cmd(self) -> str:
        return f"{self.archive} %p"

    def backup_argv(self) -> list[str]:
        raise self._unsupported("backup role")

    def restore_argv(self, dest: Path, mode: str) -> list[str]:
        raise self._unsupported("backup role")

    def post_restore(self, dest: Path, mode: str) -> None:
        """Recovery settings the tool's restore does not write itself (mode "immediate":
        stop at consistency and promote; "latest": replay the whole archive)."""

    def backup_stored(self) -> dict[str, int]:
        """backup_bytes: the base backups alone; total_bytes: with the WAL archived meanwhile."""
        raise self._unsupported("backup role")

    def _s3_stored(self, backups: str) -> dict[str, int]:
        return {"backup_bytes": self.site.usage(backups)[0], "total_bytes": self.site.usage("")[0]}

    def _recovery_settings(self, dest: Path, why: str, restore_command: str, mode: str) -> None:
        lines = f"restore_command = '{restore_command}'\n"
        if mode == "immediate":
            lines += "recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n"
        with open(dest / "postgresql.auto.conf", "a") as f:
            f.write(f"# cloudbm bench: {why}\n" + lines)
        (dest / "recovery.signal").touch()
        self.user.chown(dest / "recovery.signal")


_ENCRYPTION_LABEL = {"none": "no encryption", "keyfile": "keyfile AES-256-GCM"}


class Cloudbm(Tool):
    reads_aws_env = True

    def __init__(
        self,
        site: Site,
        *,
        encryption: str = "none",
        compression: str = "zstd",
        push_ahead: int = 8,
        prefetch: int = 8,
        jobs: int = 2,
        pythonpath: str = "",
        source: str = "",
    ) -> None:
        """`pythonpath`: where the cloudbm package comes from (default: what CLOUDBM's venv
        has installed); `source`: how to name that in the version (see cloudbm_source)."""
        self.key = "cloudbm" if encryption == "none" else f"cloudbm-{encryption}"
        super().__init__(site)
        self.encryption = encryption
        self.compression = compression
        self.push_ahead, self.prefetch, self.jobs = push_ahead, prefetch, jobs
        self.pythonpath = pythonpath
        self.source = source

    def label(self, role: Role) -> str:
        if role == "wal":
            return "cloudbm"
        return f"cloudbm (zstd 1, {_ENCRYPTION_LABEL.get(self.encryption, self.encryption)})"

    def version(self, role: Role) -> str:
        v = tool_version([CLOUDBM, "--version"])
        return f"{v} ({self.source})" if self.source else v

    def env(self) -> dict[str, str]:
        e = super().env()
        if self.pythonpath:
            e["PYTHONPATH"] = self.pythonpath
        return e

    def _key_file(self) -> Path | None:
        if self.encryption != "keyfile":
            return None
        kf = self.dir / "key"
        if not kf.exists():
            self.user.run([CLOUDBM, "keygen", "--type", "symmetric", kf], env=self.env())
        return kf

    def _config(
        self,
        name: str,
        pgdata: Path,
        spool: Path,
        tuning: dict[str, int],
        conninfo: str | None = None,
    ) -> Path:
        key_file = self._key_file()
        mkdirs(spool, mode=0o750)
        self.user.chown(spool)
        stack = self.site.stack
        cfg: dict[str, str | int] = {
            "repository": self.site.url if stack else f"file://{self.dir / 'repo'}",
            "pgdata": str(pgdata),
        }
        if conninfo:
            cfg["conninfo"] = conninfo
        if stack:
            cfg |= {
                "s3_endpoint_url": stack.https_url,
                "s3_region": REGION,
                "s3_addressing_style": "path",
            }
        cfg |= {"compression": self.compression, "encryption": self.encryption}
        if key_file:
            cfg["key_file"] = str(key_file)
        cfg |= tuning
        cfg["spool_directory"] = str(spool)
        path = self.dir / name
        path.write_text(
            GENERATED
            + "[servers.bench]\n"
            + "".join(
                f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in cfg.items()
            )
        )
        os.chmod(path, 0o644)
        return path

    def command(self) -> list[str]:
        """How the WAL phases start cloudbm (a version under test starts its own tree)."""
        return [CLOUDBM]

    def prepare_wal(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        tuning = {"wal_push_ahead": self.push_ahead, "wal_prefetch": self.prefetch}
        # a spool per phase, fresh, like pgBackRest's spool-path
        self.push_cfg = self._config("push.toml", push_pgdata, self.dir / "spool-push", tuning)
        self.fetch_cfg = self._config("fetch.toml", fetch_pgdata, self.dir / "spool-fetch", tuning)
        if self.site.stack is None:
            mkdirs(self.dir / "repo")
            self.user.chown(self.dir / "repo")
        init = [*self.command(), "--config", self.push_cfg, "init"]
        self.user.run(init, cwd=push_pgdata, env=self.env())

    def push_argv(self, seg: str) -> list[str]:
        return [*self.command(), "--config", str(self.push_cfg), "wal-push", f"pg_wal/{seg}"]

    def fetch_argv(self, seg: str) -> list[str]:
        cfg = str(self.fetch_cfg)
        return [*self.command(), "--config", cfg, "wal-fetch", seg, "pg_wal/RECOVERYXLOG"]

    def wal_stored(self) -> Usage:
        return self.site.usage("") if self.site.stack else dir_bytes(self.dir / "repo")

    def setup_backup(self, cluster: Cluster) -> None:
        c = cluster
        self.cfg = self._config(
            "cloudbm.toml",
            c.pgdata,
            self.dir / "spool",
            {"jobs": self.jobs},
            conninfo=f"host={c.sock} port={c.port} user=postgres dbname=postgres",
        )
        self.archive = write_script(
            self.dir / "archive-cloudbm.sh",
            sh_env(self.env()) + f'exec {CLOUDBM} --config {self.cfg} wal-push "$1"\n',
        )

    def backup_argv(self) -> list[str]:
        argv = [CLOUDBM, "--config", str(self.cfg), "backup-push", "--no-progress"]
        return [*argv, "--jobs", str(self.jobs)]

    def restore_argv(self, dest: Path, mode: str) -> list[str]:
        # recover writes recovery.signal and restore_command (its own wal-fetch)
        argv = [CLOUDBM, "--config", str(self.cfg), "recover", "latest", str(dest)]
        if mode == "immediate":
            argv += ["--target-immediate", "--target-action", "promote"]
        return [*argv, "--archive-mode", "off", "--no-progress", "--jobs", str(self.jobs)]

    def backup_stored(self) -> dict[str, int]:
        return self._s3_stored("backups/")


class PgBackRest(Tool):
    key = "pgbackrest"

    def __init__(
        self, site: Site, *, async_: bool = True, process_max: int = 2, compress: str = "zst"
    ) -> None:
        """`async_`: archive-async for the WAL role (the backup role fixes its own: a
        synchronous archive-push while backing up, an async archive-get when restoring)."""
        super().__init__(site)
        self.async_ = async_
        self.process_max = process_max
        self.compress = compress

    def label(self, role: Role) -> str:
        if role == "wal":
            return "pgBackRest (async)" if self.async_ else "pgBackRest (sync)"
        return f"pgBackRest ({self.compress}, process-max {self.process_max})"

    def version(self, role: Role) -> str:
        return tool_version([PGBACKREST, "version"])

    def _conf(self, name: str, pg1_path: Path, async_: bool, cluster: Cluster | None) -> Path:
        """pgbackrest-<name>.conf with its own spool and lock directories; with `cluster`, the
        configuration of a backup of that running server."""
        spool = self.dir / f"spool-{name}"
        logd = self.dir / "log"
        lock = self.dir / f"lock-{name}"
        for d in (spool, logd, lock):
            mkdirs(d, mode=0o750)
            self.user.chown(d)
        stack = self.site.stack
        opts: dict[str, object]
        if stack:
            opts = {
                "repo1-type": "s3",
                "repo1-path": f"/{self.site.prefix}",
                "repo1-s3-bucket": self.site.bucket,
                "repo1-s3-endpoint": "127.0.0.1",
                "repo1-storage-port": stack.tls_port,
                "repo1-s3-region": REGION,
                "repo1-s3-key": ACCESS_KEY,
                "repo1-s3-key-secret": SECRET_KEY,
                "repo1-s3-uri-style": "path",
                "repo1-storage-verify-tls": "n",
            }
        else:
            opts = {"repo1-type": "posix", "repo1-path": self.dir / "repo"}
        if cluster:
            opts["repo1-retention-full"] = 99
        opts |= {"process-max": self.process_max, "compress-type": self.compress}
        if cluster:
            opts["start-fast"] = "y"
        opts |= {
            "archive-async": "y" if async_ else "n",
            "spool-path": spool,
            "log-path": logd,
            "lock-path": lock,
            "log-level-console": "warn",
            "log-level-stderr": "warn",
            "log-level-file": "off" if cluster else "warn",
        }
        stanza: dict[str, object] = {"pg1-path": pg1_path}
        if cluster:
            stanza |= {"pg1-socket-path": cluster.sock, "pg1-port": cluster.port}
        text = (
            GENERATED
            + "[global]\n"
            + "".join(f"{k}={v}\n" for k, v in opts.items())
            + "[bench]\n"
            + "".join(f"{k}={v}\n" for k, v in stanza.items())
        )
        p = self.dir / f"pgbackrest-{name}.conf"
        p.write_text(text)
        os.chmod(p, 0o640)
        self.user.chown(p)
        return p

    @staticmethod
    def _cmd(conf: Path) -> list[str]:
        return [PGBACKREST, f"--config={conf}", "--stanza=bench"]

    def _run(self, conf: Path, *args: str) -> None:
        self.user.run([*self._cmd(conf), *args], env=self.env())

    def prepare_wal(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        if self.site.stack is None:
            mkdirs(self.dir / "repo", mode=0o750)
            self.user.chown(self.dir / "repo")
        # pg1-path must be the fake PGDATA: pgBackRest resolves the relative %p against it and
        # its async process scans pg1-path/pg_wal/archive_status
        self.push_conf = self._conf("push", push_pgdata, self.async_, None)
        self.fetch_conf = self._conf("fetch", fetch_pgdata, self.async_, None)
        # --no-online: the corpus cluster is stopped; pgBackRest reads the system id and
        # version from pg1-path/global/pg_control (the fake PGDATA holds the corpus' copy).
        self._run(self.push_conf, "--no-online", "stanza-create")

    def push_argv(self, seg: str) -> list[str]:
        return [*self._cmd(self.push_conf), "archive-push", f"pg_wal/{seg}"]

    def fetch_argv(self, seg: str) -> list[str]:
        return [*self._cmd(self.fetch_conf), "archive-get", seg, "pg_wal/RECOVERYXLOG"]

    def wal_stored(self) -> Usage:
        if self.site.stack:
            return self.site.usage("archive/")
        return dir_bytes(self.dir / "repo" / "archive")

    def setup_backup(self, cluster: Cluster) -> None:
        # archive-push synchronous while backing up: nothing detached, so the backup's CPU
        # is exactly the backup command's process tree (as for the other tools)
        self.cluster = cluster
        self.cfg = self._conf("main", cluster.pgdata, False, cluster)
        self._run(self.cfg, "stanza-create")
        self.archive = write_script(
            self.dir / "archive-pgbackrest.sh",
            f'exec {PGBACKREST} --config={self.cfg} --stanza=bench archive-push "$1"\n',
        )

    def backup_argv(self) -> list[str]:
        return [*self._cmd(self.cfg), "--type=full", "backup"]

    def restore_argv(self, dest: Path, mode: str) -> list[str]:
        # the restored cluster's archive-get: async, process-max (the conf), its own spool
        self.rcfg = self._conf(f"restore-{dest.parent.name}", dest, True, self.cluster)
        argv = self._cmd(self.rcfg)
        if mode == "immediate":
            argv += ["--type=immediate", "--target-action=promote"]
        return [*argv, "restore"]

    def post_restore(self, dest: Path, mode: str) -> None:
        # pgBackRest wrote restore_command; pin it to the restore's config file explicitly
        with open(dest / "postgresql.auto.conf", "a") as f:
            f.write(
                "# cloudbm bench: the restore's config (archive-async=y, process-max)\n"
                f"restore_command = '{PGBACKREST} --config={self.rcfg} --stanza=bench "
                'archive-get %f "%p"\'\n'
            )

    def backup_stored(self) -> dict[str, int]:
        return self._s3_stored("backup/")


class Barman(Tool):
    key = "barman"
    reads_aws_env = True

    def __init__(
        self, site: Site, *, wal_compression: str = "lz4", parallel: int = 0, jobs: int = 2
    ) -> None:
        """`wal_compression`: barman-cloud-wal-archive's codec ("none": no flag); `parallel`:
        barman-cloud-wal-restore --parallel (0: its default, serial); `jobs`: the backup's."""
        super().__init__(site)
        self.wal_compression = wal_compression
        self.parallel = parallel
        self.jobs = jobs

    def label(self, role: Role) -> str:
        return "barman-cloud" if role == "wal" else f"barman-cloud (snappy, --jobs {self.jobs})"

    def version(self, role: Role) -> str:
        cmd = "barman-cloud-wal-archive" if role == "wal" else "barman-cloud-backup"
        return tool_version([self._bin(cmd), "--version"])

    @staticmethod
    def _bin(name: str) -> str:
        return str(BENCH_VENV / "bin" / name)

    def _cmd(self, name: str, *args: str) -> list[str]:
        """A barman-cloud command on the bench's endpoint (path-style, through the TLS port)."""
        endpoint = ["--endpoint-url", self.stack.https_url, "--addressing-style", "path"]
        return [self._bin(name), "--cloud-provider", "aws-s3", *endpoint, *args]

    def _archive_argv(self, path: str) -> list[str]:
        comp = [] if self.wal_compression == "none" else [f"--{self.wal_compression}"]
        return self._cmd("barman-cloud-wal-archive", *comp, self.site.url, "bench", path)

    def prepare_wal(self, push_pgdata: Path, fetch_pgdata: Path) -> None:
        if self.site.stack is None:
            raise RuntimeError("barman-cloud has no local-directory target")
        self.spool = self.dir / "spool"
        mkdirs(self.spool, mode=0o750)
        self.user.chown(self.spool)

    def push_argv(self, seg: str) -> list[str]:
        return self._archive_argv(f"pg_wal/{seg}")

    def fetch_argv(self, seg: str) -> list[str]:
        par = []
        if self.parallel:
            par = ["--parallel", str(self.parallel), "--spool-dir", str(self.spool)]
        return self._cmd(
            "barman-cloud-wal-restore", *par, self.site.url, "bench", seg, "pg_wal/RECOVERYXLOG"
        )

    def wal_stored(self) -> Usage:
        return self.site.usage("")

    def setup_backup(self, cluster: Cluster) -> None:
        self.cluster = cluster
        archive = self._archive_argv('"$1"')
        restore = self._cmd("barman-cloud-wal-restore", self.site.url, "bench", '"$1"', '"$2"')
        self.archive = write_script(
            self.dir / "archive-barman.sh", sh_env(self.env()) + f"exec {' '.join(archive)}\n"
        )
        self.restore = write_script(
            self.dir / "restore-barman.sh", sh_env(self.env()) + f"exec {' '.join(restore)}\n"
        )

    def backup_argv(self) -> list[str]:
        c = self.cluster
        pg = ["-h", str(c.sock), "-p", str(c.port), "-U", "postgres", "-d", "postgres"]
        return self._cmd(
            "barman-cloud-backup",
            *["--snappy", "--jobs", str(self.jobs), "--immediate-checkpoint", *pg],
            *[self.site.url, "bench"],
        )

    def restore_argv(self, dest: Path, mode: str) -> list[str]:
        return self._cmd("barman-cloud-restore", self.site.url, "bench", "latest", str(dest))

    def post_restore(self, dest: Path, mode: str) -> None:
        why = "barman-cloud-restore writes no recovery settings"
        self._recovery_settings(dest, why, f"{self.restore} %f %p", mode)

    def backup_stored(self) -> dict[str, int]:
        return self._s3_stored("bench/base/")


class Floor(Tool):
    """What the machine allows without any backup tool: pg_basebackup into a local directory,
    `cp -a` plus `sync` to restore, `cp` as archive_command and restore_command. No network,
    no compression, no encryption: the restore is bounded by the disk, the replay by
    PostgreSQL's redo. It is the yardstick for the other rows, not a peer."""

    key = "floor"

    def label(self, role: Role) -> str:
        return "floor: pg_basebackup + cp, local disk"

    def version(self, role: Role) -> str:
        return tool_version([str(PG_BIN / "pg_basebackup"), "--version"])

    def setup_backup(self, cluster: Cluster) -> None:
        self.wal = self.dir / "wal"
        self.base = self.dir / "base"
        mkdirs(self.wal, mode=0o750)
        self.user.chown(self.wal)
        self.archive = write_script(
            self.dir / "archive-floor.sh",
            f'f="{self.wal}/${{1##*/}}"\n'
            '[ -f "$f" ] || { cp "$1" "$f.tmp" && mv "$f.tmp" "$f"; }\n',
        )
        c = cluster
        self.backup_script = write_script(
            self.dir / "backup-floor.sh",
            f'rm -rf "{self.base}"\n'
            f"exec {PG_BIN / 'pg_basebackup'} -h {c.sock} -p {c.port} -U postgres "
            f'-D "{self.base}" -X none -c fast\n',
        )
        self.restore_script = write_script(
            self.dir / "restore-floor.sh",
            # sync: the other tools' restores are durable when they end, so this one must be
            'cp -a "$1/." "$2/" && exec sync -f "$2"\n',
        )

    def backup_argv(self) -> list[str]:
        return [str(self.backup_script)]

    def restore_argv(self, dest: Path, mode: str) -> list[str]:
        return [str(self.restore_script), str(self.base), str(dest)]

    def post_restore(self, dest: Path, mode: str) -> None:
        self._recovery_settings(dest, "the floor", f"cp {self.wal}/%f %p", mode)

    def backup_stored(self) -> dict[str, int]:
        return {"backup_bytes": du(self.base), "total_bytes": du(self.base) + du(self.wal)}


def cloudbm_source(pythonpath: str) -> str:
    """Where the cloudbm that runs comes from, and its commit: '<dir> @ <git describe>'."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    py = str(Path(CLOUDBM).parent / "python3")
    try:
        r = subprocess.run(
            [
                py,
                "-c",
                "import cloudbm,os;print(os.path.dirname(os.path.dirname(cloudbm.__file__)))",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        src = r.stdout.strip()
        rev = subprocess.run(
            ["git", "-C", src, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return f"{src} @ {rev}" if rev else src
    except Exception as e:
        return f"unknown ({e})"


def pin_cloudbm(workdir: str) -> str:
    """Export the checkout's committed cloudbm/ (HEAD) to <workdir>/cloudbm-src-<rev> and return
    it (a PYTHONPATH): the venv is an editable install, so commits landing mid-run would
    otherwise change what runs."""
    rev = subprocess.run(
        ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = Path(workdir) / f"cloudbm-src-{rev}"
    if not (dest / "cloudbm" / "__init__.py").exists():
        tmp = Path(workdir) / f".cloudbm-src-{rev}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        mkdirs(tmp)
        with subprocess.Popen(
            ["git", "-C", str(REPO_DIR), "archive", "HEAD", "cloudbm"], stdout=subprocess.PIPE
        ) as ga:
            subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=ga.stdout, check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        tmp.rename(dest)
    log(f"cloudbm pinned: {dest} (HEAD {rev} of {REPO_DIR})")
    return dest.as_posix()
