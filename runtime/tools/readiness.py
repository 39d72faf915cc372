"""Is a handler set up? Every set answers `$SRV.PING` once everything else in its process has
started (runtime.app starts the responders last), so that answer is the one readiness wait the
bench's worlds and the tests use for an `atlantic serve` they start."""

import asyncio
import contextlib
import json
from collections.abc import Callable

import nats
import nats.errors


async def answering(nc: nats.NATS, handler_set: str, wanted: int) -> int:
    """How many instances of a set answer one $SRV.PING within 0.2 s (up to `wanted`)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.PING.atlantic-{handler_set}", b"", reply=inbox)
    ids: set[str] = set()
    with contextlib.suppress(nats.errors.TimeoutError):
        while len(ids) < wanted:
            msg = await sub.next_msg(timeout=0.2)
            if msg.data:  # not the server's empty "no responders" status
                ids.add(json.loads(msg.data)["id"])
    await sub.unsubscribe()
    return len(ids)


async def wait_until_answering(nc: nats.NATS, handler_set: str, *, instances: int = 1,
                               seconds: float = 60.0,
                               exited: Callable[[], bool] = lambda: False) -> None:
    """Until `instances` of the set answer; RuntimeError when `exited()` (the process serving
    it died) or after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while await answering(nc, handler_set, instances) < instances:
        if exited():
            raise RuntimeError(f"the process serving {handler_set} exited before it answered")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{handler_set} did not answer within {seconds:.0f} s")
