"""The ``arca`` command line: help texts, configuration errors, and the console script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from config.loader import load_settings
from server.app import describe_index, startup_line
from tests.conftest import ROOT, clean_environ, run_arca


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["serve", "import", "verify", "db", "ARCA_CONFIG"]),
        (("serve",), ["--data", "--http-port", "--dimse-port", "--ae-title", "--remote-ae",
                      "TITLE=HOST:PORT", "--cors-origin", "--viewer", "--cold-store",
                      "--s3-endpoint-url", "--index", "--log-level", "ARCA_HTTP_PORT"]),
        (("import",), ["PATH", "--data", "--index", "--cold-store", "recursively"]),
        (("verify",), ["--study", "--data", "SHA-256"]),
        (("db", "upgrade"), ["--index", "--data"]),
    ],
)  # fmt: skip
def test_help_describes_every_option(args: tuple[str, ...], expected: list[str]) -> None:
    result = run_arca(*args, "--help")
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, f"{word!r} missing from `arca {' '.join(args)} --help`"


def test_console_script_is_installed() -> None:
    script = ROOT / ".venv" / "bin" / "arca"
    if not script.exists():
        pytest.skip("no .venv/bin/arca (package not installed in a venv here)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "serve" in result.stdout


def test_configuration_errors_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    result = run_arca("serve", "--http-port", "99999", "--data", str(tmp_path))
    assert result.returncode == 2
    assert "arca: configuration error: http.port: port 99999 is outside 1..65535" in result.stderr

    result = run_arca("serve", "--remote-ae", "NOPORT", "--data", str(tmp_path))
    assert result.returncode == 2
    assert "is not of the form TITLE=HOST:PORT" in result.stderr

    config = tmp_path / "arca.toml"
    config.write_text("[dimse]\naetitle = 'X'\n")
    result = run_arca("verify", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}: unknown setting dimse.aetitle" in result.stderr
    assert not (tmp_path / "index.sqlite").exists()


def test_arca_config_environment_variable_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "d"}"\n[http]\nport = 0\n')
    result = run_arca("verify", env={**clean_environ(), "ARCA_CONFIG": str(config)})
    assert result.returncode == 2
    assert "http.port: port 0 is outside 1..65535" in result.stderr
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "d"}"\n')
    result = run_arca("verify", env={**clean_environ(), "ARCA_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert "0 instances checked" in result.stdout
    assert (tmp_path / "d" / "index.sqlite").is_file()


def test_an_unusable_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for args in (("serve", "--http-port", "1", "--dimse-port", "2"), ("import", str(tmp_path))):
        result = run_arca(*args, "--data", str(blocker / "data"))
        assert result.returncode == 2, result.stderr
        assert f"cannot use the data folder {blocker / 'data'}" in result.stderr
        assert "Traceback" not in result.stderr


def test_version() -> None:
    result = run_arca("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("arca ")


def test_the_index_password_is_never_shown() -> None:
    settings = load_settings(
        {"index": "postgresql://arca:s3cret@db.example:5432/arca?password=s3cret"}, {}, None
    )
    assert describe_index(settings) == "PostgreSQL index at db.example:5432/arca"
    assert "s3cret" not in startup_line(settings, dimse_running=True)
