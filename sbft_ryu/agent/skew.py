"""Emulating another machine's TCP stack, for tests: a constant ISN and timestamp-clock offset.

Network namespaces share one kernel, whose ISN and timestamp secrets are per kernel: replicas in
Mininet pick ISNs only a few thousand apart and identical timestamp clocks, so a test of active
replication could pass for the wrong reason (a translation that forgets timestamps or SACK
blocks would hardly show). ``--emulate-skew ISN:TS_MS`` puts this layer between the stack and
the translator: on the way out it shifts the stack's sequence numbers and TSvals as a second
machine's would be, and on the way in it shifts acknowledgements, SACK blocks and TSecr back.
A correct translator makes the shift invisible on the wire; a wrong one shows it at once.
"""

import struct

from sbft_ryu.agent.active import ACK, MASK32, checksum_delta

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")


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
        if len(payload) < 40 or payload[9] != 6:
            return payload
        ihl = (payload[0] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", payload, ihl)
        if (sport if outbound else dport) != self.port:
            return payload
        thl = (payload[ihl + 12] >> 4) * 4
        flags = payload[ihl + 13]
        buf = bytearray(payload)
        isn, ts = (sign * self.isn) & MASK32, (sign * self.ts) & MASK32
        regions = []
        field = ihl + (4 if outbound else 8)  # seq out, ack in
        if outbound or flags & ACK:
            _U32.pack_into(buf, field, (_U32.unpack_from(buf, field)[0] + isn) & MASK32)
            regions.append((field - ihl, field - ihl + 4))
        i, end = ihl + 20, ihl + thl
        while i < end and buf[i] != 0:
            if buf[i] == 1:
                i += 1
                continue
            if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
                break
            kind, length = buf[i], buf[i + 1]
            if kind == 8 and length == 10:
                at = i + 2 if outbound else i + 6  # TSval out, TSecr in
                value = _U32.unpack_from(buf, at)[0]
                if outbound or value:
                    _U32.pack_into(buf, at, (value + ts) & MASK32)
            elif kind == 5 and not outbound:
                for edge in range(i + 2, i + length - 3, 4):
                    _U32.pack_into(buf, edge, (_U32.unpack_from(buf, edge)[0] + isn) & MASK32)
            i += length
        if thl > 20:
            regions.append((20, thl))
        csum = _U16.unpack_from(payload, ihl + 16)[0]
        _U16.pack_into(buf, ihl + 16, checksum_delta(csum, memoryview(payload)[ihl:],
                                                     memoryview(buf)[ihl:], regions))
        return bytes(buf)
