"""Typed settings, read once at start-up from the environment and an optional ``.env`` file.

Names follow the seed notes (``DATABASE_URL``, ``S3_BUCKET``, ``HOTFOLDER_PATH`` …). A wrong value
stops start-up with one line naming the variable and what is wrong (``ConfigError``); secret values
are ``SecretStr`` and are never echoed, not even in that line.

``Settings`` is pure data. What is *derived* from it at start-up (the data dir's paths, secrets
generated and persisted on first run) lives in :func:`resolve_paths` and :mod:`photobot.secrets`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from photobot.errors import ConfigError

_SECRET_FIELDS = frozenset(
    {
        "jwt_secret",
        "operator_password",
        "operators_json",
        "s3_secret_access_key",
        "kie_api_key",
        "worker_callback_token",
        "camera_encryption_key",
        "database_url",
        "redis_url",
    }
)


class Settings(BaseSettings):
    """Every knob of a booth. Unset optional services mean "start or use the embedded one"."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    # -- process ---------------------------------------------------------------------------
    host: str = Field("0.0.0.0", validation_alias="HOST")  # guests' phones reach the box over LAN
    port: int = Field(8000, ge=0, le=65535, validation_alias="PORT")
    data_dir: Path | None = Field(None, validation_alias="PHOTOBOT_DATA_DIR")
    public_base_url: str | None = Field(None, validation_alias="PUBLIC_BASE_URL")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LOG_LEVEL"
    )
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, le=300, validation_alias="SHUTDOWN_GRACE_SECONDS"
    )
    cors_origins: str = Field("", validation_alias="CORS_ORIGINS")

    # -- backing services (unset → embedded) -------------------------------------------------
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")
    database_pool_size: int = Field(10, ge=1, le=200, validation_alias="DATABASE_POOL_SIZE")
    #: One statement's limit: on a link that silently drops packets, the longest a guest waits
    #: for "try again" (503) instead of an answer.
    database_statement_timeout_seconds: float = Field(
        15, gt=0, le=600, validation_alias="DATABASE_STATEMENT_TIMEOUT_SECONDS"
    )
    redis_url: SecretStr | None = Field(None, validation_alias="REDIS_URL")
    redis_prefix: str = Field("", validation_alias="REDIS_PREFIX")

    s3_endpoint: str | None = Field(None, validation_alias="S3_ENDPOINT")
    s3_public_endpoint: str | None = Field(None, validation_alias="S3_PUBLIC_ENDPOINT")
    s3_region: str = Field("us-east-1", validation_alias="S3_REGION")
    s3_bucket: str | None = Field(None, validation_alias="S3_BUCKET")
    s3_access_key_id: str | None = Field(None, validation_alias="S3_ACCESS_KEY_ID")
    s3_secret_access_key: SecretStr | None = Field(None, validation_alias="S3_SECRET_ACCESS_KEY")
    s3_force_path_style: bool = Field(False, validation_alias="S3_FORCE_PATH_STYLE")
    signed_url_ttl_seconds: int = Field(
        600, ge=1, le=604800, validation_alias="SIGNED_URL_TTL_SECONDS"
    )

    # -- operators and guests ----------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(None, validation_alias="JWT_SECRET")
    jwt_ttl_seconds: int = Field(3600, ge=60, le=86400, validation_alias="JWT_TTL_SECONDS")
    operator_password: SecretStr | None = Field(None, validation_alias="OPERATOR_PASSWORD")
    operators_json: SecretStr | None = Field(None, validation_alias="OPERATORS_JSON")
    session_ttl_seconds: int = Field(21600, ge=60, validation_alias="SESSION_TTL_SECONDS")
    # Registrations per minute from one client address. Raise it when guests reach the box
    # through one address (a tunnel or a proxy in front of it).
    register_rate_limit_per_minute: int = Field(
        10, ge=1, le=100_000, validation_alias="REGISTER_RATE_LIMIT_PER_MINUTE"
    )

    # -- booth and hot folder ----------------------------------------------------------------
    booth_id: str = Field("booth-1", min_length=1, max_length=64, validation_alias="BOOTH_ID")
    hotfolder_path: Path | None = Field(None, validation_alias="HOTFOLDER_PATH")
    orphan_path: Path | None = Field(None, validation_alias="ORPHAN_PATH")
    invalid_path: Path | None = Field(None, validation_alias="INVALID_PATH")
    processed_path: Path | None = Field(None, validation_alias="PROCESSED_PATH")
    file_stability_delay_ms: int = Field(
        2000, ge=0, le=60000, validation_alias="FILE_STABILITY_DELAY_MS"
    )
    hotfolder_workers: int = Field(4, ge=1, le=32, validation_alias="HOTFOLDER_WORKERS")
    active_session_ttl_seconds: int = Field(
        1800, ge=10, validation_alias="ACTIVE_SESSION_TTL_SECONDS"
    )

    # -- AI providers ------------------------------------------------------------------------
    ai_provider_default: Literal["local", "comfyui", "kie"] = Field(
        "local", validation_alias="AI_PROVIDER_DEFAULT"
    )
    kie_api_key: SecretStr | None = Field(None, validation_alias="KIE_API_KEY")
    kie_api_base_url: str = Field("https://api.kie.ai", validation_alias="KIE_API_BASE_URL")
    comfy_api_base_url: str | None = Field(None, validation_alias="COMFY_API_BASE_URL")
    comfy_workflow_path: Path | None = Field(None, validation_alias="COMFY_WORKFLOW_PATH")
    comfy_timeout_seconds: float = Field(300, gt=0, validation_alias="COMFY_TIMEOUT_SECONDS")
    worker_concurrency_local: int = Field(
        2, ge=1, le=64, validation_alias="WORKER_CONCURRENCY_LOCAL"
    )
    worker_concurrency_kie: int = Field(5, ge=1, le=64, validation_alias="WORKER_CONCURRENCY_KIE")
    worker_concurrency_comfy: int = Field(
        1, ge=1, le=64, validation_alias="WORKER_CONCURRENCY_COMFY"
    )

    # -- image optimizer (seed 002) ----------------------------------------------------------
    image_workers: Literal["builtin", "external"] = Field(
        "builtin", validation_alias="IMAGE_WORKERS"
    )
    worker_callback_token: SecretStr | None = Field(None, validation_alias="WORKER_CALLBACK_TOKEN")
    #: Image jobs the built-in optimizer renders at once (one Pillow thread each).
    optimizer_concurrency: int = Field(2, ge=1, le=16, validation_alias="OPTIMIZER_CONCURRENCY")

    # -- live gallery websockets (seed 004) -------------------------------------------------
    # The gallery's websocket server listens on a port of its own (GET /api/gallery/<slug>/socket
    # tells the page which). Unset: PORT + 1 (or a free port when PORT is 0); 0: a free port.
    gallery_ws_port: int | None = Field(None, ge=0, le=65535, validation_alias="GALLERY_WS_PORT")
    gallery_ws_ping_interval: float = Field(
        20.0, ge=0.05, le=300, validation_alias="GALLERY_WS_PING_INTERVAL"
    )
    gallery_ws_max_connections: int = Field(
        10_000, ge=1, le=1_000_000, validation_alias="GALLERY_WS_MAX_CONNECTIONS"
    )
    gallery_ws_max_per_ip: int = Field(0, ge=0, validation_alias="GALLERY_WS_MAX_PER_IP")
    gallery_ws_queue_messages: int = Field(
        64, ge=1, le=100_000, validation_alias="GALLERY_WS_QUEUE_MESSAGES"
    )
    gallery_ws_queue_bytes: int = Field(
        256 * 1024, ge=1024, le=64 * 1024 * 1024, validation_alias="GALLERY_WS_QUEUE_BYTES"
    )
    gallery_ws_origins: str = Field("", validation_alias="GALLERY_WS_ORIGINS")

    # -- CCTV (seed 003) ---------------------------------------------------------------------
    camera_encryption_key: SecretStr | None = Field(None, validation_alias="CAMERA_ENCRYPTION_KEY")
    batch_interval_seconds: float = Field(60, gt=0, validation_alias="BATCH_INTERVAL_SECONDS")
    batch_size: int = Field(10, ge=1, le=1000, validation_alias="BATCH_SIZE")
    temp_video_dir: Path | None = Field(None, validation_alias="TEMP_VIDEO_DIR")
    exact_cut: bool = Field(False, validation_alias="EXACT_CUT")
    auto_batch_enabled: bool = Field(True, validation_alias="AUTO_BATCH_ENABLED")
    # Widen each booth session's clip on both sides; wait this long after its end before
    # fetching (NVRs write recordings with a delay).
    clip_padding_seconds: float = Field(5, ge=0, le=600, validation_alias="CLIP_PADDING_SECONDS")
    clip_flush_delay_seconds: float = Field(
        60, ge=0, le=3600, validation_alias="CLIP_FLUSH_DELAY_SECONDS"
    )
    cctv_min_free_mb: int = Field(200, ge=0, validation_alias="CCTV_MIN_FREE_MB")
    nvr_timeout_seconds: float = Field(15, gt=0, le=300, validation_alias="NVR_TIMEOUT_SECONDS")

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// (or postgres://)")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _s3_all_or_nothing(self) -> Settings:
        given = {
            "S3_BUCKET": self.s3_bucket,
            "S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
        }
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(k for k, v in given.items() if not v)
            raise ValueError(f"S3 storage is half configured: {missing} missing")
        return self

    @property
    def uses_s3(self) -> bool:
        return self.s3_bucket is not None

    @property
    def gallery_port(self) -> int:
        """The gallery websocket port to bind: ``GALLERY_WS_PORT``, else ``PORT + 1`` (0 → any)."""
        if self.gallery_ws_port is not None:
            return self.gallery_ws_port
        return self.port + 1 if 0 < self.port < 65535 else 0


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``.env``), or raise one-line :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    field = str(loc[0]) if loc else ""
    name = _env_name(field)
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if not field:
        return f"invalid settings: {msg}"
    if field.lower() not in _SECRET_FIELDS and "input" in err:
        return f"invalid setting {name}={err['input']!r}: {msg}"
    return f"invalid setting {name}: {msg}"


def _env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return field.upper()


def default_data_dir() -> Path:
    """``./var`` when run from a checkout (``pyproject.toml`` beside it), else the user data dir."""
    if Path("pyproject.toml").is_file() and Path("photobot").is_dir():
        return Path("var").resolve()
    return Path(platformdirs.user_data_dir("photobot"))


def resolve_data_dir(settings: Settings, cli_value: str | os.PathLike[str] | None = None) -> Path:
    path = Path(cli_value) if cli_value else settings.data_dir or default_data_dir()
    return path.expanduser().resolve()
