"""Settings: typed, from the environment, one clear line on a bad value, secrets never echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from photobot.config import SEED_ALIASES, SEED_UNUSED, Settings, load_settings, resolve_data_dir
from photobot.errors import ConfigError
from tests.booth_process import clean_env as booth_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Settings read .env from the working directory and the process environment: isolate both.
    monkeypatch.chdir(tmp_path)
    for name in list(Settings.model_fields):
        info = Settings.model_fields[name]
        monkeypatch.delenv(str(info.validation_alias), raising=False)
    seed_names = {alias for aliases in SEED_ALIASES.values() for alias in aliases} | {*SEED_UNUSED}
    for name in list(os.environ):
        if name in seed_names or name.startswith(("R2_", "GCS_")):
            monkeypatch.delenv(name)


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


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _config_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        _settings(monkeypatch, env)
    assert "\n" not in info.value.message
    return info.value.message


# Seed 002's backend .env, as its "Environment Variables" section gives it (account filled in).
SEED_002_ENV = """\
# Redis
REDIS_URI=redis://localhost:6379

# R2 Storage
R2_ENDPOINT=https://0123abcd.r2.cloudflarestorage.com
R2_ACCESS_KEY_ID=your_access_key
R2_SECRET_ACCESS_KEY=your_secret_key
R2_BUCKET=your_bucket_name
R2_REGION=auto
"""


def test_seed_002_dotenv_reaches_its_redis_and_r2_bucket(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(SEED_002_ENV)
    s = load_settings()
    assert s.redis_url is not None and s.redis_url.get_secret_value() == "redis://localhost:6379"
    assert s.uses_s3 and (s.s3_bucket, s.s3_access_key_id) == (
        "your_bucket_name",
        "your_access_key",
    )
    assert s.s3_secret_access_key is not None
    assert s.s3_secret_access_key.get_secret_value() == "your_secret_key"
    assert (s.s3_endpoint, s.s3_region) == ("https://0123abcd.r2.cloudflarestorage.com", "auto")


def test_r2_endpoint_from_the_account_id_and_region_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(
        monkeypatch,
        {"R2_ACCOUNT_ID": "0123abcd", "R2_BUCKET": "b", "R2_ACCESS_KEY_ID": "AK",
         "R2_SECRET_ACCESS_KEY": "SK"},
    )  # fmt: skip
    assert (s.s3_endpoint, s.s3_region) == ("https://0123abcd.r2.cloudflarestorage.com", "auto")


def test_seed_003_gcs_hmac_names_mean_s3_on_storage_googleapis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gcs = {"GCS_BUCKET": "clips", "GCS_ACCESS_KEY": "GOOG1AK", "GCS_SECRET_KEY": "gsecret"}
    s = _settings(monkeypatch, gcs)
    assert (s.s3_bucket, s.s3_access_key_id) == ("clips", "GOOG1AK")
    assert s.s3_secret_access_key is not None
    assert s.s3_secret_access_key.get_secret_value() == "gsecret"
    assert (s.s3_endpoint, s.s3_region) == ("https://storage.googleapis.com", "auto")
    # Our own endpoint and region still win (a GCS emulator, a pinned region).
    s = _settings(monkeypatch, {"S3_ENDPOINT": "http://127.0.0.1:4443", "S3_REGION": "eu"})
    assert (s.s3_endpoint, s.s3_region, s.s3_bucket) == ("http://127.0.0.1:4443", "eu", "clips")


def test_seed_001_names(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, {"AI_PROVIDER_DEFAULT": "comfy", "VITE_BOOTH_ID": "booth-7"})
    assert (s.ai_provider_default, s.booth_id) == ("comfyui", "booth-7")


@pytest.mark.parametrize(
    "name", ["TRACK_ID", "WORKER_HOST", "WORKER_PORT", "R2_PUBLIC_URL", "VITE_API_BASE_URL",
             "VITE_EVENT_ID", "GCS_PROJECT_ID", "R2_TOKEN"],
)  # fmt: skip
def test_seed_name_without_meaning_stops_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    message = _config_error(monkeypatch, {name: "101"})
    assert message.startswith(f"{name} is not a photobot setting: ")
    assert message.endswith("; unset it")


@pytest.mark.parametrize(
    ("env", "first", "second"),
    [
        ({"REDIS_URL": "redis://a:6379/0", "REDIS_URI": "redis://b:6379/0"}, "REDIS_URL",
         "REDIS_URI"),
        ({"S3_SECRET_ACCESS_KEY": "hunter2", "GCS_SECRET_KEY": "hunter3"}, "S3_SECRET_ACCESS_KEY",
         "GCS_SECRET_KEY"),
        ({"R2_ENDPOINT": "https://x.r2.cloudflarestorage.com", "R2_ACCOUNT_ID": "y"},
         "R2_ENDPOINT", "R2_ACCOUNT_ID"),
        ({"BOOTH_ID": "booth-1", "VITE_BOOTH_ID": "booth-2"}, "BOOTH_ID", "VITE_BOOTH_ID"),
    ],
)  # fmt: skip
def test_our_name_and_a_seed_name_disagreeing_stops_naming_both(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], first: str, second: str
) -> None:
    message = _config_error(monkeypatch, env)
    assert message.startswith(f"{first} and {second} are both set, to different values")
    assert not any(value in message for value in env.values())  # may be secrets


def test_a_seed_name_in_dotenv_disagreeing_with_ours_in_the_environment_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("REDIS_URI=redis://from-dotenv:6379\n")
    message = _config_error(monkeypatch, {"REDIS_URL": "redis://from-env:6379"})
    assert message.startswith("REDIS_URL and REDIS_URI are both set")


def test_our_name_and_a_seed_name_agreeing_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(monkeypatch, {"REDIS_URL": "redis://a:6379/0", "REDIS_URI": "redis://a:6379/0"})
    assert s.redis_url is not None and s.redis_url.get_secret_value() == "redis://a:6379/0"


def test_explicit_arguments_win_over_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URI", "redis://from-seed:6379")
    s = load_settings(redis_url="redis://explicit:6379")
    assert s.redis_url is not None and s.redis_url.get_secret_value() == "redis://explicit:6379"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"R2_BUCKET": "b", "GCS_BUCKET": "b"}, "R2_BUCKET and GCS_BUCKET are both set"),
        ({"R2_ENDPOINT": "https://<ACCOUNT_ID>.r2.cloudflarestorage.com"},
         "invalid setting R2_ENDPOINT: still holds a placeholder"),
        ({"R2_ACCOUNT_ID": "a.b/c"}, "invalid setting R2_ACCOUNT_ID='a.b/c'"),
        ({"REDIS_URI": "http://cache:6379"}, "invalid setting REDIS_URI: must start with redis://"),
        ({"GCS_BUCKET": "clips"},
         "invalid settings: S3 storage is half configured: S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY"
         " missing (GCS_BUCKET is read as S3_BUCKET)"),
    ],
)  # fmt: skip
def test_bad_seed_values_name_the_seed_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    assert _config_error(monkeypatch, env).startswith(expected)


def test_empty_seed_names_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # A template copied with blanks left blank must not stop the box.
    s = _settings(monkeypatch, {"TRACK_ID": "", "REDIS_URI": "", "R2_BUCKET": ""})
    assert s.redis_url is None and not s.uses_s3


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), ("json", "json"), ("text", "text")]
)
def test_log_format(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str) -> None:
    s = _settings(monkeypatch, {} if value is None else {"LOG_FORMAT": value})
    assert s.log_format == expected
    message = _config_error(monkeypatch, {"LOG_FORMAT": "yaml"})
    assert message.startswith("invalid setting LOG_FORMAT='yaml'")


@pytest.mark.slow
def test_photobot_run_with_a_seed_name_without_meaning_exits_2_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "photobot", "run", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        # Unreachable servers: were TRACK_ID ignored, the start would fail fast, not run a booth.
        env=booth_env(TRACK_ID="101", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
                      REDIS_URL="redis://127.0.0.1:1/0"),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("photobot: TRACK_ID is not a photobot setting")
    assert not (tmp_path / "d").exists()  # nothing was started
