"""OpenFlow 1.0: descriptions → ryu.ofproto.ofproto_v1_0_parser messages (datapath=None).

OpenFlow 1.0 has no groups, so a :class:`~sbft_ryu.model.Mirror` becomes repeated
(set destination MAC, output) pairs in the flow itself. ARP fields travel in nw_src/nw_dst
(sender/target address) and nw_proto (opcode), and masks must be CIDR prefixes. A reconnecting
switch is read (flow stats) and converged with strict deletes (1.0 has no cookie mask).
"""

from ryu.ofproto import ofproto_v1_0 as ofp
from ryu.ofproto import ofproto_v1_0_parser as parser

from sbft_ryu import model
from sbft_ryu.ofp.common import PortReader, TranslationError, prefix_len
from sbft_ryu.ofp.tables import Reader, Tables, diff_flows, wire

OFP_VERSION = ofp.OFP_VERSION

_RESERVED = {
    "NORMAL": ofp.OFPP_NORMAL,
    "FLOOD": ofp.OFPP_FLOOD,
    "ALL": ofp.OFPP_ALL,
    "CONTROLLER": ofp.OFPP_CONTROLLER,
    "IN_PORT": ofp.OFPP_IN_PORT,
    "LOCAL": ofp.OFPP_LOCAL,
}
_MAX_PORT = ofp.OFPP_MAX
_FULL_PACKET = 0xFFFF


def port_number(port):
    if isinstance(port, str):
        return _RESERVED[port]
    if port > _MAX_PORT:
        raise TranslationError(f"port {port} does not fit OpenFlow 1.0's 16-bit port numbers")
    return port


def _ip(name, value):
    address, mask = value
    length = prefix_len(address, mask)
    if length is None:
        raise TranslationError(f"{name} mask {mask} is not a CIDR prefix (OpenFlow 1.0)")
    return address, length


def match(spec):
    """A model.Match as an OpenFlow 1.0 OFPMatch (wildcards derived from what is set)."""
    fields = {}
    if spec.in_port is not None:
        fields["in_port"] = port_number(spec.in_port)
    for name in ("dl_src", "dl_dst", "dl_vlan", "dl_type", "nw_proto", "tp_src", "tp_dst"):
        if getattr(spec, name) is not None:
            fields[name] = getattr(spec, name)
    if spec.arp_op is not None:
        fields["nw_proto"] = spec.arp_op
    for name, field in (("nw_src", "nw_src"), ("nw_dst", "nw_dst"),
                        ("arp_spa", "nw_src"), ("arp_tpa", "nw_dst")):
        value = getattr(spec, name)
        if value is not None:
            address, length = _ip(name, value)
            fields[field] = address
            fields[field + "_mask"] = length
    return parser.OFPMatch(**fields)


_EXACT_FIELDS = (("in_port", ofp.OFPFW_IN_PORT), ("dl_vlan", ofp.OFPFW_DL_VLAN),
                 ("dl_src", ofp.OFPFW_DL_SRC), ("dl_dst", ofp.OFPFW_DL_DST),
                 ("dl_type", ofp.OFPFW_DL_TYPE), ("nw_proto", ofp.OFPFW_NW_PROTO),
                 ("tp_src", ofp.OFPFW_TP_SRC), ("tp_dst", ofp.OFPFW_TP_DST),
                 ("dl_vlan_pcp", ofp.OFPFW_DL_VLAN_PCP), ("nw_tos", ofp.OFPFW_NW_TOS))
_PREFIX_FIELDS = (("nw_src", ofp.OFPFW_NW_SRC_SHIFT), ("nw_dst", ofp.OFPFW_NW_DST_SHIFT))


def canonical_match(spec):
    """The fields a 1.0 match really sets (wildcarded ones, whatever their value, left out;
    addresses cut to their prefix), as the switch reports them."""
    match_ = parser.OFPMatch.parse(wire(spec), 0)
    out = [(name, getattr(match_, name)) for name, bit in _EXACT_FIELDS
           if not match_.wildcards & bit]
    for name, shift in _PREFIX_FIELDS:
        length = max(0, 32 - ((match_.wildcards >> shift) & 0x3F))
        if length:
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            out.append((name, getattr(match_, name) & mask, length))
    return tuple(out)


class Translator(PortReader):
    ofp = ofp
    version = OFP_VERSION
    name = "1.0"

    def __init__(self):
        self._reader = None

    def tables_reply(self, kind, msg):
        """A flow-stats reply ("flows") to ReadTables: the switch's Tables once all parts
        arrived, else None."""
        return self._reader.add(kind, msg) if self._reader is not None else None

    @staticmethod
    def _flow_entry(stats):
        return ((stats.priority, canonical_match(stats.match)),
                (stats.cookie, stats.idle_timeout, stats.hard_timeout, wire(*stats.actions)))

    # ---- what the switch says (messages in) ------------------------------------------------

    @staticmethod
    def ports_in_features(features):
        """OpenFlow 1.0's features reply lists the switch's ports (no port-description request)."""
        return list(features.ports.values())

    @staticmethod
    def packet_in_port(packet_in):
        return packet_in.in_port

    # ---- what the controller says (descriptions out) -----------------------------------------

    def translate(self, messages):
        out = []
        for message in messages:
            out.extend(self._one(message))
        return out

    def _one(self, message):
        if isinstance(message, model.FlowSpec):
            return [parser.OFPFlowMod(None, match=match(message.match), cookie=message.cookie,
                                      command=ofp.OFPFC_ADD, idle_timeout=message.idle_timeout,
                                      hard_timeout=message.hard_timeout,
                                      priority=message.priority,
                                      actions=self._actions(message.actions))]
        if isinstance(message, model.FlowDelete):
            return [parser.OFPFlowMod(None, match=match(message.match), cookie=0,
                                      command=ofp.OFPFC_DELETE_STRICT,
                                      idle_timeout=0, hard_timeout=0,
                                      priority=message.priority, out_port=ofp.OFPP_NONE)]
        if isinstance(message, model.PacketOutSpec):
            in_port = ofp.OFPP_NONE if message.in_port is None else message.in_port
            return [parser.OFPPacketOut(
                None, buffer_id=0xFFFFFFFF, in_port=in_port,
                actions=[parser.OFPActionOutput(port_number(message.out_port), 0)],
                data=message.data)]
        if isinstance(message, model.Barrier):
            return [parser.OFPBarrierRequest(None)]
        if isinstance(message, model.EnablePacketIn):
            return [parser.OFPSetConfig(None, ofp.OFPC_FRAG_NORMAL, _FULL_PACKET)]
        if isinstance(message, model.RequestPorts):
            return []  # the features reply already listed the ports
        if isinstance(message, model.ReadTables):
            self._reader = Reader(("flows",), lambda msg: bool(msg.flags & ofp.OFPSF_REPLY_MORE),
                                  self._flow_entry)
            return [parser.OFPFlowStatsRequest(None, 0, parser.OFPMatch(), 0xFF,
                                               ofp.OFPP_NONE)]
        if isinstance(message, model.Converge):
            return self._converge(message.flows, message.found or Tables())
        raise TranslationError(f"cannot translate {message!r}")

    def _converge(self, flows, found):
        """Stale entries deleted strictly, then missing or changed ones added."""
        wanted = {}
        for flow in flows:
            add = self._one(flow)[0]
            wanted[(add.priority, canonical_match(add.match))] = (
                (add.cookie, add.idle_timeout, add.hard_timeout, wire(*add.actions)), add)
        stale, adds = diff_flows(wanted, found)
        deletes = [parser.OFPFlowMod(None, match=stats.match, cookie=0,
                                     command=ofp.OFPFC_DELETE_STRICT, idle_timeout=0,
                                     hard_timeout=0, priority=stats.priority,
                                     out_port=ofp.OFPP_NONE) for stats in stale]
        out = deletes + ([parser.OFPBarrierRequest(None)] if deletes and adds else []) + adds
        return out + [parser.OFPBarrierRequest(None)] if out else []

    @staticmethod
    def _actions(actions):
        out = []
        for action in actions:
            if isinstance(action, model.Output):
                out.append(parser.OFPActionOutput(port_number(action.port), _FULL_PACKET))
            elif isinstance(action, model.SetDlSrc):
                out.append(parser.OFPActionSetDlSrc(action.mac))
            elif isinstance(action, model.SetDlDst):
                out.append(parser.OFPActionSetDlDst(action.mac))
            elif isinstance(action, model.SetVlanVid):
                out.append(parser.OFPActionVlanVid(action.vid))
            elif isinstance(action, model.StripVlan):
                out.append(parser.OFPActionStripVlan())
            elif isinstance(action, model.Mirror):
                for bucket in action.buckets:
                    out.append(parser.OFPActionSetDlDst(bucket.mac))
                    out.append(parser.OFPActionOutput(port_number(bucket.port), 0))
            else:
                raise TranslationError(f"cannot translate action {action!r}")
        return out
