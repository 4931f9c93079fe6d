"""config.loader: precedence defaults < TOML < ARCA_* environment < CLI, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, load_settings
from config.settings import OverwritePolicy, RemoteAE, Settings


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arca.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_source() -> None:
    assert load_settings({}, {}, None) == Settings()


def test_precedence_toml_then_env_then_cli(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        """
log_level = "warning"
[http]
port = 9000
host = "0.0.0.0"
dicomweb_root = "/toml-web"
[dimse]
ae_title = "TOMLAE"
port = 10400
[storage]
data_dir = "toml-data"
""",
    )
    only_toml = load_settings({}, {}, toml)
    assert only_toml.http.port == 9000
    assert only_toml.http.host == "0.0.0.0"
    assert only_toml.log_level == "warning"
    # Relative paths in a TOML file are relative to that file.
    assert only_toml.storage.data_dir == (tmp_path / "toml-data").resolve()

    env = {"ARCA_HTTP_PORT": "9100", "ARCA_AE_TITLE": "ENVAE", "ARCA_DATA": "/srv/env-data"}
    toml_env = load_settings({}, env, toml)
    assert toml_env.http.port == 9100
    assert toml_env.dimse.ae_title == "ENVAE"
    assert toml_env.storage.data_dir == Path("/srv/env-data")
    assert toml_env.http.dicomweb_root == "/toml-web"  # not overridden: TOML stays
    assert toml_env.dimse.port == 10400

    cli = {"http_port": "9200", "data": "/srv/cli-data", "ae_title": None}
    all_three = load_settings(cli, env, toml)
    assert all_three.http.port == 9200
    assert all_three.storage.data_dir == Path("/srv/cli-data")
    assert all_three.dimse.ae_title == "ENVAE"  # None from the CLI means "not given"
    assert all_three.http.host == "0.0.0.0"


def test_every_documented_environment_variable() -> None:
    env = {
        "ARCA_DATA": "/d",
        "ARCA_HTTP_HOST": "0.0.0.0",
        "ARCA_HTTP_PORT": "8080",
        "ARCA_DICOMWEB_ROOT": "/dcm",
        "ARCA_DIMSE_PORT": "104",
        "ARCA_AE_TITLE": "PACS",
        "ARCA_INDEX": "postgresql://arca@db/arca",
        "ARCA_CORS_ORIGIN": "http://a.example, http://b.example",
        "ARCA_COLD_STORE": "s3://bucket/prefix",
        "ARCA_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "ARCA_REMOTE_AE": "VIEWER=10.0.0.5:104,WS=[::1]:11113",
        "ARCA_VIEWER": "true",
        "ARCA_DIMSE_ENABLED": "no",
        "ARCA_OVERWRITE_POLICY": "replace",
        "ARCA_TRANSCODING_WORKERS": "1",
        "ARCA_LOG_LEVEL": "debug",
    }
    s = load_settings({}, env, None)
    assert s.storage.data_dir == Path("/d")
    assert (s.http.host, s.http.port, s.http.dicomweb_root) == ("0.0.0.0", 8080, "/dcm")
    assert (s.dimse.port, s.dimse.ae_title, s.dimse.enabled) == (104, "PACS", False)
    assert s.storage.resolved_index_url == "postgresql+asyncpg://arca@db/arca"
    assert s.http.cors_origins == ("http://a.example", "http://b.example")
    assert s.storage.cold_store == "s3://bucket/prefix"
    assert s.storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert s.dimse.remote_aes == (
        RemoteAE("VIEWER", "10.0.0.5", 104),
        RemoteAE("WS", "::1", 11113),
    )
    assert s.http.viewer is True
    assert s.storage.overwrite_policy is OverwritePolicy.REPLACE
    assert s.transcoding.workers == 1
    assert s.log_level == "debug"


def test_repeatable_cli_options_and_toml_remote_ae_tables(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        """
[[dimse.remote_aes]]
ae_title = "MODALITY"
host = "192.168.1.20"
port = 104
may_retrieve = false
""",
    )
    s = load_settings({}, {}, toml)
    assert s.dimse.remote_aes == (RemoteAE("MODALITY", "192.168.1.20", 104, may_retrieve=False),)
    cli = {"remote_ae": ["A=h1:1", "B=h2:2"], "cors_origin": ["*"], "viewer": True}
    s = load_settings(cli, {}, toml)
    assert [ae.ae_title for ae in s.dimse.remote_aes] == ["A", "B"]
    assert s.http.cors_origins == ("*",)
    assert s.http.viewer is True


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"http_port": "70000"}, "http.port: port 70000 is outside 1..65535"),
        ({"dimse_port": "0"}, "dimse.port: port 0 is outside 1..65535"),
        ({"http_port": "eighty"}, "option --http-port: expected an integer, got 'eighty'"),
        ({"ae_title": "A" * 17}, "is longer than 16 characters"),
        ({"ae_title": "BAD\\AE"}, "only printable ASCII without backslash"),
        ({"ae_title": "   "}, "must not be empty or only spaces"),
        ({"dicomweb_root": "dicom-web"}, "must start with '/'"),
        ({"dicomweb_root": "/dicom-web/"}, "must not end with '/'"),
        ({"remote_ae": ["PACS@host:104"]}, "'PACS@host:104' is not of the form TITLE=HOST:PORT"),
        ({"remote_ae": ["PACS=host"]}, "is not of the form TITLE=HOST:PORT"),
        ({"remote_ae": ["PACS=host:x"]}, "port 'x' is not a number"),
        ({"remote_ae": ["A=h:1", "A=h:2"]}, "AE title 'A' is listed more than once"),
        ({"cold_store": "bucket"}, "is not of the form s3://BUCKET/PREFIX"),
        ({"write_through": "true"}, "storage.write_through needs a cold tier"),
        ({"write_through": "often", "cold_store": "s3://b/p"}, "option --write-through"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of"),
        ({"overwrite_policy": "merge"}, "'merge' is not one of reject, replace"),
    ],
)
def test_invalid_values_are_reported_clearly(cli: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(cli, {}, None)
    assert message in str(err.value)


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment variable ARCA_HTTP_PORT: expected an"):
        load_settings({}, {"ARCA_HTTP_PORT": "80a"}, None)


def test_unknown_toml_key_names_key_and_file(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "[http]\nprot = 8042\n")
    with pytest.raises(ConfigError) as err:
        load_settings({}, {}, toml)
    assert str(toml) in str(err.value)
    assert "unknown setting http.prot" in str(err.value)

    toml = write_toml(tmp_path, "[htpp]\nport = 8042\n")
    with pytest.raises(ConfigError, match=r"unknown setting htpp"):
        load_settings({}, {}, toml)

    toml = write_toml(tmp_path, '[[dimse.remote_aes]]\nae_title="A"\nhost="h"\nport=1\nfoo=1\n')
    with pytest.raises(ConfigError, match=r"unknown setting foo in a remote AE"):
        load_settings({}, {}, toml)


def test_toml_type_errors_and_syntax_errors(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[http]\nport = "high"\n')
    with pytest.raises(ConfigError, match=r"arca.toml: http.port: expected an integer"):
        load_settings({}, {}, toml)
    toml = write_toml(tmp_path, "[http\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings({}, {}, toml)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_settings({}, {}, tmp_path / "missing.toml")
