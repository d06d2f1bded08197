"""The rest of `cloudbm recover`'s arguments, read by pg.recovery_target before any I/O:
`[ID] DEST` and `--tablespace NAME:DIR`."""

from __future__ import annotations

import pytest

from cloudbm.errors import ConfigError
from cloudbm.pg.recovery_conf import RecoveryTarget
from cloudbm.pg.recovery_target import recover_operands, tablespace_map

ALIASES = ("latest", "last", "oldest", "first")
NO_TARGET = RecoveryTarget()
AT_TIME = RecoveryTarget(time="2026-11-22 14:02:59+00")


@pytest.mark.parametrize(
    ("operands", "target", "expected"),
    [
        (["latest", "/restore"], NO_TARGET, ("latest", "/restore")),
        (["20261122T041500", "DEST"], AT_TIME, ("20261122T041500", "DEST")),
        (["/restore"], NO_TARGET, ("latest", "/restore")),  # no target: the newest backup
        (["/restore"], AT_TIME, (None, "/restore")),  # the newest that ended before the target
        (["/restore"], RecoveryTarget(immediate=True), (None, "/restore")),
        (["./latest"], NO_TARGET, ("latest", "./latest")),  # a directory named like an alias
        (["restore"], NO_TARGET, ("latest", "restore")),
    ],
)
def test_backup_id_and_destination(
    operands: list[str], target: RecoveryTarget, expected: tuple[str | None, str]
) -> None:
    assert recover_operands(operands, target, ALIASES) == expected


@pytest.mark.parametrize(
    ("operands", "says"),
    [
        (["latest"], "needs a destination directory; 'latest' looks like a backup id"),
        (["OLDEST"], "needs a destination directory"),
        (["first"], "needs a destination directory"),
        (["20261122T041500"], "needs a destination directory"),
        (["20261122T041500-2"], "needs a destination directory"),
        (["latest", ""], "the destination directory is empty"),
        (["  "], "the destination directory is empty"),
        (["latest", "DEST", "more"], "at most a backup id and a destination"),
    ],
)
def test_refused_operands(operands: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        recover_operands(operands, NO_TARGET, ALIASES)
    assert caught.value.exit_code == 2


def test_a_lone_backup_id_gets_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        recover_operands(["latest"], AT_TIME, ALIASES)
    assert caught.value.hint == (
        "cloudbm recover latest DEST (to restore into a directory of that name, write ./latest)"
    )


def test_tablespace_map() -> None:
    assert tablespace_map([]) == {}
    assert tablespace_map(["fast:/ssd/ts", "archive:/hdd/a:b"]) == {
        "fast": "/ssd/ts",
        "archive": "/hdd/a:b",
    }


@pytest.mark.parametrize("item", ["fast", ":/ssd", "fast:", ""])
def test_tablespace_map_refuses_anything_but_name_colon_dir(item: str) -> None:
    with pytest.raises(ConfigError, match="is not NAME:DIR"):
        tablespace_map([item])
