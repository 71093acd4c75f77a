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

Everything here is pure: ``Translator.process`` takes bytes and an opaque token (the shell's
handle for the queued packet, never called here) and returns every effect of the packet in
one tuple, :data:`EFFECTS`; it never raises on bad input and does no I/O or logging. Only the
I/O shell (``nfq.py``) gives verdicts. What the stack sent and the client has not acknowledged
is kept by :mod:`~sbft_ryu.agent.unacked`; the voting read side is
:mod:`~sbft_ryu.agent.own_output`; the header layout is :mod:`~sbft_ryu.agent.packet`.
"""

import hashlib
import struct

from sbft_ryu.agent import client_input, unacked
from sbft_ryu.agent.own_output import RST_OUT, OwnOutput
from sbft_ryu.agent.packet import (ACK, ACK_NO, CHECKSUM, DONT_FRAGMENT, DST, FIN, FRAGMENT,
                                   MASK32, NOP_NOP_TS, OPTIONS, RST, SACK, SEQ, SRC, SYN, TIMESTAMP,
                                   U16, U32, WSCALE, WINDOW, build, changed_by, checksum_after,
                                   clear_ip_id, options, parse, serial_gt)

ACCEPT = 0
DROP = 1
HOLD = 2
WIRE = 3

# what process() returns, in this order:
EFFECTS = (
    "verdict",  # ACCEPT, DROP, HOLD (the translator kept the token) or WIRE (a copy: look)
    "payload",  # the packet's new bytes, or None: unchanged
    "released",  # (token, payload) of held packets that may go now, in order
    "send",  # packets the agent sends itself (RSTs to a client)
    "to_stack",  # packets for this replica's own stack (catch-up ACKs)
    "drop",  # tokens held earlier that must be dropped
)
_ACCEPTED = (ACCEPT, None, (), (), (), ())
_DROPPED = (DROP, None, (), (), (), ())
_HELD = (HOLD, None, (), (), (), ())
_ON_WIRE = (WIRE, None, (), (), (), ())

MAX_HELD = 32  # packets held per connection while its SYN-ACK is awaited
HOLD_S = 1.0
IDLE_S = 1800.0
CLOSED_S = 30.0
SCAN_S = 5.0  # how often idle and closed connections are looked for
MAX_CONNECTIONS = 65536
MAX_UNACKED_BYTES = unacked.MAX_UNACKED_BYTES

_KEY = struct.Struct("!4sH4sHI")

FIN_IN, FIN_OUT, CLOSED_RST, RESET_SENT = 1, 2, 4, 8  # Connection.closed, with RST_OUT

# counters: slots of a plain list (the hot path only does counters[i] += 1)
COUNTER_NAMES = ("translated_in", "translated_out", "dropped_backup", "held", "released",
                 "hold_overflow", "hold_expired", "unknown_out", "passed_unknown_in",
                 "malformed", "ack_clamped", "replayed", "unacked_overflow", "caught_up",
                 "client_gap_bytes", "client_beyond_window", "client_reinjected",
                 "client_park_overflow", "input_lost_resets", "port_reuse_resets")
(C_IN, C_OUT, C_BACKUP, C_HELD, C_RELEASED, C_OVERFLOW, C_EXPIRED, C_UNKNOWN_OUT,
 C_UNKNOWN_IN, C_MALFORMED, C_CLAMPED, C_REPLAYED, C_UNACKED_OVERFLOW, C_CAUGHT_UP,
 C_GAP, C_BEYOND, C_REINJECTED, C_PARK_OVERFLOW, C_LOST_RESETS,
 C_REUSE_RESETS) = range(len(COUNTER_NAMES))
# gauges (client_input.survey), reported beside the counters
GAUGE_NAMES = ("connections_behind", "bytes_missing", "parked_bytes")


def shared_values(secret, client_ip, client_port, vip, service_port, client_isn):
    """(shared ISN, shared timestamp base) of a connection: the same on every replica."""
    digest = hashlib.blake2s(_KEY.pack(client_ip, client_port, vip, service_port, client_isn),
                             key=secret, digest_size=8).digest()
    return U32.unpack_from(digest, 0)[0], U32.unpack_from(digest, 4)[0]


class Connection:
    __slots__ = ("vip", "client_isn", "shared_isn", "ts_base", "seq_off", "ts_off", "own_max",
                 "ts_floor", "own_ws", "held", "held_at", "seen", "closed", "unacked",
                 "unacked_bytes", "acked", "acked_bytes", "own_acked", "own_at", "client_ack",
                 "lossy", "client_next", "client_window", "client_ts", "generation", "own_rcv",
                 "own_edge", "rcv_at", "peer_ack", "input_lost", "parked", "undelivered",
                 "parked_disorder")

    def __init__(self, client_isn, shared_isn, ts_base, now, vip=b"\0\0\0\0", generation=0):
        self.vip = vip
        self.generation = generation  # the replica's generation when the connection began
        self.client_isn = client_isn
        self.shared_isn = shared_isn
        self.ts_base = ts_base
        self.seq_off = None  # shared - own, known once this replica's SYN-ACK went out
        self.ts_off = None  # shared timestamp base - own SYN-ACK TSval
        self.own_max = 0  # highest sequence number (own space) this replica has sent
        self.ts_floor = None  # highest TSecr the client echoed (shared clock)
        self.own_ws = None  # this stack's window scale, when both sides use scaling
        self.held = None  # [(token, payload)] while the SYN-ACK is awaited
        self.held_at = 0.0
        self.seen = now
        self.closed = 0  # FIN_IN | FIN_OUT | CLOSED_RST | RESET_SENT | RST_OUT bits
        # A backup's segments the client has not acknowledged (own space), see unacked.py
        self.unacked = None
        self.unacked_bytes = 0
        self.acked = None  # the latest of them the client acknowledged, for the vote engine
        self.acked_bytes = 0
        self.own_acked = None  # the client's latest ACK, translated (own space)
        self.own_at = now  # when this replica's stack last sent new data
        self.client_ack = None  # the client's latest ACK as sent (shared space)
        self.lossy = False  # some of its unacknowledged output was not kept (over the cap)
        # what a pure ACK from the client needs (a lagging backup's catch-up ACK): the client's
        # next sequence number, its window field, its timestamp option as translated
        self.client_next = None
        self.client_window = 0
        self.client_ts = b""
        # the client's bytes (client_input.py): this stack's receive point and window edge,
        # when it last advanced, the point the primary acknowledged (wire copy), lost or not
        self.own_rcv = None
        self.own_edge = None
        self.rcv_at = now
        self.peer_ack = None
        self.input_lost = False
        # client segments its stack has not acknowledged yet: deque of [seq, end, translated
        # payload, delivered], and how many were never delivered (beyond its window)
        self.parked = None
        self.undelivered = 0
        self.parked_disorder = False  # a resent segment was kept behind newer ones


class Translator:
    """Per-connection translation state of one replica (one per agent)."""

    def __init__(self, secret, service_port, shared_wscale=7, counters=None):
        self.secret = secret
        self.port = service_port
        self.shared_ws = shared_wscale
        self.connections = {}
        self.counters = counters if counters is not None else [0] * len(COUNTER_NAMES)
        self.own_output = OwnOutput(self.connections)  # the voting read side
        # this replica's generation (voting; set by the heartbeat thread, one int assignment):
        # each connection remembers the one it began in
        self.generation = 0
        self._holding = set()  # keys of connections holding packets
        self._scanned = 0.0
        self.gauges = dict.fromkeys(GAUGE_NAMES, 0)  # client_input.survey, at every tick
        self.parked_bytes = 0  # client bytes parked for this replica's stack (all connections)
        self._verifying = {}  # key -> when a new primary resets it, unless it catches up
        self._watching = {}  # key -> the client's next byte at the promotion (see promoted)
        self._promoted_at = None
        self.lost_reset_keys = []  # (client, port) reset by verify_input, for the RST repeat
        # (client, port) of connections begun since the queue last looked (None: nobody
        # looks): the vote engine forgets what it knew of an earlier connection there
        self.begun = None

    # ---- the per-packet entry point ---------------------------------------------------------

    def process(self, payload, token, primary, now, arriving=False):
        """Every effect of one queued packet: a tuple in the order of :data:`EFFECTS`.

        A HOLD verdict means the translator kept ``token`` (it comes back in a later
        ``released`` or ``drop``, or from :meth:`expire` or :meth:`take_held`); the caller
        must not give it a verdict now. ``arriving``: the packet came in from the network
        (PREROUTING); one that arrives *from* the service port is the switch's copy of the
        primary's reply (WIRE)."""
        try:
            ihl, thl, sport, dport, seq, ack, flags, window, csum = parse(payload)
        except (ValueError, struct.error):
            self.counters[C_MALFORMED] += 1
            return _DROPPED
        if dport == self.port:
            return self._inbound(payload, token, ihl, thl, sport, seq, ack, flags, window, csum,
                                 now, primary)
        if sport == self.port:
            if arriving:  # the primary's segment: what it acknowledged to the client
                if flags & ACK:  # (a new primary still drains the old one's copies)
                    conn = self.connections.get((payload[DST], dport))
                    if conn is not None:
                        client_input.on_peer_ack(conn, ack)
                return _ON_WIRE
            return self._outbound(payload, primary, ihl, thl, dport, seq, ack, flags, window,
                                  csum, now)
        self.counters[C_MALFORMED] += 1
        return _DROPPED

    # ---- client → replica --------------------------------------------------------------------

    def _inbound(self, payload, token, ihl, thl, sport, seq, ack, flags, window, csum, now,
                 primary=False):
        key = (payload[SRC], sport)
        conn = self.connections.get(key)
        if flags & SYN and not flags & ACK:
            if conn is None or conn.client_isn != seq:
                drop = []
                earlier = ()
                if conn is not None:  # a new connection on the same client port
                    if conn.held:
                        drop.extend(token for token, _ in conn.held)
                        conn.held = None
                    earlier = self._reset_earlier(conn, payload[SRC], sport)
                if len(self.connections) >= MAX_CONNECTIONS:
                    drop.extend(self.expire(now, force=True))
                shared_isn, ts_base = shared_values(self.secret, payload[SRC], sport,
                                                    payload[DST], self.port, seq)
                self.connections[key] = Connection(seq, shared_isn, ts_base, now,
                                                   bytes(payload[DST]), self.generation)
                if self.begun is not None:
                    self.begun.append(key)
                if self._verifying or self._watching:  # (a promotion's checks are of the
                    self._verifying.pop(key, None)  # connections open then)
                    self._watching.pop(key, None)
                if earlier:  # the RSTs, then the SYN itself, reach the stack in that order
                    self.counters[C_REUSE_RESETS] += 1
                    return DROP, None, (), (), earlier + (bytes(payload),), tuple(drop)
                if drop:
                    return ACCEPT, None, (), (), (), tuple(drop)
            else:
                conn.seen = now
            return _ACCEPTED
        if conn is None:
            self.counters[C_UNKNOWN_IN] += 1
            return _ACCEPTED  # the stack answers a stranger with a RST we never send
        conn.seen = now
        if flags & ACK:
            conn.client_ack = ack
        if conn.closed & RESET_SENT:  # we reset it: answer what still comes (a challenge
            if flags & ACK and not flags & RST:  # ACK, RFC 5961) with a RST it accepts
                return DROP, None, (), (self._rst(conn, payload[SRC], sport, ack),), (), ()
            return _DROPPED
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST if flags & RST else FIN_IN
        if conn.seq_off is None:  # the handshake race: our SYN-ACK has not gone out yet
            if conn.held is None:
                conn.held, conn.held_at = [], now
            if len(conn.held) >= MAX_HELD:
                self.counters[C_OVERFLOW] += 1
                return _DROPPED
            conn.held.append((token, payload))
            self._holding.add(key)
            self.counters[C_HELD] += 1
            return _HELD
        self.counters[C_IN] += 1
        data = len(payload) - ihl - thl
        beyond = 0
        if data:  # client bytes that skipped the agent, or that the stack has no room for
            self.counters[C_GAP] += client_input.gap(conn, seq)
            beyond = client_input.beyond_window(conn, seq, data)
            self.counters[C_BEYOND] += beyond
        new = self._translate_in(payload, ihl, thl, seq, ack, flags, window, csum, conn)
        if data and not primary:  # the client resends only to a primary: keep it
            if self.parked_bytes + data <= client_input.MAX_PARKED_BYTES:
                client_input.park(conn, seq, data, new, beyond < data)
                self.parked_bytes += data
                if beyond == data:
                    return _DROPPED  # the stack would drop it: it gets it when there is room
            else:
                self.counters[C_PARK_OVERFLOW] += data
        return ACCEPT, new, (), (), (), ()

    def _reset_earlier(self, conn, client, port):
        """RSTs for this stack's socket of the earlier connection on a client port that comes
        round again: a socket the stack may still hold answers the new SYN with an ACK (RFC
        5961) instead of a SYN-ACK, and the new connection never opens on this replica (the
        client does not resend its SYN: another replica answered it). Such sockets are those
        of a replica cut off mid-connection (excluded, then readmitted: it never saw the
        client's FIN) or of one whose connection the agent reset towards the client only.
        A RST is taken at the stack's receive point alone: the last one it acknowledged, and
        the client's next byte if that differs (one of them is exact; the other, in the
        window at most, earns a challenge ACK the agent drops). A stack without the socket
        ignores them; one in TIME-WAIT ends it early. () if the stack never answered."""
        if conn.seq_off is None or conn.own_rcv is None:
            return ()
        points = [conn.own_rcv]
        if conn.client_next is not None and conn.client_next != conn.own_rcv:
            points.append(conn.client_next)
        return tuple(build(client, conn.vip, port, self.port, point, 0, RST) for point in points)

    def _translate_in(self, payload, ihl, thl, seq, ack, flags, window, csum, conn):
        # what a catch-up ACK needs: the client's next sequence number and latest window
        after = (seq + len(payload) - ihl - thl + (1 if flags & FIN else 0)) & MASK32
        if conn.client_next is None or not serial_gt(conn.client_next, after):
            conn.client_next = after
            conn.client_window = window
        buf = bytearray(payload)
        delta = 0  # of the one's-complement sum: a 16-bit-aligned 32-bit field adds new - old
        if flags & ACK:
            own = (ack - conn.seq_off) & MASK32
            if serial_gt(own, conn.own_max):
                own = conn.own_max
                self.counters[C_CLAMPED] += 1
            U32.pack_into(buf, ihl + ACK_NO, own)
            delta += own - ack
            conn.own_acked = own
            if conn.unacked:
                unacked.trim(conn, own)
        start = ihl + OPTIONS
        if thl == 32 and payload[start:start + 4] == NOP_NOP_TS:  # Linux's usual layout
            if conn.ts_off is not None:
                tsecr = U32.unpack_from(payload, start + 8)[0]
                if tsecr:
                    if conn.ts_floor is None or serial_gt(tsecr, conn.ts_floor):
                        conn.ts_floor = tsecr
                    own_ts = (tsecr - conn.ts_off) & MASK32
                    U32.pack_into(buf, start + 8, own_ts)
                    delta += own_ts - tsecr
            conn.client_ts = bytes(buf[start:start + 12])
        elif thl > 20 and self._options_in(buf, start, ihl + thl, conn):
            delta += changed_by(payload, buf, start, ihl + thl)
        if delta:
            U16.pack_into(buf, ihl + CHECKSUM, checksum_after(csum, delta))
        return bytes(buf)

    def _options_in(self, buf, start, end, conn):
        changed = False
        for kind, i, length in options(buf, start, end):
            if kind == TIMESTAMP and length == 10 and conn.ts_off is not None:
                tsecr = U32.unpack_from(buf, i + 6)[0]
                if tsecr:
                    if conn.ts_floor is None or serial_gt(tsecr, conn.ts_floor):
                        conn.ts_floor = tsecr
                    U32.pack_into(buf, i + 6, (tsecr - conn.ts_off) & MASK32)
                    changed = True
            elif kind == SACK and length >= 10:
                for edge in range(i + 2, i + length - 7, 8):
                    left = (U32.unpack_from(buf, edge)[0] - conn.seq_off) & MASK32
                    right = (U32.unpack_from(buf, edge + 4)[0] - conn.seq_off) & MASK32
                    if serial_gt(right, conn.own_max):  # beyond what we sent: an empty block
                        right = conn.own_max
                        if serial_gt(left, right):
                            left = right
                    U32.pack_into(buf, edge, left)
                    U32.pack_into(buf, edge + 4, right)
                changed = True
        return changed

    # ---- replica → client --------------------------------------------------------------------

    def _outbound(self, payload, primary, ihl, thl, dport, seq, ack, flags, window, csum,
                  now):
        conn = self.connections.get((payload[DST], dport))
        if conn is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return _DROPPED  # never leak our own sequence space
        conn.seen = now
        if conn.closed & RESET_SENT:
            return _DROPPED  # reset by us: its stack's leftovers never reach the client
        released = ()
        if flags & SYN:
            if conn.seq_off is None:
                self._learn_handshake(payload, ihl, thl, seq, conn)
                released = self._release(conn)
        elif conn.seq_off is None:
            self.counters[C_UNKNOWN_OUT] += 1
            return _DROPPED
        if flags & (FIN | RST):
            conn.closed |= CLOSED_RST | RST_OUT if flags & RST else FIN_OUT
        reinject = ()
        if flags & ACK and not flags & RST:
            client_input.on_own_ack(conn, ack, window, flags & SYN, now)
            if conn.parked:  # it may have what was kept, or room for more of it
                self.parked_bytes -= client_input.acknowledged(conn)
                reinject, handed = client_input.due(conn, False)
                self.counters[C_REINJECTED] += handed
        length = len(payload) - ihl - thl + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        end = (seq + length) & MASK32
        if serial_gt(end, conn.own_max):
            conn.own_max = end
        if not primary:
            self.counters[C_BACKUP] += 1
            to_stack = ()
            if length and not flags & (SYN | RST):
                if not unacked.keep(conn, seq, end, payload):
                    self.counters[C_UNACKED_OVERFLOW] += 1
                if conn.client_ack is not None and conn.client_next is not None and \
                        not serial_gt(end, (conn.client_ack - conn.seq_off) & MASK32):
                    to_stack = (self._catch_up(conn, payload[DST], dport, end),)
            return DROP, None, released, (), to_stack + tuple(reinject), ()
        self.counters[C_OUT] += 1
        return (ACCEPT, self._translate_out(payload, ihl, thl, seq, flags, csum, conn), released,
                (), tuple(reinject), ())

    def _catch_up(self, conn, client, port, end):
        """A backup's stack sent bytes the client acknowledged before this stack produced them
        (it lags): the client will not acknowledge them again, so give the stack the ACK
        itself. Without it the stack retransmits them, and a FIN never acknowledged keeps the
        socket closing long enough for a reused client port to find it (a SYN that never
        opens a connection on this replica)."""
        self.counters[C_CAUGHT_UP] += 1
        conn.own_acked = end
        if conn.unacked:
            unacked.trim(conn, end)
        return build(client, conn.vip, port, self.port, conn.client_next, end, ACK,
                     conn.client_window, conn.client_ts if len(conn.client_ts) == 12 else b"")

    def replay(self):
        """Translated copies of every segment this replica sent as a backup and the client has
        not acknowledged, for a new primary to send at once (then forgotten)."""
        packets = []
        for conn in self.connections.values():
            if not conn.unacked or conn.seq_off is None:
                continue
            for seq, payload in unacked.take(conn):
                ihl, thl, _, _, _, _, flags, _, csum = parse(payload)
                packets.append(self._translate_out(payload, ihl, thl, seq, flags, csum, conn))
        self.counters[C_REPLAYED] += len(packets)
        return packets

    def _learn_handshake(self, payload, ihl, thl, seq, conn):
        conn.seq_off = (conn.shared_isn - seq) & MASK32
        conn.own_max = (seq + 1) & MASK32
        for kind, i, length in options(payload, ihl + OPTIONS, ihl + thl):
            if kind == TIMESTAMP and length == 10:
                conn.ts_off = (conn.ts_base - U32.unpack_from(payload, i + 2)[0]) & MASK32
            elif kind == WSCALE and length == 3:
                conn.own_ws = payload[i + 2]

    def _release(self, conn):
        held, conn.held = conn.held, None
        if not held:
            return ()
        self.counters[C_RELEASED] += len(held)
        out = []
        for token, payload in held:
            ihl, thl, _, _, seq, ack, flags, window, csum = parse(payload)
            out.append((token, self._translate_in(payload, ihl, thl, seq, ack, flags, window,
                                                  csum, conn)))
        return out

    def _translate_out(self, payload, ihl, thl, seq, flags, csum, conn):
        buf = bytearray(payload)
        shared = (seq + conn.seq_off) & MASK32
        U32.pack_into(buf, ihl + SEQ, shared)
        delta = shared - seq
        if conn.own_ws is not None and not flags & SYN and conn.own_ws != self.shared_ws:
            window = U16.unpack_from(payload, ihl + WINDOW)[0]
            scaled = min((window << conn.own_ws) >> self.shared_ws, 0xFFFF)
            U16.pack_into(buf, ihl + WINDOW, scaled)
            delta += scaled - window
        start = ihl + OPTIONS
        if thl == 32 and payload[start:start + 4] == NOP_NOP_TS:  # Linux's usual layout
            if conn.ts_off is not None:
                own_ts = U32.unpack_from(payload, start + 4)[0]
                tsval = (own_ts + conn.ts_off) & MASK32
                if conn.ts_floor is not None and serial_gt(conn.ts_floor, tsval):
                    tsval = conn.ts_floor  # never below what the client has seen (PAWS)
                U32.pack_into(buf, start + 4, tsval)
                delta += tsval - own_ts
        elif thl > 20 and self._options_out(buf, start, ihl + thl, flags, conn):
            delta += changed_by(payload, buf, start, ihl + thl)
        U16.pack_into(buf, ihl + CHECKSUM, checksum_after(csum, delta))
        if payload[FRAGMENT] & DONT_FRAGMENT:
            clear_ip_id(buf, payload)
        return bytes(buf)

    def _options_out(self, buf, start, end, flags, conn):
        changed = False
        for kind, i, length in options(buf, start, end):
            if kind == TIMESTAMP and length == 10 and conn.ts_off is not None:
                tsval = (U32.unpack_from(buf, i + 2)[0] + conn.ts_off) & MASK32
                if conn.ts_floor is not None and serial_gt(conn.ts_floor, tsval):
                    tsval = conn.ts_floor  # never below what the client has seen (PAWS)
                U32.pack_into(buf, i + 2, tsval)
                changed = True
            elif (kind == WSCALE and length == 3 and flags & SYN
                  and buf[i + 2] != self.shared_ws):
                buf[i + 2] = self.shared_ws
                changed = True
        return changed

    # ---- housekeeping --------------------------------------------------------------------------

    def expire(self, now, force=False):
        """Tokens to drop: packets held too long, or held by connections that are forgotten.

        Held packets are checked on every call (only connections that hold any); idle and
        closed connections are forgotten every SCAN_S. ``force`` (the table is full) also
        forgets connections still in their handshake, then the least recently seen half."""
        dropped = []
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
            if conn is not None and conn.parked:
                self._unpark(conn)
        return dropped

    def take_held(self):
        """Every token still held (the handler is no longer current): the caller drops them.
        The connection state stays."""
        tokens = []
        for conn in self.connections.values():
            tokens.extend(token for token, _ in conn.held or ())
            conn.held = None
        self._holding.clear()
        return tokens

    # ---- the client's bytes (client_input.py) ------------------------------------------------

    def survey(self, now):
        """Refresh the gauges (connections behind, bytes missing) and each connection's
        ``input_lost``; the kept client segments for stacks whose receive point stalled (to
        send to this replica's stack). The packet thread calls it at every tick."""
        connections = list(self.connections.values())
        behind, total = client_input.survey(connections, now)
        self.gauges = {"connections_behind": behind, "bytes_missing": total,
                       "parked_bytes": self.parked_bytes}
        again = []
        for conn in connections:
            if (conn.parked and now - conn.rcv_at >= client_input.REINJECT_S
                    and not conn.closed & (CLOSED_RST | RESET_SENT)):
                payloads, handed = client_input.due(conn, True)
                again.extend(payloads)
                self.counters[C_REINJECTED] += handed
        return again

    def promoted(self, now):
        """Just promoted: every connection whose stack lacks bytes the client was acknowledged
        gets a deadline (at once if they are lost, else CATCH_UP_S). Every open connection is
        also watched until its stack passes what the client had sent by now (at most WATCH_S):
        the acknowledged point this replica learned can be stale (its queue still held the
        old primary's copies), so a stack that stalls short of the client's bytes is reset
        whatever ``peer_ack`` says. Returns the kept client segments its stack lacks (to hand
        to the stack now: every moment counts towards the deadline)."""
        again = self.survey(now)
        self._verifying, self._watching, self._promoted_at = {}, {}, now
        for key, conn in self.connections.items():
            if conn.seq_off is None or conn.closed & (CLOSED_RST | RESET_SENT):
                continue
            due = client_input.deadline(conn, now)
            if due is not None:
                self._verifying[key] = due
            if conn.client_next is not None:
                self._watching[key] = conn.client_next
        return again

    def verify_input(self, now):
        """(RSTs for clients, RSTs for this stack) of the connections a new primary cannot
        continue: still missing acknowledged bytes at their deadline, or (watched) its stack
        stalled short of bytes the client sent; their keys go to ``lost_reset_keys``."""
        to_client, to_stack = [], []
        if not self._verifying and not self._watching:
            return to_client, to_stack
        since = self._promoted_at
        for key in list(self._verifying.keys() | self._watching.keys()):
            conn = self.connections.get(key)
            if conn is None or conn.closed & RESET_SENT:
                self._verifying.pop(key, None)
                self._watching.pop(key, None)
                continue
            behind = client_input.stack_behind(conn)
            due = self._verifying.get(key)
            if behind and due is None and key in self._watching:
                due = self._verifying[key] = since + client_input.CATCH_UP_S  # learned late
            lost = key in self._watching and client_input.short_stalled(conn, since, now)
            if lost or (behind and due is not None and now >= due
                        and not client_input.catching_up(conn, since, now)):
                self._verifying.pop(key, None)
                self._watching.pop(key, None)
                self.counters[C_LOST_RESETS] += 1
                to_stack.append(build(key[0], conn.vip, key[1], self.port, conn.own_rcv, 0,
                                      RST))
                to_client.append(self.reset_packet(*key))
                self.lost_reset_keys.append(key)
                continue
            if not behind:
                self._verifying.pop(key, None)
            mark = self._watching.get(key)
            if mark is not None and (now - since >= client_input.WATCH_S or (
                    conn.own_rcv is not None and not serial_gt(mark, conn.own_rcv))):
                del self._watching[key]  # its stack passed every byte sent by the promotion
        return to_client, to_stack

    # ---- for voting ------------------------------------------------------------------------------

    def reset_packet(self, client, port):
        """A RST the client accepts at once (seq = its next expected byte), forgetting the
        connection: for connections a lying primary corrupted on the wire."""
        conn = self.connections.get((client, port))
        if conn is None or conn.seq_off is None:
            return None
        seq = conn.client_ack if conn.client_ack is not None else (conn.shared_isn + 1) & MASK32
        conn.closed |= CLOSED_RST | RESET_SENT  # everything else it sends is dropped
        unacked.forget(conn)
        self._unpark(conn)
        return self._rst(conn, client, port, seq)

    def _unpark(self, conn):
        self.parked_bytes -= client_input.parked_bytes(conn)
        conn.parked, conn.undelivered = None, 0

    def reset_again(self, client, port):
        """The RST of a connection reset earlier, again, at the client's latest
        acknowledgement (None if it was not reset or is forgotten)."""
        conn = self.connections.get((client, port))
        if conn is None or not conn.closed & RESET_SENT or conn.client_ack is None:
            return None
        return self._rst(conn, client, port, conn.client_ack)

    def _rst(self, conn, client, port, seq):
        return build(conn.vip, client, self.port, port, seq, 0, RST)

    def snapshot(self):
        counters = dict(zip(COUNTER_NAMES, self.counters))
        counters.update(self.gauges)
        counters["connections"] = len(self.connections)
        return counters
