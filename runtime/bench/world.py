"""A throwaway Atlantic for measuring: its own nats-server on a free port, its own PostgreSQL
database, Redis key prefix and chDB directory, and handler sets in `atlantic serve` processes
laid out as asked. Used by `atlantic bench` and by the loadgen's test."""

import asyncio
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

from runtime.cli import ensure_admin, ensure_demo_catalog
from runtime.services import NatsServer, free_port
from runtime.settings import Settings
from storage.postgres import create_database, drop_database

ATLANTIC = str(Path(sys.executable).parent / "atlantic")


@dataclass
class World:
    settings: Settings
    nats: NatsServer
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    admin_token: str | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        return os.environ | self.settings.environment() | {"ATLANTIC_LOG_LEVEL": "WARNING"} \
            | overrides

    async def serve(self, sets: list[str], **env: str) -> subprocess.Popen:
        """`atlantic serve --handlers a,b` in a child process, once every set answers."""
        name = ",".join(sets)
        # A plain Popen (it returns at once): stop() and the bench's RSS readings are sync.
        process = subprocess.Popen(  # noqa: ASYNC220
            [ATLANTIC, "serve", "--handlers", name], env=self.env(**env))
        self.processes[name] = process
        nc = await nats.connect(self.settings.nats_url)
        try:
            for handler_set in sets:
                for _ in range(600):
                    if process.poll() is not None:
                        raise RuntimeError(f"atlantic serve --handlers {name} exited")
                    try:
                        await nc.request(f"$SRV.PING.atlantic-{handler_set}", b"", timeout=0.2)
                        break
                    except Exception:  # not up yet
                        await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"{handler_set} did not answer within a minute")
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
async def open_world(base: Settings, tag: str, *, demo: bool = False,
                     keep: bool = False) -> AsyncIterator[World]:
    """Servers and an admin (base.admin_email/password); start handler sets with serve()."""
    root = Path(tempfile.mkdtemp(prefix=f"atlantic-{tag}-"))
    server = NatsServer(free_port(), root / "nats").start()
    dsn = base.postgres_dsn.rsplit("/", 1)[0] + f"/atlantic_{tag}"
    settings = base.model_copy(update={
        "nats_url": server.url, "postgres_dsn": dsn, "redis_prefix": f"atlantic-{tag}:",
        "data_dir": str(root / "data"), "outbox_sweep_seconds": 0.5})
    world = World(settings, server)
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
        server.stop()
        if not keep:
            await drop_database(dsn)
            shutil.rmtree(root, ignore_errors=True)
