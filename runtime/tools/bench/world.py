"""A throwaway Atlantic for measuring: its own nats-server on a free port, its own PostgreSQL
database, Redis key prefix and chDB directory, and handler sets in `atlantic serve` processes
laid out as asked. Used by `atlantic bench` and by the loadgen's test."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats

from runtime.settings import Settings
from runtime.tools.bootstrap import ensure_admin, ensure_demo_catalog
from runtime.tools.readiness import wait_until_answering
from runtime.tools.services import NatsServer, cluster, free_port
from storage.postgres import create_database, drop_database

ATLANTIC = str(Path(sys.executable).parent / "atlantic")


@dataclass
class World:
    settings: Settings
    nats: NatsServer  # the first of `nodes`
    nodes: list[NatsServer]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    admin_token: str | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        return os.environ | self.settings.environment() | {"ATLANTIC_LOG_LEVEL": "WARNING"} \
            | overrides

    async def serve(self, sets: list[str], *, key: str | None = None,
                    **env: str) -> subprocess.Popen:
        """`atlantic serve --handlers a,b` in a child process, kept as processes[key] (by default
        the sets' names; a second replica needs a key of its own), once every set answers from as
        many instances as this world now runs."""
        name = ",".join(sets)
        # A plain Popen (it returns at once): stop() and the bench's RSS readings are sync.
        process = subprocess.Popen(  # noqa: ASYNC220
            [ATLANTIC, "serve", "--handlers", name], env=self.env(**env))
        self.processes[key or name] = process
        nc = await nats.connect(self.settings.nats_servers)
        try:
            for handler_set in sets:
                instances = sum(handler_set in p.args[-1].split(",")
                                for p in self.processes.values())
                await wait_until_answering(nc, handler_set, instances=instances,
                                           exited=lambda: process.poll() is not None)
        finally:
            await nc.close()
        return process

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.asynccontextmanager
async def open_world(base: Settings, tag: str, *, demo: bool = False, keep: bool = False,
                     nodes: int = 1) -> AsyncIterator[World]:
    """Servers and an admin (base.admin_email/password); start handler sets with serve().
    With `nodes` 3, NATS is a three-node cluster and the stream has three replicas."""
    root = Path(tempfile.mkdtemp(prefix=f"atlantic-{tag}-"))
    servers = (cluster(nodes, root / "nats") if nodes > 1
               else [NatsServer(free_port(), root / "nats").start()])
    dsn = base.postgres_dsn.rsplit("/", 1)[0] + f"/atlantic_{tag}"
    settings = base.model_copy(update={
        "nats_url": ",".join(s.url for s in servers), "stream_replicas": min(nodes, 3),
        "postgres_dsn": dsn, "redis_prefix": f"atlantic-{tag}:",
        "data_dir": str(root / "data"),
        "web_port": 0})  # the rest as deployed: the bench measures defaults
    world = World(settings, servers[0], servers)
    try:
        await drop_database(dsn)  # a previous run killed half-way
        await create_database(dsn)
        await ensure_admin(settings, settings.admin_email, settings.admin_password)
        if demo:
            await ensure_demo_catalog(settings)
        yield world
    finally:
        for name in list(world.processes):
            world.stop(name)
        for server in servers:
            server.stop()
        if not keep:
            await drop_database(dsn)
            shutil.rmtree(root, ignore_errors=True)
