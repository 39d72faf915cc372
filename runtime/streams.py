"""The ATLANTIC stream, declared in exactly one place."""

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from contracts.events import ALL_EVENTS, STREAM
from runtime.settings import Settings

MAX_EVENT_BYTES = 256 * 1024
# The most events any consumer may have handed out and not acked: the analytics ingest's, twice
# its largest batch (handlers.analytics.ingest).
MAX_CONSUMER_ACK_PENDING = 20_000


@dataclass
class _StreamConfig(StreamConfig):
    """nats-py 2.14's StreamConfig lacks the consumer limits of nats-server 2.10+."""

    consumer_limits: dict[str, int] | None = None


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
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    config = stream_config(settings)
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)
