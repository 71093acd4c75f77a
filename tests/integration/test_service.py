"""Mirroring, the primary-only reply filter, failover on port-down and REST, through a real OVS
switch driven by a real ryu-manager, at OpenFlow 1.0 and 1.3, with the switch connecting to the
controller and with the controller connecting to the switch's passive listener."""

import json
import re
import urllib.error
import urllib.request

import pytest

NO_AGENTS = "heartbeat_timeout = 0\n"
VIP = "10.0.0.100"
BODY = re.compile(r"^b[12] /(\S+)$")


def _count_rule(host, table, chain, spec):
    host.cmd(f"iptables -t {table} -I {chain} {spec}")


def _count(host, table, chain):
    """Packet counter of the first rule in the chain."""
    out = host.cmd(f"iptables -t {table} -L {chain} 1 -v -x -n")
    return int(out.split()[0])


def _get(lab, path):
    with urllib.request.urlopen(lab.api + path, timeout=5) as response:
        return response.status, json.loads(response.read())


def _error(lab, path, method="GET"):
    request = urllib.request.Request(lab.api + path, method=method, data=b"{}"
                                     if method == "POST" else None)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    return info.value.code, dict(info.value.headers), json.loads(info.value.read())


@pytest.mark.parametrize("protocols", ["OpenFlow10", "OpenFlow13"])
def test_every_replica_sees_the_syn_and_the_client_one_reply_stream(lab_factory, protocols):
    lab = lab_factory(sbft_extra=NO_AGENTS, protocols=protocols)
    replicas = [lab.host(f"lb{i}") for i in (1, 2, 3)]
    client = lab.host("c1")
    for replica in replicas:
        _count_rule(replica, "raw", "PREROUTING", f"-p tcp -d {VIP} --dport 5555 --syn")
    _count_rule(client, "filter", "INPUT",
                f"-p tcp -s {VIP} --sport 5555 --tcp-flags SYN,ACK SYN,ACK")

    code, body = lab.curl("c1", "/hello")
    body = body.strip()

    assert code == 200 and BODY.match(body) and body.endswith("/hello")
    assert [_count(r, "raw", "PREROUTING") for r in replicas] == [1, 1, 1]
    assert _count(client, "filter", "INPUT") == 1, "exactly one SYN-ACK: only the primary's"
    # balance uri is deterministic: each replica's own proxy picks the same backend
    local = {r.cmd(f"curl -s -m 2 http://{VIP}:5555/hello").strip() for r in replicas}
    assert local == {body}


@pytest.mark.parametrize("protocols", ["OpenFlow10", "OpenFlow13"])
def test_primary_port_down_fails_over_and_rest_shows_each_step(lab_factory, topo_module,
                                                               protocols):
    lab = lab_factory(sbft_extra=NO_AGENTS, protocols=protocols)
    status, health = _get(lab, "/sbft/health")
    assert status == 200
    assert (health["status"], health["primary"], health["epoch"]) == ("ok", "lb1", 1)
    assert health["switches"] == [{"dpid": "0000000000000001", "connected": True,
                                   "ofp_version": protocols[-2] + "." + protocols[-1]}]
    assert [(r["name"], r["state"], r["role"]) for r in health["replicas"]] == [
        ("lb1", "up", "primary"), ("lb2", "up", "backup"), ("lb3", "up", "backup")]
    assert all(lab.curl("c1", f"/before/{n}")[0] == 200 for n in range(5))

    lab.set_link("lb1", False)
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 10, 0.05, "failover")

    assert all(lab.curl("c1", f"/after/{n}")[0] == 200 for n in range(10))
    _, health = _get(lab, "/sbft/health")
    assert (health["status"], health["primary"], health["epoch"]) == ("degraded", "lb2", 2)
    _, lb1 = _get(lab, "/sbft/replicas/lb1")
    assert (lb1["state"], lb1["role"], lb1["link_up"], lb1["down_reason"]) == (
        "down", "none", False, "switch port down")
    _, replicas = _get(lab, "/sbft/replicas")
    assert [r["role"] for r in replicas["replicas"]] == ["none", "primary", "backup"]

    lab.set_link("lb1", True)
    topo_module.wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "lb1 back")
    _, health = _get(lab, "/sbft/health")
    assert (health["primary"], health["epoch"]) == ("lb2", 2), "sticky: lb1 rejoins as backup"
    assert health["replicas"][0]["role"] == "backup"
    assert all(lab.curl("c1", f"/again/{n}")[0] == 200 for n in range(5))
    _, events = _get(lab, "/sbft/events")
    changes = [(e["replica"], e["change"]) for e in reversed(events["events"])]
    assert ("lb1", "down: switch port down") in changes and ("lb2", "primary") in changes


def test_rest_errors_are_json_with_the_right_status(lab):
    code, _, body = _error(lab, "/sbft/replicas/nobody")
    assert code == 404 and body["error"]["code"] == 404 and "nobody" in body["error"]["message"]
    code, headers, body = _error(lab, "/sbft/health", "POST")
    assert code == 405 and headers["Allow"] == "GET" and body["error"]["code"] == 405
    code, _, body = _error(lab, "/sbft/nothing/here")
    assert code == 404 and body["error"]["code"] == 404
    with urllib.request.urlopen(lab.api + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'sbft_replica_role{replica="lb1",role="primary"} 1.0' in text


def test_passive_listener_gets_arp_and_port_status(lab_factory, topo_module):
    """Ryu connects to the switch's ptcp: listener (as to the thesis's HP switch); the app's
    SetConfig makes OVS send packet-ins (ARP for the VIP) and port-status (failover)."""
    lab = lab_factory(sbft_extra=NO_AGENTS, passive_listener=True)
    client = lab.host("c1")
    assert " 0% packet loss" in client.cmd(f"ping -c2 -i0.2 -W1 {VIP}")
    assert "02:00:0a:00:00:64" in client.cmd(f"ip neigh show {VIP}")
    assert lab.curl("c1", "/x")[0] == 200
    lab.set_link("lb1", False)
    topo_module.wait_until(lambda: lab.health()["primary"] == "lb2", 10, 0.05,
                           "failover through port-status")
    assert lab.curl("c1", "/y")[0] == 200
    assert "--ofp-switch-address-list" not in lab.controller_log()  # sanity: real log
    assert "connected (OpenFlow 1.3, service switch)" in lab.controller_log()
