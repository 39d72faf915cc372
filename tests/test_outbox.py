"""The outbox relay and inbox helpers, on real PostgreSQL and JetStream."""

import asyncpg
import pytest
from support import read_events

import runtime.relay
from contracts.base import new_id
from contracts.events import UserLoggedIn
from runtime.relay import OutboxRelay
from storage import inbox, outbox


@pytest.fixture(scope="module")
async def relay_schema(database):
    """A schema of its own, so the running system's relays leave its rows alone."""
    db = await asyncpg.connect(database)
    await db.execute("CREATE SCHEMA IF NOT EXISTS relay_test; CREATE TABLE IF NOT EXISTS"
                     " relay_test.outbox (LIKE users.outbox INCLUDING ALL)")
    yield "relay_test"
    await db.execute("DROP SCHEMA relay_test CASCADE")
    await db.close()


@pytest.fixture
async def relay(system, relay_schema, settings, client):
    resources = system.context.get("resources")
    return OutboxRelay(resources.pool, settings.postgres_dsn, client.nc.jetstream(), relay_schema,
                       sweep_seconds=0.2, retention_hours=1)


async def test_an_event_is_published_once_when_the_relay_dies_before_marking_it(
        relay, system, client, monkeypatch):
    pool = system.context.get("resources").pool
    event = UserLoggedIn(user_id=new_id())
    async with pool.acquire() as db, db.transaction():
        await outbox.add(db, relay.schema, event)
    real_mark = outbox.mark_published
    calls = []

    async def dies_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("relay killed after publishing, before marking")
        await real_mark(*args)

    monkeypatch.setattr(runtime.relay.outbox, "mark_published", dies_once)

    with pytest.raises(ConnectionError):
        await relay.publish_batch()
    republished = await relay.drain()

    async with pool.acquire() as db:
        assert await outbox.unpublished_count(db, relay.schema) == 0
    copies = [e for _, e in await read_events(client, "atlantic.events.user.logged_in")
              if e["eventId"] == event.event_id]
    assert republished == 1
    assert len(copies) == 1
    assert copies[0]["userId"] == event.user_id


async def test_a_rolled_back_transaction_leaves_no_outbox_row(relay, system):
    pool = system.context.get("resources").pool
    event = UserLoggedIn(user_id=new_id())

    with pytest.raises(RuntimeError):
        async with pool.acquire() as db, db.transaction():
            await outbox.add(db, relay.schema, event)
            raise RuntimeError("the state change failed")

    async with pool.acquire() as db:
        assert await outbox.unpublished_count(db, relay.schema) == 0


async def test_the_inbox_admits_an_event_once_per_consumer(system):
    pool = system.context.get("resources").pool
    event_id = new_id()

    async with pool.acquire() as db:
        first = await inbox.first_time(db, "users", "consumer-a", event_id)
        again = await inbox.first_time(db, "users", "consumer-a", event_id)
        other_consumer = await inbox.first_time(db, "users", "consumer-b", event_id)

    assert (first, again, other_consumer) == (True, False, True)


async def test_an_inbox_mark_is_undone_with_its_transaction(system):
    pool = system.context.get("resources").pool
    event_id = new_id()

    async with pool.acquire() as db:
        with pytest.raises(RuntimeError):
            async with db.transaction():
                await inbox.first_time(db, "users", "consumer-a", event_id)
                raise RuntimeError("the side effect failed")
        retried = await inbox.first_time(db, "users", "consumer-a", event_id)

    assert retried is True


async def test_rows_committed_and_never_sent_are_published_by_the_sweep(relay, system, client):
    """A consumer that died between its commit and its `send`: no NOTIFY was sent for those
    rows (the committer meant to publish them itself), so only the sweep finds them."""
    from support import eventually

    pool = system.context.get("resources").pool
    event = UserLoggedIn(user_id=new_id())
    async with pool.acquire() as db, db.transaction():
        await outbox.add(db, relay.schema, event, notify=False)

    await relay.start()
    try:
        async def published():
            async with pool.acquire() as db:
                return await outbox.unpublished_count(db, relay.schema) == 0
        await eventually(published, seconds=10)
    finally:
        await relay.stop()

    copies = [e for _, e in await read_events(client, "atlantic.events.user.logged_in")
              if e["eventId"] == event.event_id]
    assert len(copies) == 1


async def test_rows_handed_over_after_commit_are_published_and_marked(relay_schema, system,
                                                                      client, settings):
    from support import eventually

    pool = system.context.get("resources").pool
    # A sweep that would wait a minute: only `send` can publish the row within the test.
    relay = OutboxRelay(pool, settings.postgres_dsn, client.nc.jetstream(), relay_schema,
                        sweep_seconds=0.2, retention_hours=1, stale_seconds=60)
    event = UserLoggedIn(user_id=new_id())
    async with pool.acquire() as db, db.transaction():
        rows = await outbox.add(db, relay.schema, event, notify=False)

    await relay.start()
    try:
        await relay.send(rows)

        async def marked():
            async with pool.acquire() as db:
                return await outbox.unpublished_count(db, relay.schema) == 0
        await eventually(marked, seconds=5)
    finally:
        await relay.stop()

    copies = [e for _, e in await read_events(client, "atlantic.events.user.logged_in")
              if e["eventId"] == event.event_id]
    assert len(copies) == 1
