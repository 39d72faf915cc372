"""The web set: the live dashboard in a browser, on HTTP (ATLANTIC_WEB_HOST:ATLANTIC_WEB_PORT).

It has no NATS endpoints and owns no tables: it is a client of the other sets (the analytics
queries, users' sign-in, the orders' counts), reads live activity from atlantic.events.> and
serves pages, JSON and Server-Sent Events to signed-in administrators.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import nats
import uvicorn
from faststream.context import ContextRepo

from handlers.handler_set import HandlerSet
from handlers.web.app import Web, create_app
from handlers.web.backend import Backend
from handlers.web.live import LiveFeed

log = logging.getLogger("atlantic.web")

web = HandlerSet("web", "The live dashboard: sales, funnels, stock and the pipeline's health, "
                 "in a browser over HTTP")

# Streams still open this long after shutdown began are cut (they end sooner: the feed closes).
SHUTDOWN_SECONDS = 5


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the app's own event loop. The app's runner (FastStream) owns SIGTERM and
    SIGINT and stops the web set through its lifespan, so uvicorn must not take the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is a clear error at start-up (uvicorn
    would exit the process) and port 0 gets a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"the web set cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@web.lifespan
@contextlib.asynccontextmanager
async def dashboard_server(context: ContextRepo) -> AsyncIterator[None]:
    """Serves the dashboard while the app runs; open streams end first when it stops."""
    settings = context.get("settings")
    sock = listen(settings.web_host, settings.web_port)
    # A connection of its own, like the analytics ingest's: the broker's is closed before the
    # lifespans end, and the pages keep asking until the server has stopped.
    nc = await nats.connect(settings.nats_servers, name="atlantic[web]",
                            inbox_prefix=settings.nats_inbox_prefix, max_reconnect_attempts=-1)
    feed = LiveFeed(nc)
    await feed.start()
    app = create_app(Web(Backend(nc), feed, settings.web_currency,
                         settings.session_absolute_seconds))
    server = EmbeddedServer(uvicorn.Config(
        app, lifespan="off", log_level="warning", access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS))
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="web-server")
    try:
        host, port = sock.getsockname()[:2]
        context.set_global("web_url", f"http://{host}:{port}")
        log.info("dashboard on http://%s:%s", host, port)
        yield
    finally:
        await feed.stop()
        server.should_exit = True
        await serving
        sock.close()
        await nc.close()
