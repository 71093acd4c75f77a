"""Pure decisions: what the switch must hold for a configuration and a cluster view.

Every function takes plain values (config, :class:`~sbft_ryu.cluster.ClusterView`, bytes) and
returns descriptions from :mod:`sbft_ryu.model`; nothing here knows about a datapath or an
OpenFlow version. The service flows, from highest priority down (P = ``service_priority``):

====== ===================================================== ==================================
P+31   ARP claiming the VIP (sender = VIP)                   drop: replicas never announce it
P+30   ARP request for the VIP                               to the controller, which answers
P+20   IP from the VIP, in_port = primary                    source MAC := VMAC, NORMAL (and,
                                                             in active mode, a copy to each
                                                             backup)
P+15   TCP to VIP:service_port                               mirror to every member replica
P+10   IP from the VIP (any other port)                      drop: only the primary answers
P+5    other IP to the VIP (ping, ...)                       to the primary only
====== ===================================================== ==================================

The flows file's entries sit below (ovs-ofctl's default priority is 32768).
"""

import ipaddress
import struct

from sbft_ryu import model
from sbft_ryu.model import (ETH_TYPE_ARP, ETH_TYPE_IP, EXACT_MASK, FlowDelete, FlowSpec,
                            Match, Mirror, MirrorBucket, Output, PacketOutSpec, SetDlDst,
                            SetDlSrc)

SERVICE_COOKIE = 0x5BF7_0000_0000_0001
MIRROR_GROUP_ID = 1
WIRE_GROUP_ID = 2

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ARP_IPV4_OVER_ETHERNET = (1, ETH_TYPE_IP, 6, 4)


def _exact(ip):
    return (ip, EXACT_MASK)


def service_flows(config, view, cookie=SERVICE_COOKIE):
    """The flows that mirror client traffic to members and let only the primary answer,
    with ``cookie`` (a leader's is its term's: election.service_cookie)."""
    if not config.replicas:
        return ()
    base = config.service_priority
    vip = _exact(config.vip)
    by_name = {replica.name: replica for replica in config.nodes}  # members may be spares
    members = tuple(by_name[name] for name in view.members)
    flows = [
        FlowSpec(Match(dl_type=ETH_TYPE_ARP, arp_spa=vip), (), base + 31),
        FlowSpec(Match(dl_type=ETH_TYPE_ARP, arp_op=model.ARP_REQUEST, arp_tpa=vip),
                 (Output("CONTROLLER"),), base + 30),
        FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_src=vip), (), base + 10),
        FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_proto=model.IP_PROTO_TCP, nw_dst=vip,
                       tp_dst=config.service_port),
                 (Mirror(MIRROR_GROUP_ID,
                         tuple(MirrorBucket(port=r.port, mac=r.mac) for r in members)),),
                 base + 15),
    ]
    if view.primary is not None:
        primary = by_name[view.primary]
        reply = (SetDlSrc(config.vmac), Output("NORMAL"))
        backups = [r for r in members if r.name != view.primary]
        # the wire copy: with voting, backups check what really went out; in active mode
        # they also learn what the client was acknowledged (its ACK numbers), so that a
        # successor knows whether it has every acknowledged client byte
        if (config.voting or config.mode == "active") and backups:
            reply += (Mirror(WIRE_GROUP_ID, tuple(MirrorBucket(port=r.port, mac=r.mac)
                                                  for r in backups)),)
        flows.append(FlowSpec(Match(in_port=primary.port, dl_type=ETH_TYPE_IP, nw_src=vip),
                              reply, base + 20))
        flows.append(FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_dst=vip),
                              (SetDlDst(primary.mac), Output(primary.port)), base + 5))
    return tuple(FlowSpec(flow.match, flow.actions, flow.priority, cookie=cookie)
                 for flow in flows)


def intended_flows(config, view, service=True, cookie=SERVICE_COOKIE):
    """Everything a switch should hold: the flows file (with its own cookies) and, on the
    service switch, the service flows. A connecting switch is converged to this (only the
    difference to what it holds is sent, so a controller restart leaves it untouched)."""
    return (*config.flows, *(service_flows(config, view, cookie) if service else ()))


def update_batch(installed, wanted):
    """Messages that turn the ``installed`` flows into the ``wanted`` ones.

    Entries whose key (priority, match) disappears are deleted strictly; new or changed entries
    are added (an OpenFlow add with the same key replaces the actions in place, so a changed
    mirror or primary never leaves a gap). Deletes go first, then one barrier, then adds.
    """
    wanted_by_key = {flow.key: flow for flow in wanted}
    installed_by_key = {flow.key: flow for flow in installed}
    deletes = [FlowDelete(match=flow.match, priority=flow.priority)
               for key, flow in installed_by_key.items() if key not in wanted_by_key]
    adds = [flow for key, flow in wanted_by_key.items() if installed_by_key.get(key) != flow]
    if not deletes and not adds:
        return []
    barrier = [model.Barrier()] if deletes and adds else []
    return [*deletes, *barrier, *adds, model.Barrier()]


def arp_reply(config, frame, in_port):
    """A PacketOutSpec answering an ARP request for the VIP with the VMAC, or None.

    ``frame`` is the whole Ethernet frame from a packet-in; anything that is not a well-formed
    IPv4-over-Ethernet ARP request for the VIP gets None.
    """
    if in_port is None or len(frame) < _ETH.size + _ARP.size:
        return None
    _, eth_src, eth_type = _ETH.unpack_from(frame)
    if eth_type != ETH_TYPE_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != _ARP_IPV4_OVER_ETHERNET or op != model.ARP_REQUEST:
        return None
    if tpa != ipaddress.IPv4Address(config.vip).packed:
        return None
    vmac = bytes.fromhex(config.vmac.replace(":", ""))
    reply = _ETH.pack(eth_src, vmac, ETH_TYPE_ARP) + _ARP.pack(
        *_ARP_IPV4_OVER_ETHERNET, model.ARP_REPLY, vmac, tpa, sha, spa)
    return PacketOutSpec(data=reply, out_port=in_port)
