"""The ATLANTIC stream, declared in exactly one place."""

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from contracts.events import ALL_EVENTS, STREAM
from runtime.settings import Settings

MAX_EVENT_BYTES = 256 * 1024


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        subjects=[ALL_EVENTS],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_msg_size=MAX_EVENT_BYTES,
        max_bytes=settings.stream_max_bytes,
        max_age=settings.stream_max_age_days * 86_400,
        duplicate_window=settings.stream_duplicate_window_seconds,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    config = stream_config(settings)
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)
