"""The transcoding settings as a user sets them: TOML, ARCA_* environment and command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, load_settings


def test_job_timeout_default_toml_environment_and_command_line(tmp_path: Path) -> None:
    assert load_settings({}, {}, None).transcoding.job_timeout == 30.0
    toml = tmp_path / "arca.toml"
    toml.write_text("[transcoding]\njob_timeout = 12\nworkers = 3\n")
    from_toml = load_settings({}, {}, toml).transcoding
    assert (from_toml.job_timeout, from_toml.workers) == (12.0, 3)
    env = {"ARCA_TRANSCODING_JOB_TIMEOUT": "7.5"}
    assert load_settings({}, env, toml).transcoding.job_timeout == 7.5
    cli = {"transcoding_job_timeout": "0"}  # 0 = no limit
    assert load_settings(cli, env, toml).transcoding.job_timeout == 0.0


@pytest.mark.parametrize("bad", ["-1", "nan", "soon"])
def test_a_bad_job_timeout_names_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"ARCA_TRANSCODING_JOB_TIMEOUT|transcoding\.job_timeout"):
        load_settings({}, {"ARCA_TRANSCODING_JOB_TIMEOUT": bad}, None)
