"""Settings: one frozen dataclass, built once from the environment and CLI flags.

This is the only module that reads ``os.environ`` (via :meth:`Settings.from_env`,
which takes the mapping explicitly). Every value is validated at start-up and a bad
one raises :class:`SettingsError` with a one-line message naming the variable. The
variables' names and the parsers of their text are in :mod:`.envvars`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

from chat_storage import tracing
from chat_storage.runtime import envvars
from chat_storage.runtime.envvars import SettingsError, check_origins, env_name, parse_origin
from chat_storage.storage.crypto import kek

# the names callers (and tests) import from here
__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_JS_CLIENT_DIR", "DEFAULT_MIGRATIONS_DIR",
           "DEFAULT_WEB_DIR", "DEV_TENANT", "LEGACY_DATA_DIR", "Settings", "SettingsError",
           "env_name", "parse_origin"]

# Package data of ``chat_storage`` (shipped in the wheel); the package is always
# installed as plain files, so the resource directories are real paths.
DEFAULT_MIGRATIONS_DIR = Path(str(resources.files("chat_storage") / "sql"))
DEFAULT_WEB_DIR = Path(str(resources.files("chat_storage") / "web"))
# the JavaScript client's modules (clients/js/src), which the demo page imports
DEFAULT_JS_CLIENT_DIR = Path(str(resources.files("chat_storage") / "client_js"))
# The embedded database and local files live in the user's data directory (one per
# user, wherever the command is run); CHAT_DATA_DIR overrides it.
DEFAULT_DATA_DIR = platformdirs.user_data_path("chat-storage", appauthor=False)
# where earlier versions kept them, relative to the working directory
LEGACY_DATA_DIR = Path(".chat-storage")
# the tenant of the embedded database's first-run key, and of the demo page's dev
# tokens (CHAT_DEV_TOKENS)
DEV_TENANT = "dev"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told. Units are in the names."""

    # where things are
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    migrations_dir: Path = DEFAULT_MIGRATIONS_DIR
    web_dir: Path = DEFAULT_WEB_DIR
    # serving
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    metrics_port: int | None = None
    log_level: str = "INFO"
    shutdown_timeout_s: float = 20.0
    # client connections (server.connlimits): a request's headers must be complete this
    # long after its first byte; a connection silent this long is closed; at most this
    # many open (lowered to the open-file limit minus fd_reserve), and per address (0: no cap)
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 1000
    fd_reserve: int = 128
    # tenancy and limits
    api_keys: tuple[tuple[str, str], ...] = ()
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 100
    api_key_cache_s: float = 5.0
    # failed authentications per client address (server.auththrottle): a bucket of
    # auth_failure_burst refused credentials refilled at auth_failures_per_s
    auth_failures_per_s: float = 1.0
    auth_failure_burst: int = 30
    # seals the keys that sign user tokens (32+ characters, the same on every replica);
    # unset: a key made in data_dir with an embedded database, else no user tokens
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    # envelope encryption of tenants that opt in (docs/security.md): the key-encryption
    # key as local:<64 hex>, local-file:/path or aws-kms:<key id or ARN>; unset: no
    # tenant can turn encryption on
    encryption_kek: str | None = dataclasses.field(default=None, repr=False)
    # the KEK being retired: `keys rotate-kek` re-wraps every data key from it to the above
    encryption_kek_previous: str | None = dataclasses.field(default=None, repr=False)
    # KMS endpoint and region for aws-kms: (unset: AWS's endpoint, S3_REGION, us-east-1)
    kms_endpoint_url: str | None = None
    kms_region: str | None = None
    # how long an opened data key stays in memory (a KMS call saved per key and window)
    data_key_cache_s: float = 60.0
    # how far a token's exp, nbf and iat may be off this server's clock (at most 300)
    token_leeway_s: float = 30.0
    # how long an OIDC issuer's keys (JWKS) are kept before they are fetched again
    oidc_jwks_cache_s: float = 600.0
    # POST /dev/tokens mints user tokens of tenant "dev" for callers on this machine
    # (the demo page); always on with the embedded database
    dev_tokens: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    max_content_bytes: int = 256 * 1024
    max_context_bytes: int = 256 * 1024
    max_metadata_bytes: int = 16 * 1024
    idempotency_ttl_s: int = 24 * 3600
    # database
    db_pool_min: int = 2
    db_pool_max: int = 20
    db_connect_timeout_s: float = 5.0
    db_acquire_timeout_s: float = 2.0
    # time every statement by kind (chat_db_query_duration_seconds); costs ~8% CPU/write
    db_query_metrics: bool = False
    allow_unsafe_db: bool = False
    # write path (session actors)
    max_batch: int = 256
    mailbox_size: int = 1024
    write_timeout_s: float = 10.0  # also the deadline of a request that writes
    # the deadline of any other request until its response starts (server.deadlines)
    request_timeout_s: float = 10.0
    actor_idle_s: float = 60.0
    # browsers on other origins: CORS and the WebSocket's Origin check (one list)
    cors_origins: tuple[str, ...] = ()
    # streaming
    ws_max_frame_bytes: int = 1024 * 1024
    ws_send_queue: int = 1024
    ws_heartbeat_s: float = 30.0
    ws_max_connections_per_tenant: int = 1000
    checkpoint_interval_s: float = 1.0
    checkpoint_chars: int = 2000
    stream_grace_s: float = 30.0
    redis_prefix: str = "chat"
    # async ingestion: writes answered 202 once in a Redis stream, stored by consumers
    ingest_mode: str = "sync"
    ingest_batch: int = 100
    ingest_claim_idle_s: float = 30.0
    ingest_max_backlog: int = 100_000
    # attachments: S3 when S3_BUCKET is set, else files under data_dir/objects
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None  # the endpoint clients reach, if not s3_endpoint_url
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    # server-side encryption of every object written and every upload URL: aws:kms or
    # AES256 (unset: the bucket's default); the KMS key for aws:kms (unset: S3's own)
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    object_signing_key: str | None = None  # local store URLs; default: a key in data_dir
    max_attachment_bytes: int = 100 * 1024 * 1024
    upload_url_s: int = 900
    download_url_s: int = 300
    # background jobs (retention, temporary chats, stale uploads); 0: not in this process
    maintenance_interval_s: float = 300.0
    pending_attachment_s: int = 24 * 3600
    # data protection (docs/privacy.md): the retention a new tenant gets (0: forever),
    # and the region whose national phone formats PII redaction recognises
    default_retention_days: int = 90
    pii_phone_region: str = "US"
    # OpenTelemetry tracing: set from the standard OTEL_* variables (chat_storage.tracing
    # .wanted), never from a CHAT_ one; the SDK reads the rest of them itself
    tracing: bool = False

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and an embedded Postgres is used."""
        return self.database_url is None

    @property
    def new_tenant_retention(self) -> int | None:
        """The retention a new tenant gets: ``None`` keeps its messages forever."""
        return self.default_retention_days or None

    @property
    def serves_dev_tokens(self) -> bool:
        """Whether ``POST /dev/tokens`` is served: the zero-setup database, or asked for."""
        return self.embedded or self.dev_tokens

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``environ`` (default: the process environment).

        ``overrides`` (CLI flags) win over the environment; ``None`` values are ignored.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        values["tracing"] = tracing.wanted(env)
        for field in dataclasses.fields(cls):
            if field.name == "tracing":
                continue
            var, raw = envvars.lookup(env, envvars.env_name(field.name))
            if raw is None:
                continue
            parse = envvars.PARSERS.get(field.name) or envvars.parser_for(field.type)
            try:
                values[field.name] = parse(raw)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{var}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` for the first value out of range."""
        positive = (
            "port", "workers", "rate_limit_burst", "max_body_bytes", "max_content_bytes",
            "max_context_bytes", "max_metadata_bytes", "idempotency_ttl_s", "db_pool_max",
            "max_batch", "mailbox_size", "ws_max_frame_bytes", "ws_send_queue",
            "ws_max_connections_per_tenant", "checkpoint_chars", "ingest_batch",
            "ingest_max_backlog", "max_attachment_bytes", "upload_url_s", "download_url_s",
            "pending_attachment_s", "max_connections", "fd_reserve", "auth_failure_burst",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be greater than 0")
        positive_float = (
            "rate_limit_per_s", "shutdown_timeout_s", "db_connect_timeout_s",
            "db_acquire_timeout_s", "write_timeout_s", "actor_idle_s",
            "checkpoint_interval_s", "stream_grace_s", "ws_heartbeat_s", "ingest_claim_idle_s",
            "header_timeout_s", "idle_timeout_s", "auth_failures_per_s", "request_timeout_s",
        )
        for name in positive_float:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be greater than 0")
        if not 0 < self.port < 65536:
            raise SettingsError("CHAT_PORT must be between 1 and 65535")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise SettingsError("CHAT_METRICS_PORT must be between 1 and 65535")
        if self.db_pool_min < 0 or self.db_pool_min > self.db_pool_max:
            raise SettingsError("CHAT_DB_POOL_MIN must be between 0 and CHAT_DB_POOL_MAX")
        if not 0 <= self.default_retention_days <= 36500:
            raise SettingsError("CHAT_DEFAULT_RETENTION_DAYS must be 0 (forever) to 36500")
        if not (len(self.pii_phone_region) == 2 and self.pii_phone_region.isascii()
                and self.pii_phone_region.isupper()):
            raise SettingsError("CHAT_PII_PHONE_REGION must be a two-letter region (US, DE)")
        if self.max_connections_per_ip < 0:
            raise SettingsError("CHAT_MAX_CONNECTIONS_PER_IP must be 0 (no cap) or more")
        if self.maintenance_interval_s < 0:
            raise SettingsError("CHAT_MAINTENANCE_INTERVAL_S must be 0 (off) or more")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise SettingsError("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY go together")
        if self.s3_sse not in (None, "aws:kms", "AES256"):
            raise SettingsError("S3_SSE must be aws:kms or AES256")
        if self.s3_sse_kms_key_id is not None and self.s3_sse != "aws:kms":
            raise SettingsError("S3_SSE_KMS_KEY_ID needs S3_SSE=aws:kms")
        if self.upload_url_s > 7 * 86400 or self.download_url_s > 7 * 86400:
            raise SettingsError("presigned URLs last at most 7 days (604800 s)")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise SettingsError("CHAT_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgres://", "postgresql://")
        ):
            raise SettingsError("DATABASE_URL must start with postgres:// or postgresql://")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
        if self.ingest_mode not in ("sync", "async"):
            raise SettingsError("CHAT_INGEST_MODE must be sync or async")
        if self.ingest_mode == "async" and self.redis_url is None:
            raise SettingsError("CHAT_INGEST_MODE=async needs REDIS_URL: accepted messages "
                                "wait in a Redis stream until they are stored")
        if self.secret_key is not None and len(self.secret_key.encode()) < 32:
            raise SettingsError("CHAT_SECRET_KEY must be at least 32 characters")
        for name in ("encryption_kek", "encryption_kek_previous"):
            url = getattr(self, name)
            if url is None:
                continue
            try:
                kek.check_url(url)
            except ValueError as exc:
                # the message never repeats the value: it may be a key
                raise SettingsError(f"{env_name(name)}: {exc}") from None
        if self.data_key_cache_s <= 0:
            raise SettingsError("CHAT_DATA_KEY_CACHE_S must be greater than 0")
        if not 0 <= self.token_leeway_s <= 300:
            raise SettingsError("CHAT_TOKEN_LEEWAY_S must be between 0 and 300")
        if self.oidc_jwks_cache_s <= 0:
            raise SettingsError("CHAT_OIDC_JWKS_CACHE_S must be greater than 0")
        try:
            check_origins(self.cors_origins)
        except ValueError as exc:
            raise SettingsError(f"CHAT_CORS_ORIGINS: {exc}") from None
