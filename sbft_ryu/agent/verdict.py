"""The per-packet decision for a replica's replies: pure, ``struct``-based, never raises.

The queue only ever sees this host's TCP replies from the service port (the iptables rules
select them), so the verdict needs only the role and the TCP flags: the primary's replies go
out, everything else (a backup's SYN-ACKs, data and the RSTs its stack sends for connections it
never accepted) is dropped. A packet too short or garbled to read gets DROP and its own counter:
failing closed costs at most one retransmission, leaking a backup's reply costs correctness.
"""

import struct

ACCEPT = 0
DROP = 1

# counter slots, indexes into a plain list so the hot path only does ``counters[i] += 1``
ACCEPTED = 0
DROPPED = 1
RST_DROPPED = 2
MALFORMED = 3
COUNTER_NAMES = ("accepted", "dropped", "rst_dropped", "malformed")

_IPV4 = struct.Struct("!B5xHxB")  # version/IHL, flags+fragment offset, protocol

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
_IPPROTO_TCP = 6


def tcp_flags(payload):
    """TCP flags of an IPv4 packet, or -1 if it is not a whole, first-fragment TCP header."""
    if len(payload) < 40:
        return -1
    version_ihl, fragment, protocol = _IPV4.unpack_from(payload)
    header_len = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_len < 20 or protocol != _IPPROTO_TCP:
        return -1
    if fragment & 0x1FFF:  # a fragment offset: only the first fragment carries TCP
        return -1
    if len(payload) < header_len + 20:
        return -1
    return payload[header_len + 13]


def reply_verdict(payload, primary):
    """(ACCEPT or DROP, counter slot) for one outgoing service packet."""
    flags = tcp_flags(payload)
    if flags < 0:
        return DROP, MALFORMED
    if primary:
        return ACCEPT, ACCEPTED
    if flags & TCP_RST:
        return DROP, RST_DROPPED
    return DROP, DROPPED
