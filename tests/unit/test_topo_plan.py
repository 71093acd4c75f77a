"""Tests for the pure plan functions of mininet/sbft_topo.py (no root, no Mininet network).

The module imports Mininet at module level; importing it needs no root, only the package.
"""

import importlib.util
import os

import pytest
from oslo_config import cfg

from sbft_ryu import config

pytest.importorskip("mininet.net")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_topo():
    spec = importlib.util.spec_from_file_location(
        "sbft_topo_under_test", os.path.join(REPO, "mininet", "sbft_topo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


topo = _load_topo()


def load_text(tmp_path, text):
    path = tmp_path / "sbft.conf"
    path.write_text(text, encoding="utf-8")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    return config.load_config(conf)


# --- plan -----------------------------------------------------------------------------------


def test_replica_addressing():
    assert topo.plan(3, 2, 1)["replicas"] == [
        {"name": f"lb{i}", "ip": f"10.0.0.1{i}", "mac": f"00:00:00:00:01:0{i}", "port": i,
         "mgmt_ip": f"10.254.0.1{i}"}
        for i in (1, 2, 3)
    ]


def test_backend_and_client_addressing():
    layout = topo.plan(1, 2, 3)
    assert layout["backends"] == [
        {"name": f"b{j}", "ip": f"10.0.0.2{j}", "mac": f"00:00:00:00:02:0{j}", "port": 10 + j}
        for j in (1, 2)
    ]
    assert layout["clients"] == [
        {"name": f"c{k}", "ip": f"10.0.0.3{k}", "mac": f"00:00:00:00:03:0{k}", "port": 20 + k}
        for k in (1, 2, 3)
    ]


def test_largest_plan_keeps_ports_and_addresses_distinct():
    layout = topo.plan(9, 9, 9)
    hosts = layout["replicas"] + layout["backends"] + layout["clients"]
    assert len(hosts) == 27
    for key in ("name", "ip", "mac", "port"):
        assert len({host[key] for host in hosts}) == 27, key
    assert layout["replicas"][-1]["ip"] == "10.0.0.19"
    assert topo.VIP not in {host["ip"] for host in hosts}


@pytest.mark.parametrize("counts, message", [
    ((0, 2, 1), "lbs must be 1..9, got 0"),
    ((10, 2, 1), "lbs must be 1..9, got 10"),
    ((3, 0, 1), "backends must be 1..9, got 0"),
    ((3, 2, 10), "clients must be 1..9, got 10"),
])
def test_plan_bounds(counts, message):
    with pytest.raises(ValueError) as info:
        topo.plan(*counts)
    assert str(info.value) == message


# --- the [sbft] config text -----------------------------------------------------------------


def test_config_text_for_three_replicas_matches_the_embedded_defaults(tmp_path, default_config):
    loaded = load_text(tmp_path, topo.sbft_config_text(topo.plan(3, 2, 1)))
    assert loaded.replicas == default_config.replicas
    assert (loaded.vip, loaded.vmac, loaded.service_port) == (
        default_config.vip, default_config.vmac, default_config.service_port)
    assert loaded == default_config


def test_config_text_appends_extra(tmp_path):
    text = topo.sbft_config_text(topo.plan(2, 1, 1), "heartbeat_timeout = 0\n")
    loaded = load_text(tmp_path, text)
    assert [r.name for r in loaded.replicas] == ["lb1", "lb2"]
    assert loaded.heartbeat_timeout == 0.0


# --- HAProxy configurations -----------------------------------------------------------------


def test_replica_haproxy_cfg():
    text = topo.replica_haproxy_cfg(topo.plan(3, 2, 1)["backends"])
    lines = [line.strip() for line in text.splitlines()]
    assert "balance uri" in lines
    assert "bind 10.0.0.100:5555" in lines
    assert "monitor-uri /sbft-probe" in lines
    assert [line for line in lines if line.startswith("server ")] == [
        "server b1 10.0.0.21:8080", "server b2 10.0.0.22:8080"]
    assert lines.index("balance uri") < lines.index("server b1 10.0.0.21:8080")


def test_backend_haproxy_cfg():
    backend = topo.plan(3, 2, 1)["backends"][1]
    text = topo.backend_haproxy_cfg(backend)
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 10.0.0.22:8080" in lines
    assert 'lf-string "b2 %[path]\\n"' in text
