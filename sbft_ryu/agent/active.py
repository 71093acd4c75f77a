"""Active replication: every replica's connection identical on the wire, one sequence space.

Each replica's kernel picks its own initial sequence number (ISN) and timestamp clock, so a
backup's connection normally differs from the primary's and is useless to the client. The agent
makes them identical: for each connection every replica derives the same ISN and the same
timestamp base from the connection itself (client address and port, VIP and port, the client's
ISN) keyed by a secret they share, and translates

* on the way out: its stack's sequence numbers and TSvals into the shared space (a primary's
  packets then leave; a backup's are dropped, but its stack advanced exactly like the
  primary's), the window into the shared window scale, the IP ID of atomic datagrams to 0;
* on the way in: the client's acknowledgements (ACK and SACK blocks) and TSecr back into the
  stack's own space, clamping the ACK to what this replica has itself sent (a lagging backup
  would otherwise see ACKs for data it has not sent yet, which Linux discards, and stall).

Checksums are updated incrementally over the changed 16-bit words (regions are aligned to the
TCP header, so options at odd offsets are handled). The client's ACK and request can reach a
replica before its own SYN-ACK, when the offset is not known yet: those are held (bounded in
count and time) and released, translated, right after it. Timestamps: the SYN-ACK's TSval is
the deterministic base, later TSvals follow the replica's own clock shifted by the same offset,
never below the highest TSecr the client has echoed (the client's PAWS check would drop them
after a failover otherwise).

Everything here is pure: ``Translator.process`` takes bytes and an opaque token (the NFQUEUE
packet) and returns what to do; it never raises on bad input and does no I/O or logging.
"""

import hashlib
import struct

ACCEPT = 0
DROP = 1
HOLD = 2

MASK32 = 0xFFFFFFFF
HALF32 = 0x80000000
MAX_HELD = 32  # packets held per connection while its SYN-ACK is awaited
HOLD_S = 1.0
IDLE_S = 300.0
CLOSED_S = 30.0
MAX_CONNECTIONS = 65536

_TCP = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_KEY = struct.Struct("!4sH4sHI")

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
FIN_IN, FIN_OUT, CLOSED_RST = 1, 2, 4

# counters: slots of a plain list (the hot path only does counters[i] += 1)
COUNTER_NAMES = ("translated_in", "translated_out", "dropped_backup", "held", "released",
                 "hold_overflow", "hold_expired", "unknown_out", "passed_unknown_in",
                 "malformed", "ack_clamped")
(C_IN, C_OUT, C_BACKUP, C_HELD, C_RELEASED, C_OVERFLOW, C_EXPIRED, C_UNKNOWN_OUT,
 C_UNKNOWN_IN, C_MALFORMED, C_CLAMPED) = range(len(COUNTER_NAMES))


def serial_gt(a, b):
    """a > b in 32-bit serial number arithmetic (RFC 1982)."""
    return 0 < ((a - b) & MASK32) < HALF32


def shared_values(secret, client_ip, client_port, vip, service_port, client_isn):
    """(shared ISN, shared timestamp base) of a connection: the same on every replica."""
    digest = hashlib.blake2s(_KEY.pack(client_ip, client_port, vip, service_port, client_isn),
                             key=secret, digest_size=8).digest()
    return _U32.unpack_from(digest, 0)[0], _U32.unpack_from(digest, 4)[0]


def checksum_delta(csum, old, new, regions):
    """The TCP/IP checksum after the bytes of ``regions`` ((start, end) pairs at even offsets
    from the checksummed header) changed from ``old`` to ``new`` (RFC 1624, summed with the
    identity 2**16 = 1 mod 0xFFFF)."""
    total = 0xFFFF - csum
    for start, end in regions:
        total += int.from_bytes(new[start:end], "big") - int.from_bytes(old[start:end], "big")
    result = total % 0xFFFF
    return (0xFFFF - result) % 0xFFFF if result else 0


class Connection:
    __slots__ = ("client_isn", "shared_isn", "ts_base", "seq_off", "ts_off", "own_max",
                 "ts_floor", "own_ws", "held", "held_at", "seen", "closed")

    def __init__(self, client_isn, shared_isn, ts_base, now):
        self.client_isn = client_isn
        self.shared_isn = shared_isn
        self.ts_base = ts_base
        self.seq_off = None  # shared - own, known once this replica's SYN-ACK went out
        self.ts_off = None  # shared timestamp base - own SYN-ACK TSval
        self.own_max = 0  # highest sequence number (own space) this replica has sent
        self.ts_floor = None  # highest TSecr the client echoed (shared clock)
        self.own_ws = None  # this stack's window scale, when both sides use scaling
        self.held = None
        self.held_at = 0.0
        self.seen = now
        self.closed = 0  # FIN_IN | FIN_OUT | CLOSED_RST bits


class Translator:
    """Per-connection translation state of one replica (one per agent)."""

    def __init__(self, secret, service_port, shared_wscale=7, counters=None):
        self.secret = secret
        self.port = service_port
        self.shared_ws = shared_wscale
        self.connections = {}
        self.counters = counters if counters is not None else [0] * len(COUNTER_NAMES)
        self.discarded = []  # held tokens to drop, handed out by the next expire()

    # ---- the per-packet entry point ---------------------------------------------------------

    def process(self, payload, token, primary, now):
        """(verdict, new payload or None, released) for one queued packet.

        ``released`` lists (token, payload) of held packets that may now go, in order. A HOLD
        verdict means the translator kept ``token``; the caller must not give it a verdict."""
        try:
            if len(payload) < 40 or payload[0] >> 4 != 4 or payload[9] != 6:
                raise ValueError
            ihl = (payload[0] & 0x0F) * 4
            if ihl < 20 or (payload[6] & 0x1F) or payload[7]:
                raise ValueError
            sport, dport, seq, ack, offset, flags, window = _TCP.unpack_from(payload, ihl)
            thl = (offset >> 4) * 4
            if thl < 20 or len(payload) < ihl + thl:
                raise ValueError
        except (ValueError, struct.error):
            self.counters[C_MALFORMED] += 1
            return DROP, None, ()
        if dport == self.port:
            return self._inbound(payload, token, ihl, thl, sport, seq, ack, flags, now)
        if sport == self.port:
            return self._outbound(payload, primary, ihl, thl, dport, seq, flags, now)
        self.counters[C_MALFORMED] += 1
        return DROP, None, ()

    # ---- client → replica --------------------------------------------------------------------

    def _inbound(self, payload, token, ihl, thl, sport, seq, ack, flags, now):
        key = (payload[12:16], sport)
        conn = self.connections.get(key)
        if flags & SYN and not flags & ACK:
            if conn is None or conn.client_isn != seq:
                if conn is not None and conn.held:  # a new connection on the same port
                    self.discarded.extend(token for token, _ in conn.held)
                if len(self.connections) >= MAX_CONNECTIONS:
                    self.discarded.extend(self.expire(now, force=True))
                shared_isn, ts_base = shared_values(self.secret, payload[12:16], sport,
                                                    payload[16:20], self.port, seq)
                self.connections[key] = Connection(seq, shared_isn, ts_base, now)
            else:
                conn.seen = now
            return ACCEPT, None, ()
        if conn is None:
            self.counters[C_UNKNOWN_IN] += 1
            return ACCEPT, None, ()  # the stack answers a stranger with a RST we never send
        conn.seen = now
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST if flags & RST else FIN_IN
        if conn.seq_off is None:  # the handshake race: our SYN-ACK has not gone out yet
            if conn.held is None:
                conn.held, conn.held_at = [], now
            if len(conn.held) >= MAX_HELD:
                self.counters[C_OVERFLOW] += 1
                return DROP, None, ()
            conn.held.append((token, payload))
            self.counters[C_HELD] += 1
            return HOLD, None, ()
        self.counters[C_IN] += 1
        return ACCEPT, self._translate_in(payload, ihl, thl, ack, flags, conn), ()

    def _translate_in(self, payload, ihl, thl, ack, flags, conn):
        buf = bytearray(payload)
        regions = []
        if flags & ACK:
            own = (ack - conn.seq_off) & MASK32
            if serial_gt(own, conn.own_max):
                own = conn.own_max
                self.counters[C_CLAMPED] += 1
            _U32.pack_into(buf, ihl + 8, own)
            regions.append((8, 12))
        if thl > 20 and self._options_in(buf, ihl + 20, ihl + thl, conn):
            regions.append((20, thl))
        if regions:
            tcp = memoryview(payload)[ihl:]
            new = memoryview(buf)[ihl:]
            csum = _U16.unpack_from(payload, ihl + 16)[0]
            _U16.pack_into(buf, ihl + 16, checksum_delta(csum, tcp, new, regions))
        return bytes(buf)

    def _options_in(self, buf, start, end, conn):
        changed = False
        i = start
        while i < end:
            kind = buf[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end:
                break
            length = buf[i + 1]
            if length < 2 or i + length > end:
                break
            if kind == 8 and length == 10 and conn.ts_off is not None:
                tsecr = _U32.unpack_from(buf, i + 6)[0]
                if tsecr:
                    if conn.ts_floor is None or serial_gt(tsecr, conn.ts_floor):
                        conn.ts_floor = tsecr
                    _U32.pack_into(buf, i + 6, (tsecr - conn.ts_off) & MASK32)
                    changed = True
            elif kind == 5 and length >= 10:
                for edge in range(i + 2, i + length - 7, 8):
                    left = (_U32.unpack_from(buf, edge)[0] - conn.seq_off) & MASK32
                    right = (_U32.unpack_from(buf, edge + 4)[0] - conn.seq_off) & MASK32
                    if serial_gt(right, conn.own_max):  # beyond what we sent: an empty block
                        right = conn.own_max
                        if serial_gt(left, right):
                            left = right
                    _U32.pack_into(buf, edge, left)
                    _U32.pack_into(buf, edge + 4, right)
                changed = True
            i += length
        return changed

    # ---- replica → client --------------------------------------------------------------------

    def _outbound(self, payload, primary, ihl, thl, dport, seq, flags, now):
        conn = self.connections.get((payload[16:20], dport))
        if conn is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return DROP, None, ()  # never leak our own sequence space
        conn.seen = now
        released = ()
        if flags & SYN:
            if conn.seq_off is None:
                self._learn_handshake(payload, ihl, thl, seq, conn)
                released = self._release(conn)
        elif conn.seq_off is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return DROP, None, ()
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST if flags & RST else FIN_OUT
        length = len(payload) - ihl - thl + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        end = (seq + length) & MASK32
        if serial_gt(end, conn.own_max):
            conn.own_max = end
        if not primary:
            self.counters[C_BACKUP] += 1
            return DROP, None, released
        self.counters[C_OUT] += 1
        return ACCEPT, self._translate_out(payload, ihl, thl, seq, flags, conn), released

    def _learn_handshake(self, payload, ihl, thl, seq, conn):
        conn.seq_off = (conn.shared_isn - seq) & MASK32
        conn.own_max = (seq + 1) & MASK32
        i, end = ihl + 20, ihl + thl
        while i < end:
            kind = payload[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end or payload[i + 1] < 2:
                break
            length = payload[i + 1]
            if kind == 8 and length == 10 and i + 10 <= end:
                conn.ts_off = (conn.ts_base - _U32.unpack_from(payload, i + 2)[0]) & MASK32
            elif kind == 3 and length == 3 and i + 3 <= end:
                conn.own_ws = payload[i + 2]
            i += length

    def _release(self, conn):
        held, conn.held = conn.held, None
        if not held:
            return ()
        self.counters[C_RELEASED] += len(held)
        out = []
        for token, payload in held:
            ihl = (payload[0] & 0x0F) * 4
            _, _, _, ack, offset, flags, _ = _TCP.unpack_from(payload, ihl)
            out.append((token, self._translate_in(payload, ihl, (offset >> 4) * 4, ack, flags,
                                                  conn)))
        return out

    def _translate_out(self, payload, ihl, thl, seq, flags, conn):
        buf = bytearray(payload)
        _U32.pack_into(buf, ihl + 4, (seq + conn.seq_off) & MASK32)
        regions = [(4, 8)]
        if conn.own_ws is not None and not flags & SYN and conn.own_ws != self.shared_ws:
            window = _U16.unpack_from(buf, ihl + 14)[0]
            window = (window << conn.own_ws) >> self.shared_ws
            _U16.pack_into(buf, ihl + 14, min(window, 0xFFFF))
            regions.append((14, 16))
        if thl > 20 and self._options_out(buf, ihl + 20, ihl + thl, flags, conn):
            regions.append((20, thl))
        csum = _U16.unpack_from(payload, ihl + 16)[0]
        _U16.pack_into(buf, ihl + 16, checksum_delta(
            csum, memoryview(payload)[ihl:], memoryview(buf)[ihl:], regions))
        if payload[6] & 0x40 and (payload[4] or payload[5]):  # DF: an IP ID means nothing
            buf[4] = buf[5] = 0
            ip_csum = _U16.unpack_from(payload, 10)[0]
            _U16.pack_into(buf, 10, checksum_delta(ip_csum, payload, buf, ((4, 6),)))
        return bytes(buf)

    def _options_out(self, buf, start, end, flags, conn):
        changed = False
        i = start
        while i < end:
            kind = buf[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end:
                break
            length = buf[i + 1]
            if length < 2 or i + length > end:
                break
            if kind == 8 and length == 10 and conn.ts_off is not None:
                tsval = (_U32.unpack_from(buf, i + 2)[0] + conn.ts_off) & MASK32
                if conn.ts_floor is not None and serial_gt(conn.ts_floor, tsval):
                    tsval = conn.ts_floor  # never below what the client has seen (PAWS)
                _U32.pack_into(buf, i + 2, tsval)
                changed = True
            elif kind == 3 and length == 3 and flags & SYN and buf[i + 2] != self.shared_ws:
                buf[i + 2] = self.shared_ws
                changed = True
            i += length
        return changed

    # ---- housekeeping --------------------------------------------------------------------------

    def expire(self, now, force=False):
        """Drop-tokens of packets held too long; forget idle and closed connections. ``force``
        (the table is full) also forgets the least recently seen half."""
        dropped, self.discarded = self.discarded, []
        stale = []
        for key, conn in self.connections.items():
            if conn.held and now - conn.held_at > HOLD_S:
                dropped.extend(token for token, _ in conn.held)
                self.counters[C_EXPIRED] += len(conn.held)
                conn.held = None
            idle = now - conn.seen
            done = conn.closed & CLOSED_RST or conn.closed == FIN_IN | FIN_OUT
            if idle > IDLE_S or (done and idle > CLOSED_S):
                stale.append(key)
        if force and len(self.connections) - len(stale) >= MAX_CONNECTIONS:
            by_age = sorted(self.connections, key=lambda k: self.connections[k].seen)
            stale.extend(by_age[:len(by_age) // 2])
        for key in stale:
            conn = self.connections.pop(key, None)
            if conn is not None and conn.held:
                dropped.extend(token for token, _ in conn.held)
        return dropped

    def snapshot(self):
        counters = dict(zip(COUNTER_NAMES, self.counters))
        counters["connections"] = len(self.connections)
        return counters
