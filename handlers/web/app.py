"""The dashboard's HTTP side: sign-in, the page, the JSON behind it and the live stream.

Only administrators get past sign-in. The session token lives in an HttpOnly, SameSite=Strict
cookie, so no script on the page can read it and no other site can send it; every page, API
call and stream checks it with the users set (users.me) before it answers.
"""

import asyncio
import html
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contracts.users import LOGIN, LOGOUT, ME
from handlers.web.backend import Backend, BackendError
from handlers.web.dashboard import WINDOWS, SharedPanel, dashboard
from handlers.web.live import CLOSED, LiveFeed

STATIC = Path(__file__).parent / "static"
COOKIE = "atlantic_session"
MAX_FORM_BYTES = 4096
# The stream's own pace: the live panel this often, a comment line between (so proxies and the
# browser see a live connection), and how soon a browser reconnects after a drop.
PANEL_SECONDS = 3.0
RECONNECT_MILLISECONDS = 1000


@dataclass(frozen=True)
class Admin:
    token: str
    user: dict[str, Any]


Handler = Callable[[Request, Admin], Awaitable[Response]]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": []}}, status)


class Web:
    def __init__(self, backend: Backend, feed: LiveFeed, currency: str,
                 session_seconds: int):
        self.backend, self.feed = backend, feed
        self.panel = SharedPanel(backend, max_age=PANEL_SECONDS - 0.5)
        self.currency, self.session_seconds = currency, session_seconds

    # --- who is asking ---------------------------------------------------------------------

    async def _admin(self, request: Request) -> Admin | int:
        """The signed-in admin, or the status to refuse with (401 no session, 403 not admin)."""
        token = request.cookies.get(COOKIE)
        if not token:
            return 401
        try:
            user = await self.backend.ask(ME, None, token)
        except BackendError as exc:
            return 401 if exc.status == 401 else exc.status
        return Admin(token, user) if user["role"] == "admin" else 403

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page: a browser without an admin's session is sent to sign in."""
        async def endpoint(request: Request) -> Response:
            admin = await self._admin(request)
            if admin == 401:
                return RedirectResponse("/login", 303)
            if admin == 403:
                return self._login_page("Only administrators may see the dashboard.", 403)
            if isinstance(admin, int):
                return self._login_page("Sign-in is unavailable right now; try again shortly.",
                                        503)
            return await handler(request, admin)
        return endpoint

    def api(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """JSON (or the stream): without an admin's session, a structured 401 or 403."""
        async def endpoint(request: Request) -> Response:
            admin = await self._admin(request)
            if admin == 401:
                return _error(401, "unauthorized", "sign in at /login first")
            if admin == 403:
                return _error(403, "forbidden", "the dashboard is for administrators")
            if isinstance(admin, int):
                return _error(503, "unavailable", "the users set did not answer; try again")
            try:
                return await handler(request, admin)
            except BackendError as exc:
                return JSONResponse(exc.body, exc.status)
        return endpoint

    async def metrics(self, _request: Request, _admin: Admin) -> Response:
        """This process's Prometheus metrics, made on a worker thread: the scrape-time collector
        waits there for answers it asks on the event loop."""
        return Response(await run_in_threadpool(generate_latest, REGISTRY),
                        media_type=CONTENT_TYPE_LATEST)

    # --- sign-in ---------------------------------------------------------------------------

    def _login_page(self, message: str = "", status: int = 200) -> HTMLResponse:
        text = (STATIC / "login.html").read_text()
        notice = f'<p class="notice" role="alert">{html.escape(message)}</p>' if message else ""
        return HTMLResponse(text.replace("<!--notice-->", notice), status)

    async def login_form(self, request: Request) -> Response:
        return self._login_page()

    async def login(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return self._login_page("That form was too large.", 413)
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        try:
            session = await self.backend.ask(LOGIN, {"email": form.get("email", ""),
                                                     "password": form.get("password", "")})
        except BackendError as exc:
            return self._login_page(_login_refusal(exc), exc.status)
        if session["role"] != "admin":
            await self._end_session(session["token"])
            return self._login_page("Only administrators may see the dashboard.", 403)
        response = RedirectResponse("/", 303)
        response.set_cookie(COOKIE, session["token"], max_age=self.session_seconds,
                            httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        if token := request.cookies.get(COOKIE):
            await self._end_session(token)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def _still_admin(self, token: str) -> None:
        """BackendError unless the session is still an admin's (a stream outlives its start)."""
        user = await self.backend.ask(ME, None, token)
        if user["role"] != "admin":
            raise BackendError(403, {"error": {"code": "forbidden", "details": [],
                                               "message": "not an administrator"}})

    async def _end_session(self, token: str) -> None:
        try:
            await self.backend.ask(LOGOUT, None, token)
        except BackendError:
            pass  # already ended, or the users set is away: the cookie goes either way

    # --- the dashboard -----------------------------------------------------------------------

    async def index(self, request: Request, admin: Admin) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def me(self, request: Request, admin: Admin) -> Response:
        user = {k: admin.user[k] for k in ("userId", "email", "name", "role")}
        return JSONResponse({**user, "currency": self.currency, "windows": list(WINDOWS)})

    async def figures(self, request: Request, admin: Admin) -> Response:
        window = request.query_params.get("window", "24h")
        if window not in WINDOWS:
            return JSONResponse({"error": {
                "code": "validation_failed", "message": "unknown window", "details": [
                    {"field": "window", "message": f"one of {', '.join(WINDOWS)}",
                     "type": "enum"}]}}, 422)
        return JSONResponse(await dashboard(self.backend, admin.token, window))

    async def live(self, request: Request, admin: Admin) -> Response:
        return JSONResponse(await self.panel.latest(admin.token))

    async def stream(self, request: Request, admin: Admin) -> Response:
        # Server-Sent Events written by hand on Starlette's StreamingResponse: the format is a
        # few lines, and the stream must end when the feed stops (sse-starlette ties its
        # shutdown to uvicorn's signal handlers, which the web set does not install).
        return StreamingResponse(self._events(admin), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def _events(self, admin: Admin) -> AsyncIterator[str]:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
        with self.feed.listen() as ticks:
            yield _sse("hello", {"user": admin.user["email"]})
            loop = asyncio.get_running_loop()
            next_panel = loop.time()
            while True:
                if loop.time() >= next_panel:
                    next_panel = loop.time() + PANEL_SECONDS
                    try:
                        await self._still_admin(admin.token)
                        panel = await self.panel.latest(admin.token)
                    except BackendError as exc:
                        if exc.status in (401, 403):
                            yield _sse("signed-out", {})  # the session ended while watching
                            return
                        # otherwise a set is away: this panel is skipped, the stream goes on
                    else:
                        yield _sse("live", panel)
                try:
                    tick = await asyncio.wait_for(ticks.get(),
                                                  max(0.05, next_panel - loop.time()))
                except TimeoutError:
                    continue
                if tick is CLOSED:
                    return
                yield _sse("tick", tick)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _login_refusal(exc: BackendError) -> str:
    if exc.status == 429:
        return "Too many attempts; wait a minute and try again."
    if exc.status in (401, 403, 422):
        return "Wrong email or password."
    return "Sign-in is unavailable right now; try again shortly."


# Only this origin's scripts, styles and connections; no framing; forms post here only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; frame-ancestors 'none';"
                               " form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response; a pure ASGI middleware, so the event stream
    passes through it untouched."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *(
                    (k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(web: Web) -> Starlette:
    return Starlette(middleware=[Middleware(SecurityHeaders)], routes=[
        # Operational figures: for an admin's session like the rest of this public port (a
        # Prometheus scrapes ATLANTIC_METRICS_PORT, on the private network, instead).
        Route("/metrics", web.api(web.metrics)),
        Route("/", web.page(web.index)),
        Route("/login", web.login_form, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/api/me", web.api(web.me)),
        Route("/api/dashboard", web.api(web.figures)),
        Route("/api/live", web.api(web.live)),
        Route("/api/stream", web.api(web.stream)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
