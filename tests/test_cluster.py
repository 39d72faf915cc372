"""Outgrowing one machine: a three-node NATS cluster with the stream on three replicas, the sets
over two processes with two replicas of catalog and orders, shoppers at work, and the server
leading the stream killed with SIGKILL and restarted. The loadgen's audit must pass (nothing
lost, doubled or stuck), and no idempotent call may leave its client with an error."""

import asyncio
import time

import nats
import pytest
from support import TEST_PASSWORD, eventually, unique_email, world_of_its_own

from contracts.events import STREAM
from runtime.streams import StreamRefused, ensure_stream
from runtime.tools.loadgen import LoadConfig, LoadGen
from runtime.tools.readiness import answering

IDEMPOTENT = ("products.list", "products.get", "track", "orders.create")


@pytest.mark.timeout(300)  # a cluster, two processes, the saga to its end and a failover
async def test_the_stream_leader_killed_under_load_loses_nothing_and_fails_nobody(settings):
    base = settings.model_copy(update={"admin_email": unique_email("cluster-admin"),
                                       "admin_password": TEST_PASSWORD})
    async with world_of_its_own(base, "cluster", nodes=3) as world:
        await _stream_of_one_replica(world.settings)  # as a system that grew would have it
        await world.serve(["users", "catalog", "orders", "analytics"], key="a")
        await world.serve(["catalog", "orders", "payments"], key="b")
        nc = await nats.connect(world.settings.nats_servers, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            instances = {name: await answering(nc, name, 3) for name in ("catalog", "orders")}
            config = LoadConfig(nats_url=world.settings.nats_url, admin_email=base.admin_email,
                                admin_password=TEST_PASSWORD, concurrency=8, orders=None,
                                duration=150, shoppers=6, products=6, seed=15, settle_seconds=60)
            gen = LoadGen(config, nc)
            load = asyncio.create_task(gen.run())

            await eventually(lambda: _placed(gen, 12), seconds=60)
            leader = info.cluster.leader
            node = next(n for n in world.nodes if n.name == leader)
            node.stop(kill=True)
            killed = time.monotonic()
            await eventually(lambda: _led_by_another(js, leader), seconds=30)
            election = time.monotonic() - killed
            placed_while_down = len(gen.orders)
            # Shoppers kept placing orders during the election (placing needs no stream leader),
            # so the load is not capped by a count it could reach before this point.
            await eventually(lambda: _placed(gen, placed_while_down + 5), seconds=60)
            node.start()
            gen.stopping.set()
            report = await load
            print(f"cluster test: {len(report.orders)} orders in {report.elapsed:.1f} s; "
                  f"a new stream leader {election:.1f} s after the kill; slowest calls: " +
                  ", ".join(f"{kind} {max(report.latencies.by_kind[kind]):.1f} s"
                            for kind in IDEMPOTENT))
        finally:
            await nc.close()

    # serve updated the stream of one replica to three
    assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
    assert instances == {"catalog": 2, "orders": 2}  # $SRV.PING answered by each replica
    assert report.passed, report.problems
    assert len(report.orders) > placed_while_down
    errors = {kind: report.latencies.errors[kind] for kind in IDEMPOTENT}
    assert errors == dict.fromkeys(IDEMPOTENT, 0), errors


async def _stream_of_one_replica(settings) -> None:
    nc = await nats.connect(settings.nats_servers)
    try:
        await ensure_stream(nc.jetstream(), settings.model_copy(update={"stream_replicas": 1}))
    finally:
        await nc.close()


async def _placed(gen: LoadGen, count: int) -> bool:
    return len(gen.orders) >= count


async def _led_by_another(js, old: str) -> bool:
    try:
        leader = (await js.stream_info(STREAM)).cluster.leader
    except Exception:  # no leader yet, or our own server is the one that went
        return False
    return leader is not None and leader != old


async def test_more_replicas_than_servers_is_refused_with_a_clear_error(system, settings,
                                                                         nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        with pytest.raises(StreamRefused, match="ATLANTIC_STREAM_REPLICAS"):
            await ensure_stream(nc.jetstream(), settings.model_copy(
                update={"stream_replicas": 3}))
        info = await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()

    assert info.config.num_replicas == 1  # the stream as it was
