"""The per-packet decision for a replica's replies: pure, ``struct``-based, never raises.

The queue only ever sees this host's TCP replies from the service port (the iptables rules
select them), so the verdict needs only the role and the TCP flags: the primary's replies go
out, everything else (a backup's SYN-ACKs, data and the RSTs its stack sends for connections it
never accepted) is dropped. A packet too short or garbled to read gets DROP and its own counter:
failing closed costs at most one retransmission, leaking a backup's reply costs correctness.
"""

from sbft_ryu.agent.packet import RST, tcp_flags

ACCEPT = 0
DROP = 1

# counter slots, indexes into a plain list so the hot path only does ``counters[i] += 1``
ACCEPTED = 0
DROPPED = 1
RST_DROPPED = 2
MALFORMED = 3
COUNTER_NAMES = ("accepted", "dropped", "rst_dropped", "malformed")


def reply_verdict(payload, primary):
    """(ACCEPT or DROP, counter slot) for one outgoing service packet."""
    flags = tcp_flags(payload)
    if flags < 0:
        return DROP, MALFORMED
    if primary:
        return ACCEPT, ACCEPTED
    if flags & RST:
        return DROP, RST_DROPPED
    return DROP, DROPPED
