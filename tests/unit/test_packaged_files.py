"""Files shipped in cloudbm.data: systemd units and bash completion, checked against the parser."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cloudbm.data
from cloudbm.cli.parser import build_parser

DATA = Path(cloudbm.data.__file__).parent
SYSTEMD = DATA / "systemd"
COMPLETION = DATA / "completion" / "cloudbm.bash"
CLOUDBM_EXE = "/opt/cloudbm/venv/bin/cloudbm"
UNITS = (
    "cloudbm-backup@.service",
    "cloudbm-backup@.timer",
    "cloudbm-retention.service",
    "cloudbm-retention.timer",
    "cloudbm-metrics.service",
    "cloudbm-metrics.timer",
)
SERVICES = [u for u in UNITS if u.endswith(".service")]
# Commands another change is adding; the completion offers them already.
PENDING = {"check", "diagnose", "metrics"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """The user-facing commands (internal workers have no help and are not listed)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest for a in action._choices_actions}
            return {n: p for n, p in action.choices.items() if n in listed}
    raise AssertionError("no subcommands")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((SYSTEMD / name).read_text(), source=name)
    return cp


def _cloudbm_argv(exec_start: str) -> list[str]:
    """The cloudbm arguments in an ExecStart=, also inside `/bin/sh -c '...'`."""
    words = shlex.split(exec_start.replace("%i", "main"))
    if words[:2] == ["/bin/sh", "-c"]:
        words = shlex.split(words[2])
    assert CLOUDBM_EXE in words, exec_start
    argv = words[words.index(CLOUDBM_EXE) + 1 :]
    for stop in ("&&", "||", ";", "|", ">"):
        if stop in argv:
            argv = argv[: argv.index(stop)]
    return argv


# --- systemd units ------------------------------------------------------------------------


def test_every_file_is_shipped_in_the_package() -> None:
    for name in UNITS:
        assert (SYSTEMD / name).is_file(), name
    assert COMPLETION.is_file()


@pytest.mark.parametrize("name", UNITS)
def test_unit_parses_as_ini(name: str) -> None:
    cp = _unit(name)
    kind = "Service" if name.endswith(".service") else "Timer"
    assert set(cp.sections()) <= {"Unit", "Service", "Timer", "Install"}
    assert cp.has_section("Unit") and cp.has_section(kind)
    assert cp["Unit"]["Description"]
    if kind == "Service":
        service = cp["Service"]
        assert service["Type"] == "oneshot"
        assert service["User"] == "postgres"
        assert service.get("Restart", "no") == "no"
        assert service["TimeoutStartSec"]
        assert service["EnvironmentFile"].startswith("-/etc/cloudbm/")
    else:
        assert cp["Install"]["WantedBy"] == "timers.target"
        assert (SYSTEMD / name.replace(".timer", ".service")).is_file()


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_an_existing_cloudbm_command(name: str) -> None:
    argv = _cloudbm_argv(_unit(name)["Service"]["ExecStart"])
    command = next(w for w in argv if w in _subcommands() or w in PENDING)
    if command not in _subcommands():
        pytest.skip(f"cloudbm {command} is not in the parser yet")
    build_parser().parse_args(argv)  # raises on an unknown command or flag


def test_metrics_file_is_replaced_atomically() -> None:
    script = shlex.split(_unit("cloudbm-metrics.service")["Service"]["ExecStart"])[2]
    final = "/var/lib/prometheus/node-exporter/cloudbm.prom"
    assert f"> {final}.tmp && mv -f {final}.tmp {final}" in script


def test_backup_timer_is_daily_and_persistent() -> None:
    timer = _unit("cloudbm-backup@.timer")["Timer"]
    assert timer["OnCalendar"] == "*-*-* 02:00:00"
    assert timer["Persistent"] == "true"
    assert timer["RandomizedDelaySec"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
@pytest.mark.skipif(not os.access(CLOUDBM_EXE, os.X_OK), reason=f"no {CLOUDBM_EXE}")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    names = []
    for name in UNITS:
        instance = name.replace("@.", "@main.")
        shutil.copy(SYSTEMD / name, tmp_path / instance)
        names.append(instance)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "cloudbm" in line]
    assert not ours, "\n".join(ours)


# --- bash completion ----------------------------------------------------------------------

RUN = r"""
source "$0"
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
_cloudbm
printf '%s\n' "${COMPREPLY[@]}"
"""


def _complete(*words: str, cwd: Path | None = None) -> list[str]:
    """COMPREPLY for a command line whose last word is being completed."""
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", RUN, str(COMPLETION), *words],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert proc.stderr == ""
    return [w for w in proc.stdout.splitlines() if w]


@pytest.fixture
def fake(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in cloudbm that logs its arguments and knows two servers and two backups."""
    log = tmp_path / "calls"
    listing = json.dumps(
        {"backups": [{"backup_id": "20261121T020000"}, {"backup_id": "20261122T020000"}]},
        indent=2,
    )
    exe = tmp_path / "cloudbm"
    exe.write_text(
        f"""#!/bin/sh
echo "$*" >> {shlex.quote(str(log))}
case "$*" in
  *list-servers) printf 'main\\nreplica\\n' ;;
  *"--json backup-list") cat <<'EOF'
{listing}
EOF
  ;;
  *) exit 2 ;;
esac
"""
    )
    exe.chmod(0o755)
    return str(exe), log


def test_completion_is_registered() -> None:
    proc = subprocess.run(
        ["bash", "--norc", "-c", 'source "$0"; complete -p cloudbm', str(COMPLETION)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "complete -F _cloudbm cloudbm"


def test_commands_match_the_parser() -> None:
    offered = set(_complete("cloudbm", ""))
    parser = set(_subcommands())
    assert parser <= offered
    assert offered - parser <= PENDING
    assert _complete("cloudbm", "backup-") == ["backup-push", "backup-list", "backup-show"]


def test_global_flags_match_the_parser() -> None:
    assert set(_complete("cloudbm", "-")) == set(_options(build_parser()))


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_command_flags_and_choices_match_the_parser(command: str) -> None:
    options = _options(_subcommands()[command])
    assert set(_complete("cloudbm", "--json", command, "-")) == set(options)
    for flag, action in options.items():
        if action.choices:
            assert _complete("cloudbm", command, flag, "") == list(action.choices), flag


def test_server_names_come_from_list_servers(fake: tuple[str, Path]) -> None:
    exe, log = fake
    assert _complete(exe, "--config", "/etc/x.toml", "--server", "") == ["main", "replica"]
    assert _complete(exe, "retention", "") == ["all", "main", "replica"]
    assert _complete(exe, "backup-list", "r") == ["replica"]
    assert _complete(exe, "retention", "main", "") == []
    assert log.read_text().splitlines()[0] == "--config /etc/x.toml list-servers"


def test_backup_ids_come_from_backup_list(fake: tuple[str, Path]) -> None:
    exe, log = fake
    ids = ["latest", "last", "oldest", "first", "20261121T020000", "20261122T020000"]
    assert _complete(exe, "--config", "/c.toml", "--server", "db", "backup-show", "") == ids
    assert _complete(exe, "keep", "--target", "full", "2026112") == ids[4:]
    assert _complete(exe, "delete", "--force", "20261122") == ["20261122T020000"]
    # bash splits --config=FILE into --config, =, FILE
    assert _complete(exe, "--config", "=", "/d.toml", "verify", "o") == ["oldest"]
    assert log.read_text().splitlines() == [
        "--config /c.toml --server db --json backup-list",
        "--json backup-list",
        "--json backup-list",
        "--config /d.toml --json backup-list",
    ]


def test_lookup_failures_are_quiet(tmp_path: Path) -> None:
    exe = tmp_path / "cloudbm"
    exe.write_text("#!/bin/sh\necho 'cloudbm: ERROR: storage unreachable' >&2\nexit 4\n")
    exe.chmod(0o755)
    assert _complete(str(exe), "backup-show", "") == ["latest", "last", "oldest", "first"]
    assert _complete(str(exe), "--server", "") == []


def test_recover_completes_an_id_then_a_directory(fake: tuple[str, Path], tmp_path: Path) -> None:
    exe, _ = fake
    (tmp_path / "restore").mkdir()
    (tmp_path / "rfile").write_text("")
    assert _complete(exe, "recover", "r", cwd=tmp_path) == ["restore"]
    assert _complete(exe, "recover", "latest", "r", cwd=tmp_path) == ["restore"]
    assert _complete(exe, "recover", "la", cwd=tmp_path) == ["latest", "last"]
    assert _complete(exe, "recover", "--target-action", "pr") == ["promote"]
    assert _complete(exe, "recover", "--target-time", "") == []


def test_real_list_servers(tmp_path: Path) -> None:
    exe = shutil.which("cloudbm", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("no cloudbm script beside this interpreter")
    config = tmp_path / "cloudbm.toml"
    config.write_text(
        '[servers.main]\nrepository = "file:///nonexistent/a"\n'
        '[servers.reporting]\nrepository = "file:///nonexistent/b"\n'
    )
    assert _complete(exe, "--config", str(config), "--server", "") == ["main", "reporting"]
    assert _complete(exe, "--config", str(config), "backup-show", "") == [
        "latest",
        "last",
        "oldest",
        "first",
    ]
