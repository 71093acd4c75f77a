"""The client's bytes: what this replica's own stack received, against what the client was
acknowledged (the upload side of active replication).

The client sends each byte once to the VIP; the switch copies it to every replica, and the
client resends only what the *primary* did not acknowledge. A byte a backup's stack misses while
the primary acknowledges it is therefore gone for that backup, and a backup promoted without
it can never continue the connection (the client will not resend it, the stack waits for it).
Three places lose such bytes, each counted by the agent:

* before the agent (a qdisc, a link, the kernel queue overflowing): the agent sees a hole in
  the client's stream (``client_gap_bytes``; the queue's own drops are ``nfq_dropped``,
  read from the kernel, in packets);
* in the stack: beyond the receive window the stack last announced (``client_beyond_window``),
  or inside it when the stack is short of receive memory. This was the usual loss in the lab: a
  backup's proxy falls behind for a moment, its stack's window closes while the primary's is
  open, and the stack drops what comes. A backup's agent therefore *keeps* every client
  segment (translated) until its stack acknowledges it, up to MAX_PARKED_BYTES per agent, and
  hands the stack again what it lacks (``client_reinjected``, as it gives the stack catch-up
  ACKs): segments that were beyond the window once the window reaches them, and, when the
  stack's receive point stalls for REINJECT_S, everything from that point to its window's
  edge. What does not fit is lost (``client_park_overflow``);
* never lost, only late: still queued, in flight, in the switch, or kept.

A connection's points, all in the client's sequence space (which the agents never translate):

* ``own_rcv``: the stack's receive point, the ACK field of its own latest segment (a backup's
  are dropped, but the agent sees them);
* ``peer_ack``: the point the client was acknowledged, the ACK field of the primary's segments
  as the switch copies them to the backups (the wire copy);
* missing: ``peer_ack - own_rcv`` when positive, less what is parked from ``own_rcv`` on
  without a hole (:func:`reach`). A connection missing bytes whose stack has not advanced for
  ``STALL_S`` has lost them (``input_lost``): a voting backup abstains on it, a new
  primary resets it at once. A new primary gives every other connection its stack is behind
  on ``CATCH_UP_S`` to receive the rest (late, or kept by the agent), then resets it: a RST the
  client accepts (seq = its RCV.NXT, the ACK of its latest segment) and one for its own stack
  (seq = the stack's receive point), so the proxy's connection ends too.

Pure functions over :class:`~sbft_ryu.agent.active.Connection` (no clock read, no I/O).
"""

from collections import deque

from sbft_ryu.agent.packet import HALF32, MASK32, serial_gt

QUARTER32 = HALF32 >> 1

CATCH_UP_S = 0.5  # how long a new primary waits for acknowledged bytes that may be late
CATCH_UP_MAX_S = 3.0  # ... and for a stack that advances and whose agent keeps the rest
STALL_S = 0.3  # missing bytes and a stack that did not advance for this long: lost
MAX_PARKED_BYTES = 48 << 20  # client bytes a backup's agent keeps for its stack, in all
WATCH_S = 3.0  # a new primary watches its connections' stacks for stalls this long at most
INSERT_SCAN = 64  # how far back from the newest kept segment a resent one is placed (see park)
REINJECT_S = 0.2  # a stack whose receive point stalls this long gets the kept bytes again
REINJECT_BYTES = 4 << 20  # at most this much each time (a stack with a hole no one kept
                          # gets nothing: the kept bytes cannot help it)


def on_own_ack(conn, ack, window, syn, now):
    """The stack's own segment acknowledged ``ack`` and announced ``window`` (its raw field)."""
    if conn.own_rcv is None or serial_gt(ack, conn.own_rcv):
        conn.own_rcv = ack
        conn.rcv_at = now
    shift = 0 if syn or conn.own_ws is None else conn.own_ws  # a SYN's window is unscaled
    conn.own_edge = (ack + (window << shift)) & MASK32


def on_peer_ack(conn, ack):
    """The primary acknowledged ``ack`` to the client (seen on the wire copy)."""
    if conn.peer_ack is None or serial_gt(ack, conn.peer_ack):
        conn.peer_ack = ack


def in_order(conn):
    """The kept segments in sequence order. They arrive in order but for the client's
    retransmissions (a hole the primary missed too, filled behind newer segments): park puts
    such a segment in its place when that is within INSERT_SCAN of the end, else they are
    sorted here once, so that a single pass finds the stream's continuation."""
    if conn.parked_disorder and conn.parked:
        ref = conn.own_rcv if conn.own_rcv is not None else conn.parked[0][0]
        base = (ref - QUARTER32) & MASK32  # (every kept segment is within 1 GiB of it)
        conn.parked = deque(sorted(conn.parked, key=lambda item: (item[0] - base) & MASK32))
        conn.parked_disorder = False
    return conn.parked


def reach(conn):
    """How far this replica has the client's stream without a hole: the stack's receive
    point, extended by the kept segments that continue it."""
    point = conn.own_rcv
    if not conn.parked:
        return point
    for seq, end, _, _ in in_order(conn):
        if not serial_gt(seq, point) and serial_gt(end, point):
            point = end
    return point


def missing(conn):
    """Bytes the client was acknowledged that this replica has neither received nor kept."""
    if conn.peer_ack is None or conn.own_rcv is None:
        return 0
    behind = (conn.peer_ack - reach(conn)) & MASK32
    return behind if behind < HALF32 else 0


def park(conn, seq, length, payload, delivered):
    """Keep a translated client segment until the stack acknowledges it (``delivered``:
    handed to the stack already; else it was beyond the stack's window)."""
    item = [seq, (seq + length) & MASK32, payload, delivered]
    parked = conn.parked
    if parked is None:
        conn.parked = deque((item,))
    elif not serial_gt(parked[-1][0], seq):
        parked.append(item)
    else:  # a resent segment filling a hole behind newer ones: its place is near the end
        place = len(parked) - 1
        while place > 0 and serial_gt(parked[place - 1][0], seq) and \
                len(parked) - place < INSERT_SCAN:
            place -= 1
        parked.insert(place, item)
        if place > 0 and serial_gt(parked[place - 1][0], seq):
            conn.parked_disorder = True  # farther back than the scan: sorted when used
    if not delivered:
        conn.undelivered += 1


def acknowledged(conn):
    """Forget the kept segments the stack has now (its receive point passed them); the
    bytes freed."""
    parked, freed = in_order(conn), 0
    while parked and not serial_gt(parked[0][1], conn.own_rcv):
        seq, end, _, delivered = parked.popleft()
        freed += (end - seq) & MASK32
        if not delivered:
            conn.undelivered -= 1
    if not parked:
        conn.parked, conn.undelivered = None, 0
    return freed


def due(conn, stalled):
    """Kept segments to hand to the stack now, in order: those never delivered that its
    window reaches, and (``stalled``: its receive point has not moved for a while, and the
    byte it waits for is kept, so the stack dropped it) the ones from its receive point on,
    up to REINJECT_BYTES and its window's edge; (payloads, bytes)."""
    if not conn.parked or conn.own_edge is None:
        return (), 0
    in_order(conn)
    if stalled:
        first = conn.parked[0]
        stalled = not serial_gt(first[0], conn.own_rcv)  # (the oldest kept covers it)
    if not (stalled or conn.undelivered):
        return (), 0
    out, size = [], 0
    for item in conn.parked:
        seq, end, payload, delivered = item
        if not serial_gt(conn.own_edge, seq) or size >= REINJECT_BYTES:
            break  # (kept in sequence order: the rest is beyond the window too)
        if serial_gt(end, conn.own_rcv) and (stalled or not delivered):
            out.append(payload)
            size += (end - seq) & MASK32
            if not delivered:
                item[3] = True
                conn.undelivered -= 1
    return out, size


def parked_bytes(conn):
    return sum((end - seq) & MASK32 for seq, end, _, _ in conn.parked or ())


def gap(conn, seq):
    """Bytes of the client's stream that skipped the agent before ``seq`` (a hole)."""
    if conn.client_next is None:
        return 0
    hole = (seq - conn.client_next) & MASK32
    return hole if hole < HALF32 else 0


def beyond_window(conn, seq, length):
    """Bytes of [seq, seq + length) past the right edge the stack last announced."""
    if conn.own_edge is None:
        return 0
    past = (seq + length - conn.own_edge) & MASK32
    return min(past, length) if past < HALF32 else 0


def survey(connections, now):
    """(connections behind, bytes missing) over ``connections`` (a list, not the live dict),
    marking each connection that lost bytes (``input_lost``)."""
    behind = total = 0
    for conn in connections:
        short = missing(conn)
        if short:
            behind += 1
            total += short
        conn.input_lost = bool(short) and now - conn.rcv_at >= STALL_S
    return behind, total


def stack_behind(conn):
    """Bytes the client was acknowledged that this replica's stack has not received yet
    (kept or not)."""
    if conn.peer_ack is None or conn.own_rcv is None:
        return 0
    behind = (conn.peer_ack - conn.own_rcv) & MASK32
    return behind if behind < HALF32 else 0


def short_stalled(conn, since, now):
    """The client sent bytes inside this stack's window that the stack has not received, and
    its receive point has not moved for STALL_S, counted from ``since`` at the earliest (the
    promotion). Needs no ``peer_ack``: a new primary's view of it can be stale (its queue was
    backlogged when it was promoted), and a stack that stalls short of what the client sent
    waits for bytes the client may never resend."""
    if conn.client_next is None or conn.own_rcv is None:
        return False
    upto = conn.client_next
    if conn.own_edge is not None and serial_gt(upto, conn.own_edge):
        upto = conn.own_edge  # (a closed window is the proxy's pace, not a hole)
    return serial_gt(upto, conn.own_rcv) and now - max(conn.rcv_at, since) >= STALL_S


def catching_up(conn, since, now):
    """A new primary's stack is behind the point the client was acknowledged, but its agent
    keeps every byte it lacks and the stack advanced within STALL_S: it continues at its
    proxy's pace, and the reset waits for that, up to CATCH_UP_MAX_S after the promotion
    (``since``). The client sees no progress meanwhile; a reset would cost it the whole
    upload."""
    return (not missing(conn) and now - conn.rcv_at < STALL_S
            and now - since < CATCH_UP_MAX_S)


def deadline(conn, now):
    """When a just-promoted replica resets a connection its stack is behind on (None: never).
    Kept bytes let the stack catch up, but only what it catches up within CATCH_UP_S is
    continued: a stack far behind (its proxy was slow) would leave the client without any
    progress for seconds (25 MB behind took over 10 s in the lab)."""
    if not stack_behind(conn):
        return None
    return now if conn.input_lost else now + CATCH_UP_S
