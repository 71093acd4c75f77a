"""Tests for sbft_ryu.core: the controller's decisions without Ryu. Events go in with a fixed
``now``; what the Core sends is recorded by a fake send function that can refuse a batch (as
the app's does when a batch cannot be translated)."""

import dataclasses
import logging

import pytest
from scapy.all import ARP, Ether

from sbft_ryu import decide
from sbft_ryu.cluster import ClusterView
from sbft_ryu.config import build_config
from sbft_ryu.core import Core, NotByzantine, members_needed, serve_below
from sbft_ryu.model import EnablePacketIn, FlowDelete, PacketOutSpec, ReadTables, RequestPorts
from sbft_ryu.ofp.tables import Tables
from sbft_ryu.referee import AuthError
from sbft_ryu.rest import Heartbeat

NOW = 20.0
LOG = logging.getLogger("test.sbft.core")
ALL_UP = {1: True, 2: True, 3: True}


class Recorder:
    """The send function: records (dpid, messages); answers False for dpids in ``refuse``."""

    def __init__(self):
        self.sent = []
        self.refuse = set()

    def __call__(self, dpid, messages):
        self.sent.append((dpid, list(messages)))
        return dpid not in self.refuse


@pytest.fixture
def config(default_config):
    return dataclasses.replace(default_config, heartbeat_timeout=0.0, startup_grace=0.0)


@pytest.fixture
def send():
    return Recorder()


@pytest.fixture
def nudged():
    return []


@pytest.fixture
def core(config, send, nudged):
    return Core(config, send, nudge=nudged.append, logger=LOG)


def view(members, primary, epoch):
    return ClusterView(members=tuple(members), primary=primary, epoch=epoch)


# --- the voting policy ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, f, needed", [(3, 1, (2, 3, 3)), (5, 2, (3, 4, 4)),
                                          (4, 1, (2, 4, 3)), (1, 0, (1, 2, 2))])
def test_members_needed_to_vote_convict_and_check_the_wire(n, f, needed):
    assert members_needed(n, f) == needed


@pytest.mark.parametrize("voting, unvoted, expected", [
    ("on", "stop", 2), ("on", "serve", None), ("off", "stop", None), ("off", "serve", None)])
def test_serve_below_is_the_vote_quorum_only_when_voting_and_told_to_stop(raw, voting, unvoted,
                                                                          expected):
    raw.update(mode="active", voting=voting, unvoted=unvoted,
               replica_key=[f"lb{n} {bytes([n]).hex() * 16}" for n in (1, 2, 3)])
    conf = build_config(raw)
    assert serve_below(conf) == expected
    assert Core(conf, Recorder()).cluster.serve_below == expected


def test_active_mode_elects_successors_by_seniority(config):
    assert not Core(config, Recorder()).cluster.by_seniority
    assert Core(dataclasses.replace(config, mode="active"), Recorder()).cluster.by_seniority


# --- switches ------------------------------------------------------------------------------------

def connect(core, dpid, version="1.3", found=None):
    """A switch connects and its tables are read (``found``: what it holds)."""
    core.switch_connected(dpid, version, LOG, NOW)
    return core.tables_read(dpid, found if found is not None else Tables(), NOW)


def test_a_service_switch_gets_packet_ins_a_port_request_and_a_table_read(core, config,
                                                                           send):
    assert core.switch_connected(1, "1.3", LOG, NOW) is True
    assert send.sent == [(1, [EnablePacketIn(), RequestPorts(), ReadTables()])]
    assert core.seen == {1: (True, "1.3")}
    assert core.switches[1].service and core.switches[1].installed is None
    found = Tables()
    assert core.tables_read(1, found, NOW) is True
    (converge,) = send.sent[1][1]
    assert converge.found is found
    assert converge.flows == decide.intended_flows(config, core.cluster.view, True)
    assert core.switches[1].installed == decide.service_flows(config, view((), None, 0))


def test_a_switch_other_than_the_configured_dpid_gets_the_flows_file_only(config, send):
    core = Core(dataclasses.replace(config, dpid=7), send)
    assert (core.is_service(7), core.is_service(1)) == (True, False)
    connect(core, 1, "1.0")
    assert send.sent[1][1][0].flows == config.flows
    core.set_ports(1, ALL_UP, NOW)
    assert core.cluster.view.primary is None  # its ports say nothing about the replicas
    assert len(send.sent) == 2


def test_ports_count_once_the_switch_holds_its_tables(core, config, send):
    core.switch_connected(1, "1.3", LOG, NOW)
    core.set_ports(1, ALL_UP, NOW)
    core.port_status(1, 3, False, NOW)
    assert core.cluster.view.primary is None and len(send.sent) == 1  # nothing elected yet
    core.tables_read(1, Tables(), NOW)  # converged to the view of now, then the ports count
    assert send.sent[1][1][0].flows == decide.intended_flows(config, view((), None, 0))
    assert core.cluster.view == view(("lb1", "lb2"), "lb1", 1)
    assert core.switches[1].installed == decide.service_flows(config, core.cluster.view)


def test_ports_up_elect_a_primary_and_converge_every_service_switch(core, config, send,
                                                                    nudged):
    connect(core, 1, "1.3")
    connect(core, 2, "1.0")
    core.agent_addresses["lb1"] = "10.254.0.11"
    before = decide.service_flows(config, core.cluster.view)
    new = core.set_ports(1, ALL_UP, NOW)
    assert new == view(("lb1", "lb2", "lb3"), "lb1", 1) == core.cluster.view
    wanted = decide.service_flows(config, new)
    assert send.sent[4:] == [(1, decide.update_batch(before, wanted)),
                             (2, decide.update_batch(before, wanted))]
    assert core.switches[1].installed == wanted == core.switches[2].installed
    assert nudged == []  # until both switches acknowledge (test_core_switch_confirm.py)
    core.switch_confirmed(1, NOW)
    core.switch_confirmed(2, NOW)
    assert nudged == [["10.254.0.11"]]


def test_a_batch_that_did_not_go_out_is_not_counted_as_installed(core, config, send):
    connect(core, 1)
    before = core.switches[1].installed
    send.refuse.add(1)
    core.set_ports(1, ALL_UP, NOW)
    assert core.switches[1].installed == before
    send.refuse.clear()
    core.port_status(1, 3, False, NOW)  # the next view is diffed against what is installed
    wanted = decide.service_flows(config, core.cluster.view)
    assert send.sent[-1] == (1, decide.update_batch(before, wanted))
    assert core.switches[1].installed == wanted


def test_a_refused_convergence_installs_nothing(core, send):
    core.switch_connected(1, "1.3", LOG, NOW)
    send.refuse.add(1)
    assert core.tables_read(1, Tables(), NOW) is False
    assert core.switches[1].installed is None


def test_port_status_counts_and_moves_the_primary(core, config, send):
    connect(core, 1)
    core.set_ports(1, ALL_UP, NOW)
    assert core.port_status(1, 1, False, NOW) == view(("lb2", "lb3"), "lb2", 2)
    assert core.port_status(1, 1, False, NOW) is None  # nothing changed
    assert core.counters["port_status"] == 2
    assert any(isinstance(m, FlowDelete) for m in send.sent[-1][1])
    assert core.switches[1].ports == {1: False, 2: True, 3: True}


def test_events_of_an_unknown_switch_change_nothing(core, send):
    assert core.set_ports(9, ALL_UP, NOW) is None
    assert core.port_status(9, 1, True, NOW) is None
    assert core.switch_gone(9, NOW) is None
    core.packet_in(9, b"", 1)
    assert (send.sent, core.cluster.view.epoch, dict(core.counters)) == ([], 0, {})


def test_a_service_switch_gone_takes_its_ports_with_it(core):
    connect(core, 1)
    core.set_ports(1, ALL_UP, NOW)
    assert core.switch_gone(1, NOW) == view((), None, 2)
    assert core.seen == {1: (False, "1.3")} and core.switches == {}


def test_an_arp_request_for_the_vip_is_answered_on_the_service_switch(core, send):
    connect(core, 1)
    request = bytes(Ether(src="00:00:00:00:00:31", dst="ff:ff:ff:ff:ff:ff")
                    / ARP(op=1, hwsrc="00:00:00:00:00:31", psrc="10.0.0.31", pdst="10.0.0.100"))
    core.packet_in(1, request, 21)
    core.packet_in(1, b"\x00" * 20, 21)  # not ARP: counted, not answered
    (dpid, (reply,)), = send.sent[2:]
    assert dpid == 1 and isinstance(reply, PacketOutSpec) and reply.out_port == 21
    assert (core.counters["packet_in"], core.counters["arp_reply"]) == (2, 1)


# --- agents and the operator ---------------------------------------------------------------------

def beat(seq=1, **kwargs):
    return Heartbeat(seq=seq, service_ok=True, counters={}, body={}, **kwargs)


def test_a_heartbeat_records_the_agent_and_its_address(core):
    core.set_ports(1, ALL_UP, NOW)  # no switch connected: the cluster still learns nothing
    assert core.heartbeat("lb2", beat(), "10.254.0.12", NOW) == (None, [])
    assert core.counters["heartbeat"] == 1 and core.agent_addresses == {"lb2": "10.254.0.12"}
    assert core.cluster.health["lb2"].heartbeats == 1


def test_an_unauthenticated_heartbeat_is_counted_and_changes_nothing(raw):
    raw.update(replica_key=[f"lb1 {'01' * 16}"])
    core = Core(build_config(raw), Recorder())
    with pytest.raises(AuthError):
        core.heartbeat("lb1", beat(), "10.254.0.11", NOW)
    assert core.counters["heartbeat_unauthenticated"] == 1 and core.counters["heartbeat"] == 0
    assert core.agent_addresses == {} and core.cluster.health["lb1"].heartbeats == 0


def test_readmitting_a_replica_that_is_not_byzantine_is_refused(core):
    connect(core, 1)
    core.set_ports(1, ALL_UP, NOW)
    with pytest.raises(NotByzantine, match=r"^lb3 is not byzantine \(state up\)$"):
        core.readmit("lb3", NOW)
    core.cluster.mark_byzantine("lb3", NOW, "test")
    assert core.readmit("lb3", NOW + 1) == view(("lb1", "lb2", "lb3"), "lb1", 1)
    assert core.cluster.state("lb3") == "up"


# --- time ----------------------------------------------------------------------------------------

def test_tick_expires_a_silent_replica(default_config, send):
    core = Core(dataclasses.replace(default_config, startup_grace=0.0), send)
    connect(core, 1)
    core.set_ports(1, ALL_UP, NOW)
    for name in ("lb1", "lb2", "lb3"):
        core.heartbeat(name, beat(), None, NOW)
    assert core.cluster.view.primary == "lb1"
    assert core.next_deadline(NOW) == pytest.approx(NOW + 0.15)
    assert core.tick(NOW + 0.1) is None
    for name in ("lb2", "lb3"):
        core.heartbeat(name, beat(2), None, NOW + 0.1)
    assert core.tick(NOW + 0.2) == view(("lb2", "lb3"), "lb2", 2)
    assert core.cluster.health["lb1"].down_reason == "heartbeat silence"
