"""Publishing to JetStream through a leader election.

While a stream's leader is being chosen (its server died, seconds on a cluster), a publish gets
no responders, a 503 or no answer at all. Each attempt carries the event's id as `Nats-Msg-Id`,
so publishing again is safe: an attempt that did land makes the next a duplicate the stream
drops. A request handler retries until its deadline instead of failing its caller.
"""

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from contracts.events import STREAM
from handlers import telemetry

LEADERLESS = (nats.errors.TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError,
              ServiceUnavailableError, nats.errors.ConnectionReconnectingError)
DUPLICATE_IN_PROCESS = 10158  # the last attempt is still being replicated: ask again


def leaderless(exc: BaseException) -> bool:
    """A failure a later attempt can get past: no leader yet, or a repeat too early."""
    return isinstance(exc, LEADERLESS) or (
        isinstance(exc, APIError) and exc.err_code == DUPLICATE_IN_PROCESS)
ATTEMPT_SECONDS = 1.0  # an attempt the old leader took with it is not waited for long


async def publish_until(js: JetStreamContext, subject: str, payload: bytes, event_id: str, *,
                        within: float) -> PubAck:
    """Publishes one event, again with the same id while the stream has no leader, for up to
    `within` seconds; the last failure is raised. The event goes on in the current trace."""
    async for attempt in AsyncRetrying(
            stop=stop_after_delay(within), wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(leaderless), reraise=True):
        with attempt:
            return await js.publish(subject, payload, timeout=ATTEMPT_SECONDS, stream=STREAM,
                                    headers=telemetry.outgoing({"Nats-Msg-Id": event_id}))
    raise AssertionError("unreachable: tenacity returns or raises")
