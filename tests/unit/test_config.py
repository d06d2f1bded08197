"""Configuration layering and validation: one clear line naming the key, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudbm.config import load_settings
from cloudbm.errors import EXIT_USAGE, ConfigError


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cloudbm.toml"
    path.write_text(text)
    return str(path)


def test_server_section_overrides_defaults_and_env_overrides_file(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        """
[defaults]
compression = "lz4"
jobs = 3
[servers.main]
repository = "file:///srv/repo"
jobs = 4
""",
    )
    s = load_settings(config_path=cfg, environ={"CLOUDBM_JOBS": "6"})
    assert (s.server, s.compression, s.jobs, s.repository) == ("main", "lz4", 6, "file:///srv/repo")


def test_flags_override_everything(tmp_path: Path) -> None:
    cfg = _write(tmp_path, '[servers.main]\nrepository = "file:///a"\n')
    s = load_settings(config_path=cfg, overrides={"repository": "file:///b"}, environ={})
    assert s.repository == "file:///b"


def test_repo_flag_alone_is_enough(tmp_path: Path) -> None:
    s = load_settings(overrides={"repository": "file:///r"}, environ={})
    assert s.server == "default" and s.repository == "file:///r"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[servers.main]\nrepository = "file:///a"\ncompresion = "zstd"\n', "compresion"),
        ('[servers.main]\nrepository = "file:///a"\ncompression = "brotli"\n', "compression"),
        ('[servers.main]\nrepository = "file:///a"\njobs = 0\n', "jobs"),
        ('[servers.main]\nrepository = "file:///a"\npassphrase = "x"\n', "passphrase"),
        ('[servers.main]\nrepository = "file:///a"\nfetch_error_exit_code = 1\n', "125"),
        ('[server.main]\nrepository = "file:///a"\n', "[server]"),
        ("[servers.main\n", "not valid TOML"),
        ("[servers.main]\n", "no repository"),
    ],
)
def test_invalid_configuration_is_one_clear_usage_error(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(config_path=_write(tmp_path, text), environ={})
    assert err.value.exit_code == EXIT_USAGE
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_several_servers_need_a_choice(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path, '[servers.a]\nrepository = "file:///a"\n[servers.b]\nrepository = "file:///b"\n'
    )
    with pytest.raises(ConfigError, match="--server"):
        load_settings(config_path=cfg, environ={})
    assert load_settings(config_path=cfg, server="b", environ={}).repository == "file:///b"
    with pytest.raises(ConfigError, match="not configured"):
        load_settings(config_path=cfg, server="c", environ={})


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLOUDBM_JOBS"):
        load_settings(overrides={"repository": "file:///r"}, environ={"CLOUDBM_JOBS": "many"})
