"""Version-neutral descriptions of what the switch should do.

Decisions (``decide.py``) and the flows-file parser (``flowfile.py``) produce these frozen values;
one translator per OpenFlow version (``ofp/v10.py``, ``ofp/v13.py``) turns them into messages.
Nothing here knows about a datapath or an OpenFlow version, so tests compare plain values.

Field names follow ovs-ofctl's version-neutral spelling (dl_*, nw_*, tp_*), with ARP's addresses
and opcode kept separate (``arp_spa``, ``arp_tpa``, ``arp_op``) because OpenFlow 1.0 overloads
nw_src/nw_dst/nw_proto for them while 1.3 has dedicated fields.
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_VLAN = 0x8100
IP_PROTO_ICMP = 1
IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
ARP_REQUEST = 1
ARP_REPLY = 2

# Reserved output ports by their ovs-ofctl names; translators map them per version.
RESERVED_PORTS = ("NORMAL", "FLOOD", "ALL", "CONTROLLER", "IN_PORT", "LOCAL")

# ovs-ofctl's default priority (OFP_DEFAULT_PRIORITY) for flows that name none.
DEFAULT_PRIORITY = 32768

# An IPv4 match value: (address, netmask), both dotted quads; an exact match has mask 255.255.255.255.
IPv4Match = Tuple[str, str]
EXACT_MASK = "255.255.255.255"


@dataclass(frozen=True)
class Match:
    """A flow match; ``None`` means wildcarded."""

    in_port: Optional[int] = None
    dl_src: Optional[str] = None  # lower-case "aa:bb:cc:dd:ee:ff"
    dl_dst: Optional[str] = None
    dl_vlan: Optional[int] = None  # 0..4095, or 0xffff for "no VLAN tag" (ovs-ofctl convention)
    dl_type: Optional[int] = None
    nw_proto: Optional[int] = None
    nw_src: Optional[IPv4Match] = None
    nw_dst: Optional[IPv4Match] = None
    tp_src: Optional[int] = None
    tp_dst: Optional[int] = None
    arp_op: Optional[int] = None
    arp_spa: Optional[IPv4Match] = None
    arp_tpa: Optional[IPv4Match] = None

    def fields(self):
        """The set fields as (name, value) pairs, in declaration order."""
        return tuple(
            (name, getattr(self, name))
            for name in self.__dataclass_fields__
            if getattr(self, name) is not None
        )


@dataclass(frozen=True)
class Output:
    """Send out a port: an OpenFlow port number or one of RESERVED_PORTS."""

    port: Union[int, str]


@dataclass(frozen=True)
class SetDlSrc:
    mac: str


@dataclass(frozen=True)
class SetDlDst:
    mac: str


@dataclass(frozen=True)
class SetVlanVid:
    vid: int


@dataclass(frozen=True)
class StripVlan:
    pass


@dataclass(frozen=True)
class MirrorBucket:
    """One copy of a mirrored packet: rewritten to ``mac`` and sent out ``port``."""

    port: int
    mac: str


@dataclass(frozen=True)
class Mirror:
    """Copy the packet to every bucket (group ALL in OF1.3, repeated outputs in OF1.0).

    ``group_id`` names the group a translator may create for it; it is stable per purpose so a
    change of members modifies the group in place instead of replacing flows.
    """

    group_id: int
    buckets: Tuple[MirrorBucket, ...]


Action = Union[Output, SetDlSrc, SetDlDst, SetVlanVid, StripVlan, Mirror]


@dataclass(frozen=True)
class FlowSpec:
    """One flow entry. An empty ``actions`` tuple drops the packet."""

    match: Match
    actions: Tuple[Action, ...] = ()
    priority: int = DEFAULT_PRIORITY
    cookie: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0

    @property
    def key(self):
        """What identifies the entry in a flow table (OpenFlow's strict match)."""
        return (self.priority, self.match)


@dataclass(frozen=True)
class PacketOutSpec:
    """Send ``data`` (a whole Ethernet frame) out of ``out_port``."""

    data: bytes
    out_port: Union[int, str]
    in_port: Optional[int] = None


@dataclass(frozen=True)
class FlowDelete:
    """Remove exactly the entry with this priority and match (OFPFC_DELETE_STRICT)."""

    match: Match
    priority: int


@dataclass(frozen=True)
class Barrier:
    pass


@dataclass(frozen=True)
class EnablePacketIn:
    """Set a nonzero miss_send_len (whole packets). OVS sends no packet-in or port-status on a
    connection made to its passive ``ptcp:`` listener until a controller does this."""


@dataclass(frozen=True)
class RequestPorts:
    """Ask for the port list (OF1.3 port-desc; OF1.0 switches send it in features)."""


@dataclass(frozen=True)
class RoleRequest:
    """Claim a controller role on the switch (OpenFlow 1.3): "master" or "slave", with the
    generation id the switch compares (a stale one is refused), the leader's term."""

    role: str
    generation: int


@dataclass(frozen=True)
class ReadTables:
    """Ask for the flows (and groups) the switch holds; the translator collects the replies
    into a value that only it reads (see Converge)."""


@dataclass(frozen=True, eq=False)
class Converge:
    """Make the switch hold exactly ``flows`` (and the groups they use), given ``found``, what
    ReadTables read from it: only the difference is sent."""

    flows: Tuple[FlowSpec, ...]
    found: object


Message = Union[FlowSpec, FlowDelete, PacketOutSpec, Barrier, EnablePacketIn,
                RequestPorts, ReadTables, Converge]


@dataclass(frozen=True)
class Replica:
    """A load-balancer replica as configured: its name, address and switch port."""

    name: str
    ip: str
    mac: str
    port: int
