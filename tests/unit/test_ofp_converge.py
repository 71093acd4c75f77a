"""Tests for reading a switch's tables and converging them (ofp/tables.py and both
translators): a switch that holds what it should gets nothing; otherwise only the difference,
stale entries deleted strictly, groups modified rather than added over."""

from types import SimpleNamespace

from ryu.ofproto import ofproto_v1_0 as ofp10
from ryu.ofproto import ofproto_v1_0_parser as parser10
from ryu.ofproto import ofproto_v1_3 as ofp13
from ryu.ofproto import ofproto_v1_3_parser as parser13

from sbft_ryu import decide
from sbft_ryu.cluster import ClusterView
from sbft_ryu.model import Converge, FlowSpec, Match, Output, ReadTables
from sbft_ryu.ofp import make_translator
from test_ofp import reparse13, serialise, translate

V10, V13 = ofp10.OFP_VERSION, ofp13.OFP_VERSION
ALL = ClusterView(("lb1", "lb2", "lb3"), "lb1", 1)
LB2 = ClusterView(("lb2", "lb3"), "lb2", 2)


def reply(body, more=False, flag=ofp13.OFPMPF_REPLY_MORE):
    return SimpleNamespace(body=body, flags=flag if more else 0)


def bucket_from_wire(bucket):
    buf = bytearray()
    bucket.serialize(buf, 0)
    return parser13.OFPBucket.parser(bytes(buf), 0)


def held13(flows):
    """What an OF1.3 switch reports after it got ``flows``: flow stats and group
    descriptions as parsed from the wire (through the translator and Ryu's parser)."""
    stats, groups = [], {}
    for msg in translate(V13, *flows):
        if isinstance(msg, parser13.OFPGroupMod):  # (Ryu cannot parse a group-mod back)
            groups[msg.group_id] = SimpleNamespace(group_id=msg.group_id, type=msg.type,
                                                   buckets=[bucket_from_wire(b)
                                                            for b in msg.buckets])
        else:
            parsed = reparse13(msg)
            stats.append(SimpleNamespace(table_id=parsed.table_id, priority=parsed.priority,
                                         match=parsed.match, cookie=parsed.cookie,
                                         idle_timeout=parsed.idle_timeout,
                                         hard_timeout=parsed.hard_timeout,
                                         instructions=parsed.instructions))
    return stats, list(groups.values())


def read13(translator, flows):
    requests = translator.translate([ReadTables()])
    assert [type(r) for r in requests] == [parser13.OFPFlowStatsRequest,
                                           parser13.OFPGroupDescStatsRequest]
    stats, groups = held13(flows)
    half = len(stats) // 2
    assert translator.tables_reply("flows", reply(stats[:half], more=True)) is None
    assert translator.tables_reply("flows", reply(stats[half:])) is None  # groups pending
    return translator.tables_reply("groups", reply(groups))


def converge13(config, held, wanted):
    translator = make_translator(V13)
    found = read13(translator, held)
    return serialise(V13, translator.translate([Converge(tuple(wanted), found)])), translator


def test_13_a_switch_holding_the_intended_flows_gets_nothing(default_config):
    flows = decide.intended_flows(default_config, ALL)
    sent, translator = converge13(default_config, flows, flows)
    assert sent == []
    # the group is known to exist: the next change modifies it
    update = translator.translate(decide.update_batch(
        decide.service_flows(default_config, ALL), decide.service_flows(default_config, LB2)))
    assert [m.command for m in update if isinstance(m, parser13.OFPGroupMod)] == [
        ofp13.OFPGC_MODIFY]


def test_13_only_the_difference_is_sent_and_the_group_is_modified(default_config):
    held = decide.intended_flows(default_config, ALL)
    wanted = decide.intended_flows(default_config, LB2)
    sent, _ = converge13(default_config, held, wanted)
    kinds = [(type(m).__name__, getattr(m, "command", None)) for m in sent]
    assert ("OFPGroupMod", ofp13.OFPGC_MODIFY) in kinds
    assert ("OFPGroupMod", ofp13.OFPGC_ADD) not in kinds
    adds = [m for m in sent if isinstance(m, parser13.OFPFlowMod)
            and m.command == ofp13.OFPFC_ADD]
    # the primary's reply flow (a new in_port: a new key) and the rest-of-IP flow (new
    # actions); the mirror flow still points at group 1, whose buckets the MODIFY changes
    assert sorted(m.priority for m in adds) == [40005, 40020]
    deletes = [m for m in sent if isinstance(m, parser13.OFPFlowMod)
               and m.command == ofp13.OFPFC_DELETE_STRICT]
    assert [m.priority for m in deletes] == [40020]  # the old primary's reply flow
    assert isinstance(sent[-1], parser13.OFPBarrierRequest)


def test_13_stale_entries_are_deleted_strictly_first_and_unused_groups_last(default_config):
    stray = FlowSpec(Match(in_port=9), (Output(1),), priority=7, cookie=0x77)
    held = (*decide.intended_flows(default_config, ALL), stray)
    no_replicas = decide.intended_flows(default_config, ALL, service=False)
    sent, _ = converge13(default_config, held, no_replicas)
    deletes = [m for m in sent if isinstance(m, parser13.OFPFlowMod)]
    assert all(m.command == ofp13.OFPFC_DELETE_STRICT for m in deletes)
    assert {m.priority for m in deletes} == {7} | {f.priority for f in decide.service_flows(
        default_config, ALL)}
    assert isinstance(sent[len(deletes)], parser13.OFPBarrierRequest)
    group_deletes = [m for m in sent if isinstance(m, parser13.OFPGroupMod)]
    assert [(m.command, m.group_id) for m in group_deletes] == [
        (ofp13.OFPGC_DELETE, decide.MIRROR_GROUP_ID)]
    assert sent.index(group_deletes[0]) > sent.index(deletes[-1])


def test_13_a_fresh_switch_gets_everything_with_groups_added(default_config):
    flows = decide.intended_flows(default_config, ALL)
    sent, _ = converge13(default_config, (), flows)
    groups = [m for m in sent if isinstance(m, parser13.OFPGroupMod)]
    assert [m.command for m in groups] == [ofp13.OFPGC_ADD]
    assert sent.index(groups[0]) < min(i for i, m in enumerate(sent)
                                       if isinstance(m, parser13.OFPFlowMod))
    assert len([m for m in sent if isinstance(m, parser13.OFPFlowMod)]) == len(flows)


def test_13_flows_file_entries_keep_their_cookies(default_config):
    own = FlowSpec(Match(in_port=5), (Output(6),), priority=100, cookie=0xABC)
    sent, _ = converge13(default_config, (), (own,))
    assert [m.cookie for m in sent if isinstance(m, parser13.OFPFlowMod)] == [0xABC]
    recookied = FlowSpec(own.match, own.actions, own.priority, cookie=0xDEF)
    sent, _ = converge13(default_config, (own,), (recookied,))
    (add,) = [m for m in sent if isinstance(m, parser13.OFPFlowMod)]
    assert (add.command, add.cookie) == (ofp13.OFPFC_ADD, 0xDEF)  # replaced in place


# --- OpenFlow 1.0 ----------------------------------------------------------------------------


def held10(flows):
    stats = []
    for msg in translate(V10, *flows):
        match_ = parser10.OFPMatch.parse(bytes(msg.buf), ofp10.OFP_HEADER_SIZE)
        # what OVS does to a 1.0 match: wildcarded fields may come back with other values
        match_.nw_tos = 0xFF if match_.wildcards & ofp10.OFPFW_NW_TOS else match_.nw_tos
        stats.append(SimpleNamespace(priority=msg.priority, match=match_, cookie=msg.cookie,
                                     idle_timeout=msg.idle_timeout,
                                     hard_timeout=msg.hard_timeout, actions=msg.actions,
                                     table_id=0))
    return stats


def converge10(held, wanted):
    translator = make_translator(V10)
    (request,) = translator.translate([ReadTables()])
    assert isinstance(request, parser10.OFPFlowStatsRequest)
    found = translator.tables_reply("flows", reply(held10(held),
                                                   flag=ofp10.OFPSF_REPLY_MORE))
    assert found is not None
    return serialise(V10, translator.translate([Converge(tuple(wanted), found)]))


def test_10_a_switch_holding_the_intended_flows_gets_nothing(default_config):
    flows = decide.intended_flows(default_config, ALL)
    assert converge10(flows, flows) == []


def test_10_stale_entries_go_with_strict_deletes(default_config):
    held = decide.intended_flows(default_config, ALL)
    wanted = decide.intended_flows(default_config, LB2)
    sent = converge10(held, wanted)
    flow_mods = [m for m in sent if isinstance(m, parser10.OFPFlowMod)]
    deletes = [m for m in flow_mods if m.command == ofp10.OFPFC_DELETE_STRICT]
    assert all(m.command in (ofp10.OFPFC_DELETE_STRICT, ofp10.OFPFC_ADD) for m in flow_mods)
    assert not any(m.command == ofp10.OFPFC_DELETE for m in flow_mods)  # never loose
    adds = [m for m in flow_mods if m.command == ofp10.OFPFC_ADD]
    assert 0 < len(adds) < len(wanted)
    assert deletes == [] or sent.index(deletes[-1]) < sent.index(adds[0])
    stray = FlowSpec(Match(in_port=9), (Output(1),), priority=7)
    sent = converge10((*held, stray), held)
    assert [(m.command, m.priority) for m in sent if isinstance(m, parser10.OFPFlowMod)] == [
        (ofp10.OFPFC_DELETE_STRICT, 7)]
