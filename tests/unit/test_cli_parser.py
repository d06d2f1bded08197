"""The command line's parser and dispatch table: global options before or after the command,
usage errors as one line and the documented status, every row of the table resolvable."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cloudbm
from cloudbm.cli import arguments, main, parse
from cloudbm.cli.dispatch import COMMANDS, handler
from cloudbm.cli.parser import UsageError, build_parser, parse_args
from cloudbm.errors import EXIT_USAGE

PACKAGE = Path(cloudbm.__file__).parent
REPO = ["--repo", "file:///nonexistent/cloudbm-parser-test"]

# (command and its own arguments, global options): each global option, before and after.
CALLS = [
    (["backup-list"], ["--json"]),
    (["backup-list", "all"], ["--config", "/etc/x.toml", "--server", "db"]),
    (["wal-fetch", "000000010000000000000001", "pg_wal/RECOVERYXLOG"], ["-v"]),
    (["wal-push", "pg_wal/000000010000000000000001"], ["-q", "--pgdata", "/data"]),
    (["check", "--nagios"], ["--repo", "s3://bucket/x", "-vv"]),
    (["recover", "latest", "/restore", "--target-tli", "3"], ["--json", "--quiet"]),
    (["keygen", "--type", "symmetric", "k.key"], ["--json"]),
    (["show-config"], ["--config=/etc/y.toml", "--verbose"]),
]


def _namespace(argv: list[str]) -> dict[str, object]:
    return vars(parse_args(argv))


@pytest.mark.parametrize(("command", "options"), CALLS, ids=[c[0][0] for c in CALLS])
def test_global_options_after_the_command_mean_the_same(
    command: list[str], options: list[str]
) -> None:
    before = _namespace([*options, *command])
    after = _namespace([*command, *options])
    assert after == before
    assert not any(k.startswith("after_") for k in after)


def test_global_options_may_follow_the_positionals() -> None:
    name, dest = "000000010000000000000001", "pg_wal/RECOVERYXLOG"
    assert _namespace(["wal-fetch", name, dest, "-v"]) == _namespace(
        ["-v", "wal-fetch", name, dest]
    )


def test_options_given_in_both_places_combine_as_repeated_flags_do() -> None:
    args = parse_args(["-v", "--server", "a", "backup-list", "-v", "--server", "b", "-q"])
    assert (args.verbose, args.server, args.quiet, args.json) == (2, "b", True, False)


def test_defaults_when_no_global_option_is_given() -> None:
    args = parse_args(["backup-list"])
    assert (args.config, args.server, args.repository, args.pgdata) == (None,) * 4
    assert (args.json, args.verbose, args.quiet) == (False, 0, False)


def test_the_hot_parser_and_argparse_agree() -> None:
    argv = ["-v", "--config", "/c.toml", "wal-fetch", "000000010000000000000001", "x"]
    hot = vars(parse(argv))
    full = _namespace(argv)
    assert {k: hot[k] for k in full} == full


@pytest.mark.parametrize(
    "argv",
    [
        ["backup-list", "--version"],  # --version is global only: before the command
        ["backup-list", "--nagios"],  # another command's option
        ["keygen", "--json", "--type", "rsa", "k"],
        ["--json"],
    ],
)
def test_an_option_the_command_does_not_take_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def _cloudbm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBM_")}
    return subprocess.run(
        [sys.executable, "-m", "cloudbm", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["backup-list", "--version"], EXIT_USAGE),
        (["show-config", "--bogus"], EXIT_USAGE),
        (["wal-fetch", "--bogus", "A", "B"], 126),  # restore_command: the fetch error status
    ],
)
def test_usage_errors_are_one_line_and_the_documented_status(
    argv: list[str], status: int, tmp_path: Path
) -> None:
    res = _cloudbm(*argv, cwd=tmp_path)
    assert res.returncode == status, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments" in lines[0], res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(
    ("argv", "says", "never"),
    [
        (["nosuch"], "unknown command 'nosuch'", "wal-prefetch"),  # no internal worker listed
        (["recover"], "recover: the following arguments are required", "cloudbm: cloudbm"),
        (["backup-list", "--bogus"], "unrecognized arguments: --bogus", "cloudbm: cloudbm"),
    ],
)
def test_a_usage_error_names_the_command_once_and_where_to_look(
    argv: list[str], says: str, never: str, tmp_path: Path
) -> None:
    res = _cloudbm(*argv, cwd=tmp_path)
    assert res.returncode == EXIT_USAGE, res.stderr
    line = res.stderr.strip()
    assert line.startswith("cloudbm: ") and says in line, line
    assert never not in line and "--help" in line, line


@pytest.mark.parametrize("json", [[], ["--json"]])
def test_output_is_the_same_with_global_options_after_the_command(
    json: list[str], tmp_path: Path
) -> None:
    before = _cloudbm(*REPO, *json, "show-config", cwd=tmp_path)
    after = _cloudbm("show-config", *REPO, *json, cwd=tmp_path)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout and before.stdout


def test_main_maps_a_usage_error_to_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup-list", "--version"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cloudbm: ")


# --- the dispatch table ---------------------------------------------------------------------


def test_every_command_in_the_table_has_a_parser_and_a_handler() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    listed = {a.dest for a in sub._choices_actions}
    assert listed == {n for n, c in COMMANDS.items() if c.help is not None}
    for name, command in COMMANDS.items():
        assert callable(getattr(arguments, command.arguments)), name
        assert callable(handler(name)), name


def test_the_hot_path_loads_no_argparse_and_only_the_wal_handlers() -> None:
    code = (
        "import sys\n"
        "from cloudbm.cli import parse\n"
        "from cloudbm.cli.dispatch import handler\n"
        "handler(parse(['--config', '/c', 'wal-push', 'pg_wal/x']).command)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(res.stdout.split())
    assert "argparse" not in loaded
    assert "cloudbm.cli.parser" not in loaded
    assert "cloudbm.cli.arguments" not in loaded
    assert {m for m in loaded if m.startswith("cloudbm.cli.handlers.")} == {
        "cloudbm.cli.handlers.wal"
    }
    assert not {m for m in loaded if m.startswith("cloudbm.commands")}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_only_the_entry_module_imports_the_cli() -> None:
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        if any(n == "cloudbm.cli" or n.startswith("cloudbm.cli.") for n in _imports(path)):
            importers.add(str(rel))
    assert importers == {"entry.py"}
