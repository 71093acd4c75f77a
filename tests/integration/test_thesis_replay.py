"""The thesis's OpenFlow mode, replayed: an OVS bridge emulating the HP switch's VLAN 7
OpenFlow instance (a passive ptcp: listener; 192.168.7.103 on port 3, 192.168.7.111 on port 11),
driven by `ryu-manager --config-file flows/hp-vlan7.conf` with the switch address overridden to
the local listener. The lab addresses exist only inside this test's Mininet hosts."""

import os
import subprocess
import time

import pytest

from sbft_ryu import flowfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THESIS_FLOWS = os.path.join(REPO, "flows", "hp-vlan7.flows")
THESIS_CONF = os.path.join(REPO, "flows", "hp-vlan7.conf")


def _flow_lines(dump):
    """dump-flows output reduced to 'priority=...,match actions=...' without counters."""
    lines = []
    for line in dump.splitlines():
        line = line.strip()
        if not line or line.startswith(("OFPST_FLOW", "NXST_FLOW")):
            continue
        fields = [f for f in line.replace(", ", ",").split(",")
                  if not f.strip().startswith(("cookie=", "duration=", "table=", "n_packets=",
                                               "n_bytes=", "idle_age=", "hard_age="))]
        lines.append(",".join(f.strip() for f in fields))
    return sorted(lines)


@pytest.fixture
def hp_switch(topo_module, tmp_path):
    """Two hosts on a bridge that only listens (no controller of its own). A network outside
    Lab: it takes the lab lock as Lab does (two labs collide on Mininet's names)."""
    from mininet.net import Mininet

    lock = topo_module.take_lab_lock()
    try:
        net = Mininet(topo=None, controller=None, build=False, autoSetMacs=False)
        yield net, tmp_path
        net.stop()
    finally:
        lock.close()


@pytest.mark.parametrize("version", ["OpenFlow10", "OpenFlow13"])
def test_thesis_flows_over_passive_listener(topo_module, hp_switch, version):
    net, tmp_path = hp_switch
    listen = topo_module.free_port()
    switch = net.addSwitch("hp7", cls=topo_module.topo.ServiceSwitch,
                           dpid="0000000000000007",
                           protocols=version, failMode="secure")
    h103 = net.addHost("h103", cls=topo_module.topo.LabHost, ip="192.168.7.103/24",
                       rundir=str(tmp_path / "h103"))
    h111 = net.addHost("h111", cls=topo_module.topo.LabHost, ip="192.168.7.111/24",
                       rundir=str(tmp_path / "h111"))
    net.addLink(h103, switch, port2=3)
    net.addLink(h111, switch, port2=11)
    net.build()
    net.start()
    subprocess.run(["ovs-vsctl", "set-controller", "hp7", f"ptcp:{listen}:127.0.0.1"],
                   check=True, timeout=10)
    ofctl = ["ovs-ofctl", "-O", version, "dump-flows", "hp7"]
    assert _flow_lines(subprocess.run(ofctl, capture_output=True, text=True,
                                      timeout=10).stdout) == [], "flows must come from Ryu"

    ryu = topo_module.start_ryu(str(tmp_path), topo_module.free_port(), topo_module.free_port(),
                                THESIS_CONF,
                                ("--ofp-switch-address-list", f"127.0.0.1:{listen}",
                                 "--ofp-switch-connect-interval", "1"))
    try:
        # ovs-ofctl prints neither the default priority nor idle_timeout=0
        expected = _flow_lines("\n".join(
            line.replace("idle_timeout=0,", "").replace(",actions=", " actions=")
            for line in open(THESIS_FLOWS).read().splitlines()
            if line and not line.startswith("#")))
        topo_module.wait_until(
            lambda: _flow_lines(subprocess.run(ofctl, capture_output=True, text=True,
                                               timeout=10).stdout) == expected,
            20, 0.2, "the three thesis flows")
        installed = _flow_lines(subprocess.run(ofctl, capture_output=True, text=True,
                                               timeout=10).stdout)
        assert installed == expected
        assert len(installed) == len(flowfile.load_flows_file(THESIS_FLOWS)) == 3
        assert " 0% packet loss" in h103.cmd("ping -c3 -i0.2 -W1 192.168.7.111")
        assert " 0% packet loss" in h111.cmd("ping -c3 -i0.2 -W1 192.168.7.103")
    finally:
        topo_module.stop_process(ryu)
    log = open(tmp_path / "ryu-manager.log").read()
    assert "dpid=0000000000000007: connected (OpenFlow" in log
    assert "Traceback" not in log and "OFPErrorMsg" not in log


def test_bad_flows_file_stops_before_installing_anything(topo_module, hp_switch):
    net, tmp_path = hp_switch
    listen = topo_module.free_port()
    switch = net.addSwitch("hp7", cls=topo_module.topo.ServiceSwitch,
                           dpid="0000000000000007",
                           protocols="OpenFlow13", failMode="secure")
    host = net.addHost("h103", cls=topo_module.topo.LabHost, ip="192.168.7.103/24",
                       rundir=str(tmp_path / "h103"))
    net.addLink(host, switch, port2=3)
    net.build()
    net.start()
    subprocess.run(["ovs-vsctl", "set-controller", "hp7", f"ptcp:{listen}:127.0.0.1"],
                   check=True, timeout=10)
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "hp7",
                    "priority=7,actions=drop"], check=True, timeout=10)
    flows = tmp_path / "broken.flows"
    flows.write_text("# ok\narp,actions=NORMAL\nip,nw_dst=10.0.0.1,actions=output:eleven\n")
    conf = tmp_path / "broken.conf"
    conf.write_text(f"[sbft]\nflows_file = {flows}\nreplica =\n")
    ryu = topo_module.start_ryu(str(tmp_path), topo_module.free_port(), topo_module.free_port(),
                                str(conf), ("--ofp-switch-address-list", f"127.0.0.1:{listen}",
                                            "--ofp-switch-connect-interval", "1"))
    try:
        code = ryu.wait(timeout=30)
    finally:
        topo_module.stop_process(ryu)
    log = open(tmp_path / "ryu-manager.log").read()
    assert code != 0
    assert f"{flows}:3: " in log and "near 'output:eleven'" in log
    time.sleep(1.5)  # a connect interval: nothing may have reached the switch
    dump = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "hp7"],
                          capture_output=True, text=True, timeout=10).stdout
    assert _flow_lines(dump) == ["priority=7 actions=drop"]
