"""Tests for sbft_ryu.decide: service flows, intended flows, update batches and ARP replies."""

import dataclasses

import pytest
from scapy.all import ARP, IP, Ether, UDP

from sbft_ryu import decide
from sbft_ryu.cluster import ClusterView
from sbft_ryu.model import (ETH_TYPE_ARP, ETH_TYPE_IP, EXACT_MASK, Barrier, FlowDelete,
                            FlowSpec, Match, Mirror, MirrorBucket, Output, PacketOutSpec,
                            SetDlDst, SetDlSrc)

P = 40000  # service_priority of the defaults
VIP = ("10.0.0.100", EXACT_MASK)
VMAC = "02:00:0a:00:00:64"
MAC = {"lb1": "00:00:00:00:01:01", "lb2": "00:00:00:00:01:02", "lb3": "00:00:00:00:01:03"}
PORT = {"lb1": 1, "lb2": 2, "lb3": 3}
ALL = ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)
CLIENT_MAC, CLIENT_IP = "00:00:00:00:03:01", "10.0.0.31"


def flow(match, actions, offset):
    return FlowSpec(match, tuple(actions), P + offset, cookie=decide.SERVICE_COOKIE)


def mirror(*names):
    return Mirror(decide.MIRROR_GROUP_ID,
                  tuple(MirrorBucket(port=PORT[n], mac=MAC[n]) for n in names))


def by_priority(flows):
    return {f.priority - P: f for f in flows}


def apply(table, batch):
    """A model switch: a flow table keyed like OpenFlow's strict match."""
    for message in batch:
        if isinstance(message, FlowDelete):
            table.pop((message.priority, message.match), None)
        elif isinstance(message, FlowSpec):
            table[message.key] = message
    return table


# --- service_flows --------------------------------------------------------------------------


def test_service_flows_for_the_defaults(default_config):
    flows = decide.service_flows(default_config, ALL)
    assert by_priority(flows) == {
        31: flow(Match(dl_type=ETH_TYPE_ARP, arp_spa=VIP), (), 31),
        30: flow(Match(dl_type=ETH_TYPE_ARP, arp_op=1, arp_tpa=VIP), [Output("CONTROLLER")], 30),
        20: flow(Match(in_port=1, dl_type=ETH_TYPE_IP, nw_src=VIP),
                 [SetDlSrc(VMAC), Output("NORMAL")], 20),
        15: flow(Match(dl_type=ETH_TYPE_IP, nw_proto=6, nw_dst=VIP, tp_dst=5555),
                 [mirror("lb1", "lb2", "lb3")], 15),
        10: flow(Match(dl_type=ETH_TYPE_IP, nw_src=VIP), (), 10),
        5: flow(Match(dl_type=ETH_TYPE_IP, nw_dst=VIP), [SetDlDst(MAC["lb1"]), Output(1)], 5),
    }
    assert len(flows) == 6
    assert all(f.cookie == decide.SERVICE_COOKIE for f in flows)
    assert all(f.idle_timeout == 0 and f.hard_timeout == 0 for f in flows)


def test_service_flows_follow_service_priority(default_config):
    config = dataclasses.replace(default_config, service_priority=100)
    assert sorted(f.priority for f in decide.service_flows(config, ALL)) == [
        105, 110, 115, 120, 130, 131]


def test_mirror_buckets_follow_members_in_configured_order(default_config):
    view = ClusterView(members=("lb1", "lb3"), primary="lb3", epoch=2)
    flows = by_priority(decide.service_flows(default_config, view))
    assert flows[15].actions == (Mirror(1, (MirrorBucket(1, MAC["lb1"]),
                                            MirrorBucket(3, MAC["lb3"]))),)
    assert flows[20].match.in_port == 3
    assert flows[5].actions == (SetDlDst(MAC["lb3"]), Output(3))


def test_no_primary_means_no_allow_flow_and_no_other_ip_flow(default_config):
    flows = by_priority(decide.service_flows(default_config, ClusterView((), None, 2)))
    assert sorted(flows) == [10, 15, 30, 31]
    assert flows[15].actions == (Mirror(1, ()),)


def test_no_replicas_configured_means_no_service_flows(default_config):
    config = dataclasses.replace(default_config, replicas=())
    assert decide.service_flows(config, ClusterView((), None, 0)) == ()


# --- intended_flows -------------------------------------------------------------------------


def test_intended_flows_on_the_service_switch(default_config):
    assert decide.intended_flows(default_config, ALL) == (
        *default_config.flows, *decide.service_flows(default_config, ALL))


def test_intended_flows_without_service_are_the_flows_file_only(default_config):
    assert decide.intended_flows(default_config, ALL, service=False) == default_config.flows


# --- update_batch ---------------------------------------------------------------------------


def test_update_batch_identical_is_empty(default_config):
    flows = decide.service_flows(default_config, ALL)
    assert decide.update_batch(flows, flows) == []


def test_update_batch_changed_primary(default_config):
    old = decide.service_flows(default_config, ALL)
    new_view = ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=2)
    new = decide.service_flows(default_config, new_view)
    batch = decide.update_batch(old, new)
    old_allow = by_priority(old)[20]
    assert batch[0] == FlowDelete(match=old_allow.match, priority=P + 20)
    assert batch[1] == Barrier()
    assert batch[-1] == Barrier()
    adds = batch[2:-1]
    assert set(adds) == {by_priority(new)[offset] for offset in (20, 15, 5)}
    assert all(isinstance(message, FlowSpec) for message in adds)


def test_update_batch_members_only_changes_the_mirror_in_place(default_config):
    old = decide.service_flows(default_config, ALL)
    new = decide.service_flows(default_config, ClusterView(("lb1", "lb2"), "lb1", 1))
    assert decide.update_batch(old, new) == [by_priority(new)[15], Barrier()]


def test_update_batch_to_nothing_deletes_everything(default_config):
    old = decide.service_flows(default_config, ALL)
    batch = decide.update_batch(old, ())
    assert batch == [*(FlowDelete(f.match, f.priority) for f in old), Barrier()]


def test_update_batch_converges_and_is_idempotent(default_config):
    views = [ALL, ClusterView(("lb2", "lb3"), "lb2", 2), ClusterView((), None, 3),
             ClusterView(("lb3",), "lb3", 4), ALL]
    table = {}
    installed = ()
    for view in views:
        wanted = decide.service_flows(default_config, view)
        batch = decide.update_batch(installed, wanted)
        apply(table, batch)
        once = dict(table)
        apply(table, batch)  # the same batch again (a resend) changes nothing
        assert table == once
        assert table == {f.key: f for f in wanted}
        installed = wanted


# --- arp_reply ------------------------------------------------------------------------------


def arp_request(pdst="10.0.0.100", op=1):
    return bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=op, hwsrc=CLIENT_MAC, psrc=CLIENT_IP, pdst=pdst))


def test_arp_request_for_the_vip_gets_a_reply(default_config):
    reply = decide.arp_reply(default_config, arp_request(), 21)
    assert isinstance(reply, PacketOutSpec)
    assert (reply.out_port, reply.in_port) == (21, None)
    frame = Ether(reply.data)
    assert (frame.src, frame.dst, frame.type) == (VMAC, CLIENT_MAC, ETH_TYPE_ARP)
    arp = frame[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2, VMAC, "10.0.0.100", CLIENT_MAC, CLIENT_IP)
    assert len(reply.data) == 42


def test_arp_reply_ignores_trailing_padding(default_config):
    frame = arp_request() + b"\x00" * 18  # padded to the 60-byte Ethernet minimum
    assert decide.arp_reply(default_config, frame, 21) is not None


@pytest.mark.parametrize("frame, in_port", [
    (arp_request(pdst="10.0.0.11"), 21),
    (arp_request(op=2), 21),
    (bytes(Ether(src=CLIENT_MAC) / IP(src=CLIENT_IP, dst="10.0.0.100") / UDP() / (b"x" * 20)),
     21),
    (arp_request()[:41], 21),
    (b"", 21),
    (arp_request(), None),
], ids=["other-ip", "arp-reply", "not-arp", "truncated", "empty", "no-in-port"])
def test_arp_reply_is_none(default_config, frame, in_port):
    assert decide.arp_reply(default_config, frame, in_port) is None


def test_arp_reply_is_none_for_non_ethernet_arp(default_config):
    frame = bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
                  / ARP(hwtype=6, op=1, hwsrc=CLIENT_MAC, psrc=CLIENT_IP, pdst="10.0.0.100"))
    assert decide.arp_reply(default_config, frame, 21) is None


# --- voting: the switch copies the primary's replies to the backups (the wire check) ----------


def wire_copy(*names):
    return Mirror(decide.WIRE_GROUP_ID,
                  tuple(MirrorBucket(port=PORT[n], mac=MAC[n]) for n in names))


def test_with_voting_the_primarys_replies_are_copied_to_every_backup(default_config):
    config = dataclasses.replace(default_config, mode="active", voting=True)
    flows = by_priority(decide.service_flows(config, ALL))
    assert flows[20] == flow(Match(in_port=1, dl_type=ETH_TYPE_IP, nw_src=VIP),
                             [SetDlSrc(VMAC), Output("NORMAL"), wire_copy("lb2", "lb3")], 20)
    assert decide.WIRE_GROUP_ID != decide.MIRROR_GROUP_ID
    others = by_priority(decide.service_flows(default_config, ALL))
    assert {k: v for k, v in flows.items() if k != 20} == {k: v for k, v in others.items()
                                                           if k != 20}


def test_the_wire_copy_follows_the_members(default_config):
    config = dataclasses.replace(default_config, mode="active", voting=True)
    view = ClusterView(members=("lb2", "lb3"), primary="lb3", epoch=4)
    reply = by_priority(decide.service_flows(config, view))[20]
    assert reply.actions[-1] == wire_copy("lb2")
    alone = ClusterView(members=("lb2",), primary="lb2", epoch=5)
    assert by_priority(decide.service_flows(config, alone))[20].actions == (
        SetDlSrc(VMAC), Output("NORMAL"))  # no backup: no copy


def test_in_active_mode_without_voting_the_backups_get_the_wire_copy_too(default_config):
    # they read the primary's ACK numbers: what the client was acknowledged (issue 10)
    config = dataclasses.replace(default_config, mode="active", voting=False)
    reply = by_priority(decide.service_flows(config, ALL))[20]
    assert reply.actions == (SetDlSrc(VMAC), Output("NORMAL"), wire_copy("lb2", "lb3"))


def test_in_passive_mode_nothing_is_copied(default_config):
    reply = by_priority(decide.service_flows(default_config, ALL))[20]
    assert reply.actions == (SetDlSrc(VMAC), Output("NORMAL"))
