"""The figures behind the dashboard: the analytics set's answers for one window, and the live
panel from the orders set, analytics ingest, JetStream and $SRV discovery."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.analytics import FUNNEL, INVENTORY, SUMMARY, TIMESERIES, TOP_PRODUCTS, USERS
from contracts.catalog import PRODUCTS_GET
from contracts.orders import STATS as ORDER_STATS
from handlers.web.backend import Backend, BackendError

# name: (how far back from now, or None for since midnight UTC; the series' granularity)
WINDOWS: dict[str, tuple[timedelta | None, str]] = {
    "today": (None, "hour"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "day"),
    "30d": (timedelta(days=30), "day"),
}
TOP = 10
LOW_STOCK_THRESHOLD = 10
INGEST_WINDOW = timedelta(minutes=1)  # the cheapest summary that carries the ingest status


def window_bounds(name: str, now: datetime) -> tuple[datetime, datetime]:
    back, _ = WINDOWS[name]
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) if back is None else now - back
    return start, now


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def dashboard(backend: Backend, token: str, window: str) -> dict[str, Any]:
    """Every figure for the window, each exactly as the analytics set answers it."""
    start, end = window_bounds(window, datetime.now(UTC))
    span = {"from": _iso(start), "to": _iso(end)}
    granularity = WINDOWS[window][1]

    def ask(subject: str, **fields: Any):
        return backend.ask(subject, span | fields, token)

    summary, users, revenue, orders, top, funnel, inventory = await asyncio.gather(
        ask(SUMMARY), ask(USERS),
        ask(TIMESERIES, metric="revenue", granularity=granularity),
        ask(TIMESERIES, metric="orders", granularity=granularity),
        ask(TOP_PRODUCTS, by="revenue", limit=TOP), ask(FUNNEL),
        ask(INVENTORY, lowStockThreshold=LOW_STOCK_THRESHOLD, limit=TOP))
    names = await product_names(backend, {p["productId"] for p in top["products"]}
                                | {p["productId"] for p in inventory["lowStock"]})
    for product in top["products"] + inventory["lowStock"]:
        product["name"] = names.get(product["productId"])
    return {
        "window": {"name": window, **span, "granularity": granularity},
        "summary": summary, "users": users,
        "series": {"revenue": revenue["points"], "orders": orders["points"]},
        "topProducts": top["products"], "funnel": funnel, "lowStock": inventory["lowStock"],
    }


async def product_names(backend: Backend, product_ids: set[str]) -> dict[str, str]:
    """Names from the catalog (most of them cached there); a product it cannot find stays
    unnamed rather than failing the page."""
    async def name(product_id: str) -> tuple[str, str | None]:
        try:
            return product_id, (await backend.ask(PRODUCTS_GET, {"productId": product_id}))["name"]
        except BackendError:
            return product_id, None

    found = await asyncio.gather(*(name(p) for p in sorted(product_ids)))
    return {product_id: name for product_id, name in found if name}


async def _or_none(call) -> Any:
    """A part of the live panel whose set is down shows as unavailable; the rest still shows.
    A refusal (the session ended) is not swallowed."""
    try:
        return await call
    except BackendError as exc:
        if exc.status in (401, 403):
            raise
        return None


async def live_panel(backend: Backend, token: str) -> dict[str, Any]:
    """Orders per status now, past their deadline and dead letters (orders set), the ingest's
    lag (analytics), each durable consumer's pending count (JetStream) and every running
    service with its request and error counts ($SRV)."""
    now = datetime.now(UTC)
    recent = {"from": _iso(now - INGEST_WINDOW), "to": _iso(now)}
    orders, summary, consumers, services = await asyncio.gather(
        _or_none(backend.ask(ORDER_STATS, None, token)),
        _or_none(backend.ask(SUMMARY, recent, token)),
        backend.consumers(), backend.services())
    return {"at": _iso(now), "orders": orders,
            "ingest": summary["ingest"] if summary else None,
            "consumers": consumers, "services": services}


class SharedPanel:
    """The live panel, computed at most once per `max_age` seconds for every open dashboard:
    its queries (a count over all orders among them) cost the same for one viewer or fifty.
    Callers are admins already checked; a stream re-checks its own session each time."""

    def __init__(self, backend: Backend, max_age: float):
        self.backend, self.max_age = backend, max_age
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def latest(self, token: str) -> dict[str, Any]:
        async with self._lock:  # one computation at a time; the others take its result
            now = asyncio.get_running_loop().time()
            if self._latest is None or now - self._latest[0] >= self.max_age:
                self._latest = (now, await live_panel(self.backend, token))
            return self._latest[1]
