"""Emulating another machine's TCP stack, for tests: a constant ISN and timestamp-clock offset.

Network namespaces share one kernel, whose ISN and timestamp secrets are per kernel: replicas in
Mininet pick ISNs only a few thousand apart and identical timestamp clocks, so a test of active
replication could pass for the wrong reason (a translation that forgets timestamps or SACK
blocks would hardly show). ``--emulate-skew ISN:TS_MS`` puts this layer between the stack and
the translator: on the way out it shifts the stack's sequence numbers and TSvals as a second
machine's would be, and on the way in it shifts acknowledgements, SACK blocks and TSecr back.
A correct translator makes the shift invisible on the wire; a wrong one shows it at once.
"""

from sbft_ryu.agent.packet import (ACK, ACK_NO, FLAGS, MASK32, OPTIONS, SACK, SEQ, TIMESTAMP, U32,
                                   changed_by, header_lengths, is_tcp, options, ports,
                                   set_tcp_checksum)


def parse_skew(text):
    """'ISN:TS_MS' (e.g. '1000000000:37000') → (isn offset, ts offset), both mod 2**32."""
    isn, _, ts = text.partition(":")
    return int(isn, 0) & MASK32, int(ts or "0", 0) & MASK32


class Skew:
    def __init__(self, isn, ts, service_port):
        self.isn = isn & MASK32
        self.ts = ts & MASK32
        self.port = service_port

    def outbound(self, payload):
        """The stack's packet as the emulated machine would have sent it."""
        return self._shift(payload, +1, outbound=True)

    def inbound(self, payload):
        """A translated client packet as the emulated machine's peer would see it."""
        return self._shift(payload, -1, outbound=False)

    def _shift(self, payload, sign, outbound):
        if not is_tcp(payload):
            return payload
        sport, dport = ports(payload)
        if (sport if outbound else dport) != self.port:
            return payload
        ihl, thl = header_lengths(payload)
        flags = payload[ihl + FLAGS]
        buf = bytearray(payload)
        isn, ts = (sign * self.isn) & MASK32, (sign * self.ts) & MASK32
        delta = 0
        field = ihl + (SEQ if outbound else ACK_NO)
        if outbound or flags & ACK:
            U32.pack_into(buf, field, (U32.unpack_from(buf, field)[0] + isn) & MASK32)
            delta += changed_by(payload, buf, field, field + 4)
        for kind, i, length in options(buf, ihl + OPTIONS, ihl + thl):
            if kind == TIMESTAMP and length == 10:
                at = i + 2 if outbound else i + 6  # TSval out, TSecr in
                value = U32.unpack_from(buf, at)[0]
                if outbound or value:
                    U32.pack_into(buf, at, (value + ts) & MASK32)
            elif kind == SACK and not outbound:
                for edge in range(i + 2, i + length - 3, 4):
                    U32.pack_into(buf, edge, (U32.unpack_from(buf, edge)[0] + isn) & MASK32)
        if thl > 20:
            delta += changed_by(payload, buf, ihl + OPTIONS, ihl + thl)
        set_tcp_checksum(buf, ihl, payload, delta)
        return bytes(buf)
