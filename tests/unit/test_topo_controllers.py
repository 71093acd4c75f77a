"""Tests for the several-controllers parts of the lab's topology and etcd command lines (no root,
no network): which hosts ``controllers=2|3`` adds, what the agents are told, etcd's argv.
"""

import importlib.util
import ipaddress
import os

import pytest

pytest.importorskip("mininet.net")

from sbft_lab import etcd, etcd_hosts  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_topo():
    spec = importlib.util.spec_from_file_location(
        "sbft_topo_controllers_under_test", os.path.join(REPO, "mininet", "sbft_topo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


topo = _load_topo()


def test_one_controller_adds_no_host():
    assert topo.control_plan(1) == {"controllers": [], "etcd": []}
    built = topo.SbftTopo(lbs=2)
    assert not any(h.startswith(("ctl", "etcd")) for h in built.hosts())
    assert built.nodeInfo("lb1")["agent_argv"] == topo.agent_command(
        "lb1", "http://10.254.0.254:8080")


@pytest.mark.parametrize("count", [2, 3])
def test_several_controllers_get_hosts_on_the_management_network(count):
    control = topo.control_plan(count)
    assert [c["name"] for c in control["controllers"]] == [f"ctl{n}" for n in
                                                          range(1, count + 1)]
    assert [e["name"] for e in control["etcd"]] == ["etcd1", "etcd2", "etcd3"]
    layout = topo.plan(9, 9, 9)
    taken = {r["mgmt_ip"] for r in layout["replicas"]} | {topo.MGMT_ROOT_IP}
    nodes = control["controllers"] + control["etcd"]
    addresses = [n["mgmt_ip"] for n in nodes]
    assert len(set(addresses)) == len(addresses) and not set(addresses) & taken
    assert all(ipaddress.ip_address(a) in topo.MGMT_NET for a in addresses)
    ports = [n["port"] for n in nodes]
    assert len(set(ports)) == len(ports) and not set(ports) & (set(range(1, 10)) | {254})
    built = topo.SbftTopo(lbs=3, controllers=count)
    for node in nodes:
        assert node["name"] in built.hosts()
        assert built.nodeInfo(node["name"])["ip"] == f"{node['mgmt_ip']}/24"
        links = [link for link in built.links() if node["name"] in link]
        assert links == [(node["name"], "s0")] or links == [("s0", node["name"])]


def test_agents_report_to_every_controller():
    built = topo.SbftTopo(lbs=2, controllers=3)
    urls = "http://10.254.0.21:8080,http://10.254.0.22:8080,http://10.254.0.23:8080"
    assert built.nodeInfo("lb2")["agent_argv"] == topo.agent_command("lb2", urls)
    assert topo.controller_urls(topo.control_plan(2), 8181) == [
        "http://10.254.0.21:8181", "http://10.254.0.22:8181"]
    assert topo.etcd_endpoints(topo.control_plan(2)) == \
        "10.254.0.31:2379,10.254.0.32:2379,10.254.0.33:2379"


@pytest.mark.parametrize("value", [0, 4, True, -1])
def test_controller_count_bounds(value):
    with pytest.raises(ValueError, match="controllers must be 1..3"):
        topo.control_plan(value)


def test_mn_custom_accepts_controllers():
    from mininet.util import buildTopo

    built = buildTopo(topo.topos, "sbft,lbs=2,controllers=2")
    assert "ctl2" in built.hosts() and "etcd3" in built.hosts()


def test_etcd_member_argv():
    members = [("etcd1", "10.254.0.31", 2380), ("etcd2", "10.254.0.32", 2380)]
    argv = etcd_hosts.member_argv("/usr/bin/etcd", "etcd2", "10.254.0.32", 2379, 2380, members,
                                  "/tmp/d")
    assert argv[:5] == ["/usr/bin/etcd", "--name", "etcd2", "--data-dir", "/tmp/d"]
    pairs = dict(zip(argv[1::2], argv[2::2]))
    assert pairs["--listen-client-urls"] == "http://10.254.0.32:2379"
    assert pairs["--advertise-client-urls"] == "http://10.254.0.32:2379"
    assert pairs["--initial-advertise-peer-urls"] == "http://10.254.0.32:2380"
    assert pairs["--initial-cluster"] == ("etcd1=http://10.254.0.31:2380,"
                                          "etcd2=http://10.254.0.32:2380")
    assert pairs["--initial-cluster-state"] == "new"
    # a 1 s lease needs 1.5 election timeouts <= 1 s; the same as the loopback clusters'
    assert 1.5 * int(pairs["--election-timeout"]) <= 1000
    assert int(pairs["--election-timeout"]) >= 5 * int(pairs["--heartbeat-interval"])
    assert (int(pairs["--heartbeat-interval"]), int(pairs["--election-timeout"])) == (
        etcd.HEARTBEAT_MS, etcd.ELECTION_MS)


SYNACKS = [  # tcpdump lines: port 52736 used by two connections 1.6 s apart, then one doubled
    "18:27:28.488757 IP 10.0.0.100.5555 > 10.0.0.31.52736: Flags [S.], seq 966726880, "
    "ack 486879740, win 43440, length 0",
    "18:27:30.108429 IP 10.0.0.100.5555 > 10.0.0.31.52736: Flags [S.], seq 966792513, "
    "ack 512187755, win 43440, length 0",
    "18:27:31.000000 IP 10.0.0.100.5555 > 10.0.0.31.52800: Flags [S.], seq 1, ack 7, length 0",
    "18:27:31.000100 IP 10.0.0.100.5555 > 10.0.0.31.52800: Flags [S.], seq 2, ack 7, length 0",
    "18:27:31.000200 IP 10.0.0.100.5555 > 10.0.0.31.52800: Flags [R.], seq 3, ack 7, length 0",
]


def test_connections_answering_tells_a_reused_port_from_a_doubled_answer():
    from sbft_lab import lab as lab_module

    answers = lab_module.Lab.connections_answering(None, SYNACKS)
    assert answers == {("52736", "486879740"): {"966726880"},
                       ("52736", "512187755"): {"966792513"},
                       ("52800", "7"): {"1", "2"}}
