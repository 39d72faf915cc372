"""A consumer that cannot handle an event dead-letters it with the reason, and the rest flow on."""

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from support import RUN_ID, eventually

from contracts.base import new_id
from handlers import HANDLER_SETS
from handlers.batches import EventBatch
from handlers.handler_set import HandlerSet
from runtime.app import build_app
from storage import deadletters

PROBE_SUBJECT = "atlantic.events.probe.ping"
DURABLE = f"probe-{RUN_ID}"
handled: list[int] = []


class Ping(BaseModel):
    n: int
    fail_times: int = 0  # how many deliveries fail before one succeeds


probe = HandlerSet("probe", "a consumer for these tests")


@probe.event(PROBE_SUBJECT, durable=DURABLE, max_deliver=3, backoff=(0.1, 0.1))
async def on_ping(batch: EventBatch[Ping]) -> None:
    for delivery in batch.deliveries:
        if delivery.attempt <= delivery.event.fail_times:
            raise RuntimeError(f"transient failure on delivery {delivery.attempt}")
    handled.extend(ping.n for ping in batch.events)


@pytest.fixture(scope="module")
async def probe_app(settings, database) -> AsyncIterator[None]:
    HANDLER_SETS["probe"] = probe
    try:
        async with build_app(settings, ["probe"]):
            yield
    finally:
        del HANDLER_SETS["probe"]


async def publish(client, body: bytes) -> str:
    event_id = new_id()
    js = client.nc.jetstream()
    ack = await js.publish(PROBE_SUBJECT, body, headers={"Nats-Msg-Id": event_id})
    assert not ack.duplicate
    return event_id


async def dead_letter(system, event_id: str) -> deadletters.DeadLetter | None:
    pool = system.context.get("pool")
    return next((d for d in await deadletters.recent(pool, DURABLE) if d.event_id == event_id),
                None)


async def test_malformed_json_is_dead_lettered_at_once(probe_app, system, client):
    event_id = await publish(client, b"{not json")

    letter = await eventually(lambda: dead_letter(system, event_id))

    assert letter.deliveries == 1
    assert "not valid JSON" in letter.error
    assert letter.payload == b"{not json"
    assert letter.subject == PROBE_SUBJECT


async def test_an_event_of_the_wrong_shape_is_dead_lettered_with_the_field(probe_app, system,
                                                                          client):
    event_id = await publish(client, json.dumps({"n": "seven"}).encode())

    letter = await eventually(lambda: dead_letter(system, event_id))

    assert letter.deliveries == 1
    assert "ValidationError" in letter.error and "n" in letter.error


async def test_a_transient_failure_is_retried_and_not_dead_lettered(probe_app, system, client):
    event_id = await publish(client, json.dumps({"n": 101, "fail_times": 2}).encode())

    await eventually(lambda: _async(101 in handled))

    assert handled.count(101) == 1
    assert await dead_letter(system, event_id) is None


async def test_a_poison_event_is_dead_lettered_after_its_last_delivery_and_others_flow(
        probe_app, system, client):
    poison = await publish(client, json.dumps({"n": 202, "fail_times": 99}).encode())
    for n in range(300, 310):
        await publish(client, json.dumps({"n": n}).encode())

    letter = await eventually(lambda: dead_letter(system, poison))
    await eventually(lambda: _async(set(range(300, 310)) <= set(handled)))

    assert letter.deliveries == 3
    assert letter.error == "RuntimeError: transient failure on delivery 3"
    assert 202 not in handled
    assert sorted(n for n in handled if n >= 300) == list(range(300, 310))


async def _async(value):
    return value


async def test_operators_see_dead_letters_from_the_shell(probe_app, system, client, settings):
    from support import cli_env, run_cli

    event_id = await publish(client, b"[1, 2")
    await eventually(lambda: dead_letter(system, event_id))

    code, out, _ = await run_cli("dead-letters", "--consumer", DURABLE,
                                 env=cli_env(settings, COLUMNS="300"))

    assert code == 0
    assert PROBE_SUBJECT in out and "not valid JSON" in out
