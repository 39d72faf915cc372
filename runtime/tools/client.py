"""A small client for Atlantic's request-reply subjects, used by the CLI and the tests."""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_exponential

from runtime import accounts


@dataclass
class Reply:
    status: int  # 200 on success, else the Nats-Service-Error-Code
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error_code(self) -> str | None:
        return None if self.ok else self.body["error"]["code"]

    @property
    def error_fields(self) -> set[str]:
        return set() if self.ok else {d["field"] for d in self.body["error"]["details"]}


class AtlanticClient:
    def __init__(self, nc: Client, token: str | None = None, timeout: float = 5.0):
        self.nc, self.token, self.timeout = nc, token, timeout

    @classmethod
    async def connect(cls, servers: str | list[str], token: str | None = None
                      ) -> "AtlanticClient":
        return cls(await accounts.connect(servers, connect_timeout=2, max_reconnect_attempts=1),
                   token)

    def signed_in(self, token: str) -> "AtlanticClient":
        return AtlanticClient(self.nc, token, self.timeout)

    async def call(self, subject: str, payload: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        if raw is None:
            raw = b"" if payload is None else json.dumps(payload).encode()
        all_headers = dict(headers or {})
        if self.token:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        msg = await self.nc.request(subject, raw, timeout=timeout or self.timeout,
                                    headers=all_headers or None)
        msg_headers = dict(msg.headers or {})
        status = int(msg_headers.get("Nats-Service-Error-Code", 200))
        body = json.loads(msg.data) if msg.data else None
        return Reply(status, body, msg_headers)

    async def sign_up(self, email: str, password: str, name: str
                      ) -> tuple["AtlanticClient", dict]:
        """Registers an account and signs in: the signed-in client and the account."""
        account = await self.call("atlantic.users.register",
                                  {"email": email, "password": password, "name": name})
        if not account.ok:
            raise RuntimeError(f"register {email}: {account.status} {account.body}")
        login = await self.call("atlantic.users.login", {"email": email, "password": password})
        if not login.ok:
            raise RuntimeError(f"login {email}: {login.status} {login.body}")
        return self.signed_in(login.body["token"]), account.body

    async def call_or_none(self, subject: str, payload: Any = None, **options: Any
                           ) -> Reply | None:
        """`call`, with None when no answer came (no responders, a timeout, a reconnect)."""
        try:
            return await self.call(subject, payload, **options)
        except (TimeoutError, OSError, nats.errors.Error):
            return None

    async def close(self) -> None:
        await self.nc.close()


def _not_final(reply: Reply | None) -> bool:
    return reply is None or reply.status >= 500


async def until_answered(attempt: Callable[[], Awaitable[Reply | None]], *,
                         give_up_after: float) -> Reply | None:
    """Repeats `attempt` (None: no answer) while there is no answer or a 5xx, waiting 0.1 s and
    doubling to 2 s, until a final reply (a success or a 4xx); None when `give_up_after` seconds
    pass first. Only for idempotent requests, such as orders.create with an Idempotency-Key."""
    async def once() -> Reply | None:  # tenacity awaits only what is declared async
        return await attempt()

    return await AsyncRetrying(
        stop=stop_after_delay(give_up_after), wait=wait_exponential(multiplier=0.1, max=2),
        retry=retry_if_result(_not_final), retry_error_callback=lambda _: None)(once)
