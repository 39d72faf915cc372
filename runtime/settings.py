"""Every setting in one place, read once from ATLANTIC_* environment variables (or .env)."""

from decimal import Decimal
from functools import cached_property
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.accounts import inbox_prefix


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATLANTIC_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    nats_url: str = "nats://127.0.0.1:4222"  # one server, or a cluster's: comma-separated
    # How long start-up waits for a NATS server to answer before it fails with a clear error.
    nats_connect_timeout_seconds: float = Field(10.0, gt=0)
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/atlantic"
    postgres_pool_size: int = Field(10, ge=1, le=200)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "atlantic:"
    clickhouse_url: str | None = None
    data_dir: str = "./data"
    handlers: str = "all"  # comma-separated set names, or "all"
    log_level: str = "INFO"
    # "json": one JSON object a line (time, level, logger, message, trace and span ids, subject,
    # set); "text": a line for a person.
    log_format: Literal["text", "json"] = "text"
    # Prometheus text on http://metrics_host:metrics_port/metrics from every process; 0: none.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Traces: the standard OpenTelemetry variables, under their own names. Spans are made and
    # exported over OTLP (HTTP) only when an endpoint or a traces exporter is named; otherwise
    # no SDK is set up and the OpenTelemetry API stays a no-op. The SDK reads the rest of the
    # OTEL_* variables (OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES, ...) itself.
    otel_exporter_otlp_endpoint: str | None = Field(None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_traces_exporter: str | None = Field(None, alias="OTEL_TRACES_EXPORTER")
    otel_service_name: str | None = Field(None, alias="OTEL_SERVICE_NAME")
    otel_sdk_disabled: bool = Field(False, alias="OTEL_SDK_DISABLED")

    session_idle_seconds: int = Field(30 * 60, ge=1)
    session_absolute_seconds: int = Field(12 * 60 * 60, ge=1)
    login_attempts: int = Field(5, ge=1)
    login_window_seconds: int = Field(60, ge=1)
    login_failures_global: int = Field(1000, ge=1)  # across accounts, per window (spraying)

    # Outbox relay: how often the sweep republishes rows a crash left behind, and how long
    # published rows are kept. The stream's duplicate window must outlast the retry horizon.
    outbox_sweep_seconds: float = Field(2.0, gt=0)
    outbox_stale_seconds: float = Field(1.0, ge=0)
    outbox_retention_hours: int = Field(24, ge=1)
    stream_duplicate_window_seconds: int = Field(2 * 60 * 60, ge=60)
    stream_max_bytes: int = Field(10 * 1024**3, ge=1024**2)
    stream_max_age_days: int = Field(30, ge=1)
    # Copies of the stream on a NATS cluster: 1, or 3 on three servers (an acknowledged event is
    # then on two of them, and survives losing any one server).
    stream_replicas: int = Field(1, ge=1, le=5)

    # Catalog: how long an order's stock is held waiting for its payment, how often expired
    # holds are swept, and the product cache (entries live briefly, so a missed invalidation
    # while Redis was unreachable heals itself; a slow Redis counts as a miss, not a wait).
    hold_seconds: float = Field(15 * 60, gt=0)
    hold_sweep_seconds: float = Field(5.0, gt=0)
    product_cache_seconds: int = Field(60, ge=1)
    product_cache_timeout_seconds: float = Field(0.25, gt=0)
    # Each catalog process's own copies of cached replies (storage.cache; 0: none): kept true
    # by invalidations shared on NATS, and this long at most.
    product_cache_local_seconds: float = Field(5.0, ge=0)

    # Orders: an order still short of PAID or RESERVED this long after creation is cancelled;
    # a delivered order may be returned within the window. Quotes come from catalog.quote.
    order_deadline_seconds: float = Field(15 * 60, gt=0)
    order_sweep_seconds: float = Field(5.0, gt=0)
    return_window_days: float = Field(30, ge=0)
    quote_timeout_seconds: float = Field(2.0, gt=0)

    # The sandbox payment provider declines, deterministically, any charge above this amount and
    # any charge for the customers listed (comma-separated user ids).
    sandbox_decline_above: Decimal = Field(Decimal("10000.00"), ge=0)
    sandbox_declined_customers: str = ""

    # Analytics: events are kept this long in ClickHouse (older rows are dropped as parts merge);
    # an ingest batch closes at batch_size events, or when its oldest event has waited
    # batch_seconds since publication less the time a store has lately taken: about the longest
    # an event takes to be counted, at any rate (handlers.analytics.ingest).
    analytics_retention_days: int = Field(400, ge=1, le=36_500)
    analytics_batch_size: int = Field(10_000, ge=1, le=10_000)
    analytics_batch_seconds: float = Field(0.75, gt=0, le=10)
    analytics_consumer: str = Field("analytics-ingest", pattern=r"^[A-Za-z0-9_-]+$")
    # Unacked ingest messages (a crashed ingest's batch) come back after this; longer than any
    # insert.
    analytics_ack_wait_seconds: float = Field(60.0, ge=1)

    # Event consumers apply what arrived while they worked as one batch; when events come often
    # enough that more would join, a batch that starts small waits this long for them (fewer
    # transactions, at this much latency per hop).
    # Events a consumer took and never acked (it crashed) come back after the ack wait, which
    # stays below the 14 s an early event is retried for (handlers.handler_set), so an event
    # never gives up on a predecessor that a crash is still holding.
    event_batch_linger_seconds: float = Field(0.02, ge=0, le=1)
    event_ack_wait_seconds: float = Field(10.0, ge=1, le=12)

    # A request that publishes (analytics.track) retries through a stream leader election this
    # long, with the same message ids, before it answers 503; below clients' timeouts.
    publish_retry_seconds: float = Field(8.0, gt=0)

    # The web set: the live dashboard's HTTP address (port 0: any free port), and the currency
    # its money is shown in (ISO 4217).
    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, ge=0, le=65535)
    web_currency: str = Field("USD", pattern=r"^[A-Z]{3}$")

    request_workers: int = Field(32, ge=1, le=1024)
    graceful_timeout_seconds: float = Field(15.0, ge=0)

    admin_email: str = "admin@example.com"
    admin_password: str = "atlantic-admin-dev"

    def environment(self) -> dict[str, str]:
        """These settings as ATLANTIC_* variables (and the OTEL_* ones under their own names), for
        a child process that must share them."""
        fields = type(self).model_fields
        return {fields[name].alias or f"ATLANTIC_{name.upper()}": str(value)
                for name, value in self.model_dump().items() if value is not None}

    @property
    def nats_inbox_prefix(self) -> str:
        """Where this process's NATS replies come: the only inbox its NATS user may read."""
        return inbox_prefix(self.nats_servers[0]) if self.nats_servers else inbox_prefix("")

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @cached_property
    def handler_sets(self) -> list[str]:
        return [name.strip() for name in self.handlers.split(",") if name.strip()]
