"""The dashboard, measured in a real browser (Debian's chromium through Playwright, a dev
dependency): the time from an order's commit to its appearance on an open page, and the web
set's CPU per connected dashboard while orders flow."""

import asyncio
import shutil
import time
from dataclasses import dataclass
from typing import Any

from runtime.settings import Settings
from runtime.tools.bench.runner import Row, cpu_seconds, ms
from runtime.tools.bench.world import World, open_world
from runtime.tools.client import AtlanticClient
from runtime.tools.loadgen import percentile
from runtime.tools.services import free_port

BACKEND = ["users", "catalog", "orders", "payments", "analytics"]
# Records every value the orders figure takes, with the browser's wall-clock time.
WATCH_ORDERS = """() => {
  window.seen = [];
  const figure = document.getElementById("fig-orders");
  new MutationObserver(() => window.seen.push([Date.now() / 1000, Number(figure.dataset.value)]))
    .observe(figure, {attributes: true, attributeFilter: ["data-value"]});
}"""


@dataclass
class Sizes:
    orders: int  # placed one after another for the latency
    rate: float  # orders/s while the CPU is measured
    seconds: float  # CPU measured over this long, at each number of dashboards
    dashboards: tuple[int, ...]


QUICK = Sizes(200, 10, 15, (0, 1, 5))
FULL = Sizes(200, 10, 30, (0, 1, 5, 10))


async def open_dashboard(browser: Any, url: str, settings: Settings) -> Any:
    from playwright.async_api import expect

    page = await (await browser.new_context(base_url=url)).new_page()
    await page.goto("/login")
    await page.get_by_label("Email").fill(settings.admin_email)
    await page.get_by_label("Password").fill(settings.admin_password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live",
                                                                 timeout=60_000)
    await expect(page.locator("#fig-orders")).not_to_have_attribute("data-value", "",
                                                                    timeout=60_000)
    return page


class Shopper:
    def __init__(self, client: AtlanticClient, product_id: str):
        self.client, self.product_id = client, product_id

    @classmethod
    async def sign_up(cls, world: World) -> "Shopper":
        client = await AtlanticClient.connect(world.settings.nats_url)
        email = f"bench-web-{time.time_ns()}@example.com"
        password = "bench-web-password-1"
        await client.call("atlantic.users.register",
                          {"email": email, "password": password, "name": "Bench"})
        login = await client.call("atlantic.users.login", {"email": email, "password": password})
        admin = await client.call("atlantic.users.login", {
            "email": world.settings.admin_email, "password": world.settings.admin_password})
        product = await client.signed_in(admin.body["token"]).call(
            "atlantic.catalog.products.create", {"name": "Bench lamp", "price": "25.00",
                                                 "category": "Bench", "stock": 100_000})
        return cls(client.signed_in(login.body["token"]), product.body["productId"])

    async def order(self) -> float:
        """Places one order; the time its reply came, after its commit."""
        reply = await self.client.call("atlantic.orders.create", {
            "items": [{"productId": self.product_id, "quantity": 1}]})
        assert reply.ok, reply.body
        return time.time()


async def commit_to_page(page: Any, shopper: Shopper, orders: int) -> list[float]:
    """Orders one after another; each one's delay from its reply to the first moment the page
    counted it (ticks add several at once: the k-th order is on the page once the figure
    reaches before + k)."""
    before = int(await page.locator("#fig-orders").get_attribute("data-value"))
    await page.evaluate(WATCH_ORDERS)
    committed = [await shopper.order() for _ in range(orders)]
    await page.wait_for_function(
        f"Number(document.getElementById('fig-orders').dataset.value) >= {before + orders}",
        timeout=60_000)
    seen = await page.evaluate("window.seen")
    return [next(t for t, value in seen if value >= before + k) - at
            for k, at in enumerate(committed, start=1)]


async def web_cpu(world: World, browser: Any, url: str, shopper: Shopper, sizes: Sizes
                  ) -> dict[int, float]:
    """The web set's CPU seconds per second while orders come at `rate`, by open dashboards."""
    pid = world.processes["web"].pid
    pages: list[Any] = []
    per_count: dict[int, float] = {}
    for count in sizes.dashboards:
        while len(pages) < count:
            pages.append(await open_dashboard(browser, url, world.settings))
        await asyncio.sleep(3)  # past the sign-in's own requests
        cpu, began = cpu_seconds(pid), time.monotonic()
        placed = []
        while (elapsed := time.monotonic() - began) < sizes.seconds:
            placed.append(asyncio.create_task(shopper.order()))
            await asyncio.sleep(max(0.0, len(placed) / sizes.rate - elapsed))
        per_count[count] = (cpu_seconds(pid) - cpu) / (time.monotonic() - began)
        await asyncio.gather(*placed)
    for page in pages:
        await page.context.close()
    return per_count


async def web(base: Settings, quick: bool) -> list[Row]:
    from playwright.async_api import async_playwright

    sizes = QUICK if quick else FULL
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with open_world(base, "bench_web") as world, async_playwright() as pw:
        await world.serve(BACKEND)
        await world.serve(["web"], key="web", ATLANTIC_WEB_PORT=str(port))
        browser = await pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        shopper = await Shopper.sign_up(world)
        try:
            page = await open_dashboard(browser, url, world.settings)
            delays = await commit_to_page(page, shopper, sizes.orders)
            await page.context.close()
            cpu = await web_cpu(world, browser, url, shopper, sizes)
        finally:
            await shopper.client.close()
            await browser.close()
    idle = cpu[sizes.dashboards[0]]
    most = sizes.dashboards[-1]
    per_dashboard = (cpu[most] - idle) / most
    return [
        Row(f"dashboard: an order's commit to the open page ({sizes.orders} orders)",
            f"p50 {ms(percentile(delays, 0.5))}, p99 {ms(percentile(delays, 0.99))}",
            target="< 2 s", verdict="met" if percentile(delays, 0.99) < 2 else "missed"),
        Row(f"dashboard: web set CPU at {sizes.rate:g} orders/s",
            ", ".join(f"{n} open: {c * 100:.1f}%" for n, c in cpu.items())
            + f"; per dashboard {per_dashboard * 100:.2f}% of a core"),
    ]
