"""Tests for sbft_ryu.ofp: both translators build Ryu messages that serialise and say what the
model says. Messages are serialised against a null datapath (no switch, no socket)."""

import os

import pytest
from ryu.lib import addrconv
from ryu.ofproto import ofproto_parser
from ryu.ofproto import ofproto_v1_0 as ofp10
from ryu.ofproto import ofproto_v1_0_parser as parser10
from ryu.ofproto import ofproto_v1_3 as ofp13
from ryu.ofproto import ofproto_v1_3_parser as parser13

from sbft_ryu import decide, flowfile, model
from sbft_ryu.cluster import ClusterView
from sbft_ryu.model import (ETH_TYPE_ARP, ETH_TYPE_IP, EXACT_MASK, Barrier, EnablePacketIn,
                            FlowDelete, FlowSpec, Match, Mirror, MirrorBucket, Output,
                            PacketOutSpec, RequestPorts, SetDlDst, SetDlSrc,
                            SetVlanVid, StripVlan)
from sbft_ryu.ofp import SUPPORTED_VERSIONS, TranslationError, make_translator, v10, v13

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THESIS_FLOWS = flowfile.load_flows_file(os.path.join(REPO, "flows", "hp-vlan7.flows"))
V10, V13 = ofp10.OFP_VERSION, ofp13.OFP_VERSION
PROTOCOLS = {V10: (ofp10, parser10), V13: (ofp13, parser13)}
MIRROR = Mirror(1, (MirrorBucket(1, "00:00:00:00:01:01"), MirrorBucket(2, "00:00:00:00:01:02")))
MIRROR_FLOW = FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_proto=6, nw_dst=("10.0.0.100", EXACT_MASK),
                             tp_dst=5555), (MIRROR,), priority=40015)
ALL_VIEW = ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)


class NullDatapath:
    def __init__(self, ofproto, parser):
        self.ofproto = ofproto
        self.ofproto_parser = parser
        self.id = 1
        self.xid = 0

    def set_xid(self, msg):
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid


def serialise(version, msgs):
    """Serialise every message as the app's send would; check the OpenFlow header."""
    ofp, parser = PROTOCOLS[version]
    datapath = NullDatapath(ofp, parser)
    for msg in msgs:
        msg.datapath = datapath
        datapath.set_xid(msg)
        msg.serialize()
        buf = bytes(msg.buf)
        assert len(buf) >= ofp.OFP_HEADER_SIZE
        if not isinstance(msg, parser.OFPBarrierRequest):
            assert len(buf) > ofp.OFP_HEADER_SIZE
        assert buf[0] == ofp.OFP_VERSION
        assert int.from_bytes(buf[2:4], "big") == len(buf)
    return msgs


def translate(version, *messages, translator=None):
    translator = translator or make_translator(version)
    return serialise(version, translator.translate(messages))


def one(version, message):
    msgs = translate(version, message)
    assert len(msgs) == 1
    return msgs[0]


def reparse13(msg):
    """Parse a serialised OF1.3 message back with Ryu's own parser."""
    buf = bytes(msg.buf)
    datapath = NullDatapath(ofp13, parser13)
    return ofproto_parser.msg(datapath, V13, buf[1], len(buf), msg.xid, buf)


def match10_from_wire(msg):
    return parser10.OFPMatch.parse(bytes(msg.buf), ofp10.OFP_HEADER_SIZE)


def apply_actions13(msg):
    (instruction,) = msg.instructions
    assert instruction.type == ofp13.OFPIT_APPLY_ACTIONS
    return instruction.actions


def mac_bin(text):
    return addrconv.mac.text_to_bin(text)


# --- the registry ---------------------------------------------------------------------------


def test_make_translator_by_version():
    assert SUPPORTED_VERSIONS == (V10, V13)
    assert isinstance(make_translator(V10), v10.Translator)
    assert isinstance(make_translator(V13), v13.Translator)
    assert make_translator(V13) is not make_translator(V13)  # one per connection


def test_make_translator_rejects_other_versions():
    with pytest.raises(TranslationError, match=r"^unsupported OpenFlow version 0x05$"):
        make_translator(0x05)


@pytest.mark.parametrize("version", [V10, V13])
def test_unknown_message_is_a_translation_error(version):
    with pytest.raises(TranslationError, match="cannot translate"):
        make_translator(version).translate([object()])


# --- everything serialises ------------------------------------------------------------------


@pytest.mark.parametrize("version", [V10, V13])
def test_every_message_type_serialises(version, default_config):
    messages = [
        EnablePacketIn(), RequestPorts(),
        *decide.intended_flows(default_config, ALL_VIEW), Barrier(),
        *THESIS_FLOWS,
        FlowDelete(Match(in_port=1, dl_type=ETH_TYPE_IP, nw_src=("10.0.0.100", EXACT_MASK)),
                   40020),
        PacketOutSpec(b"\xff" * 60, 3),
        PacketOutSpec(b"\xff" * 60, "IN_PORT", in_port=4),
        FlowSpec(Match(dl_src="00:00:00:00:00:01", dl_vlan=7),
                 (SetVlanVid(8), StripVlan(), SetDlSrc("00:00:00:00:00:02"),
                  SetDlDst("00:00:00:00:00:03"), Output("FLOOD")),
                 idle_timeout=10, hard_timeout=20, cookie=7),
    ]
    msgs = translate(version, *messages)
    names = {type(msg).__name__ for msg in msgs}
    assert {"OFPFlowMod", "OFPBarrierRequest", "OFPSetConfig", "OFPPacketOut"} <= names
    if version == V13:
        assert {"OFPGroupMod", "OFPPortDescStatsRequest"} <= names


# --- the thesis flows -----------------------------------------------------------------------


def test_thesis_flows_in_openflow_13():
    mods = translate(V13, *THESIS_FLOWS)
    assert [type(m) for m in mods] == [parser13.OFPFlowMod] * 3
    for mod in mods:
        assert (mod.command, mod.priority, mod.cookie, mod.idle_timeout, mod.hard_timeout) == (
            ofp13.OFPFC_ADD, 32768, 0, 0, 0)
    wire = [reparse13(mod) for mod in mods]
    assert wire[0].match.to_jsondict() == mods[0].match.to_jsondict()
    assert [dict(w.match.items()) for w in wire] == [
        {"eth_type": ETH_TYPE_IP, "ipv4_dst": "192.168.7.111"},
        {"eth_type": ETH_TYPE_IP, "ipv4_dst": "192.168.7.103"},
        {"eth_type": ETH_TYPE_ARP},
    ]
    outputs = [[(a.port, a.max_len) for a in apply_actions13(w)] for w in wire]
    assert outputs == [[(11, ofp13.OFPCML_NO_BUFFER)], [(3, ofp13.OFPCML_NO_BUFFER)],
                       [(ofp13.OFPP_NORMAL, ofp13.OFPCML_NO_BUFFER)]]


def test_thesis_flows_in_openflow_10():
    mods = translate(V10, *THESIS_FLOWS)
    assert [type(m) for m in mods] == [parser10.OFPFlowMod] * 3
    exact_ip = ofp10.OFPFW_ALL & ~(ofp10.OFPFW_DL_TYPE | ofp10.OFPFW_NW_DST_MASK)
    assert [m.match.wildcards for m in mods] == [
        exact_ip, exact_ip, ofp10.OFPFW_ALL & ~ofp10.OFPFW_DL_TYPE]
    for mod, address in zip(mods, ("192.168.7.111", "192.168.7.103")):
        wire = match10_from_wire(mod)
        assert (wire["dl_type"], wire["nw_dst"], wire["nw_dst_mask"]) == (
            ETH_TYPE_IP, address, 32)
        assert wire.wildcards == exact_ip
    assert match10_from_wire(mods[2])["dl_type"] == ETH_TYPE_ARP
    assert [[(type(a), a.port) for a in m.actions] for m in mods] == [
        [(parser10.OFPActionOutput, 11)], [(parser10.OFPActionOutput, 3)],
        [(parser10.OFPActionOutput, ofp10.OFPP_NORMAL)]]
    for mod in mods:
        assert (mod.command, mod.priority, mod.cookie) == (ofp10.OFPFC_ADD, 32768, 0)


# --- mirror ---------------------------------------------------------------------------------


def test_mirror_in_13_adds_a_group_before_the_flow():
    group, mod = translate(V13, MIRROR_FLOW)
    assert isinstance(group, parser13.OFPGroupMod)
    assert (group.command, group.type, group.group_id) == (
        ofp13.OFPGC_ADD, ofp13.OFPGT_ALL, 1)
    buckets = [[(type(a).__name__, getattr(a, "key", None), getattr(a, "value", None),
                 getattr(a, "port", None)) for a in bucket.actions] for bucket in group.buckets]
    assert buckets == [
        [("OFPActionSetField", "eth_dst", "00:00:00:00:01:01", None),
         ("OFPActionOutput", None, None, 1)],
        [("OFPActionSetField", "eth_dst", "00:00:00:00:01:02", None),
         ("OFPActionOutput", None, None, 2)],
    ]
    (action,) = apply_actions13(reparse13(mod))
    assert isinstance(action, parser13.OFPActionGroup) and action.group_id == 1
    assert dict(reparse13(mod).match.items()) == {
        "eth_type": ETH_TYPE_IP, "ip_proto": 6, "ipv4_dst": "10.0.0.100", "tcp_dst": 5555}


def test_mirror_in_13_modifies_an_existing_group():
    translator = make_translator(V13)
    first = translate(V13, MIRROR_FLOW, translator=translator)[0]
    second = translate(V13, MIRROR_FLOW, translator=translator)[0]
    assert (first.command, second.command) == (ofp13.OFPGC_ADD, ofp13.OFPGC_MODIFY)


def test_mirror_without_members_in_13_is_an_empty_group():
    flow = FlowSpec(MIRROR_FLOW.match, (Mirror(1, ()),))
    group, mod = translate(V13, flow)
    assert group.buckets == []
    assert isinstance(apply_actions13(mod)[0], parser13.OFPActionGroup)


def test_failed_translation_does_not_remember_groups():
    translator = make_translator(V13)
    broken = FlowSpec(Match(dl_type=ETH_TYPE_IP, tp_dst=80), (Output(1),))  # no nw_proto
    with pytest.raises(TranslationError):
        translator.translate([MIRROR_FLOW, broken])
    group = translator.translate([MIRROR_FLOW])[0]
    assert group.command == ofp13.OFPGC_ADD


def test_mirror_in_10_is_set_dst_and_output_pairs():
    mod = one(V10, MIRROR_FLOW)
    assert [(type(a), getattr(a, "dl_addr", None), getattr(a, "port", None))
            for a in mod.actions] == [
        (parser10.OFPActionSetDlDst, mac_bin("00:00:00:00:01:01"), None),
        (parser10.OFPActionOutput, None, 1),
        (parser10.OFPActionSetDlDst, mac_bin("00:00:00:00:01:02"), None),
        (parser10.OFPActionOutput, None, 2),
    ]


def test_service_flows_translate_for_both_versions(default_config):
    flows = decide.service_flows(default_config, ALL_VIEW)
    assert len(translate(V10, *flows)) == len(flows)
    assert len(translate(V13, *flows)) == len(flows) + 1  # the group


# --- match fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("proto, field", [(6, "tcp_dst"), (17, "udp_dst")])
def test_tp_dst_becomes_tcp_or_udp_dst_in_13(proto, field):
    mod = one(V13, FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_proto=proto, tp_src=1000,
                                  tp_dst=5555), ()))
    src = field.replace("dst", "src")
    assert dict(reparse13(mod).match.items()) == {
        "eth_type": ETH_TYPE_IP, "ip_proto": proto, src: 1000, field: 5555}
    assert mod.instructions == []  # no actions: drop


def test_tp_dst_without_tcp_or_udp_is_rejected_in_13():
    with pytest.raises(TranslationError, match="tp_src/tp_dst need nw_proto tcp or udp"):
        make_translator(V13).translate([FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_proto=1,
                                                       tp_dst=1), ())])


def test_tp_dst_in_10():
    mod = one(V10, FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_proto=6, tp_dst=5555), ()))
    wire = match10_from_wire(mod)
    assert (wire["nw_proto"], wire["tp_dst"]) == (6, 5555)
    assert mod.actions == []


ARP_MATCH = Match(dl_type=ETH_TYPE_ARP, arp_op=1, arp_spa=("10.0.0.31", EXACT_MASK),
                  arp_tpa=("10.0.0.100", EXACT_MASK))


def test_arp_fields_in_13():
    mod = one(V13, FlowSpec(ARP_MATCH, (Output("CONTROLLER"),)))
    assert dict(reparse13(mod).match.items()) == {
        "eth_type": ETH_TYPE_ARP, "arp_op": 1, "arp_spa": "10.0.0.31", "arp_tpa": "10.0.0.100"}


def test_arp_fields_in_10_use_nw_fields():
    wire = match10_from_wire(one(V10, FlowSpec(ARP_MATCH, (Output("CONTROLLER"),))))
    assert (wire["dl_type"], wire["nw_proto"], wire["nw_src"], wire["nw_dst"]) == (
        ETH_TYPE_ARP, 1, "10.0.0.31", "10.0.0.100")
    assert (wire["nw_src_mask"], wire["nw_dst_mask"]) == (32, 32)


NON_CIDR = Match(dl_type=ETH_TYPE_IP, nw_src=("10.0.0.0", "255.0.255.0"))


def test_non_cidr_mask_is_rejected_in_10():
    with pytest.raises(TranslationError) as info:
        make_translator(V10).translate([FlowSpec(NON_CIDR, ())])
    assert str(info.value) == "nw_src mask 255.0.255.0 is not a CIDR prefix (OpenFlow 1.0)"


def test_non_cidr_mask_works_in_13():
    mod = one(V13, FlowSpec(NON_CIDR, ()))
    assert mod.match["ipv4_src"] == ("10.0.0.0", "255.0.255.0")
    assert reparse13(mod).match["ipv4_src"] == ("10.0.0.0", "255.0.255.0")


@pytest.mark.parametrize("mask, length", [("255.255.255.0", 24), ("255.0.0.0", 8),
                                          ("0.0.0.0", 0), (EXACT_MASK, 32)])
def test_cidr_mask_becomes_prefix_length_in_10(mask, length):
    mod = one(V10, FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_dst=("10.0.0.0", mask)), ()))
    assert mod.match["nw_dst_mask"] == length
    assert match10_from_wire(mod)["nw_dst_mask"] == length


def test_cidr_mask_in_13_is_a_masked_field():
    mod = one(V13, FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_dst=("10.0.0.0", "255.255.255.0")),
                            ()))
    assert reparse13(mod).match["ipv4_dst"] == ("10.0.0.0", "255.255.255.0")


@pytest.mark.parametrize("dl_vlan, vlan_vid", [(7, ofp13.OFPVID_PRESENT | 7),
                                               (0xFFFF, ofp13.OFPVID_NONE)])
def test_dl_vlan_in_13(dl_vlan, vlan_vid):
    mod = one(V13, FlowSpec(Match(dl_vlan=dl_vlan), ()))
    assert reparse13(mod).match["vlan_vid"] == vlan_vid


def test_l2_fields_in_both_versions():
    spec = FlowSpec(Match(in_port=5, dl_src="00:00:00:00:00:01", dl_dst="00:00:00:00:00:02"), ())
    assert dict(reparse13(one(V13, spec)).match.items()) == {
        "in_port": 5, "eth_src": "00:00:00:00:00:01", "eth_dst": "00:00:00:00:00:02"}
    wire = match10_from_wire(one(V10, spec))
    assert (wire["in_port"], wire["dl_src"], wire["dl_dst"]) == (
        5, "00:00:00:00:00:01", "00:00:00:00:00:02")


def test_port_beyond_16_bits_is_rejected_in_10():
    with pytest.raises(TranslationError, match="16-bit"):
        make_translator(V10).translate([FlowSpec(Match(), (Output(0xFF01),))])


# --- actions --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", model.RESERVED_PORTS)
def test_reserved_ports(name):
    spec = FlowSpec(Match(), (Output(name),))
    (action13,) = apply_actions13(one(V13, spec))
    assert action13.port == getattr(ofp13, f"OFPP_{name}")
    (action10,) = one(V10, spec).actions
    assert action10.port == getattr(ofp10, f"OFPP_{name}")


def test_set_dl_src_and_dst():
    spec = FlowSpec(Match(), (SetDlSrc("02:00:0a:00:00:64"), SetDlDst("00:00:00:00:01:01")))
    actions13 = apply_actions13(reparse13(one(V13, spec)))
    assert [(a.key, a.value) for a in actions13] == [("eth_src", "02:00:0a:00:00:64"),
                                                     ("eth_dst", "00:00:00:00:01:01")]
    actions10 = one(V10, spec).actions
    assert [(type(a), a.dl_addr) for a in actions10] == [
        (parser10.OFPActionSetDlSrc, mac_bin("02:00:0a:00:00:64")),
        (parser10.OFPActionSetDlDst, mac_bin("00:00:00:00:01:01"))]


@pytest.mark.parametrize("match, pushes", [(Match(), True), (Match(dl_vlan=0xFFFF), True),
                                           (Match(dl_vlan=7), False)])
def test_set_vlan_vid_in_13_pushes_a_tag_unless_one_is_matched(match, pushes):
    actions = apply_actions13(one(V13, FlowSpec(match, (SetVlanVid(8),))))
    *push, set_vid = actions
    assert (set_vid.key, set_vid.value) == ("vlan_vid", ofp13.OFPVID_PRESENT | 8)
    if pushes:
        assert [(type(a), a.ethertype) for a in push] == [(parser13.OFPActionPushVlan, 0x8100)]
    else:
        assert push == []


def test_set_vlan_vid_in_10():
    (action,) = one(V10, FlowSpec(Match(), (SetVlanVid(8),))).actions
    assert isinstance(action, parser10.OFPActionVlanVid) and action.vlan_vid == 8


def test_strip_vlan():
    spec = FlowSpec(Match(dl_vlan=7), (StripVlan(),))
    assert [type(a) for a in apply_actions13(one(V13, spec))] == [parser13.OFPActionPopVlan]
    assert [type(a) for a in one(V10, spec).actions] == [parser10.OFPActionStripVlan]


def test_flow_attributes_are_kept():
    spec = FlowSpec(Match(), (), priority=7, cookie=9, idle_timeout=10, hard_timeout=20)
    for mod in (one(V10, spec), one(V13, spec)):
        assert (mod.priority, mod.cookie, mod.idle_timeout, mod.hard_timeout) == (7, 9, 10, 20)


# --- other messages -------------------------------------------------------------------------


def test_enable_packet_in():
    msg13 = one(V13, EnablePacketIn())
    assert isinstance(msg13, parser13.OFPSetConfig)
    assert (msg13.flags, msg13.miss_send_len) == (ofp13.OFPC_FRAG_NORMAL,
                                                  ofp13.OFPCML_NO_BUFFER)
    assert ofp13.OFPCML_NO_BUFFER == 0xFFFF
    msg10 = one(V10, EnablePacketIn())
    assert isinstance(msg10, parser10.OFPSetConfig)
    assert (msg10.flags, msg10.miss_send_len) == (ofp10.OFPC_FRAG_NORMAL, 0xFFFF)


def test_request_ports():
    assert isinstance(one(V13, RequestPorts()), parser13.OFPPortDescStatsRequest)
    assert make_translator(V10).translate([RequestPorts()]) == []


def test_barrier():
    assert isinstance(one(V13, Barrier()), parser13.OFPBarrierRequest)
    assert isinstance(one(V10, Barrier()), parser10.OFPBarrierRequest)


DELETE = FlowDelete(Match(in_port=1, dl_type=ETH_TYPE_IP, nw_src=("10.0.0.100", EXACT_MASK)),
                    40020)


def test_flow_delete_is_strict_with_priority_in_13():
    mod = one(V13, DELETE)
    assert (mod.command, mod.priority, mod.out_port, mod.out_group) == (
        ofp13.OFPFC_DELETE_STRICT, 40020, ofp13.OFPP_ANY, ofp13.OFPG_ANY)
    assert dict(reparse13(mod).match.items()) == {
        "in_port": 1, "eth_type": ETH_TYPE_IP, "ipv4_src": "10.0.0.100"}


def test_flow_delete_is_strict_with_priority_in_10():
    mod = one(V10, DELETE)
    assert (mod.command, mod.priority, mod.out_port) == (
        ofp10.OFPFC_DELETE_STRICT, 40020, ofp10.OFPP_NONE)
    wire = match10_from_wire(mod)
    assert (wire["in_port"], wire["nw_src"]) == (1, "10.0.0.100")


FRAME = bytes(range(42))


@pytest.mark.parametrize("in_port, in_port13, in_port10", [
    (None, ofp13.OFPP_CONTROLLER, ofp10.OFPP_NONE), (4, 4, 4)])
def test_packet_out(in_port, in_port13, in_port10):
    spec = PacketOutSpec(FRAME, 21, in_port=in_port)
    for msg, ofp, expected_in in ((one(V13, spec), ofp13, in_port13),
                                  (one(V10, spec), ofp10, in_port10)):
        assert msg.data == FRAME and bytes(msg.buf).endswith(FRAME)
        assert msg.in_port == expected_in
        assert msg.buffer_id == 0xFFFFFFFF
        assert [(type(a).__name__, a.port) for a in msg.actions] == [("OFPActionOutput", 21)]
