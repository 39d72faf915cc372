"""The analytics set: behaviour tracking in, and the figures an e-commerce team watches out.

Ingest runs beside the handlers (handlers.analytics.ingest). The queries are for
administrators; `track` is open to every client, signed in or not, because shoppers browse
before they sign in.

This module is the set itself: its HandlerSet, what its handlers receive (the ClickHouse store,
the ingest loop), and the lifespan that opens them. The handlers are in requests.py, imported
at the end, so that they find the set here when they register on it.
"""

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import nats
from faststream.context import ContextRepo
from nats.js import JetStreamContext

from handlers.analytics.ingest import Ingest
from handlers.deps import Context
from handlers.handler_set import HandlerSet
from storage.analytics import AnalyticsStore

analytics = HandlerSet("analytics", "Behaviour tracking, and live sales, funnel, product, user"
                       " and inventory figures from every event")

Store = Annotated[AnalyticsStore, Context("analytics")]
IngestLoop = Annotated[Ingest, Context("analytics_ingest")]
JetStream = Annotated[JetStreamContext, Context("analytics_jetstream")]
PublishRetrySeconds = Annotated[float, Context("settings.publish_retry_seconds")]


@analytics.lifespan
@contextlib.asynccontextmanager
async def storage_and_ingest(context: ContextRepo) -> AsyncIterator[None]:
    """Opens ClickHouse (chDB under data_dir, or the server at clickhouse_url), creates the
    schema, and runs the ingest loop until the app stops."""
    settings = context.get("settings")
    store = AnalyticsStore.for_settings(settings.clickhouse_url, settings.data_dir,
                                        settings.analytics_retention_days)
    # A connection of its own: the broker drains its subscriptions on stop, and a pull
    # consumer waiting in fetch would hold that drain up.
    nc = await nats.connect(settings.nats_servers, name="atlantic[analytics-ingest]",
                            inbox_prefix=settings.nats_inbox_prefix, max_reconnect_attempts=-1)
    js = nc.jetstream()
    ingest = Ingest(nc, store, context.get("pool"), durable=settings.analytics_consumer,
                    batch_size=settings.analytics_batch_size,
                    batch_seconds=settings.analytics_batch_seconds,
                    ack_wait=settings.analytics_ack_wait_seconds)
    try:
        await store.start()
        await ingest.start()
        context.set_global("analytics", store)
        context.set_global("analytics_ingest", ingest)
        context.set_global("analytics_jetstream", js)
        yield
    finally:
        await ingest.stop()
        await nc.close()
        await store.close()


# The handlers, registered on the set as they are imported (they import the set from here).
from handlers.analytics import requests  # noqa: E402

__all__ = ["analytics", "requests"]
