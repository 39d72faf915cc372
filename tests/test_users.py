"""The users set, over NATS, as a client sees it."""

import time

from support import TEST_PASSWORD, eventually, read_events, sign_up, unique_email

from contracts.base import MAX_REQUEST_BYTES
from storage.sessions import Sessions, _hash

REGISTER = "atlantic.users.register"
LOGIN = "atlantic.users.login"
ME = "atlantic.users.me"
GET = "atlantic.users.get"
LOGOUT = "atlantic.users.logout"
LOGOUT_EVERYWHERE = "atlantic.users.logout_everywhere"


def new_account(**overrides):
    return {"email": unique_email(), "password": TEST_PASSWORD, "name": "Ada"} | overrides


async def test_register_returns_the_account_with_a_normalised_email(client):
    email = unique_email("Mixed.Case")

    reply = await client.call(REGISTER, new_account(email=f"  {email.upper()} "))

    assert reply.status == 200
    assert reply.body["email"] == email.lower()
    assert reply.body["role"] == "customer"
    assert set(reply.body) == {"userId", "email", "name", "role", "createdAt"}
    assert reply.body["createdAt"].endswith("Z")


async def test_registering_the_same_email_twice_is_a_conflict(client):
    account = new_account()
    await client.call(REGISTER, account)

    reply = await client.call(REGISTER, account | {"email": account["email"].upper()})

    assert reply.status == 409
    assert reply.error_code == "email_taken"
    assert reply.headers["Nats-Service-Error-Code"] == "409"


async def test_malformed_json_gets_a_400(client):
    reply = await client.call(REGISTER, raw=b'{"email": "a@b.c", ')

    assert reply.status == 400
    assert reply.error_code == "malformed_json"


async def test_missing_fields_are_named(client):
    reply = await client.call(REGISTER, {"email": unique_email()})

    assert reply.status == 422
    assert reply.error_fields == {"password", "name"}


async def test_extra_fields_are_refused_and_named(client):
    reply = await client.call(REGISTER, new_account(role="admin"))

    assert reply.status == 422
    assert reply.error_fields == {"role"}


async def test_wrongly_typed_fields_are_named(client):
    reply = await client.call(REGISTER, new_account(name=42, email=["x"]))

    assert reply.status == 422
    assert reply.error_fields == {"name", "email"}


async def test_oversized_fields_are_named(client):
    reply = await client.call(REGISTER, new_account(name="x" * 101, password="p" * 129))

    assert reply.status == 422
    assert reply.error_fields == {"name", "password"}


async def test_an_oversized_request_is_refused_unread(client):
    reply = await client.call(REGISTER, raw=b'{"name": "' + b"x" * MAX_REQUEST_BYTES + b'"}')

    assert reply.status == 413
    assert reply.error_code == "payload_too_large"


async def test_weak_passwords_are_refused(client):
    for password in ("short", "aaaaaaaaaaaaaa", "password123"):
        reply = await client.call(REGISTER, new_account(password=password))

        assert reply.status == 422, password
        assert reply.error_fields == {"password"}


async def test_login_then_me_returns_the_account(client):
    account = new_account()
    registered = (await client.call(REGISTER, account)).body

    login = await client.call(LOGIN, {"email": account["email"], "password": TEST_PASSWORD})
    me = await client.signed_in(login.body["token"]).call(ME)

    assert login.status == 200
    assert login.body["userId"] == registered["userId"]
    assert login.body["role"] == "customer"
    assert len(login.body["token"]) >= 43  # 256 random bits, base64url
    assert me.body == registered


async def test_unknown_email_and_wrong_password_get_identical_replies(client):
    account = new_account()
    await client.call(REGISTER, account)

    unknown = await client.call(LOGIN, {"email": unique_email(), "password": TEST_PASSWORD})
    wrong = await client.call(LOGIN, {"email": account["email"], "password": "not-the-password"})

    assert unknown.status == wrong.status == 401
    assert unknown.body == wrong.body
    assert unknown.headers["Nats-Service-Error"] == wrong.headers["Nats-Service-Error"]


async def test_me_without_a_token_is_401(client):
    reply = await client.call(ME)

    assert reply.status == 401
    assert reply.error_code == "unauthorized"


async def test_without_a_token_even_a_malformed_request_is_refused_as_unauthenticated(client):
    reply = await client.call("atlantic.users.get", {"userId": 5, "unexpected": True})

    assert reply.status == 401
    assert reply.error_code == "unauthorized"


async def test_an_unknown_token_is_401(client):
    reply = await client.signed_in("forged-token").call(ME)

    assert reply.status == 401


async def test_an_idle_session_expires(client, system, settings):
    _, account = await sign_up(client)
    redis = system.context.get("redis")
    sessions = Sessions(redis, settings.redis_prefix, idle_seconds=1, absolute_seconds=3600)
    token, _ = await sessions.start(account["userId"], "customer")
    before = await client.signed_in(token).call(ME)

    # Waits, without using the session (a use renews it), until Redis has let it go.
    await eventually(lambda: _forgotten(redis, sessions, token), seconds=10)
    after = await client.signed_in(token).call(ME)

    assert before.status == 200
    assert after.status == 401
    assert after.error_code == "session_expired"


async def test_a_session_expires_at_its_absolute_lifetime_even_when_used(client, system, settings):
    _, account = await sign_up(client)
    redis = system.context.get("redis")
    sessions = Sessions(redis, settings.redis_prefix, idle_seconds=3600, absolute_seconds=2)
    token, expires_at = await sessions.start(account["userId"], "customer")
    statuses = []

    async def refused_while_in_use() -> bool:
        statuses.append((await client.signed_in(token).call(ME)).status)
        return statuses[-1] == 401

    await eventually(refused_while_in_use, seconds=10, interval=0.2)

    assert statuses[0] == 200
    assert set(statuses[:-1]) == {200}
    assert time.time() >= expires_at  # ended by its absolute lifetime, not before


async def test_resolving_a_session_renews_its_idle_expiry_within_its_absolute_one(
        client, system, settings):
    _, account = await sign_up(client)
    redis = system.context.get("redis")
    long = Sessions(redis, settings.redis_prefix, idle_seconds=600, absolute_seconds=3600)
    short = Sessions(redis, settings.redis_prefix, idle_seconds=600, absolute_seconds=120)
    renewed, _ = await long.start(account["userId"], "customer")
    capped, _ = await short.start(account["userId"], "customer")
    for token in (renewed, capped):
        await redis.expire(long._key(_hash(token)), 5)

    sessions = [await long.resolve(token) for token in (renewed, capped)]

    assert [(s.user_id, s.role) for s in sessions] == [(account["userId"], "customer")] * 2
    assert 595 <= await redis.ttl(long._key(_hash(renewed))) <= 600
    assert 100 <= await redis.ttl(long._key(_hash(capped))) <= 120


async def test_logout_revokes_the_token(customer):
    reply = await customer.call(LOGOUT)
    after = await customer.call(ME)

    assert reply.body == {"sessionsEnded": 1}
    assert after.status == 401


async def test_logout_everywhere_revokes_every_session_of_the_account(client):
    account = new_account()
    await client.call(REGISTER, account)
    credentials = {"email": account["email"], "password": TEST_PASSWORD}
    tokens = [(await client.call(LOGIN, credentials)).body["token"] for _ in range(3)]

    reply = await client.signed_in(tokens[0]).call(LOGOUT_EVERYWHERE)

    assert reply.body == {"sessionsEnded": 3}
    for token in tokens:
        assert (await client.signed_in(token).call(ME)).status == 401


async def test_a_customer_on_an_admin_subject_gets_403(customer):
    reply = await customer.call(GET, {"userId": "anyone"})

    assert reply.status == 403
    assert reply.error_code == "forbidden"


async def test_an_admin_gets_any_account(admin, client):
    _, account = await sign_up(client)

    found = await admin.call(GET, {"userId": account["userId"]})
    missing = await admin.call(GET, {"userId": "no-such-user"})

    assert found.body == account
    assert missing.status == 404


async def test_a_handler_that_raises_still_replies_with_500(customer, monkeypatch):
    import storage.users

    async def broken(*_args):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(storage.users, "account", broken)

    reply = await customer.call(ME)

    assert reply.status == 500
    assert reply.error_code == "internal_error"
    assert "secret" not in str(reply.body)


async def test_registration_and_login_emit_events_once_each(client):
    account = new_account()
    registered = (await client.call(REGISTER, account)).body
    await client.call(LOGIN, {"email": account["email"], "password": TEST_PASSWORD})

    async def events_of_this_user():
        found = [(h, e) for h, e in await read_events(client, "atlantic.events.user.>")
                 if e.get("userId") == registered["userId"]]
        return found if len(found) >= 2 else None

    events = await eventually(events_of_this_user)

    assert [e["event"] for _, e in events] == ["UserRegistered", "UserLoggedIn"]
    for headers, event in events:
        assert headers["Nats-Msg-Id"] == event["eventId"]
        assert event["timestamp"].endswith("Z")
    assert events[0][1]["email"] == account["email"]


async def _forgotten(redis, sessions: Sessions, token: str) -> bool:
    return not await redis.exists(sessions._key(_hash(token)))
