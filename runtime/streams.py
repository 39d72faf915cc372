"""The ATLANTIC stream, declared in exactly one place.

With `stream_replicas` 3 on a three-node cluster, JetStream acknowledges a publish only once a
majority of the replicas (two of three) has stored it, and consumers (their replicas follow the
stream's) ack the same way, so an acknowledged event survives losing any one server. Every
publisher here waits for that acknowledgement (no fire-and-forget publishes of events).
"""

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from contracts.events import ALL_EVENTS, STREAM
from handlers.jetstream import leaderless
from runtime.settings import Settings

MAX_EVENT_BYTES = 256 * 1024
# The most events any consumer may have handed out and not acked: the analytics ingest's, twice
# its largest batch (handlers.analytics.ingest).
MAX_CONSUMER_ACK_PENDING = 20_000


@dataclass
class _StreamConfig(StreamConfig):
    """nats-py 2.14's StreamConfig lacks the consumer limits of nats-server 2.10+."""

    consumer_limits: dict[str, int] | None = None


class StreamRefused(RuntimeError):
    pass


def stream_config(settings: Settings) -> StreamConfig:
    max_age = settings.stream_max_age_days * 86_400
    return _StreamConfig(
        name=STREAM,
        subjects=[ALL_EVENTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_msg_size=MAX_EVENT_BYTES,
        max_bytes=settings.stream_max_bytes,
        max_age=max_age,
        duplicate_window=settings.stream_duplicate_window_seconds,
        # Limits on every consumer, durable ones included, whoever creates it: one unused for
        # as long as the stream keeps events is removed (a set that comes back after that
        # starts again from the oldest event kept), and none may hold more unacked events.
        consumer_limits={"inactive_threshold": max_age * 1_000_000_000,
                         "max_ack_pending": MAX_CONSUMER_ACK_PENDING},
        num_replicas=settings.stream_replicas,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Creates the stream, or updates it to these settings (NATS moves an existing stream to a
    new replica count itself; what it refuses, such as more replicas than servers, is an error
    at start-up that says so). A cluster that is still electing its JetStream leader is waited
    for, up to the connect timeout."""
    async for attempt in AsyncRetrying(
            stop=stop_after_delay(settings.nats_connect_timeout_seconds),
            wait=wait_exponential(multiplier=0.1, max=1), retry=retry_if_exception(leaderless),
            reraise=True):
        with attempt:
            await _declare(js, stream_config(settings))


async def _declare(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(STREAM)
        declare = js.update_stream
    except NotFoundError:
        declare = js.add_stream
    try:
        await declare(config)
    except APIError as exc:
        if leaderless(exc):
            raise
        raise StreamRefused(
            f"NATS refused the {STREAM} stream with {config.num_replicas} replica(s): "
            f"{exc.description} (ATLANTIC_STREAM_REPLICAS needs a cluster of at least that many "
            "servers)") from exc
