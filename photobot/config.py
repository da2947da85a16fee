"""Typed settings, read once at start-up from the environment and an optional ``.env`` file.

Names follow the seed notes (``DATABASE_URL``, ``S3_BUCKET``, ``HOTFOLDER_PATH`` …). Where a seed
names one of ours differently (``REDIS_URI``, ``R2_*``, ``GCS_*``) that name is read too
(:data:`SEED_ALIASES`); a seed name with no meaning here stops start-up (:data:`SEED_UNUSED`). A
wrong value stops start-up with one line naming the variable and what is wrong (``ConfigError``);
secret values are ``SecretStr`` and are never echoed, not even in that line.

``Settings`` is pure data. What is *derived* from it at start-up (the data dir's paths, secrets
generated and persisted on first run) lives in :func:`resolve_paths` and :mod:`photobot.secrets`.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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

#: The seeds' names for settings of ours (seed 002's backend on R2, seed 003's CCTV worker on GCS
#: with HMAC keys, seed 001's Vite booth page), read as the name of ours each stands for: a box set
#: up from a seed's ``.env`` must reach the same Redis and bucket, never fall back to its own.
#: ``R2_ACCOUNT_ID`` is not in the seeds: it fills in seed 002's ``R2_ENDPOINT`` template.
SEED_ALIASES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("REDIS_URI",),
    "S3_BUCKET": ("R2_BUCKET", "GCS_BUCKET"),
    "S3_ACCESS_KEY_ID": ("R2_ACCESS_KEY_ID", "GCS_ACCESS_KEY"),
    "S3_SECRET_ACCESS_KEY": ("R2_SECRET_ACCESS_KEY", "GCS_SECRET_KEY"),
    "S3_ENDPOINT": ("R2_ENDPOINT", "R2_ACCOUNT_ID"),
    "S3_REGION": ("R2_REGION",),
    "BOOTH_ID": ("VITE_BOOTH_ID",),
}
#: Seed names with no meaning here, and what to do instead. Set, they stop start-up: ignoring
#: one would leave the operator believing it took effect.
SEED_UNUSED: dict[str, str] = {
    "R2_PUBLIC_URL": "guests get signed links to the bucket, never a public bucket URL "
    "(S3_PUBLIC_ENDPOINT signs them for another host)",
    "TRACK_ID": "each camera has its own track id (trackId when adding it, default 101)",
    "WORKER_HOST": "the CCTV worker runs inside photobot; POST /trigger and GET /health are "
    "served on HOST and PORT",
    "WORKER_PORT": "the CCTV worker runs inside photobot; POST /trigger and GET /health are "
    "served on HOST and PORT",
    "VITE_API_BASE_URL": "photobot serves its own pages, which call it on the same address "
    "(PUBLIC_BASE_URL for links behind a proxy)",
    "VITE_EVENT_ID": "the console picks the event, guests join at /e/<slug>/join",
}
# Every R2_/GCS_ name is storage: one we do not know (a typo, a newer seed) must not be ignored.
_SEED_STORAGE_PREFIXES = ("R2_", "GCS_")
_R2_ENDPOINT = "https://{}.r2.cloudflarestorage.com"
_GCS_ENDPOINT = "https://storage.googleapis.com"
_PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_]*>")
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9-]{1,63}")
# Our name → the seed name it was read from, for the Settings being built right now: errors then
# name the variable the operator actually set.
_read_from_seed: ContextVar[Mapping[str, str]] = ContextVar("_read_from_seed")


def seed_values(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Values given under the seeds' names in ``environ`` (upper-case names, empty values left
    out): our name → (the seed name it was read from, value); our own names are not copied.

    Raises one-line :class:`ConfigError` for a seed name with no meaning here (:data:`SEED_UNUSED`,
    an unknown ``R2_``/``GCS_`` name), R2 and GCS names together, two names of one setting set to
    different values, or a value still holding a template placeholder such as ``<ACCOUNT_ID>``.
    GCS names imply the endpoint ``https://storage.googleapis.com`` unless ``S3_ENDPOINT`` says
    otherwise."""
    known = {alias for aliases in SEED_ALIASES.values() for alias in aliases}
    for name in sorted(environ):
        if name in SEED_UNUSED:
            raise ConfigError(f"{name} is not a photobot setting: {SEED_UNUSED[name]}; unset it")
        if name.startswith(_SEED_STORAGE_PREFIXES) and name not in known:
            raise ConfigError(
                f"{name} is not a photobot setting: set the matching S3_* setting instead "
                "(config/example.env); unset it"
            )
    r2 = sorted(name for name in environ if name.startswith("R2_"))
    gcs = sorted(name for name in environ if name.startswith("GCS_"))
    if r2 and gcs:
        raise ConfigError(f"{r2[0]} and {gcs[0]} are both set: storage is R2 or GCS; unset one")
    found: dict[str, tuple[str, str]] = {}
    for ours, aliases in SEED_ALIASES.items():
        given: list[tuple[str, str]] = []
        for name in (ours, *aliases):
            if name not in environ:
                continue
            value = environ[name]
            if _PLACEHOLDER.search(value):  # a seed's template copied as is
                raise ConfigError(f"invalid setting {name}: still holds a placeholder like <ID>")
            if name == "R2_ACCOUNT_ID":
                if not _ACCOUNT_ID.fullmatch(value):
                    raise ConfigError(f"invalid setting {name}={value!r}: not an account id")
                value = _R2_ENDPOINT.format(value)
            given.append((name, value))
        for (first, a), (second, b) in itertools.pairwise(given):
            if a != b:  # values unsaid: they may be secrets
                raise ConfigError(
                    f"{first} and {second} are both set, to different values: keep one"
                )
        if given and given[0][0] != ours:
            found[ours] = given[0]
    if gcs and "S3_ENDPOINT" not in environ and "S3_ENDPOINT" not in found:
        found["S3_ENDPOINT"] = (gcs[0], _GCS_ENDPOINT)
    return found


class _SeedNames(PydanticBaseSettingsSource):
    """The seeds' names (:func:`seed_values`), read from the same environment and ``.env`` as
    ours. Above ours in priority only in form: ours set to a different value is an error."""

    def __init__(self, settings_cls: type[BaseSettings], *raw: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._raw = [source for source in raw if isinstance(source, EnvSettingsSource)]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the raw names itself

    def __call__(self) -> dict[str, Any]:
        environ: dict[str, str] = {}
        for source in reversed(self._raw):  # the environment overrides .env, as for our names
            environ.update({k.upper(): v for k, v in source.env_vars.items() if v})
        found = seed_values(environ)
        _read_from_seed.set({ours: name for ours, (name, _) in found.items()})
        return {ours: value for ours, (_, value) in found.items()}


class Settings(BaseSettings):
    """Every knob of a booth. Unset optional services mean "start or use the embedded one"."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        seed_names = _SeedNames(settings_cls, env_settings, dotenv_settings)
        return init_settings, seed_names, env_settings, dotenv_settings, file_secret_settings

    # -- process ---------------------------------------------------------------------------
    host: str = Field("0.0.0.0", validation_alias="HOST")  # guests' phones reach the box over LAN
    port: int = Field(8000, ge=0, le=65535, validation_alias="PORT")
    data_dir: Path | None = Field(None, validation_alias="PHOTOBOT_DATA_DIR")
    public_base_url: str | None = Field(None, validation_alias="PUBLIC_BASE_URL")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LOG_LEVEL"
    )
    #: ``auto``: short lines for a person when stderr is a terminal, JSON lines otherwise.
    log_format: Literal["auto", "json", "text"] = Field("auto", validation_alias="LOG_FORMAT")
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
    # Photos one operator login may submit per minute (POST /jobs; hot-folder captures are not
    # counted). Boxes sharing one login (the single OPERATOR_PASSWORD) share this budget.
    jobs_rate_limit_per_minute: int = Field(
        30, ge=1, le=100_000, validation_alias="JOBS_RATE_LIMIT_PER_MINUTE"
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
    # A running job whose box has not renewed its lease for this long is taken over by another
    # box sharing the database (the box renews every third of it).
    job_lease_seconds: float = Field(60.0, ge=1, le=3600, validation_alias="JOB_LEASE_SECONDS")

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

    @field_validator("ai_provider_default", mode="before")
    @classmethod
    def _seed_provider_name(cls, v: object) -> object:
        return "comfyui" if v == "comfy" else v  # seed 001 spells it `kie|comfy`

    @model_validator(mode="after")
    def _s3_all_or_nothing(self) -> Settings:
        given = {
            "S3_BUCKET": self.s3_bucket,
            "S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
        }
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(k for k, v in given.items() if not v)
            seeds = _read_from_seed.get({})
            read = [f"{seeds[ours]} is read as {ours}" for ours in given if ours in seeds]
            also = f" ({', '.join(read)})" if read else ""
            raise ValueError(f"S3 storage is half configured: {missing} missing{also}")
        return self

    @model_validator(mode="after")
    def _auto_region_for_r2_and_gcs(self) -> Settings:
        # R2 and GCS (HMAC) document region "auto"; without S3_REGION we would sign for
        # us-east-1, which R2 accepts only as an alias of "auto".
        host = urlsplit(self.s3_endpoint or "").hostname or ""
        if "s3_region" not in self.model_fields_set and (
            host.endswith(".r2.cloudflarestorage.com") or host == "storage.googleapis.com"
        ):
            self.s3_region = "auto"
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
    """The variable the operator set for ``field``: ours, or the seed name it was read from."""
    info = Settings.model_fields.get(field)
    name = info.validation_alias if info is not None else None
    name = name if isinstance(name, str) else field.upper()
    return _read_from_seed.get({}).get(name, name)


def default_data_dir() -> Path:
    """``./var`` when run from a checkout (``pyproject.toml`` beside it), else the user data dir."""
    if Path("pyproject.toml").is_file() and Path("photobot").is_dir():
        return Path("var").resolve()
    return Path(platformdirs.user_data_dir("photobot"))


def resolve_data_dir(settings: Settings, cli_value: str | os.PathLike[str] | None = None) -> Path:
    path = Path(cli_value) if cli_value else settings.data_dir or default_data_dir()
    return path.expanduser().resolve()
