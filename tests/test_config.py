"""Settings: typed, from the environment, one clear line on a bad value, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from photobot.config import Settings, load_settings, resolve_data_dir
from photobot.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Settings read .env from the working directory and the process environment: isolate both.
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        info = Settings.model_fields[name]
        monkeypatch.delenv(str(info.validation_alias), raising=False)


def test_defaults_mean_embedded_everything() -> None:
    s = load_settings()
    assert s.database_url is None and s.redis_url is None and not s.uses_s3
    assert (s.port, s.booth_id, s.file_stability_delay_ms) == (8000, "booth-1", 2000)
    assert (s.session_ttl_seconds, s.active_session_ttl_seconds) == (21600, 1800)


def test_reads_seed_names_from_env_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("BOOTH_ID=booth-7\nFILE_STABILITY_DELAY_MS=500\n")
    monkeypatch.setenv("S3_BUCKET", "b")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("S3_FORCE_PATH_STYLE", "true")
    s = load_settings()
    assert s.booth_id == "booth-7" and s.file_stability_delay_ms == 500
    assert s.uses_s3 and s.s3_force_path_style
    assert s.s3_secret_access_key is not None and s.s3_secret_access_key.get_secret_value() == "SK"
    assert "SK" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "eighty", "invalid setting PORT='eighty'"),
        ("PORT", "70000", "invalid setting PORT='70000'"),
        ("FILE_STABILITY_DELAY_MS", "-1", "invalid setting FILE_STABILITY_DELAY_MS"),
        ("AI_PROVIDER_DEFAULT", "dalle", "invalid setting AI_PROVIDER_DEFAULT='dalle'"),
        ("EXACT_CUT", "maybe", "invalid setting EXACT_CUT='maybe'"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith(expected)
    assert "\n" not in info.value.message


def test_secret_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://admin:hunter2@db/x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith("invalid setting DATABASE_URL:")
    assert "hunter2" not in info.value.message


def test_half_configured_s3_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BUCKET", "photos")
    with pytest.raises(ConfigError, match="S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY missing"):
        load_settings()


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PHOTOBOT_DATA_DIR", str(tmp_path / "from-env"))
    s = load_settings()
    assert resolve_data_dir(s) == tmp_path / "from-env"
    assert resolve_data_dir(s, tmp_path / "from-cli") == tmp_path / "from-cli"
