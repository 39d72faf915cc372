"""Sign-in limits as OWASP describes them (issue 12; storage.ratelimits): only failures count,
a stranger's guesses do not lock the owner's known devices out, and failures across accounts
(password spraying) are capped. Each case is tried over NATS against the users set."""

import contextlib
from collections.abc import AsyncIterator

import pytest
from support import TEST_PASSWORD, eventually, unique_email, world_of_its_own

from contracts.users import LOGIN, REGISTER
from runtime.tools.client import AtlanticClient

WRONG = "not-the-password"


async def registered(client: AtlanticClient) -> str:
    email = unique_email("limits")
    reply = await client.call(REGISTER, {"email": email, "password": TEST_PASSWORD, "name": "L"})
    assert reply.ok, reply.body
    return email


async def sign_in(client: AtlanticClient, email: str, password: str = TEST_PASSWORD,
                  device: str | None = None) -> int:
    body = {"email": email, "password": password} | ({"deviceToken": device} if device else {})
    return (await client.call(LOGIN, body)).status


async def device_of(client: AtlanticClient, email: str) -> str:
    reply = await client.call(LOGIN, {"email": email, "password": TEST_PASSWORD})
    assert reply.ok, reply.body
    return reply.body["deviceToken"]


async def test_successful_sign_ins_do_not_count_towards_the_limit(alone):
    email = await registered(alone)

    good = [await sign_in(alone, email) for _ in range(2)]
    bad = [await sign_in(alone, email, WRONG) for _ in range(ATTEMPTS - 2)]
    after = await sign_in(alone, email)

    assert good == [200, 200]
    assert bad == [401] * (ATTEMPTS - 2)
    assert after == 200


async def test_a_success_clears_the_failures_before_it(alone):
    email = await registered(alone)
    almost = ATTEMPTS - 1

    first = [await sign_in(alone, email, WRONG) for _ in range(almost)]
    good = await sign_in(alone, email)
    second = [await sign_in(alone, email, WRONG) for _ in range(almost)]
    after = await sign_in(alone, email)

    assert first == second == [401] * almost
    assert (good, after) == (200, 200)


async def test_a_strangers_guesses_do_not_lock_the_owner_out_of_a_known_device(alone):
    email = await registered(alone)
    device = await device_of(alone, email)

    guesses = [await sign_in(alone, email, WRONG) for _ in range(ATTEMPTS)]
    stranger = await sign_in(alone, email)
    owner = await alone.call(LOGIN, {"email": email, "password": TEST_PASSWORD,
                                      "deviceToken": device})

    assert guesses == [401] * ATTEMPTS
    assert stranger == 429
    assert owner.status == 200, owner.body
    assert owner.body["deviceToken"] == device


async def test_a_device_token_is_limited_too_and_only_for_its_own_account(alone):
    email, other = await registered(alone), await registered(alone)
    device = await device_of(alone, email)
    for _ in range(ATTEMPTS):
        await sign_in(alone, other, WRONG)

    on_other = await sign_in(alone, other, device=device)
    guesses = [await sign_in(alone, email, WRONG, device) for _ in range(ATTEMPTS)]
    exhausted = await sign_in(alone, email, device=device)
    elsewhere = await sign_in(alone, email)

    assert on_other == 429  # the token is bound to the account it signed in to
    assert guesses == [401] * ATTEMPTS
    assert exhausted == 429
    assert elsewhere == 200  # the device's failures are its own


async def test_the_limit_is_per_account_and_lifts_when_the_window_moves_on(alone):
    email = await registered(alone)
    for _ in range(ATTEMPTS):
        await sign_in(alone, email, WRONG)

    limited = await alone.call(LOGIN, {"email": email, "password": TEST_PASSWORD})
    other_account = await sign_in(alone, unique_email(), "x" * 10)
    lifted = await eventually(lambda: signed_in_again(alone, email),
                              seconds=3 * WINDOW, interval=0.5)

    assert limited.status == 429
    assert limited.error_code == "rate_limited"
    assert other_account == 401
    assert lifted


async def test_a_malformed_device_token_is_refused_by_the_contract(alone):
    email = await registered(alone)

    reply = await alone.call(LOGIN, {"email": email, "password": TEST_PASSWORD,
                                      "deviceToken": "x"})

    assert reply.status == 422
    assert reply.error_fields == {"deviceToken"}


ATTEMPTS = 3
WINDOW = 20  # long enough that a busy machine's slow sign-ins still fall in one window
SPRAY_LIMIT = 4
SPRAY_WINDOW = 8


@contextlib.asynccontextmanager
async def users_alone(settings, tag: str, **overrides) -> AsyncIterator[AtlanticClient]:
    """The users set on its own NATS server, database and Redis prefix, with its own limits
    (the shared system's are left alone, and no other test's failures count here)."""
    async with world_of_its_own(settings, tag, sets=["users"], in_process=True,
                                **overrides) as world:
        yield world.client


@pytest.fixture(scope="module")
async def alone(settings) -> AsyncIterator[AtlanticClient]:
    async with users_alone(settings, "limits", login_attempts=ATTEMPTS,
                           login_window_seconds=WINDOW) as client:
        yield client


@pytest.fixture(scope="module")
async def spray(settings) -> AsyncIterator[AtlanticClient]:
    """A global limit of SPRAY_LIMIT failures per window of SPRAY_WINDOW seconds."""
    async with users_alone(settings, "spray", login_failures_global=SPRAY_LIMIT,
                           login_window_seconds=SPRAY_WINDOW) as client:
        yield client


async def signed_in_again(client: AtlanticClient, email: str) -> bool:
    return await sign_in(client, email) == 200


async def test_failures_across_many_accounts_are_capped_and_the_cap_lifts(spray):
    owner = await registered(spray)
    device = await device_of(spray, owner)
    victims = [await registered(spray) for _ in range(SPRAY_LIMIT + 1)]

    sprayed = [await sign_in(spray, email, "Summer2026!") for email in victims]
    newcomer = await sign_in(spray, victims[-1])
    known_device = await sign_in(spray, owner, device=device)
    lifted = await eventually(lambda: signed_in_again(spray, victims[-1]),
                              seconds=3 * SPRAY_WINDOW, interval=0.5)

    assert sprayed == [401] * SPRAY_LIMIT + [429]
    assert newcomer == 429  # unknown clients wait, even with the right password
    assert known_device == 200  # the owner's known device still signs in
    assert lifted  # once the window has moved past the failures
