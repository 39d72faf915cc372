"""The bus's permissions, tried for real: nats-server running deploy/nats.conf with generated
passwords (exactly as `atlantic up` runs it), every user publishing and subscribing to every
family of subjects (requests, replies, events, $JS.API, $JS.ACK, $SRV) and the server's answer
compared with what the user should be allowed; then the attacks found by trying, one by one:
snooping replies, forging events, answering another set's requests, a consumer of one's own.
"""

import asyncio
from collections.abc import Iterator

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerConfig
from nats.js.errors import BadRequestError, NotFoundError
from redis.asyncio import Redis

from contracts.catalog import CACHE_INVALIDATIONS
from contracts.events import STREAM
from handlers import HANDLER_SETS
from runtime import accounts
from runtime.accounts import NATS_CONF, Passwords, anonymous_may_publish_events
from runtime.consumers import consumer_config
from runtime.settings import Settings
from runtime.streams import MAX_CONSUMER_ACK_PENDING, ensure_stream
from runtime.tools.services import NatsServer, free_port
from storage.cache import ProductCache

SETS = tuple(HANDLER_SETS)
ANSWERING = tuple(name for name in SETS if HANDLER_SETS[name].endpoints)  # not web: HTTP only
USERS = (*SETS, "client")

# The events each set emits (DESIGN.md, "Handler sets and subjects"); wildcard families are
# represented by one member.
EMITS = {
    "users": ["user.registered", "user.logged_in"],
    "catalog": ["order.validated", "order.inventory_reserved", "inventory.reservation_failed",
                "inventory.adjusted", "product.created", "product.updated"],
    "orders": ["order.created", "order.shipped", "order.delivered", "order.cancelled",
               "order.returned"],
    "payments": ["order.payment_processed"],
    "analytics": ["behavior.page_viewed", "behavior.added_to_cart"],
}
# Requests a set makes of another set.
ASKS = {
    "orders": ["atlantic.catalog.quote"],
    # the dashboard: sign-in, the figures it shows, the orders' counts, product names
    "web": ["atlantic.users.login", "atlantic.users.logout", "atlantic.users.me",
            "atlantic.analytics.summary", "atlantic.analytics.timeseries",
            "atlantic.analytics.top_products", "atlantic.analytics.funnel",
            "atlantic.analytics.inventory", "atlantic.analytics.users",
            "atlantic.orders.stats", "atlantic.catalog.products.get"],
}
# Who watches the events live, outside JetStream consumers (it acts on none of them).
WATCHES = ("web",)


def durables(handler_set: str) -> list[str]:
    """The durable consumers the code declares for a set."""
    names = [consumer.durable for consumer in HANDLER_SETS[handler_set].consumers]
    return names + ([Settings().analytics_consumer] if handler_set == "analytics" else [])


ALL_DURABLES = {name: owner for owner in SETS for name in durables(owner)}


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Passwords]]:
    work = tmp_path_factory.mktemp("bus")
    passwords = Passwords.ensure(work / "data")
    server = NatsServer(free_port(), work / "store", config=NATS_CONF,
                        env=passwords.environment()).start()
    yield server, passwords
    server.stop()


class Session:
    """One NATS user's connection (with its own inbox prefix, as the runtime connects), and the
    permission violations the server reported to it."""

    def __init__(self, user: str, nc: nats.NATS, violations: list[str]):
        self.user, self.nc, self.violations = user, nc, violations

    @classmethod
    async def open(cls, bus: tuple[NatsServer, Passwords], user: str) -> "Session":
        server, passwords = bus
        violations: list[str] = []

        async def on_error(error: Exception) -> None:
            violations.append(str(error))

        nc = await accounts.connect(passwords.url(server.url, user), error_cb=on_error,
                                    allow_reconnect=False, connect_timeout=2)
        return cls(user, nc, violations)

    def _denied(self, subject: str) -> bool:
        # 'nats: permissions violation for publish to "<subject>"' (or "for subscription"):
        # nats-py lower-cases the whole server error, subject included.
        quoted = f'"{subject.lower()}"'
        return any(v.startswith("nats: permissions violation") and v.endswith(quoted)
                   for v in self.violations)

    async def round_trip(self) -> None:
        """Returns once the server has answered everything sent so far. Not nc.flush(): nats-py
        writes its PING straight to the socket, ahead of commands still buffered, so a -ERR can
        come after the PONG. A request is buffered behind them, and the server answers it (or
        reports no responders) only after the -ERR of anything sent before."""
        probe = "$JS.API.INFO" if self.user in SETS else "$SRV.PING"
        try:
            await self.nc.request(probe, b"", timeout=5)
        except nats.errors.NoRespondersError:
            pass

    async def can_publish(self, subject: str) -> bool:
        self.violations.clear()
        await self.nc.publish(subject, b"{}")
        await self.round_trip()
        return not self._denied(subject)

    async def can_subscribe(self, subject: str) -> bool:
        self.violations.clear()
        subscription = await self.nc.subscribe(subject)
        await self.round_trip()
        denied = self._denied(subject)
        await subscription.unsubscribe()
        return not denied

    async def close(self) -> None:
        await self.nc.close()


# --- the matrix --------------------------------------------------------------------------------

def matrix(user: str) -> list[tuple[str, str, bool]]:
    """(publish or subscribe, subject, allowed?) for one user, over every family of subjects."""
    is_set, mine = user in SETS, durables(user) if user in SETS else []
    cases: list[tuple[str, str, bool]] = []
    # requests: clients ask every set; a set answers only its own, and asks only what it needs
    for name in ANSWERING:
        cases += [("publish", f"atlantic.{name}.anything", user == "client"),
                  ("subscribe", f"atlantic.{name}.anything", user == name)]
    for subject in {s for asks in ASKS.values() for s in asks}:
        cases.append(("publish", subject,
                      user == "client" or subject in ASKS.get(user, [])))
    cases.append(("subscribe", "atlantic.>", False))
    # the catalog processes tell each other of invalidated cache entries, and nobody else may
    cases += [(action, CACHE_INVALIDATIONS, user == "catalog")
              for action in ("publish", "subscribe")]
    # replies: each user reads its own inbox only, and answers only through allow_responses
    for owner in USERS:
        cases += [("subscribe", f"_INBOX.{owner}.reply", owner == user),
                  ("publish", f"_INBOX.{owner}.reply", False)]
    cases += [("subscribe", "_INBOX.>", False), ("subscribe", "_INBOX.reply", False)]
    # events: only the owner publishes; nobody reads them outside JetStream consumers
    for owner, events in EMITS.items():
        cases += [("publish", f"atlantic.events.{event}", owner == user) for event in events]
    cases += [("subscribe", "atlantic.events.>", user in WATCHES),
              ("subscribe", "atlantic.events.order.created", user in WATCHES)]
    # $JS.API: the stream declared and read, consumers of the set's own names only
    for api in ("INFO", "STREAM.NAMES", f"STREAM.INFO.{STREAM}", f"STREAM.CREATE.{STREAM}",
                f"STREAM.UPDATE.{STREAM}"):
        cases.append(("publish", f"$JS.API.{api}", is_set))
    cases.append(("publish", f"$JS.API.STREAM.MSG.GET.{STREAM}", bool(mine)))
    cases.append(("publish", f"$JS.API.CONSUMER.LIST.{STREAM}", user in WATCHES))
    for api in (f"STREAM.DELETE.{STREAM}", f"STREAM.PURGE.{STREAM}", "STREAM.CREATE.OTHER",
                f"CONSUMER.CREATE.{STREAM}", f"CONSUMER.CREATE.{STREAM}.rogue",
                f"CONSUMER.DURABLE.CREATE.{STREAM}.rogue", f"CONSUMER.MSG.NEXT.{STREAM}.rogue",
                *(f"CONSUMER.DELETE.{STREAM}.{d}" for d in ALL_DURABLES)):
        cases.append(("publish", f"$JS.API.{api}", False))
    for durable in ALL_DURABLES:
        own = durable in mine
        cases += [("publish", f"$JS.API.CONSUMER.{api}.{STREAM}.{durable}", own)
                  for api in ("CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT")]
        cases += [("publish", f"$JS.API.CONSUMER.CREATE.{STREAM}.{durable}.atlantic.events.>",
                   own),
                  ("publish", f"$JS.ACK.{STREAM}.{durable}.1.7.7.1700000000000000000.0", own)]
    cases.append(("subscribe", "$JS.API.>", False))
    # $SRV: clients discover; each set answers discovery under its own name only
    cases += [("publish", "$SRV.PING", user == "client"),
              ("publish", "$SRV.STATS", user in ("client", *WATCHES)),
              ("publish", "$SRV.INFO.atlantic-users", user == "client"),
              ("subscribe", "$SRV.PING", is_set), ("subscribe", "$SRV.STATS", is_set),
              ("subscribe", "$SRV.>", False)]
    for name in SETS:
        cases += [("subscribe", f"$SRV.PING.atlantic-{name}", user == name),
                  ("subscribe", f"$SRV.INFO.atlantic-{name}.some-id", user == name)]
    return cases


@pytest.mark.parametrize("user", USERS)
async def test_every_user_may_do_exactly_what_it_needs(bus, user):
    me = await Session.open(bus, user)
    try:
        wrong = []
        for action, subject, allowed in matrix(user):
            try_it = me.can_publish if action == "publish" else me.can_subscribe
            if await try_it(subject) != allowed:
                wrong.append(f"{action} {subject}: {'denied' if allowed else 'allowed'}")
    finally:
        await me.close()

    assert wrong == [], f"{user}, against the matrix:\n" + "\n".join(wrong)


@pytest.mark.fast
def test_generated_passwords_start_with_a_letter_and_are_kept_from_others(tmp_path):
    passwords = Passwords.ensure(tmp_path)
    again = Passwords.ensure(tmp_path)

    assert again.by_user == passwords.by_user  # generated once, then kept
    assert set(passwords.by_user) == {*SETS, "client", "admin"}
    assert all(p[0].isalpha() and len(p) >= 40 for p in passwords.by_user.values())
    assert (passwords.path.stat().st_mode & 0o777) == 0o600


async def test_a_client_without_credentials_is_refused(bus):
    server, _ = bus

    with pytest.raises(nats.errors.Error):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2,
                           max_reconnect_attempts=0)
    assert not await anonymous_may_publish_events(server.url)


async def test_the_anonymous_probe_finds_an_open_server(tmp_path):
    server = NatsServer(free_port(), tmp_path / "open").start()
    try:
        assert await anonymous_may_publish_events(server.url)
    finally:
        server.stop()


# --- the stream, as each set uses it -----------------------------------------------------------

@pytest.mark.parametrize("handler_set", SETS)
async def test_each_set_declares_the_stream_emits_its_events_and_runs_its_consumers(
        bus, handler_set):
    me = await Session.open(bus, handler_set)
    operator = await Session.open(bus, "admin")
    js = me.nc.jetstream()
    try:
        await ensure_stream(js, Settings())  # what every set does at start-up
        await ensure_stream(js, Settings())  # and again, as the next replica does
        for event in EMITS.get(handler_set, []):
            await js.publish(f"atlantic.events.{event}", b"{}", stream=STREAM,
                             headers={"Nats-Msg-Id": f"{handler_set}-{event}"})
        for consumer in HANDLER_SETS[handler_set].consumers:
            await js.add_consumer(STREAM, consumer_config(consumer, 10.0))  # as runtime does
            await _take_one(js, operator, consumer.durable, consumer.subjects[0])
        if handler_set == "analytics":  # as the ingest declares its own (name and filter)
            durable = Settings().analytics_consumer
            await js.add_consumer(STREAM, ConsumerConfig(
                name=durable, durable_name=durable, filter_subject="atlantic.events.>"))
            await _take_one(js, operator, durable, "atlantic.events.behavior.page_viewed")
        for durable in durables(handler_set):  # none lives forever unused: the stream's limit
            info = await js.consumer_info(STREAM, durable)
            assert info.config.inactive_threshold == Settings().stream_max_age_days * 86_400
        assert me.violations == []
    finally:
        await me.close()
        await operator.close()


async def _take_one(js, operator: Session, durable: str, subject: str) -> None:
    """The operator publishes an event the consumer takes; the set fetches, acks it and reads
    it back by sequence (the dead-letter path)."""
    ack = await operator.nc.jetstream().publish(subject, b'{"n": 1}', stream=STREAM)
    subscription = await js.pull_subscribe_bind(durable, stream=STREAM)
    messages = await subscription.fetch(64, timeout=5)
    for message in messages:
        await message.in_progress()
        await message.ack_sync()
    stored = await js.get_msg(STREAM, ack.seq)

    assert ack.seq in {m.metadata.sequence.stream for m in messages}
    assert stored.data == b'{"n": 1}'


async def test_orders_gets_catalog_quotes_and_replies_flow_back(bus):
    catalog = await Session.open(bus, "catalog")
    orders = await Session.open(bus, "orders")

    async def quote(msg) -> None:
        await msg.respond(b'{"quoted": true}')

    try:
        await catalog.nc.subscribe("atlantic.catalog.quote", queue="atlantic-catalog", cb=quote)
        await catalog.round_trip()  # the subscription is in place

        reply = await orders.nc.request("atlantic.catalog.quote", b"{}", timeout=5)

        assert reply.data == b'{"quoted": true}'
        assert catalog.violations == [] and orders.violations == []
    finally:
        await catalog.close()
        await orders.close()


# --- the attacks -------------------------------------------------------------------------------

async def _answering_users(users: Session, answer: bytes) -> None:
    async def respond(msg) -> None:
        await msg.respond(answer)

    for subject in ("atlantic.users.login", "atlantic.users.me"):
        await users.nc.subscribe(subject, queue="atlantic-users", cb=respond)
    await users.round_trip()  # the subscriptions are in place


async def test_nobody_reads_a_reply_meant_for_another(bus):
    users, client = await Session.open(bus, "users"), await Session.open(bus, "client")
    snoopers = [await Session.open(bus, name) for name in (*SETS[1:], "users")]
    seen: list[bytes] = []

    async def snoop(msg) -> None:
        seen.append(msg.data)

    try:
        await _answering_users(users, b'{"token": "secret-token"}')
        for snooper in snoopers:
            for subject in ("_INBOX.>", "_INBOX.client.>", ">"):
                await snooper.nc.subscribe(subject, cb=snoop)
            await snooper.round_trip()
            assert snooper._denied("_INBOX.>") and snooper._denied("_INBOX.client.>"), \
                snooper.user

        reply = await client.nc.request("atlantic.users.login", b"{}", timeout=5)
        await asyncio.gather(*(s.round_trip() for s in snoopers))

        assert reply.data == b'{"token": "secret-token"}'
        assert seen == []
    finally:
        for session in (users, client, *snoopers):
            await session.close()


# Forgeries that moved money or orders when anyone could publish: a refund for an order that
# still ships, a cancellation, a declined order marked paid and reserved.
FORGERIES = [("client", "order.returned"), ("client", "order.cancelled"),
             ("payments", "order.returned"), ("analytics", "order.cancelled"),
             ("catalog", "order.payment_processed"), ("orders", "order.payment_processed"),
             ("orders", "order.inventory_reserved"), ("users", "order.created")]


@pytest.mark.parametrize(("user", "event"), FORGERIES)
async def test_a_forged_event_is_refused_and_never_stored(bus, user, event):
    forger, operator = await Session.open(bus, user), await Session.open(bus, "admin")
    subject = f"atlantic.events.{event}"
    try:
        await ensure_stream(operator.nc.jetstream(), Settings())
        before = await _last_seq(operator, subject)

        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await forger.nc.jetstream().publish(subject, b'{"forged": true}', stream=STREAM,
                                                timeout=1)

        assert forger._denied(subject)
        assert await _last_seq(operator, subject) == before
    finally:
        await forger.close()
        await operator.close()


async def _last_seq(operator: Session, subject: str) -> int | None:
    try:
        return (await operator.nc.jetstream().get_last_msg(STREAM, subject)).seq
    except NotFoundError:
        return None


@pytest.mark.parametrize("rogue_user", [*SETS[1:], "client"])
async def test_a_rogue_responder_never_answers_atlantic_users_me(bus, rogue_user):
    users, client = await Session.open(bus, "users"), await Session.open(bus, "client")
    rogue = await Session.open(bus, rogue_user)
    rogue_calls: list[str] = []

    async def impersonate(msg) -> None:
        rogue_calls.append(msg.subject)
        await msg.respond(b'{"email": "rogue@example.com"}')

    try:
        await _answering_users(users, b'{"email": "real@example.com"}')
        await rogue.nc.subscribe("atlantic.users.me", cb=impersonate)
        await rogue.nc.subscribe("atlantic.users.me", queue="atlantic-users", cb=impersonate)
        await rogue.round_trip()

        answers = [(await client.nc.request("atlantic.users.me", b"", timeout=5)).data
                   for _ in range(10)]

        assert rogue._denied("atlantic.users.me")
        assert answers == [b'{"email": "real@example.com"}'] * 10
        assert rogue_calls == []
    finally:
        for session in (users, client, rogue):
            await session.close()


@pytest.mark.parametrize("user", USERS)
async def test_nobody_creates_a_consumer_of_their_own_choosing(bus, user):
    me, operator = await Session.open(bus, user), await Session.open(bus, "admin")
    try:
        await ensure_stream(operator.nc.jetstream(), Settings())
        js = me.nc.jetstream(timeout=1)
        attempts = {
            # durable, never expiring, reading everything: what was accepted before
            "durable": lambda: js.add_consumer(STREAM, ConsumerConfig(
                durable_name=f"snoop-{user}", filter_subject="atlantic.events.>")),
            "named": lambda: js.add_consumer(STREAM, ConsumerConfig(
                name=f"snoop-{user}", durable_name=f"snoop-{user}",
                filter_subject="atlantic.events.>")),
            "ephemeral": lambda: js.add_consumer(STREAM, ConsumerConfig(
                filter_subject="atlantic.events.user.>")),
        }
        for kind, attempt in attempts.items():
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await attempt()
            assert me.violations, kind

        consumers = await operator.nc.jetstream().consumers_info(STREAM)
        assert not [c.name for c in consumers if c.name not in ALL_DURABLES]
        if mine := durables(user) if user in SETS else []:  # its own name, past the limits
            with pytest.raises(BadRequestError, match="max ack pending"):
                await js.add_consumer(STREAM, ConsumerConfig(
                    durable_name=mine[0], filter_subject="atlantic.events.>",
                    max_ack_pending=MAX_CONSUMER_ACK_PENDING + 1))
    finally:
        await me.close()
        await operator.close()


@pytest.mark.parametrize("user", ["catalog", "orders", "client"])
async def test_only_the_catalog_keeps_product_copies(bus, user):
    """Copies need the invalidations of every catalog process: a user that may not publish and
    receive them keeps none, rather than copies nothing would drop."""
    me = await Session.open(bus, user)
    try:
        cache = ProductCache(Redis.from_url(Settings().redis_url), "t:", ttl_seconds=60)
        shared = await cache.share(me.nc, within=1)
    finally:
        await me.close()

    assert shared is (user == "catalog")
