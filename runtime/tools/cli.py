"""The `atlantic` command."""

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import nats.errors
import typer
from pydantic import ValidationError

from runtime.accounts import CLIENT_USER, url_for
from runtime.settings import Settings

if TYPE_CHECKING:
    from faststream import FastStream

cli = typer.Typer(help="Atlantic: a real-time e-commerce backend with live analytics.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
users_cli = typer.Typer(help="Manage accounts.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")


def _configure_logging(settings: Settings) -> None:
    from runtime.telemetry import configure_logging

    configure_logging(settings)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


async def _run_apps(apps: "list[FastStream]", on_started: Callable[[], None] | None = None
                    ) -> None:
    """Runs the apps until SIGTERM or Ctrl-C. One app: FastStream's own run. Several (a set per
    NATS user): FastStream's run would take the signals for the last one only, so they are
    started in turn here and stopped in reverse, each draining what it has in flight."""
    if len(apps) == 1:
        if on_started:
            apps[0].after_startup(on_started)
        await apps[0].run()
        return
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as running:
        for app in apps:
            await running.enter_async_context(app)
        if on_started:
            on_started()
        await stop.wait()


async def _serve(settings: Settings, names: list[str]) -> None:
    from runtime.app import NatsUnreachable, build_apps
    from runtime.streams import StreamRefused

    try:
        await _run_apps(build_apps(settings, names))
    except (NatsUnreachable, StreamRefused) as exc:
        raise _fail(str(exc), 3) from None


@cli.command()
def serve(
    handlers: Annotated[str | None, typer.Option(
        help="Comma-separated handler sets; default: ATLANTIC_HANDLERS")] = None,
) -> None:
    """Run handler sets until SIGTERM or Ctrl-C (in-flight messages are drained)."""
    from runtime.app import UnknownHandlerSet, select_sets

    settings = Settings()
    names = [n.strip() for n in handlers.split(",")] if handlers else settings.handler_sets
    try:
        select_sets(names)
    except UnknownHandlerSet as exc:
        raise _fail(str(exc), 2) from None
    _configure_logging(settings)
    asyncio.run(_serve(settings, names))


@users_cli.command("create-admin")
def create_admin(email: Annotated[str, typer.Option()],
                 password: Annotated[str, typer.Option()]) -> None:
    """Create an administrator account (or promote an existing one)."""
    from runtime.tools.bootstrap import ensure_admin

    try:
        typer.echo(asyncio.run(ensure_admin(Settings(), email, password)))
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                              for e in exc.errors())) from None


async def _call(settings: Settings, subject: str, payload: object, token: str | None,
                timeout: float) -> int:
    from runtime.tools.client import AtlanticClient

    client = await AtlanticClient.connect(
        url_for(settings.nats_url, settings.data_dir, CLIENT_USER), token)
    try:
        reply = await client.call(subject, payload, timeout=timeout)
    finally:
        await client.close()
    if reply.ok:
        typer.echo(json.dumps(reply.body, indent=2))
        return 0
    error = reply.body["error"]
    typer.secho(f"{reply.status} {error['code']}: {error['message']}", fg="red", err=True)
    for detail in error.get("details", []):
        typer.echo(f"  {detail['field']}: {detail['message']}", err=True)
    return 1


@cli.command()
def call(
    subject: str,
    payload: Annotated[str | None, typer.Argument(help="JSON body")] = None,
    token: Annotated[str | None, typer.Option(envvar="ATLANTIC_TOKEN",
                                              help="session token from login")] = None,
    timeout: float = 5.0,
) -> None:
    """Send one request and print the reply (or the error, with a non-zero exit)."""
    try:
        body = json.loads(payload) if payload else None
    except ValueError as exc:
        raise _fail(f"the payload is not valid JSON: {exc}", 2) from None
    try:
        code = asyncio.run(_call(Settings(), subject, body, token, timeout))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise _fail(f"no answer on {subject}: {exc}", 3) from None
    raise typer.Exit(code)


@cli.command()
def services() -> None:
    """Check PostgreSQL and Redis, starting the machine's own when they are down."""
    from runtime.tools.services import ensure_postgres, ensure_redis

    settings = Settings()
    problems = [p for p in (ensure_postgres(settings.postgres_dsn),
                            ensure_redis(settings.redis_url)) if p]
    if problems:
        raise _fail("\n".join(problems))
    typer.echo("PostgreSQL and Redis answer")


@cli.command()
def docs() -> None:
    """Write docs/asyncapi.json and docs/asyncapi.yaml for every handler set."""
    from runtime.tools.asyncapi import write_documents

    for path in write_documents(Path.cwd() / "docs"):
        typer.echo(f"wrote {path}")


async def _dead_letters(settings: Settings, consumer: str | None, limit: int) -> list:
    from storage import deadletters
    from storage.postgres import open_pool

    pool = await open_pool(settings.postgres_dsn, 1)
    try:
        return await deadletters.recent(pool, consumer, limit)
    finally:
        await pool.close()


@cli.command("dead-letters")
def dead_letters(consumer: Annotated[str | None, typer.Option(help="one consumer only")] = None,
                 limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50) -> None:
    """Show the newest events consumers gave up on, with the reason."""
    from rich.console import Console
    from rich.table import Table

    table = Table("when", "consumer", "subject", "seq", "deliveries", "error")
    for d in asyncio.run(_dead_letters(Settings(), consumer, limit)):
        table.add_row(f"{d.created_at:%Y-%m-%d %H:%M:%S}", d.consumer, d.subject,
                      str(d.stream_seq), str(d.deliveries), d.error)
    Console().print(table)


@cli.command()
def loadgen(
    rate: Annotated[float | None, typer.Option(
        min=0.01, help="shopper visits started per second (open loop)")] = None,
    concurrency: Annotated[int, typer.Option(
        min=1, help="shoppers visiting back to back, when --rate is not given")] = 16,
    duration: Annotated[float | None, typer.Option(
        min=0.1, help="seconds to place orders for (default 60 unless --orders)")] = None,
    orders: Annotated[int | None, typer.Option(min=1, help="stop after this many orders")] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed, the same shoppers")] = 1,
    nats_url: Annotated[str | None, typer.Option(help="default: ATLANTIC_NATS_URL")] = None,
    settle: Annotated[float, typer.Option(
        min=1, help="seconds the audit waits for orders to finish and analytics to agree")] = 60,
) -> None:
    """Simulated shoppers and an operator against a running Atlantic, then an audit (exit 1 when
    an order is lost, doubled or stuck, or analytics disagrees with PostgreSQL)."""
    from rich.console import Console

    from runtime.tools.loadgen import LoadConfig, run_loadgen, summary_table

    settings = Settings()
    config = LoadConfig(
        nats_url=nats_url or url_for(settings.nats_url, settings.data_dir, CLIENT_USER),
        admin_email=settings.admin_email,
        admin_password=settings.admin_password, rate=rate, concurrency=concurrency,
        duration=duration if duration or orders else 60.0, orders=orders, seed=seed,
        settle_seconds=settle)
    console = Console()
    try:
        report = asyncio.run(run_loadgen(config, console))
    except (OSError, TimeoutError, nats.errors.Error, RuntimeError) as exc:
        raise _fail(f"loadgen could not run: {exc}", 3) from None
    console.print(summary_table(report))
    for problem in report.problems[:50]:
        console.print(f"[red]  {problem}[/]")
    raise typer.Exit(0 if report.passed else 1)


@cli.command()
def bench(
    quick: Annotated[bool, typer.Option(
        help="smaller runs (dashboard over 100k and 1M events): a few minutes")] = False,
    only: Annotated[str, typer.Option(
        help="comma-separated: requests, saga, ingest, queries; web (the dashboard in "
             "chromium) only when named")] = "requests,saga,ingest,queries",
    rates: Annotated[str, typer.Option(
        help="saga: comma-separated orders/s offered open loop, in sweep order")
    ] = "25,50,100,200,400",
    topologies: Annotated[str, typer.Option(
        help="saga: comma-separated, of up (every set in one process as `atlantic up` runs "
             "them: NATS users, an application per set), one (the same on an open NATS "
             "server), per-set, replicas (two per set), r3 (one, on a three-node NATS "
             "cluster, stream R3); per-set-traced, one-traced and up-traced: the same with "
             "telemetry on (spans exported over OTLP to a receiver that drops them, /metrics "
             "served)")] = "up,per-set,replicas",
    callers: Annotated[int, typer.Option(
        help="saga: closed-loop callers for peak throughput (one order in the saga each); "
             "0: none")] = 64,
    output: Annotated[Path, typer.Option(help="where the dated rows are appended")] = Path(
        "BENCHMARKS.md"),
) -> None:
    """Run every workload beside its ceiling, print a table, append it to BENCHMARKS.md."""
    import shlex
    import time

    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table

    from runtime.tools.bench.runner import markdown, run
    from runtime.tools.bench.saga import TOPOLOGIES, Plan
    from runtime.tools.services import ensure_postgres, ensure_redis

    settings = Settings()
    problems = [p for p in (ensure_postgres(settings.postgres_dsn),
                            ensure_redis(settings.redis_url)) if p]
    try:
        plan = Plan([t.strip() for t in topologies.split(",")],
                    [float(r) for r in rates.split(",")], callers)
    except ValueError:
        problems.append(f"--rates takes numbers separated by commas, not {rates!r}")
    else:
        if unknown := set(plan.topologies) - set(TOPOLOGIES):
            problems.append(f"unknown topologies {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(TOPOLOGIES)}")
    if problems:
        raise _fail("\n".join(problems))
    began = time.monotonic()
    rows, rss, notes = asyncio.run(run(settings, quick, {w.strip() for w in only.split(",")},
                                       plan))
    table = Table("workload", "measured", "ceiling (same run)", "target", "verdict",
                  title="atlantic bench")
    for r in rows:
        table.add_row(r.workload, r.measured, r.ceiling, r.target, r.verdict)
    for name, mb in rss.items():
        table.add_row(f"peak RSS: {name}", f"{mb:.0f} MiB")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(Markdown(note))
    command = shlex.join(["atlantic", *sys.argv[1:]])
    if not output.exists():
        output.write_text("# Benchmarks\n\nAppended by `just bench` (`atlantic bench`).\n\n")
    with output.open("a") as f:
        f.write("\n" + markdown(rows, rss, command, time.monotonic() - began, notes))
    typer.echo(f"appended to {output}")


USAGE = """
Atlantic is running ({sets}) on {nats}.
From another shell:
  .venv/bin/atlantic call atlantic.users.register \\
      '{{"email": "ada@example.com", "password": "analytical-engine", "name": "Ada"}}'
  .venv/bin/atlantic call atlantic.users.login \\
      '{{"email": "ada@example.com", "password": "analytical-engine"}}'
  .venv/bin/atlantic call atlantic.users.me --token <token from login>
  .venv/bin/atlantic call atlantic.catalog.products.list '{{"q": "coffee", "limit": 5}}'
Admin: {admin} (password from ATLANTIC_ADMIN_PASSWORD). Discovery: nats micro ls, or
  .venv/bin/atlantic call '$SRV.INFO'{dashboard}
Stop with Ctrl-C.
"""


ANONYMOUS_MAY_PUBLISH = """\
WARNING: the NATS server at {url} lets a client with no credentials publish to
atlantic.events.>: anyone who reaches it can forge any set's events (refund an order that
still ships, pay for a declined one) and read every request and reply, passwords and tokens
included. Run deploy/nats.conf there (as compose.yaml does), or leave ATLANTIC_NATS_URL unset
and stop that server, so `atlantic up` starts its own with a user per set.
"""


async def start_or_check_nats(settings: Settings):
    """Starts nats-server with the users of deploy/nats.conf when nothing answers at the URL
    (returns it, to be stopped); else warns when the server there is open to anyone."""
    from runtime.accounts import NATS_CONF, Passwords, anonymous_may_publish_events
    from runtime.tools.services import NatsServer, answers, host_port

    first = settings.nats_servers[0]  # a cluster is started by its own deployment
    if answers(first, 4222):
        if await anonymous_may_publish_events(first):
            typer.secho(ANONYMOUS_MAY_PUBLISH.format(url=first), fg="yellow", err=True)
        return None
    host, port = host_port(first, 4222)
    passwords = Passwords.ensure(settings.data_dir)
    server = NatsServer(port, Path(settings.data_dir) / "nats", host, config=NATS_CONF,
                        env=passwords.environment()).start()
    typer.echo(f"started nats-server with JetStream and the users of deploy/nats.conf on "
               f"{server.url} (passwords in {passwords.path})")
    return server


async def _up(settings: Settings) -> None:
    from runtime.app import build_apps, select_sets
    from runtime.tools.bootstrap import ensure_admin, ensure_demo_catalog
    from runtime.tools.services import ensure_postgres, ensure_redis

    problems = [p for p in (ensure_postgres(settings.postgres_dsn),
                            ensure_redis(settings.redis_url)) if p]
    if problems:
        raise _fail("\n".join(problems))
    nats_server = await start_or_check_nats(settings)
    try:
        typer.echo(await ensure_admin(settings, settings.admin_email, settings.admin_password))
        typer.echo(await ensure_demo_catalog(settings))  # after ensure_admin: migrations ran
        apps = build_apps(settings)

        def started() -> None:
            url = next((u for app in apps if (u := app.context.get("web_url"))), None)
            typer.echo(USAGE.format(
                sets=", ".join(hs.name for hs in select_sets(settings.handler_sets)),
                nats=settings.nats_url,
                admin=settings.admin_email,
                dashboard=f"\nDashboard: {url} (sign in as the admin)" if url else ""))

        await _run_apps(apps, started)
    finally:
        if nats_server:
            nats_server.stop()


@cli.command()
def up() -> None:
    """Everything a developer needs: services, database, migrations, admin, all handler sets."""
    settings = Settings()
    _configure_logging(settings)
    asyncio.run(_up(settings))


def main() -> None:
    sys.exit(cli())
