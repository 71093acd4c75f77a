"""OpenFlow 1.3: descriptions → ryu.ofproto.ofproto_v1_3_parser messages (datapath=None).

A :class:`~sbft_ryu.model.Mirror` becomes a group of type ALL (one bucket per copy) that the flow
points to; its first use adds the group (unless the switch was found holding it), later
uses modify it in place.
A reconnecting switch is read (flow stats, group descriptions) and converged (ofp/tables.py).
"""

from ryu.ofproto import ofproto_v1_3 as ofp
from ryu.ofproto import ofproto_v1_3_parser as parser

from sbft_ryu import model
from sbft_ryu.ofp.common import PortReader, TranslationError
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
_TP_FIELDS = {model.IP_PROTO_TCP: ("tcp_src", "tcp_dst"), model.IP_PROTO_UDP: ("udp_src", "udp_dst")}
_NO_VLAN = 0xFFFF
_ROLES = {"master": ofp.OFPCR_ROLE_MASTER, "slave": ofp.OFPCR_ROLE_SLAVE}


def port_number(port):
    return _RESERVED[port] if isinstance(port, str) else port


def match(spec):
    """A model.Match as an OXM OFPMatch."""
    fields = {}
    if spec.in_port is not None:
        fields["in_port"] = spec.in_port
    if spec.dl_src is not None:
        fields["eth_src"] = spec.dl_src
    if spec.dl_dst is not None:
        fields["eth_dst"] = spec.dl_dst
    if spec.dl_vlan is not None:
        fields["vlan_vid"] = (ofp.OFPVID_NONE if spec.dl_vlan == _NO_VLAN
                              else ofp.OFPVID_PRESENT | spec.dl_vlan)
    if spec.dl_type is not None:
        fields["eth_type"] = spec.dl_type
    if spec.nw_proto is not None:
        fields["ip_proto"] = spec.nw_proto
    for name, oxm in (("nw_src", "ipv4_src"), ("nw_dst", "ipv4_dst"),
                      ("arp_spa", "arp_spa"), ("arp_tpa", "arp_tpa")):
        value = getattr(spec, name)
        if value is not None:
            fields[oxm] = value[0] if value[1] == model.EXACT_MASK else value
    if spec.arp_op is not None:
        fields["arp_op"] = spec.arp_op
    if spec.tp_src is not None or spec.tp_dst is not None:
        if spec.nw_proto not in _TP_FIELDS:
            raise TranslationError("tp_src/tp_dst need nw_proto tcp or udp")
        src, dst = _TP_FIELDS[spec.nw_proto]
        if spec.tp_src is not None:
            fields[src] = spec.tp_src
        if spec.tp_dst is not None:
            fields[dst] = spec.tp_dst
    return parser.OFPMatch(**fields)


class Translator(PortReader):
    ofp = ofp
    version = OFP_VERSION
    name = "1.3"

    def __init__(self):
        self._groups = set()  # group ids known to exist on this switch
        self._reader = None

    # ---- what the switch says (messages in) ------------------------------------------------

    @staticmethod
    def ports_in_features(features):
        """None: OpenFlow 1.3 lists the ports in a port-description reply (RequestPorts)."""
        return None

    @staticmethod
    def packet_in_port(packet_in):
        return packet_in.match.get("in_port")

    def tables_reply(self, kind, msg):
        """A flow-stats ("flows") or group-description ("groups") reply to ReadTables: the
        switch's Tables once all parts arrived, else None."""
        return self._reader.add(kind, msg) if self._reader is not None else None

    @staticmethod
    def _more(msg):
        return bool(msg.flags & ofp.OFPMPF_REPLY_MORE)

    @staticmethod
    def _key(table_id, priority, wire_match):
        """A flow's identity, its match as the switch would report it (parsed from wire)."""
        match_ = parser.OFPMatch.parser(wire(wire_match), 0)
        return table_id, priority, tuple(sorted(match_.items(), key=lambda item: item[0]))

    @classmethod
    def _flow_entry(cls, stats):
        return (cls._key(stats.table_id, stats.priority, stats.match),
                cls._content(stats))

    @staticmethod
    def _content(flow):
        return (flow.cookie, flow.idle_timeout, flow.hard_timeout, wire(*flow.instructions))

    @staticmethod
    def _group_entry(stats):
        return stats.group_id, (stats.type, wire(*stats.buckets))

    # ---- what the controller says (descriptions out) -----------------------------------------

    def translate(self, messages):
        """All messages or none: group bookkeeping is kept only if the whole batch translates
        (the app sends nothing from a batch that failed)."""
        known = set(self._groups)
        try:
            out = []
            for message in messages:
                out.extend(self._one(message))
            return out
        except Exception:
            self._groups = known
            raise

    def _one(self, message):
        if isinstance(message, model.FlowSpec):
            return self._flow(message)
        if isinstance(message, model.FlowDelete):
            return [parser.OFPFlowMod(None, command=ofp.OFPFC_DELETE_STRICT,
                                      priority=message.priority, match=match(message.match),
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)]
        if isinstance(message, model.PacketOutSpec):
            actions = [parser.OFPActionOutput(port_number(message.out_port), 0)]
            in_port = ofp.OFPP_CONTROLLER if message.in_port is None else message.in_port
            return [parser.OFPPacketOut(None, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port,
                                        actions=actions, data=message.data)]
        if isinstance(message, model.Barrier):
            return [parser.OFPBarrierRequest(None)]
        if isinstance(message, model.EnablePacketIn):
            return [parser.OFPSetConfig(None, ofp.OFPC_FRAG_NORMAL, ofp.OFPCML_NO_BUFFER)]
        if isinstance(message, model.RequestPorts):
            return [parser.OFPPortDescStatsRequest(None, 0)]
        if isinstance(message, model.RoleRequest):
            return [parser.OFPRoleRequest(None, _ROLES[message.role], message.generation)]
        if isinstance(message, model.ReadTables):
            self._reader = Reader(("flows", "groups"), self._more, self._flow_entry,
                                  self._group_entry)
            return [parser.OFPFlowStatsRequest(None, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY,
                                               ofp.OFPG_ANY, 0, 0, parser.OFPMatch()),
                    parser.OFPGroupDescStatsRequest(None, 0)]
        if isinstance(message, model.Converge):
            return self._converge(message.flows, message.found or Tables())
        raise TranslationError(f"cannot translate {message!r}")

    def _flow(self, flow):
        flow_mod, mirrors = self._flow_mod(flow)
        return [*(self._group(mirror) for mirror in mirrors), flow_mod]

    def _flow_mod(self, flow):
        """(the flow's add, the mirrors whose groups it points to)."""
        actions, mirrors = [], []
        for action in flow.actions:
            if isinstance(action, model.Mirror):
                mirrors.append(action)
                actions.append(parser.OFPActionGroup(action.group_id))
            else:
                actions.extend(self._action(action, flow.match))
        instructions = ([parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
                        if actions else [])
        return parser.OFPFlowMod(None, cookie=flow.cookie, command=ofp.OFPFC_ADD,
                                 idle_timeout=flow.idle_timeout,
                                 hard_timeout=flow.hard_timeout, priority=flow.priority,
                                 match=match(flow.match), instructions=instructions), mirrors

    def _group(self, mirror, command=None):
        if command is None:
            command = ofp.OFPGC_MODIFY if mirror.group_id in self._groups else ofp.OFPGC_ADD
        self._groups.add(mirror.group_id)
        buckets = [parser.OFPBucket(actions=[parser.OFPActionSetField(eth_dst=bucket.mac),
                                             parser.OFPActionOutput(bucket.port, 0)])
                   for bucket in mirror.buckets]
        return parser.OFPGroupMod(None, command=command, type_=ofp.OFPGT_ALL,
                                  group_id=mirror.group_id, buckets=buckets)

    def _converge(self, flows, found):
        """Stale flows deleted strictly, then groups added or modified, missing or changed
        flows added, and last the groups nobody uses deleted."""
        wanted, mirrors = {}, {}
        for flow in flows:
            flow_mod, used = self._flow_mod(flow)
            mirrors.update((mirror.group_id, mirror) for mirror in used)
            wanted[self._key(flow_mod.table_id, flow_mod.priority, flow_mod.match)] = (
                self._content(flow_mod), flow_mod)
        stale, adds = diff_flows(wanted, found)
        deletes = [parser.OFPFlowMod(None, table_id=stats.table_id,
                                     command=ofp.OFPFC_DELETE_STRICT, priority=stats.priority,
                                     match=stats.match, out_port=ofp.OFPP_ANY,
                                     out_group=ofp.OFPG_ANY) for stats in stale]
        groups = []
        for group_id, mirror in mirrors.items():
            group_mod = self._group(mirror, ofp.OFPGC_MODIFY if group_id in found.groups
                                    else ofp.OFPGC_ADD)
            if found.groups.get(group_id) != self._group_entry(group_mod)[1]:
                groups.append(group_mod)
        unused = [parser.OFPGroupMod(None, command=ofp.OFPGC_DELETE, group_id=group_id)
                  for group_id in found.groups if group_id not in mirrors]
        self._groups = set(mirrors)
        body = groups + adds + unused
        out = deletes + ([parser.OFPBarrierRequest(None)] if deletes and body else []) + body
        return out + [parser.OFPBarrierRequest(None)] if out else []

    @staticmethod
    def _action(action, flow_match):
        if isinstance(action, model.Output):
            return [parser.OFPActionOutput(port_number(action.port), ofp.OFPCML_NO_BUFFER)]
        if isinstance(action, model.SetDlSrc):
            return [parser.OFPActionSetField(eth_src=action.mac)]
        if isinstance(action, model.SetDlDst):
            return [parser.OFPActionSetField(eth_dst=action.mac)]
        if isinstance(action, model.SetVlanVid):
            set_vid = parser.OFPActionSetField(vlan_vid=ofp.OFPVID_PRESENT | action.vid)
            tagged = flow_match.dl_vlan is not None and flow_match.dl_vlan != _NO_VLAN
            # like ovs-ofctl's mod_vlan_vid: push a tag first unless the match guarantees one
            return [set_vid] if tagged else [
                parser.OFPActionPushVlan(model.ETH_TYPE_VLAN), set_vid]
        if isinstance(action, model.StripVlan):
            return [parser.OFPActionPopVlan()]
        raise TranslationError(f"cannot translate action {action!r}")
