"""compose.cluster.yaml and deploy/nats-cluster.conf, checked without Docker: three NATS nodes
with deploy/nats.conf's users, and every set given all three and the stream on three replicas."""

import os
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from test_deploy import HANDLER_SETS, PASSWORD_ENV, ROOT, _nats_server

pytestmark = pytest.mark.fast

CLUSTER_COMPOSE = ROOT / "compose.cluster.yaml"
CLUSTER_CONF = ROOT / "deploy" / "nats-cluster.conf"
NODES = ("nats", "nats-2", "nats-3")


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER_COMPOSE.read_text())


def test_cluster_node_config_is_valid_for_nats_server():
    result = subprocess.run(
        [_nats_server(), "-t", "-c", str(CLUSTER_CONF)],
        env={**os.environ, **PASSWORD_ENV, "NATS_SERVER_NAME": "nats-1"},
        capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_nodes_route_to_each_other_and_sync_every_write():
    conf = CLUSTER_CONF.read_text()

    assert [f"nats-route://{node}:6222" in conf for node in NODES] == [True] * 3
    assert "sync_interval: always" in conf


def test_every_set_gets_the_three_nodes_as_its_own_user_and_three_replicas():
    services = _cluster()["services"]

    for name in HANDLER_SETS:
        env = services[name]["environment"]
        urls = [urlsplit(url) for url in env["ATLANTIC_NATS_URL"].split(",")]
        assert [u.hostname for u in urls] == list(NODES), name
        assert {u.username for u in urls} == {name}
        assert env["ATLANTIC_STREAM_REPLICAS"] == "3"
        assert set(services[name]["depends_on"]) == {"nats-2", "nats-3"}


def test_each_cluster_node_has_its_own_name_and_store():
    services = _cluster()["services"]

    names = [services[node]["environment"]["NATS_SERVER_NAME"] for node in NODES]
    assert len(set(names)) == 3
    stores = [v for node in NODES[1:] for v in services[node]["volumes"] if v.endswith(":/data")]
    assert len(set(stores)) == 2
