"""The web set's dashboard, in a real browser (Debian's chromium, driven by Playwright) against a
shop of its own: the saga's sets in this process, analytics and the web set each in an
`atlantic serve` process (so the web set can be restarted under an open page)."""

import shutil
from collections.abc import AsyncIterator

import pytest
from support import TEST_PASSWORD, eventually, sign_up, unique_email, world_of_its_own

from runtime.tools.bench.world import SAGA_SETS, World
from runtime.tools.bootstrap import ensure_admin
from runtime.tools.services import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The promise: an order placed anywhere shows on an open dashboard within 2 s.
LIVE_MS = 2_000
FIGURES = ("revenue", "orders", "aov", "new-customers", "returning-customers", "active-users")

pytestmark = pytest.mark.timeout(300)


class Shop:
    def __init__(self, world: World, url: str, admin_email: str):
        self.world, self.url, self.admin_email = world, url, admin_email
        self.product: str | None = None

    async def place_orders(self, n: int) -> list[dict]:
        if self.product is None:
            self.product = await self.world.product("19.99", 10_000)
        customer, _ = await self.world.customer()
        return [await self.world.order(customer, (self.product, 1)) for _ in range(n)]


@pytest.fixture(scope="module")
async def shop(settings) -> AsyncIterator[Shop]:
    port = free_port()
    async with world_of_its_own(settings, "web", sets=SAGA_SETS, in_process=True,
                                nats_users=True, web_port=port) as world:
        admin_email = unique_email("web-admin")
        await ensure_admin(world.settings, admin_email, TEST_PASSWORD)
        await world.serve(["analytics"])
        await world.serve(["web"])
        yield Shop(world, f"http://127.0.0.1:{port}", admin_email)


@pytest.fixture(scope="session")
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser, shop):
    context = await browser.new_context(base_url=shop.url)
    page = await context.new_page()
    yield page
    await context.close()


async def sign_in(page, email: str, password: str = TEST_PASSWORD) -> None:
    await page.goto("/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def signed_in_dashboard(page, shop: Shop) -> None:
    from playwright.async_api import expect

    await sign_in(page, shop.admin_email)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("#fig-orders")).not_to_have_attribute("data-value", "")


async def figure(page, name: str) -> str:
    return await page.locator(f"#fig-{name}").get_attribute("data-value")


async def analytics_for_page(shop: Shop, page) -> dict:
    window = page.locator("#dashboard")
    span = {"from": await window.get_attribute("data-from"),
            "to": await window.get_attribute("data-to")}
    summary = await shop.world.admin.call("atlantic.analytics.summary", span)
    users = await shop.world.admin.call("atlantic.analytics.users", span)
    assert summary.ok and users.ok, (summary.body, users.body)
    return {"revenue": summary.body["revenue"], "orders": summary.body["orders"],
            "aov": summary.body["averageOrderValue"],
            "new-customers": users.body["newCustomers"],
            "returning-customers": users.body["returningCustomers"],
            "active-users": users.body["activeUsers"]}


async def analytics_counted(shop: Shop, order_ids: set[str]) -> bool:
    reply = await shop.world.admin.call("atlantic.analytics.summary", {})
    return reply.ok and reply.body["orders"] >= len(order_ids)


# --- sign-in ---------------------------------------------------------------------------------

async def test_a_wrong_password_is_refused(page, shop):
    from playwright.async_api import expect

    await sign_in(page, shop.admin_email, "not-the-password")

    await expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    assert await page.context.cookies() == []
    assert (await page.request.get("/api/dashboard")).status == 401


async def test_a_customer_is_refused_and_left_signed_out(page, shop):
    from playwright.async_api import expect

    _, account = await sign_up(shop.world.client, "web-customer")

    await sign_in(page, account["email"])

    await expect(page.get_by_role("alert")).to_have_text(
        "Only administrators may see the dashboard.")
    assert await page.context.cookies() == []


async def test_without_a_session_pages_redirect_and_the_api_answers_401(page, shop):
    response = await page.goto("/")
    api = await page.request.get("/api/dashboard")
    stream = await page.request.get("/api/stream")

    assert page.url.endswith("/login") and response.ok
    assert api.status == 401 and (await api.json())["error"]["code"] == "unauthorized"
    assert stream.status == 401


async def test_a_customers_token_in_the_cookie_gets_403(page, shop):
    customer, _ = await sign_up(shop.world.client, "web-sneak")
    await page.context.add_cookies([{"name": "atlantic_session", "value": customer.token,
                                     "url": shop.url}])

    api = await page.request.get("/api/live")
    await page.goto("/")

    assert api.status == 403 and (await api.json())["error"]["code"] == "forbidden"
    assert "Only administrators" in await page.content()


async def test_the_session_cookie_is_httponly_strict_and_unreadable_by_the_page(page, shop):
    await signed_in_dashboard(page, shop)

    [cookie] = await page.context.cookies()

    assert cookie["name"] == "atlantic_session"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""
    assert cookie["value"] not in await page.content()


async def test_the_page_runs_under_a_strict_content_security_policy(page, shop):
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security" in m.text
            else None)

    await signed_in_dashboard(page, shop)
    response = await page.request.get("/")

    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert await page.locator("#series-chart canvas").count() == 1
    assert violations == []


async def test_logout_ends_the_session(page, shop):
    await signed_in_dashboard(page, shop)
    [cookie] = await page.context.cookies()

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/login")
    me = await shop.world.client.signed_in(cookie["value"]).call("atlantic.users.me")

    assert me.status == 401
    assert (await page.request.get("/api/dashboard")).status == 401


async def test_an_open_dashboard_whose_session_ends_goes_to_sign_in(page, shop):
    await signed_in_dashboard(page, shop)
    [cookie] = await page.context.cookies()

    ended = await shop.world.client.signed_in(cookie["value"]).call("atlantic.users.logout")

    assert ended.ok, ended.body
    await page.wait_for_url("**/login")


# --- the figures -------------------------------------------------------------------------------

async def test_the_figures_equal_the_analytics_replies_for_the_window(page, shop):
    from playwright.async_api import expect

    placed = await shop.place_orders(2)
    await eventually(lambda: analytics_counted(shop, {o["orderId"] for o in placed}),
                     seconds=20)

    for window, button in (("24h", None), ("7d", "7 days"), ("today", "Today")):
        if button is None:
            await signed_in_dashboard(page, shop)
        else:
            await page.get_by_role("button", name=button).click()
            await expect(page.locator("#dashboard")).to_have_attribute("data-window", window)
        expected = await analytics_for_page(shop, page)
        shown = {name: float(await figure(page, name)) for name in FIGURES}

        assert shown == {name: float(value) for name, value in expected.items()}, window
        assert expected["orders"] >= 2
        assert await page.locator("#fig-revenue").text_content() == f"${expected['revenue']:,.2f}"


async def test_three_orders_raise_the_orders_figure_by_three_without_a_reload(page, shop):
    from playwright.async_api import expect

    await signed_in_dashboard(page, shop)
    await page.evaluate("window.notReloaded = true")
    before = int(await figure(page, "orders"))

    await shop.place_orders(3)

    await expect(page.locator("#fig-orders")).to_have_attribute(
        "data-value", str(before + 3), timeout=LIVE_MS)
    assert await page.evaluate("window.notReloaded === true")


async def test_the_live_panel_lists_the_running_sets(page, shop):
    from playwright.async_api import expect

    await signed_in_dashboard(page, shop)

    services = page.locator("#live-services tbody")
    for name in ("users", "catalog", "orders", "payments", "analytics", "web"):
        await expect(services).to_contain_text(f"atlantic-{name}")
    await expect(page.locator("#live-statuses")).to_contain_text("RESERVED")
    await expect(page.locator("#live-consumers")).to_contain_text("analytics-ingest")


async def test_a_stream_cut_by_restarting_the_web_set_recovers(page, shop):
    from playwright.async_api import expect

    await signed_in_dashboard(page, shop)
    await page.evaluate("window.notReloaded = true")

    await shop.world.stop("web")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    await shop.world.serve(["web"])
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live",
                                                                 timeout=15_000)
    before = int(await figure(page, "orders"))
    await shop.place_orders(1)

    await expect(page.locator("#fig-orders")).to_have_attribute("data-value", str(before + 1))
    assert await page.evaluate("window.notReloaded === true")


async def test_an_unknown_window_is_a_structured_422(page, shop):
    await signed_in_dashboard(page, shop)

    reply = await page.request.get("/api/dashboard?window=forever")

    assert reply.status == 422
    assert (await reply.json())["error"]["details"][0]["field"] == "window"


async def test_usable_at_375_px(browser, shop):
    context = await browser.new_context(base_url=shop.url, viewport={"width": 375, "height": 800})
    page = await context.new_page()
    try:
        await signed_in_dashboard(page, shop)

        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        chart = await page.locator("#series-chart canvas").bounding_box()

        assert overflow <= 0
        assert chart is not None and chart["width"] <= 375
    finally:
        await context.close()


# --- orders.stats, which the live panel shows ------------------------------------------------

async def test_order_stats_count_every_status_for_admins_only(shop):
    placed = await shop.place_orders(1)
    await shop.world.status_becomes(shop.world.admin, placed[0]["orderId"], "RESERVED")
    customer, _ = await shop.world.customer()

    stats = await shop.world.admin.call("atlantic.orders.stats")
    refused = await customer.call("atlantic.orders.stats")

    assert stats.ok, stats.body
    assert set(stats.body["byStatus"]) == {"CREATED", "VALIDATED", "PAID", "RESERVED",
                                           "SHIPPED", "DELIVERED", "CANCELLED", "RETURNED"}
    assert stats.body["byStatus"]["RESERVED"] >= 1
    assert stats.body["pastDeadline"] == 0 and stats.body["deadLetters"] == []
    assert refused.status == 403


async def test_the_web_set_serves_its_process_metrics_to_an_admin_only(page, shop):
    from prometheus_client.parser import text_string_to_metric_families

    anonymous = await page.request.get("/metrics")
    await sign_in(page, shop.admin_email)
    await page.wait_for_url("**/")
    scrape = await page.request.get("/metrics")

    assert anonymous.status == 401  # the dashboard's port is public; its figures are not
    assert (await anonymous.json())["error"]["code"] == "unauthorized"
    assert scrape.ok and scrape.headers["content-type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(await scrape.text())}
    assert {"atlantic_requests", "atlantic_request_duration_seconds",
            "atlantic_outbox_waiting_rows"} <= families


# --- the pure parts, without servers ---------------------------------------------------------

@pytest.mark.fast
def test_a_tick_adds_up_orders_money_cancellations_and_returns():
    from handlers.web.live import Tick

    tick = Tick()
    for subject, event in [("order.created", {"orderId": "a", "totalPrice": 0.1}),
                           ("order.created", {"orderId": "b", "totalPrice": 0.2}),
                           ("order.cancelled", {"orderId": "a"}),
                           ("order.returned", {"orderId": "b"}),
                           ("behavior.search", {"query": "lamp"})]:
        tick.add(f"atlantic.events.{subject}", event)

    sent = tick.as_json()

    assert (sent["orders"], sent["revenue"], sent["cancelled"], sent["returned"]) == (2, 0.3, 1, 1)
    assert sent["events"] == 5 and sent["recent"][-1]["event"] == "behavior.search"


@pytest.mark.fast
def test_today_starts_at_midnight_utc_and_the_others_go_back_from_now():
    from datetime import UTC, datetime, timedelta

    from handlers.web.dashboard import window_bounds

    now = datetime(2026, 12, 2, 13, 45, 10, tzinfo=UTC)

    assert window_bounds("today", now) == (datetime(2026, 12, 2, tzinfo=UTC), now)
    assert window_bounds("7d", now) == (now - timedelta(days=7), now)
