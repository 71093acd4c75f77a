"""Tests for sbft_ryu.flowfile: the ovs-ofctl flow syntax subset."""

import pytest

from sbft_ryu.flowfile import (
    ALIASES,
    FlowSyntaxError,
    load_flows_file,
    parse_flow,
    parse_flows,
)
from sbft_ryu.model import (
    DEFAULT_PRIORITY,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    EXACT_MASK,
    FlowSpec,
    Match,
    Output,
    SetDlDst,
    SetDlSrc,
    SetVlanVid,
    StripVlan,
)

THESIS_FLOWS = """\
ip,idle_timeout=0,nw_dst=192.168.7.111,actions=output:11
ip,idle_timeout=0,nw_dst=192.168.7.103,actions=output:3
arp,idle_timeout=0,actions=NORMAL
"""


def match_of(text):
    return parse_flow(text + ",actions=drop").match


def error_of(text, path="<string>", line=1):
    with pytest.raises(FlowSyntaxError) as info:
        parse_flow(text, path, line)
    return info.value


# --- the thesis's flows ---------------------------------------------------------------------


def test_thesis_flows_verbatim():
    assert parse_flows(THESIS_FLOWS, "thesis.flows") == (
        FlowSpec(
            Match(dl_type=0x0800, nw_dst=("192.168.7.111", "255.255.255.255")),
            (Output(11),),
            priority=32768,
        ),
        FlowSpec(
            Match(dl_type=0x0800, nw_dst=("192.168.7.103", "255.255.255.255")),
            (Output(3),),
            priority=32768,
        ),
        FlowSpec(Match(dl_type=0x0806), (Output("NORMAL"),), priority=32768),
    )


@pytest.mark.parametrize("line", THESIS_FLOWS.splitlines())
def test_each_thesis_line_alone(line):
    flow = parse_flow(line)
    assert flow.priority == DEFAULT_PRIORITY == 32768
    assert flow.idle_timeout == 0 and flow.hard_timeout == 0 and flow.cookie == 0
    assert flow == parse_flows(THESIS_FLOWS, "f")[THESIS_FLOWS.splitlines().index(line)]


def test_thesis_first_line_fields():
    flow = parse_flow("ip,idle_timeout=0,nw_dst=192.168.7.111,actions=output:11")
    assert flow.match.fields() == (
        ("dl_type", ETH_TYPE_IP),
        ("nw_dst", ("192.168.7.111", EXACT_MASK)),
    )
    assert flow.actions == (Output(11),)


# --- match fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ip", Match(dl_type=0x0800)),
        ("arp", Match(dl_type=0x0806)),
        ("tcp", Match(dl_type=0x0800, nw_proto=6)),
        ("udp", Match(dl_type=0x0800, nw_proto=17)),
        ("icmp", Match(dl_type=0x0800, nw_proto=1)),
        ("ip,tcp", Match(dl_type=0x0800, nw_proto=6)),
        ("tcp,nw_proto=6", Match(dl_type=0x0800, nw_proto=6)),
        ("dl_type=0x0800,ip", Match(dl_type=0x0800)),
        ("dl_type=0x86dd", Match(dl_type=0x86DD)),
        ("dl_type=2054", Match(dl_type=ETH_TYPE_ARP)),
        ("ip,nw_proto=0x11", Match(dl_type=0x0800, nw_proto=17)),
        ("in_port=1", Match(in_port=1)),
        ("in_port=0xffffff00", Match(in_port=0xFFFFFF00)),
        ("dl_vlan=0", Match(dl_vlan=0)),
        ("dl_vlan=4095", Match(dl_vlan=4095)),
        ("dl_vlan=0xfff", Match(dl_vlan=4095)),
        ("dl_vlan=0xffff", Match(dl_vlan=0xFFFF)),
        ("dl_vlan=65535", Match(dl_vlan=0xFFFF)),
        ("dl_src=AA:BB:CC:DD:EE:0F", Match(dl_src="aa:bb:cc:dd:ee:0f")),
        ("dl_dst=0:1:2:a:b:c", Match(dl_dst="00:01:02:0a:0b:0c")),
        ("tcp,tp_src=0,tp_dst=65535", Match(dl_type=0x0800, nw_proto=6, tp_src=0, tp_dst=65535)),
        ("udp,tp_dst=0x35", Match(dl_type=0x0800, nw_proto=17, tp_dst=53)),
        ("ip,nw_proto=6,tp_dst=80", Match(dl_type=0x0800, nw_proto=6, tp_dst=80)),
    ],
)
def test_match_fields(text, expected):
    assert match_of(text) == expected


def test_field_order_does_not_matter():
    expected = Match(dl_type=0x0800, nw_proto=6, nw_dst=("1.2.3.4", EXACT_MASK), tp_dst=80)
    assert match_of("nw_dst=1.2.3.4,ip") == Match(dl_type=0x0800, nw_dst=("1.2.3.4", EXACT_MASK))
    assert match_of("tp_dst=80,nw_dst=1.2.3.4,tcp") == expected
    assert match_of("tcp,tp_dst=80,nw_dst=1.2.3.4") == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("10.0.0.5", ("10.0.0.5", "255.255.255.255")),
        ("10.0.0.5/32", ("10.0.0.5", "255.255.255.255")),
        ("10.0.0.5/24", ("10.0.0.0", "255.255.255.0")),
        ("10.0.0.5/255.255.255.0", ("10.0.0.0", "255.255.255.0")),
        ("10.1.2.3/8", ("10.0.0.0", "255.0.0.0")),
        ("10.1.2.3/255.0.0.0", ("10.0.0.0", "255.0.0.0")),
        ("192.168.7.111/30", ("192.168.7.108", "255.255.255.252")),
        ("0.0.0.0/0", ("0.0.0.0", "0.0.0.0")),
        ("10.1.2.3/255.0.255.0", ("10.0.2.0", "255.0.255.0")),  # non-contiguous: allowed
    ],
)
def test_ipv4_masks_both_forms(value, expected):
    assert match_of(f"ip,nw_src={value}").nw_src == expected
    assert match_of(f"ip,nw_dst={value}").nw_dst == expected


def test_flow_attributes():
    flow = parse_flow(
        "priority=100,idle_timeout=30,hard_timeout=0x3c,cookie=0xdeadbeef,ip,actions=drop"
    )
    assert (flow.priority, flow.idle_timeout, flow.hard_timeout, flow.cookie) == (
        100,
        30,
        60,
        0xDEADBEEF,
    )
    assert flow.match == Match(dl_type=ETH_TYPE_IP)


@pytest.mark.parametrize(
    "text, field, value",
    [
        ("priority=0", "priority", 0),
        ("priority=65535", "priority", 65535),
        ("priority=0xffff", "priority", 65535),
        ("idle_timeout=65535", "idle_timeout", 65535),
        ("hard_timeout=0", "hard_timeout", 0),
        ("cookie=0", "cookie", 0),
        ("cookie=18446744073709551615", "cookie", 2**64 - 1),
        ("cookie=0xFFFFFFFFFFFFFFFF", "cookie", 2**64 - 1),
    ],
)
def test_flow_attribute_ranges(text, field, value):
    assert getattr(parse_flow(f"{text},actions=drop"), field) == value


def test_defaults():
    flow = parse_flow("actions=drop")
    assert flow == FlowSpec(Match(), (), DEFAULT_PRIORITY, 0, 0, 0)


# --- ARP ------------------------------------------------------------------------------------


def test_arp_maps_nw_fields_to_arp_fields():
    assert match_of("arp,nw_src=10.0.0.1,nw_dst=10.0.0.0/8,nw_proto=2") == Match(
        dl_type=ETH_TYPE_ARP,
        arp_spa=("10.0.0.1", EXACT_MASK),
        arp_tpa=("10.0.0.0", "255.0.0.0"),
        arp_op=2,
    )


def test_arp_mapping_is_order_independent_and_works_with_dl_type():
    expected = Match(dl_type=ETH_TYPE_ARP, arp_tpa=("10.0.0.7", EXACT_MASK), arp_op=1)
    assert match_of("nw_dst=10.0.0.7,nw_proto=1,arp") == expected
    assert match_of("nw_proto=1,dl_type=0x0806,nw_dst=10.0.0.7") == expected
    assert match_of("ip_dst=10.0.0.7,ip_proto=1,eth_type=0x806") == expected


def test_explicit_arp_fields():
    assert match_of("arp,arp_op=1,arp_spa=10.0.0.1,arp_tpa=10.0.0.2/255.255.255.0") == Match(
        dl_type=ETH_TYPE_ARP,
        arp_op=1,
        arp_spa=("10.0.0.1", EXACT_MASK),
        arp_tpa=("10.0.0.0", "255.255.255.0"),
    )


def test_ip_flows_keep_nw_fields():
    match = match_of("ip,nw_src=10.0.0.1,nw_proto=6")
    assert match.nw_src == ("10.0.0.1", EXACT_MASK) and match.nw_proto == 6
    assert match.arp_spa is None and match.arp_op is None


@pytest.mark.parametrize(
    "text, token",
    [
        ("arp,nw_src=10.0.0.1,arp_spa=10.0.0.1", "nw_src=10.0.0.1"),
        ("arp,arp_tpa=10.0.0.2,nw_dst=10.0.0.2", "nw_dst=10.0.0.2"),
        ("arp,arp_op=1,nw_proto=1", "nw_proto=1"),
    ],
)
def test_arp_field_given_twice(text, token):
    err = error_of(text + ",actions=drop")
    assert (err.token, err.reason) == (token, "duplicate field")


# --- aliases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("eth_src=00:00:00:00:00:01", Match(dl_src="00:00:00:00:00:01")),
        ("eth_dst=00:00:00:00:00:02", Match(dl_dst="00:00:00:00:00:02")),
        ("eth_type=0x0800", Match(dl_type=0x0800)),
        ("vlan_vid=10", Match(dl_vlan=10)),
        ("ip,ip_proto=17", Match(dl_type=0x0800, nw_proto=17)),
        ("ip,ip_src=1.2.3.4", Match(dl_type=0x0800, nw_src=("1.2.3.4", EXACT_MASK))),
        ("ip,ipv4_src=1.2.3.4", Match(dl_type=0x0800, nw_src=("1.2.3.4", EXACT_MASK))),
        ("ip,ip_dst=1.2.3.4", Match(dl_type=0x0800, nw_dst=("1.2.3.4", EXACT_MASK))),
        ("ip,ipv4_dst=1.2.3.0/24", Match(dl_type=0x0800, nw_dst=("1.2.3.0", "255.255.255.0"))),
        ("tcp,tcp_src=1", Match(dl_type=0x0800, nw_proto=6, tp_src=1)),
        ("tcp,tcp_dst=2", Match(dl_type=0x0800, nw_proto=6, tp_dst=2)),
        ("udp,udp_src=3", Match(dl_type=0x0800, nw_proto=17, tp_src=3)),
        ("udp,udp_dst=4", Match(dl_type=0x0800, nw_proto=17, tp_dst=4)),
        # aliases are plain renames: udp_dst on a tcp flow is tp_dst on a tcp flow
        ("tcp,udp_dst=80", Match(dl_type=0x0800, nw_proto=6, tp_dst=80)),
    ],
)
def test_aliases(text, expected):
    assert match_of(text) == expected


def test_alias_table_targets_known_fields():
    assert set(ALIASES.values()) <= set(Match.__dataclass_fields__)


# --- separators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "ip,nw_dst=10.0.0.1,actions=output:1,NORMAL",
        "ip nw_dst=10.0.0.1 actions=output:1,NORMAL",
        "  ip\tnw_dst=10.0.0.1 , actions=output:1, NORMAL  ",
        "ip,,nw_dst=10.0.0.1,\t actions=output:1 ,NORMAL,",
        "ip, nw_dst=10.0.0.1 actions=output:1 NORMAL\r",
    ],
)
def test_whitespace_and_comma_separators(text):
    assert parse_flow(text) == FlowSpec(
        Match(dl_type=0x0800, nw_dst=("10.0.0.1", EXACT_MASK)), (Output(1), Output("NORMAL"))
    )


# --- actions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("output:11", (Output(11),)),
        ("output:0x10", (Output(16),)),
        ("output:4294967040", (Output(0xFFFFFF00),)),
        ("7", (Output(7),)),
        ("1,2,3", (Output(1), Output(2), Output(3))),
        ("NORMAL", (Output("NORMAL"),)),
        ("normal", (Output("NORMAL"),)),
        ("Flood", (Output("FLOOD"),)),
        ("all", (Output("ALL"),)),
        ("controller", (Output("CONTROLLER"),)),
        ("in_port", (Output("IN_PORT"),)),
        ("LOCAL", (Output("LOCAL"),)),
        ("output:local", (Output("LOCAL"),)),
        ("output:IN_PORT", (Output("IN_PORT"),)),
        ("drop", ()),
        ("mod_dl_src:AA:BB:CC:00:00:01", (SetDlSrc("aa:bb:cc:00:00:01"),)),
        ("mod_dl_dst:0:0:0:0:0:2", (SetDlDst("00:00:00:00:00:02"),)),
        ("mod_vlan_vid:0", (SetVlanVid(0),)),
        ("mod_vlan_vid:4095", (SetVlanVid(4095),)),
        ("mod_vlan_vid:0x10", (SetVlanVid(16),)),
        ("strip_vlan", (StripVlan(),)),
        (
            "strip_vlan,mod_dl_dst:00:00:00:00:00:03,output:2,CONTROLLER",
            (StripVlan(), SetDlDst("00:00:00:00:00:03"), Output(2), Output("CONTROLLER")),
        ),
        ("output:1,output:1", (Output(1), Output(1))),
    ],
)
def test_actions(text, expected):
    assert parse_flow("actions=" + text).actions == expected


# --- errors: exact messages -----------------------------------------------------------------


def test_error_attributes_and_message():
    err = error_of("ip,nw_dst=1.2.3.4,bogus=1,actions=drop", "flows.txt", 7)
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.token, err.reason) == (
        "flows.txt",
        7,
        "bogus=1",
        "unknown field",
    )
    assert str(err) == "flows.txt:7: unknown field near 'bogus=1'"


def test_error_defaults_to_string_path_line_one():
    assert str(error_of("ipx,actions=drop")) == "<string>:1: unknown field near 'ipx'"


@pytest.mark.parametrize(
    "text, message",
    [
        ("ip,actions=output:1,bogus", "f:3: unknown action near 'bogus'"),
        ("actions=", "f:3: missing actions near 'actions='"),
        ("ip,actions=  ", "f:3: missing actions near 'actions='"),
        ("ip,nw_dst=1.2.3.4", "f:3: missing actions= near 'ip,nw_dst=1.2.3.4'"),
        ("actions=drop,output:1", "f:3: drop cannot be combined with other actions near 'drop'"),
        ("priority=70000,actions=drop", "f:3: priority must be 0..65535 near 'priority=70000'"),
        ("dl_vlan=4096,actions=drop", "f:3: dl_vlan must be 0..4095 or 0xffff near 'dl_vlan=4096'"),
        ("dl_src=00:11:22:33:44,actions=drop",
         "f:3: invalid MAC address near 'dl_src=00:11:22:33:44'"),
        ("ip,nw_dst=1.2.3.256,actions=drop",
         "f:3: invalid IPv4 address or mask near 'nw_dst=1.2.3.256'"),
        ("ip,tp_dst=80,actions=drop", "f:3: tp_dst needs tcp or udp near 'tp_dst=80'"),
        ("dl_src=00:00:00:00:00:01,eth_src=00:00:00:00:00:01,actions=drop",
         "f:3: duplicate field near 'eth_src=00:00:00:00:00:01'"),
        ("ip,arp,actions=drop", "f:3: conflicts with ip near 'arp'"),
        ("nw_dst=1.2.3.4,actions=drop", "f:3: nw_dst needs ip or arp near 'nw_dst=1.2.3.4'"),
        ("ip,arp_op=1,actions=drop", "f:3: arp_op needs arp near 'arp_op=1'"),
        ("actions=output:0", "f:3: output port must be 1..0xffffff00 near 'output:0'"),
        ("actions=CONTROLLER:128",
         "f:3: CONTROLLER:max_len is not supported near 'CONTROLLER:128'"),
    ],
)  # fmt: skip
def test_full_error_messages(text, message):
    assert str(error_of(text, "f", 3)) == message


@pytest.mark.parametrize(
    "text, token, reason",
    [
        # unknown fields, including upper-case field names and OpenFlow-only fields
        ("IP", "IP", "unknown field"),
        ("Dl_Type=0x800", "Dl_Type=0x800", "unknown field"),
        ("table=0", "table=0", "unknown field"),
        ("ipv6", "ipv6", "unknown field"),
        ("icmp_type=8", "icmp_type=8", "unknown field"),
        ("=5", "=5", "unknown field"),
        # ranges and malformed integers
        ("in_port=0", "in_port=0", "in_port must be 1..0xffffff00"),
        ("in_port=0xffffff01", "in_port=0xffffff01", "in_port must be 1..0xffffff00"),
        ("in_port=LOCAL", "in_port=LOCAL", "in_port must be 1..0xffffff00"),
        ("in_port=", "in_port=", "in_port must be 1..0xffffff00"),
        ("in_port=-1", "in_port=-1", "in_port must be 1..0xffffff00"),
        ("in_port=1_0", "in_port=1_0", "in_port must be 1..0xffffff00"),
        ("in_port=011", "in_port=011", "in_port must be 1..0xffffff00"),
        ("dl_vlan=0x1000", "dl_vlan=0x1000", "dl_vlan must be 0..4095 or 0xffff"),
        ("dl_vlan=65534", "dl_vlan=65534", "dl_vlan must be 0..4095 or 0xffff"),
        ("dl_vlan=x", "dl_vlan=x", "dl_vlan must be 0..4095 or 0xffff"),
        ("vlan_vid=5000", "vlan_vid=5000", "vlan_vid must be 0..4095 or 0xffff"),
        ("dl_type=0x10000", "dl_type=0x10000", "dl_type must be 0..0xffff"),
        ("ip,nw_proto=256", "nw_proto=256", "nw_proto must be 0..255"),
        ("tcp,tp_src=65536", "tp_src=65536", "tp_src must be 0..65535"),
        ("tcp,tcp_dst=http", "tcp_dst=http", "tcp_dst must be 0..65535"),
        ("arp,arp_op=256", "arp_op=256", "arp_op must be 0..255"),
        ("priority=-1", "priority=-1", "priority must be 0..65535"),
        ("priority=high", "priority=high", "priority must be 0..65535"),
        ("idle_timeout=65536", "idle_timeout=65536", "idle_timeout must be 0..65535"),
        ("hard_timeout=1.5", "hard_timeout=1.5", "hard_timeout must be 0..65535"),
        ("cookie=0x10000000000000000", "cookie=0x10000000000000000",
         "cookie must be 0..0xffffffffffffffff"),
        ("cookie=1/0xff", "cookie=1/0xff", "cookie must be 0..0xffffffffffffffff"),
        # MAC addresses
        ("dl_dst=00:11:22:33:44:55:66", "dl_dst=00:11:22:33:44:55:66", "invalid MAC address"),
        ("dl_dst=00-11-22-33-44-55", "dl_dst=00-11-22-33-44-55", "invalid MAC address"),
        ("dl_dst=001:11:22:33:44:55", "dl_dst=001:11:22:33:44:55", "invalid MAC address"),
        ("dl_dst=00:11:22:33:44:gg", "dl_dst=00:11:22:33:44:gg", "invalid MAC address"),
        ("dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
         "invalid MAC address"),
        ("eth_src=", "eth_src=", "invalid MAC address"),
        # IPv4 addresses and masks
        ("ip,nw_src=10.0.0", "nw_src=10.0.0", "invalid IPv4 address or mask"),
        ("ip,nw_src=10.0.0.01", "nw_src=10.0.0.01", "invalid IPv4 address or mask"),
        ("ip,nw_src=10.0.0.1/33", "nw_src=10.0.0.1/33", "invalid IPv4 address or mask"),
        ("ip,nw_src=10.0.0.1/", "nw_src=10.0.0.1/", "invalid IPv4 address or mask"),
        ("ip,nw_src=10.0.0.1/255.255.0", "nw_src=10.0.0.1/255.255.0",
         "invalid IPv4 address or mask"),
        ("ip,nw_src=10.0.0.1/-1", "nw_src=10.0.0.1/-1", "invalid IPv4 address or mask"),
        ("ip,nw_src=host.example", "nw_src=host.example", "invalid IPv4 address or mask"),
        ("ip,ipv4_dst=::1", "ipv4_dst=::1", "invalid IPv4 address or mask"),
        ("arp,arp_spa=1.2.3.4/40", "arp_spa=1.2.3.4/40", "invalid IPv4 address or mask"),
    ],
)  # fmt: skip
def test_field_errors(text, token, reason):
    err = error_of(text + ",actions=drop")
    assert (err.token, err.reason) == (token, reason)
    assert str(err) == f"<string>:1: {reason} near '{token}'"


@pytest.mark.parametrize(
    "text, token, reason",
    [
        ("nw_src=1.2.3.4", "nw_src=1.2.3.4", "nw_src needs ip or arp"),
        ("nw_proto=6", "nw_proto=6", "nw_proto needs ip or arp"),
        ("dl_type=0x86dd,nw_dst=1.2.3.4", "nw_dst=1.2.3.4", "nw_dst needs ip or arp"),
        ("ip_dst=1.2.3.4", "ip_dst=1.2.3.4", "ip_dst needs ip or arp"),
        ("tp_src=1", "tp_src=1", "tp_src needs tcp or udp"),
        ("ip,tp_dst=80", "tp_dst=80", "tp_dst needs tcp or udp"),
        ("icmp,tp_dst=0", "tp_dst=0", "tp_dst needs tcp or udp"),
        ("ip,nw_proto=1,tp_src=0", "tp_src=0", "tp_src needs tcp or udp"),
        ("arp,tp_dst=80", "tp_dst=80", "tp_dst needs tcp or udp"),
        ("arp,nw_proto=6,tp_dst=80", "tp_dst=80", "tp_dst needs tcp or udp"),
        ("tcp_dst=80", "tcp_dst=80", "tcp_dst needs tcp or udp"),
        ("dl_type=0x0800,nw_proto=6,tp_dst=80,udp_src=1,ip_src=x", "ip_src=x",
         "invalid IPv4 address or mask"),
        ("arp_op=1", "arp_op=1", "arp_op needs arp"),
        ("ip,arp_spa=1.2.3.4", "arp_spa=1.2.3.4", "arp_spa needs arp"),
        ("tcp,arp_tpa=1.2.3.4", "arp_tpa=1.2.3.4", "arp_tpa needs arp"),
        # order on the line does not help: prerequisites are checked after collecting
        ("tp_dst=80,nw_dst=1.2.3.4,ip", "tp_dst=80", "tp_dst needs tcp or udp"),
    ],
)  # fmt: skip
def test_prerequisite_errors(text, token, reason):
    err = error_of(text + ",actions=drop")
    assert (err.token, err.reason) == (token, reason)


@pytest.mark.parametrize(
    "text, token, reason",
    [
        ("in_port=1,in_port=1", "in_port=1", "duplicate field"),
        ("ip,nw_dst=1.2.3.4,nw_dst=1.2.3.5", "nw_dst=1.2.3.5", "duplicate field"),
        ("priority=1,priority=2", "priority=2", "duplicate field"),
        ("dl_type=0x800,dl_type=2048", "dl_type=2048", "duplicate field"),
        ("dl_src=00:00:00:00:00:01,eth_src=00:00:00:00:00:02", "eth_src=00:00:00:00:00:02",
         "duplicate field"),
        ("tcp,tp_dst=1,tcp_dst=1", "tcp_dst=1", "duplicate field"),
        ("tcp,udp_src=1,tcp_src=1", "tcp_src=1", "duplicate field"),
        ("ip,ip_src=1.1.1.1,ipv4_src=1.1.1.1", "ipv4_src=1.1.1.1", "duplicate field"),
        ("dl_vlan=1,vlan_vid=1", "vlan_vid=1", "duplicate field"),
        ("ip,ip", "ip", "duplicate field"),
        ("tcp,ip,nw_proto=6,ip_proto=6", "ip_proto=6", "duplicate field"),
        ("ip,arp", "arp", "conflicts with ip"),
        ("arp,ip", "ip", "conflicts with arp"),
        ("tcp,udp", "udp", "conflicts with tcp"),
        ("icmp,tcp", "tcp", "conflicts with icmp"),
        ("arp,tcp", "tcp", "conflicts with arp"),
        ("tcp,nw_proto=17", "nw_proto=17", "conflicts with tcp"),
        ("nw_proto=17,tcp", "tcp", "conflicts with nw_proto=17"),
        ("ip,dl_type=0x0806", "dl_type=0x0806", "conflicts with ip"),
        ("eth_type=0x0806,udp", "udp", "conflicts with eth_type=0x0806"),
    ],
)  # fmt: skip
def test_duplicate_and_conflicting_fields(text, token, reason):
    err = error_of(text + ",actions=drop")
    assert (err.token, err.reason) == (token, reason)


@pytest.mark.parametrize(
    "actions, token, reason",
    [
        ("output=1", "output=1", "unknown action"),
        ("output", "output", "unknown action"),
        ("output:", "output:", "output port must be 1..0xffffff00"),
        ("output:0xffffff01", "output:0xffffff01", "output port must be 1..0xffffff00"),
        ("output:eth0", "output:eth0", "output port must be 1..0xffffff00"),
        ("0", "0", "output port must be 1..0xffffff00"),
        ("4294967041", "4294967041", "output port must be 1..0xffffff00"),
        ("DROP", "DROP", "unknown action"),
        ("Output:1", "Output:1", "unknown action"),
        ("NORMAL:1", "NORMAL:1", "unknown action"),
        ("controller:65535", "controller:65535", "CONTROLLER:max_len is not supported"),
        ("drop,drop", "drop", "drop cannot be combined with other actions"),
        ("output:1,drop", "drop", "drop cannot be combined with other actions"),
        ("mod_dl_src:00:00:00:00:00", "mod_dl_src:00:00:00:00:00", "invalid MAC address"),
        ("mod_dl_dst:", "mod_dl_dst:", "invalid MAC address"),
        ("mod_dl_dst", "mod_dl_dst", "unknown action"),
        ("mod_vlan_vid:4096", "mod_vlan_vid:4096", "mod_vlan_vid must be 0..4095"),
        ("mod_vlan_vid:0xffff", "mod_vlan_vid:0xffff", "mod_vlan_vid must be 0..4095"),
        ("strip_vlan:1", "strip_vlan:1", "unknown action"),
        ("mod_nw_dst:1.2.3.4", "mod_nw_dst:1.2.3.4", "unknown action"),
        ("resubmit(,1)", "resubmit(", "unknown action"),
        ("output:1,,bogus", "bogus", "unknown action"),
    ],
)
def test_action_errors(actions, token, reason):
    err = error_of("ip,actions=" + actions)
    assert (err.token, err.reason) == (token, reason)


@pytest.mark.parametrize(
    "text, token",
    [
        ("", ""),
        ("   ", ""),
        ("ip", "ip"),
        ("ip,action=drop", "ip,action=drop"),
        ("ip,xactions=drop", "ip,xactions=drop"),
        ("ip,ACTIONS=drop", "ip,ACTIONS=drop"),
        ("ip,actions:drop", "ip,actions:drop"),
    ],
)
def test_missing_actions_keyword(text, token):
    err = error_of(text)
    assert (err.token, err.reason) == (token, "missing actions=")


def test_actions_takes_the_rest_of_the_line():
    # a field after actions= is read as an action, as ovs-ofctl does
    err = error_of("ip,actions=output:1,priority=5")
    assert (err.token, err.reason) == ("priority=5", "unknown action")


# --- files ----------------------------------------------------------------------------------

FILE_WITH_COMMENTS = """\
# flows for the load balancer

ip,idle_timeout=0,nw_dst=192.168.7.111,actions=output:11   # replica 1
   \t
# arp goes the normal way
arp,idle_timeout=0,actions=NORMAL
"""


def test_comments_and_blank_lines_are_skipped():
    assert parse_flows(FILE_WITH_COMMENTS, "flows.txt") == (
        FlowSpec(
            Match(dl_type=ETH_TYPE_IP, nw_dst=("192.168.7.111", EXACT_MASK)), (Output(11),)
        ),
        FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),
    )


def test_empty_and_comment_only_text():
    assert parse_flows("", "flows.txt") == ()
    assert parse_flows("\n\n# nothing\n   # still nothing\n", "flows.txt") == ()


def test_error_line_numbers_count_comment_and_blank_lines():
    text = (
        "# header\n"
        "\n"
        "ip,actions=output:1\n"
        "ip,nw_dst=1.2.3.4/99,actions=output:2\n"
        "arp,actions=NORMAL\n"
    )
    with pytest.raises(FlowSyntaxError) as info:
        parse_flows(text, "flows.txt")
    assert str(info.value) == "flows.txt:4: invalid IPv4 address or mask near 'nw_dst=1.2.3.4/99'"
    assert (info.value.path, info.value.line) == ("flows.txt", 4)


def test_first_error_wins():
    text = "ip,actions=output:1\nbogus,actions=drop\nip,actions=bogus\n"
    with pytest.raises(FlowSyntaxError) as info:
        parse_flows(text, "flows.txt")
    assert str(info.value) == "flows.txt:2: unknown field near 'bogus'"


def test_crlf_line_endings_and_trailing_comment_without_newline():
    text = "# c\r\nip,actions=output:1\r\n\r\narp,actions=NORMAL # last"
    assert parse_flows(text, "f") == (
        FlowSpec(Match(dl_type=ETH_TYPE_IP), (Output(1),)),
        FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),
    )
    with pytest.raises(FlowSyntaxError) as info:
        parse_flows("# c\r\n\r\nip,actions=\r\n", "f")
    assert str(info.value) == "f:3: missing actions near 'actions='"


def test_comment_inside_a_flow_cuts_it():
    with pytest.raises(FlowSyntaxError) as info:
        parse_flows("ip,# actions=drop\n", "f")
    assert str(info.value) == "f:1: missing actions= near 'ip,'"


def test_load_flows_file(tmp_path):
    path = tmp_path / "flows.txt"
    path.write_text("# thesis\n" + THESIS_FLOWS, encoding="utf-8")
    assert load_flows_file(path) == parse_flows(THESIS_FLOWS, "x")
    assert load_flows_file(str(path)) == parse_flows(THESIS_FLOWS, "x")


def test_load_flows_file_error_names_file_and_line(tmp_path):
    path = tmp_path / "flows.txt"
    path.write_text("# thesis\n\n# comment\nip,nw_dst=1.2.3.4,actions=output:0\n", encoding="utf-8")
    with pytest.raises(FlowSyntaxError) as info:
        load_flows_file(path)
    assert str(info.value) == f"{path}:4: output port must be 1..0xffffff00 near 'output:0'"
    assert info.value.path == str(path)


def test_load_flows_file_accepts_utf8_with_bom_and_non_ascii_comments(tmp_path):
    path = tmp_path / "flows.txt"
    path.write_bytes("\ufeff# répliques\narp,actions=NORMAL\n".encode("utf-8"))
    assert load_flows_file(path) == (FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),)


def test_load_flows_file_missing(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(FlowSyntaxError) as info:
        load_flows_file(path)
    err = info.value
    assert (err.path, err.line, err.token) == (str(path), 0, str(path))
    assert err.reason == "cannot read flows file: No such file or directory"
    assert str(err) == f"{path}:0: cannot read flows file: No such file or directory near '{path}'"


def test_load_flows_file_directory(tmp_path):
    with pytest.raises(FlowSyntaxError) as info:
        load_flows_file(tmp_path)
    assert info.value.line == 0
    assert info.value.reason == "cannot read flows file: Is a directory"


def test_load_flows_file_not_utf8(tmp_path):
    path = tmp_path / "flows.bin"
    path.write_bytes(b"ip,actions=output:1 # \xff\xfe\n")
    with pytest.raises(FlowSyntaxError) as info:
        load_flows_file(path)
    assert info.value.line == 0
    assert info.value.reason.startswith("cannot read flows file: 'utf-8' codec can't decode")


def test_results_are_hashable_and_usable_as_keys():
    flows = parse_flows(THESIS_FLOWS, "f")
    assert len({flow.key for flow in flows}) == 3
    assert hash(flows) == hash(parse_flows(THESIS_FLOWS, "f"))
