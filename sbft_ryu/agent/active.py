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
from collections import deque

from sbft_ryu import voting

ACCEPT = 0
DROP = 1
HOLD = 2
WIRE = 3

MASK32 = 0xFFFFFFFF
HALF32 = 0x80000000
ABSTAIN = "abstain"  # own_range: this replica cannot vote on the range
MAX_HELD = 32  # packets held per connection while its SYN-ACK is awaited
HOLD_S = 1.0
IDLE_S = 1800.0
CLOSED_S = 30.0
SCAN_S = 5.0  # how often idle and closed connections are looked for
MAX_CONNECTIONS = 65536
MAX_UNACKED_BYTES = 4 << 20  # per connection, kept by a backup for replay on promotion

_TCP = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_KEY = struct.Struct("!4sH4sHI")
_NOP_NOP_TS = b"\x01\x01\x08\x0a"

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
FIN_IN, FIN_OUT, CLOSED_RST, RESET_SENT, RST_OUT = 1, 2, 4, 8, 16

# counters: slots of a plain list (the hot path only does counters[i] += 1)
COUNTER_NAMES = ("translated_in", "translated_out", "dropped_backup", "held", "released",
                 "hold_overflow", "hold_expired", "unknown_out", "passed_unknown_in",
                 "malformed", "ack_clamped", "replayed", "unacked_overflow", "caught_up")
(C_IN, C_OUT, C_BACKUP, C_HELD, C_RELEASED, C_OVERFLOW, C_EXPIRED, C_UNKNOWN_OUT,
 C_UNKNOWN_IN, C_MALFORMED, C_CLAMPED, C_REPLAYED, C_UNACKED_OVERFLOW, C_CAUGHT_UP) = range(
     len(COUNTER_NAMES))


def serial_gt(a, b):
    """a > b in 32-bit serial number arithmetic (RFC 1982)."""
    return 0 < ((a - b) & MASK32) < HALF32


def shared_values(secret, client_ip, client_port, vip, service_port, client_isn):
    """(shared ISN, shared timestamp base) of a connection: the same on every replica."""
    digest = hashlib.blake2s(_KEY.pack(client_ip, client_port, vip, service_port, client_isn),
                             key=secret, digest_size=8).digest()
    return _U32.unpack_from(digest, 0)[0], _U32.unpack_from(digest, 4)[0]


def _checksum(csum, delta):
    """The checksum after the summed data changed by ``delta`` (new - old of 16-bit-aligned
    fields; a 32-bit field counts as one number since 2**16 = 1 mod 0xFFFF)."""
    result = (0xFFFF - csum + delta) % 0xFFFF
    return 0xFFFF - result if result else 0


checksum_after = _checksum  # for other modules that patch a checksum


def checksum_delta(csum, old, new, regions):
    """The TCP/IP checksum after the bytes of ``regions`` ((start, end) pairs at even offsets
    from the checksummed header) changed from ``old`` to ``new`` (RFC 1624, summed with the
    identity 2**16 = 1 mod 0xFFFF)."""
    total = 0xFFFF - csum
    for start, end in regions:
        total += int.from_bytes(new[start:end], "big") - int.from_bytes(old[start:end], "big")
    result = total % 0xFFFF
    return (0xFFFF - result) % 0xFFFF if result else 0


def _options(buf, start, end):
    """(kind, offset, length) of each well-formed TCP option in buf[start:end]; stops at the
    end-of-options kind or at the first malformed one (the rest is left as it is)."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            return
        length = buf[i + 1]
        if length < 2 or i + length > end:
            return
        yield kind, i, length
        i += length


class Connection:
    __slots__ = ("vip", "client_isn", "shared_isn", "ts_base", "seq_off", "ts_off", "own_max",
                 "ts_floor", "own_ws", "held", "held_at", "seen", "closed", "unacked",
                 "unacked_bytes", "own_acked", "own_at", "client_ack", "lossy",
                 "client_next", "client_window", "client_ts")

    def __init__(self, client_isn, shared_isn, ts_base, now, vip=b"\0\0\0\0"):
        self.vip = vip
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
        # A backup's segments the client has not acknowledged (own space): re-sent at once
        # on promotion, so the client need not wait for the new primary's retransmission timer.
        self.unacked = None
        self.unacked_bytes = 0
        self.own_acked = None  # the client's latest ACK, translated (own space)
        self.own_at = now  # when this replica's stack last sent new data
        self.client_ack = None  # the client's latest ACK as sent (shared space)
        self.lossy = False  # some of its unacknowledged output was not kept (over the cap)
        # what a pure ACK from the client needs (a lagging backup's catch-up ACK): the client's
        # next sequence number, its window field, its timestamp option as translated
        self.client_next = None
        self.client_window = 0
        self.client_ts = b""


class Translator:
    """Per-connection translation state of one replica (one per agent)."""

    def __init__(self, secret, service_port, shared_wscale=7, counters=None):
        self.secret = secret
        self.port = service_port
        self.shared_ws = shared_wscale
        self.connections = {}
        self.counters = counters if counters is not None else [0] * len(COUNTER_NAMES)
        self.discarded = []  # held tokens to drop, handed out by the next expire()
        self.outgoing = []  # packets the agent must send itself (RSTs), taken after process()
        self.to_stack = []  # packets for this replica's own stack (catch-up ACKs), likewise
        self._holding = set()  # keys of connections holding packets
        self._scanned = 0.0

    # ---- the per-packet entry point ---------------------------------------------------------

    def process(self, payload, token, primary, now, arriving=False):
        """(verdict, new payload or None, released) for one queued packet.

        ``released`` lists (token, payload) of held packets that may now go, in order. A HOLD
        verdict means the translator kept ``token``; the caller must not give it a verdict.
        ``arriving``: the packet came in from the network (PREROUTING); one that arrives *from*
        the service port is the switch's copy of the primary's reply (WIRE)."""
        try:
            if len(payload) < 40 or payload[0] >> 4 != 4 or payload[9] != 6:
                raise ValueError
            ihl = (payload[0] & 0x0F) * 4
            # whole datagrams only: no fragment (MF or an offset), the length as announced
            if ihl < 20 or (payload[6] & 0x3F) or payload[7]:
                raise ValueError
            if _U16.unpack_from(payload, 2)[0] != len(payload):
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
            if arriving:
                return WIRE, None, ()
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
                    conn.held = None
                if len(self.connections) >= MAX_CONNECTIONS:
                    evicted = self.expire(now, force=True)  # (resets self.discarded)
                    self.discarded.extend(evicted)
                shared_isn, ts_base = shared_values(self.secret, payload[12:16], sport,
                                                    payload[16:20], self.port, seq)
                self.connections[key] = Connection(seq, shared_isn, ts_base, now,
                                                   bytes(payload[16:20]))
            else:
                conn.seen = now
            return ACCEPT, None, ()
        if conn is None:
            self.counters[C_UNKNOWN_IN] += 1
            return ACCEPT, None, ()  # the stack answers a stranger with a RST we never send
        conn.seen = now
        if flags & ACK:
            conn.client_ack = ack
        if conn.closed & RESET_SENT:  # we reset it: answer what still comes (a challenge
            if flags & ACK and not flags & RST:  # ACK, RFC 5961) with a RST it accepts
                self.outgoing.append(self._rst(conn, payload[12:16], sport, ack))
            return DROP, None, ()
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST if flags & RST else FIN_IN
        if conn.seq_off is None:  # the handshake race: our SYN-ACK has not gone out yet
            if conn.held is None:
                conn.held, conn.held_at = [], now
            if len(conn.held) >= MAX_HELD:
                self.counters[C_OVERFLOW] += 1
                return DROP, None, ()
            conn.held.append((token, payload))
            self._holding.add(key)
            self.counters[C_HELD] += 1
            return HOLD, None, ()
        self.counters[C_IN] += 1
        return ACCEPT, self._translate_in(payload, ihl, thl, ack, flags, conn), ()

    def _translate_in(self, payload, ihl, thl, ack, flags, conn):
        # what a catch-up ACK needs: the client's next sequence number and latest window
        after = (_U32.unpack_from(payload, ihl + 4)[0] + len(payload) - ihl - thl
                 + (1 if flags & FIN else 0)) & MASK32
        if conn.client_next is None or not serial_gt(conn.client_next, after):
            conn.client_next = after
            conn.client_window = _U16.unpack_from(payload, ihl + 14)[0]
        buf = bytearray(payload)
        delta = 0  # of the one's-complement sum: a 16-bit-aligned 32-bit field adds new - old
        if flags & ACK:
            own = (ack - conn.seq_off) & MASK32
            if serial_gt(own, conn.own_max):
                own = conn.own_max
                self.counters[C_CLAMPED] += 1
            _U32.pack_into(buf, ihl + 8, own)
            delta += own - ack
            conn.own_acked = own
            if conn.unacked:
                self._trim_unacked(conn, own)
        options = ihl + 20
        if thl == 32 and payload[options:options + 4] == _NOP_NOP_TS:  # Linux's usual layout
            if conn.ts_off is not None:
                tsecr = _U32.unpack_from(payload, options + 8)[0]
                if tsecr:
                    if conn.ts_floor is None or serial_gt(tsecr, conn.ts_floor):
                        conn.ts_floor = tsecr
                    own_ts = (tsecr - conn.ts_off) & MASK32
                    _U32.pack_into(buf, options + 8, own_ts)
                    delta += own_ts - tsecr
            conn.client_ts = bytes(buf[options:options + 12])
        elif thl > 20 and self._options_in(buf, options, ihl + thl, conn):
            delta += (int.from_bytes(buf[options:ihl + thl], "big")
                      - int.from_bytes(payload[options:ihl + thl], "big"))
        if delta:
            _U16.pack_into(buf, ihl + 16, _checksum(_U16.unpack_from(payload, ihl + 16)[0],
                                                    delta))
        return bytes(buf)

    def _options_in(self, buf, start, end, conn):
        changed = False
        for kind, i, length in _options(buf, start, end):
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
        return changed

    # ---- replica → client --------------------------------------------------------------------

    def _outbound(self, payload, primary, ihl, thl, dport, seq, flags, now):
        conn = self.connections.get((payload[16:20], dport))
        if conn is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return DROP, None, ()  # never leak our own sequence space
        conn.seen = now
        if conn.closed & RESET_SENT:
            return DROP, None, ()  # reset by us: its stack's leftovers never reach the client
        released = ()
        if flags & SYN:
            if conn.seq_off is None:
                self._learn_handshake(payload, ihl, thl, seq, conn)
                released = self._release(conn)
        elif conn.seq_off is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return DROP, None, ()
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST | RST_OUT if flags & RST else FIN_OUT
        length = len(payload) - ihl - thl + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        end = (seq + length) & MASK32
        if serial_gt(end, conn.own_max):
            conn.own_max = end
        if not primary:
            self.counters[C_BACKUP] += 1
            if length and not flags & (SYN | RST):
                self._keep_unacked(conn, seq, end, payload)
                if conn.client_ack is not None and conn.client_next is not None and \
                        not serial_gt(end, (conn.client_ack - conn.seq_off) & MASK32):
                    self._catch_up(conn, payload[16:20], dport, end)
            return DROP, None, released
        self.counters[C_OUT] += 1
        return ACCEPT, self._translate_out(payload, ihl, thl, seq, flags, conn), released

    def _catch_up(self, conn, client, port, end):
        """A backup's stack sent bytes the client acknowledged before this stack produced them
        (it lags): the client will not acknowledge them again, so give the stack the ACK
        itself. Without it the stack retransmits them, and a FIN never acknowledged keeps the
        socket closing long enough for a reused client port to find it (a SYN that never
        opens a connection on this replica)."""
        self.counters[C_CAUGHT_UP] += 1
        conn.own_acked = end
        if conn.unacked:
            self._trim_unacked(conn, end)
        options = conn.client_ts if len(conn.client_ts) == 12 else b""
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(options), 0, 0x4000, 64,
                                   6, 0, client, conn.vip))
        tcp = bytearray(struct.pack("!HHIIBBHHH", port, self.port, conn.client_next, end,
                                    (5 + len(options) // 4) << 4, ACK, conn.client_window, 0,
                                    0) + options)
        _U16.pack_into(ip, 10, _checksum(0xFFFF, int.from_bytes(ip, "big")))
        pseudo = client + conn.vip + struct.pack("!BBH", 0, 6, len(tcp))
        _U16.pack_into(tcp, 16, _checksum(0xFFFF, int.from_bytes(pseudo + tcp, "big")))
        self.to_stack.append(bytes(ip + tcp))

    def _keep_unacked(self, conn, seq, end, payload):
        if conn.unacked is None:
            conn.unacked = deque()
        elif conn.unacked and not serial_gt(end, conn.unacked[-1][1]):
            return  # a retransmission of what is kept already
        conn.own_at = conn.seen
        if conn.unacked_bytes + len(payload) > MAX_UNACKED_BYTES:
            self.counters[C_UNACKED_OVERFLOW] += 1
            conn.lossy = True
            return
        conn.unacked.append((seq, end, payload))
        conn.unacked_bytes += len(payload)

    def _trim_unacked(self, conn, own_ack):
        unacked = conn.unacked
        while unacked and not serial_gt(unacked[0][1], own_ack):
            conn.unacked_bytes -= len(unacked.popleft()[2])

    def replay(self):
        """Translated copies of every segment this replica sent as a backup and the client has
        not acknowledged, for a new primary to send at once (then forgotten)."""
        packets = []
        for conn in self.connections.values():
            if not conn.unacked or conn.seq_off is None:
                continue
            if conn.own_acked is not None:
                self._trim_unacked(conn, conn.own_acked)
            for seq, _, payload in conn.unacked:
                ihl = (payload[0] & 0x0F) * 4
                thl = (payload[ihl + 12] >> 4) * 4
                packets.append(self._translate_out(payload, ihl, thl, seq,
                                                   payload[ihl + 13], conn))
            conn.unacked, conn.unacked_bytes = None, 0
        self.counters[C_REPLAYED] += len(packets)
        return packets

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
        shared = (seq + conn.seq_off) & MASK32
        _U32.pack_into(buf, ihl + 4, shared)
        delta = shared - seq
        if conn.own_ws is not None and not flags & SYN and conn.own_ws != self.shared_ws:
            window = _U16.unpack_from(payload, ihl + 14)[0]
            scaled = min((window << conn.own_ws) >> self.shared_ws, 0xFFFF)
            _U16.pack_into(buf, ihl + 14, scaled)
            delta += scaled - window
        options = ihl + 20
        if thl == 32 and payload[options:options + 4] == _NOP_NOP_TS:  # Linux's usual layout
            if conn.ts_off is not None:
                own_ts = _U32.unpack_from(payload, options + 4)[0]
                tsval = (own_ts + conn.ts_off) & MASK32
                if conn.ts_floor is not None and serial_gt(conn.ts_floor, tsval):
                    tsval = conn.ts_floor  # never below what the client has seen (PAWS)
                _U32.pack_into(buf, options + 4, tsval)
                delta += tsval - own_ts
        elif thl > 20 and self._options_out(buf, options, ihl + thl, flags, conn):
            delta += (int.from_bytes(buf[options:ihl + thl], "big")
                      - int.from_bytes(payload[options:ihl + thl], "big"))
        _U16.pack_into(buf, ihl + 16, _checksum(_U16.unpack_from(payload, ihl + 16)[0], delta))
        if payload[6] & 0x40 and (payload[4] or payload[5]):  # DF: an IP ID means nothing
            ip_id = _U16.unpack_from(payload, 4)[0]
            buf[4] = buf[5] = 0
            _U16.pack_into(buf, 10, _checksum(_U16.unpack_from(payload, 10)[0], -ip_id))
        return bytes(buf)

    def _options_out(self, buf, start, end, flags, conn):
        changed = False
        for kind, i, length in _options(buf, start, end):
            if kind == 8 and length == 10 and conn.ts_off is not None:
                tsval = (_U32.unpack_from(buf, i + 2)[0] + conn.ts_off) & MASK32
                if conn.ts_floor is not None and serial_gt(conn.ts_floor, tsval):
                    tsval = conn.ts_floor  # never below what the client has seen (PAWS)
                _U32.pack_into(buf, i + 2, tsval)
                changed = True
            elif kind == 3 and length == 3 and flags & SYN and buf[i + 2] != self.shared_ws:
                buf[i + 2] = self.shared_ws
                changed = True
        return changed

    # ---- housekeeping --------------------------------------------------------------------------

    def expire(self, now, force=False):
        """Tokens to drop: packets held too long, or held by connections that are forgotten.

        Held packets are checked on every call (only connections that hold any); idle and
        closed connections are forgotten every SCAN_S. ``force`` (the table is full) also
        forgets connections still in their handshake, then the least recently seen half."""
        dropped, self.discarded = self.discarded, []
        for key in list(self._holding):
            conn = self.connections.get(key)
            if conn is None or not conn.held:
                self._holding.discard(key)
            elif now - conn.held_at > HOLD_S:
                dropped.extend(token for token, _ in conn.held)
                self.counters[C_EXPIRED] += len(conn.held)
                conn.held = None
                self._holding.discard(key)
        if not force and now - self._scanned < SCAN_S:
            return dropped
        self._scanned = now
        stale = []
        for key, conn in self.connections.items():
            idle = now - conn.seen
            done = conn.closed & CLOSED_RST or conn.closed == FIN_IN | FIN_OUT
            if idle > IDLE_S or (done and idle > CLOSED_S):
                stale.append(key)
        if force and len(self.connections) - len(stale) >= MAX_CONNECTIONS:
            # a SYN flood must not cost established connections: handshakes go first
            stale.extend(k for k, c in self.connections.items() if c.seq_off is None)
            if len(self.connections) - len(set(stale)) >= MAX_CONNECTIONS:
                by_age = sorted(self.connections, key=lambda k: self.connections[k].seen)
                stale.extend(by_age[:len(by_age) // 2])
        for key in stale:
            conn = self.connections.pop(key, None)
            if conn is not None and conn.held:
                dropped.extend(token for token, _ in conn.held)
        return dropped

    # ---- for voting ------------------------------------------------------------------------------

    def statement_of(self, payload):
        """The voting statement of a reply in the shared space (translated, or copied from the
        wire): its range and digest; None for a segment without data or FIN."""
        ihl = (payload[0] & 0x0F) * 4
        _, dport, seq, _, offset, flags, _ = _TCP.unpack_from(payload, ihl)
        data = memoryview(payload)[ihl + (offset >> 4) * 4:]
        fin = bool(flags & FIN)
        if not data and not fin:
            return None
        return voting.Statement(bytes(payload[16:20]), dport, seq,
                                (seq + len(data) + fin) & MASK32, voting.digest(data, fin))

    def own_range(self, client, port, start, end, partial=False):
        """(data, fin) that this replica's own stack sent for shared-space [start, end), or
        None while it has not sent all of it. If its own stream ended (FIN) before ``end``,
        what it sent up to its FIN: it will never send the rest, so the range differs.
        ``partial``: whatever it has sent of the range so far.

        :data:`ABSTAIN` when it cannot know any more: the client already acknowledged the
        range's start (the bytes were trimmed, and reached the client through f votes or on
        a wire the backups checked), its output outgrew what a backup keeps, or (``partial``)
        the connection is not one its stack took part in."""
        conn = self.connections.get((client, port))
        if conn is None or conn.seq_off is None:
            # not (yet) a connection of ours: wait; after the patience, it never was (this
            # replica joined later, or its stack never answered the SYN)
            return ABSTAIN if partial else None
        own_start = (start - conn.seq_off) & MASK32
        length = (end - start) & MASK32
        pieces = []
        have = 0  # bytes of [own_start, own_start + length) collected, contiguously
        fin = False
        for seq, _, payload in conn.unacked or ():
            ihl = (payload[0] & 0x0F) * 4
            data_at = ihl + (payload[ihl + 12] >> 4) * 4
            size = len(payload) - data_at
            offset = (own_start + have - seq) & MASK32  # where we need to start in this one
            if offset >= HALF32:
                break  # a hole before this segment
            if offset < size:
                take = min(size - offset, length - have)
                pieces.append(payload[data_at + offset:data_at + offset + take])
                have += take
            if payload[ihl + 13] & FIN and offset <= size and have < length:
                fin = True  # our stream ends here: at the range's end, or short of it
                break
            if have >= length:
                break
        if have < length and not fin:
            if conn.lossy or (conn.own_acked is not None and
                              serial_gt(conn.own_acked, own_start)):
                return ABSTAIN
            if partial and conn.closed & RST_OUT:
                return ABSTAIN  # our own proxy aborted it: an omission, not other bytes
            if not partial:
                return None
        return b"".join(pieces), fin

    def quiet_for(self, client, port, now):
        """Seconds since this replica's stack last sent new data on the connection."""
        conn = self.connections.get((client, port))
        return now - conn.own_at if conn is not None else float("inf")

    def reset_packet(self, client, port):
        """A RST the client accepts at once (seq = its next expected byte), forgetting the
        connection: for connections a lying primary corrupted on the wire."""
        conn = self.connections.get((client, port))
        if conn is None or conn.seq_off is None:
            return None
        seq = conn.client_ack if conn.client_ack is not None else (conn.shared_isn + 1) & MASK32
        conn.closed |= CLOSED_RST | RESET_SENT  # everything else it sends is dropped
        conn.unacked, conn.unacked_bytes = None, 0
        return self._rst(conn, client, port, seq)

    def _rst(self, conn, client, port, seq):
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                                   conn.vip, client))
        tcp = bytearray(struct.pack("!HHIIBBHHH", self.port, port, seq, 0, 5 << 4, RST, 0, 0,
                                    0))
        _U16.pack_into(ip, 10, _checksum(0xFFFF, int.from_bytes(ip, "big")))
        pseudo = conn.vip + client + b"\x00\x06\x00\x14"
        _U16.pack_into(tcp, 16, _checksum(0xFFFF, int.from_bytes(pseudo + tcp, "big")))
        return bytes(ip + tcp)

    def snapshot(self):
        counters = dict(zip(COUNTER_NAMES, self.counters))
        counters["connections"] = len(self.connections)
        return counters
