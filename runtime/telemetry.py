"""Telemetry of a process: the trace exporter, the Prometheus endpoint and the log format.

- Traces: an OpenTelemetry SDK with an OTLP (HTTP) exporter, set up only when the standard
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_TRACES_EXPORTER
  (otlp, console; "none", or OTEL_SDK_DISABLED=true, turns it off) asks for it. Without them
  no SDK is loaded and the spans of runtime.requests, runtime.consumers and the analytics
  ingest are never started (their tracer is None), so a process without traces pays nothing
  for them.
- Metrics: prometheus_client's registry, served as text on ATLANTIC_METRICS_PORT (once per
  process, whatever apps it runs), and by the web set on its own port. The counters live beside
  the code that counts; what is cheaper to ask at scrape time than to keep up to date (outbox
  rows waiting, consumers' pending and redelivered counts) is read by a collector then.
- Logs: `ATLANTIC_LOG_FORMAT=json` gives one JSON object a line, with the trace and span ids of
  the current span and the subject, set or consumer of the message being served.
"""

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from opentelemetry import trace
from prometheus_client import REGISTRY, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts.events import STREAM
from handlers import telemetry
from runtime.settings import Settings
from storage import outbox

log = logging.getLogger("atlantic.telemetry")

# A `_created` series beside every counter and histogram doubles the text for a figure
# Prometheus does not need (it sees counter resets by itself).
disable_created_metrics()

_lock = threading.Lock()
_metrics_port: int | None = None  # the port this process serves /metrics on, once started
_tracing_configured = False


# --- traces ---------------------------------------------------------------------------------------

def tracing_wanted(settings: Settings) -> bool:
    exporter = (settings.otel_traces_exporter or "").strip().lower()
    if exporter == "none" or settings.otel_sdk_disabled:
        return False
    return bool(exporter or settings.otel_exporter_otlp_endpoint
                or settings.otel_exporter_otlp_traces_endpoint)


def configure_tracing(settings: Settings, service: str) -> None:
    """Sets up the SDK and its exporter when the OTEL_* settings ask for traces; once a process.
    A tracer given by a test (handlers.telemetry.use) is left as it is."""
    global _tracing_configured
    with _lock:
        if _tracing_configured or telemetry.tracer() is not None or not tracing_wanted(settings):
            return
        _tracing_configured = True
    # Imported here: a process without traces never loads the SDK.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({SERVICE_NAME: settings.otel_service_name or service})
    provider = TracerProvider(resource=resource)
    for name in (settings.otel_traces_exporter or "otlp").lower().split(","):
        if name.strip() == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name.strip() == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
                endpoint=traces_endpoint(settings))))
    trace.set_tracer_provider(provider)
    telemetry.use(provider.get_tracer("atlantic"))
    log.info("tracing on: spans exported to %s", settings.otel_traces_exporter
             or traces_endpoint(settings))


def traces_endpoint(settings: Settings) -> str | None:
    """Where OTLP/HTTP spans go: the traces endpoint as given, or the base endpoint's
    /v1/traces (the OpenTelemetry rule); None lets the exporter read its own default."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


# --- metrics --------------------------------------------------------------------------------------

def serve_metrics(settings: Settings) -> int | None:
    """Serves /metrics on ATLANTIC_METRICS_PORT (0: not at all), once a process; the port."""
    global _metrics_port
    with _lock:
        if settings.metrics_port and _metrics_port is None:
            server, _ = start_http_server(settings.metrics_port, settings.metrics_host)
            _metrics_port = server.server_port
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, _metrics_port)
        return _metrics_port


@dataclass(frozen=True, eq=False)
class ScrapeSource:
    """One app's outboxes and durable consumers, and the loop to ask them on."""

    loop: asyncio.AbstractEventLoop
    pool: asyncpg.Pool | None
    schemas: list[str]
    js: JetStreamContext
    durables: Callable[[], Iterable[str]]


class ScrapeCollector(Collector):
    """What a process's apps are asked at scrape time: each outbox's waiting rows and the age of
    the oldest, and each durable consumer's pending, unacknowledged and redelivered counts. One
    for the process (a metric family appears once however many apps it runs); the scrape comes
    on the metrics server's thread, and the questions are asked on each app's loop."""

    def __init__(self) -> None:
        self.sources: list[ScrapeSource] = []

    def describe(self) -> list:  # no question is asked when the collector is registered
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("atlantic_outbox_waiting_rows",
                                    "Outbox rows not yet published", labels=["schema"])
        oldest = GaugeMetricFamily("atlantic_outbox_oldest_age_seconds",
                                   "Age of the oldest unpublished outbox row (0: none)",
                                   labels=["schema"])
        pending = GaugeMetricFamily("atlantic_consumer_pending_messages",
                                    "Events on the stream a consumer has not been handed yet",
                                    labels=["consumer"])
        unacked = GaugeMetricFamily("atlantic_consumer_ack_pending_messages",
                                    "Events handed to a consumer and not yet acknowledged",
                                    labels=["consumer"])
        redelivered = GaugeMetricFamily("atlantic_consumer_redelivered_messages",
                                        "Events handed to a consumer more than once and not"
                                        " yet acknowledged", labels=["consumer"])
        asked: set[str] = set()  # each outbox and consumer once, however many apps share it
        for source in list(self.sources):
            for schema in source.schemas if source.pool else ():
                if f"outbox {schema}" in asked:
                    continue
                asked.add(f"outbox {schema}")
                found = _ask(source.loop, outbox.backlog(source.pool, schema))
                if found is not None:
                    waiting.add_metric([schema], found[0])
                    oldest.add_metric([schema], found[1])
            for durable in source.durables():
                if f"consumer {durable}" in asked:
                    continue
                asked.add(f"consumer {durable}")
                info = _ask(source.loop, source.js.consumer_info(STREAM, durable))
                if info is not None:
                    pending.add_metric([durable], info.num_pending or 0)
                    unacked.add_metric([durable], info.num_ack_pending or 0)
                    redelivered.add_metric([durable], info.num_redelivered or 0)
        return [waiting, oldest, pending, unacked, redelivered]


def _ask(loop: asyncio.AbstractEventLoop, question: Coroutine[Any, Any, Any]) -> Any:
    try:
        return asyncio.run_coroutine_threadsafe(question, loop).result(timeout=2.0)
    except Exception:  # a server away: the figure is left out of this scrape
        log.debug("a scrape-time question failed", exc_info=True)
        return None


SCRAPED = ScrapeCollector()
REGISTRY.register(SCRAPED)


# --- logs -----------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339 UTC), level, logger, message, and where known the
    trace and span ids, the subject, the set and the consumer; an exception as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = f"{span.trace_id:032x}"
            line["span_id"] = f"{span.span_id:016x}"
        if scope := telemetry.log_scope.get():
            line.update(scope)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    if settings.log_format == "json":
        # FastStream's logger writes through a handler of its own (coloured text), not the
        # root's: its start and stop lines become JSON lines too.
        logging.getLogger("faststream").handlers = [handler]
    # One access-log line per message costs about a third of throughput; keep errors only.
    logging.getLogger("faststream.access").setLevel(logging.WARNING)
