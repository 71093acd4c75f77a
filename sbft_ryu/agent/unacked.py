"""A backup's unacknowledged output: what its stack sent that the client has not acknowledged.

Kept per connection (in the :class:`~sbft_ryu.agent.active.Connection`, in the stack's own
sequence space) so that a backup promoted to primary re-sends it at once instead of waiting for
its stack's retransmission timer, and so that it can vote on a range (``own_output``) the
primary claims. Bounded per connection: beyond MAX_UNACKED_BYTES a connection is marked
``lossy`` and its votes abstain.

What the client acknowledged is not dropped at once: the latest ACKED_KEPT_BYTES of it stay
(``conn.acked``), so that a backup whose stack lags can still compare its own bytes with the
primary's claim or wire copy after the client acknowledged them (the client's ACK trims a
segment, or the stack produces bytes the client already has: the catch-up). Without them such a
backup could never check what the client got, and would have to abstain on the connection.
"""

from collections import deque

from sbft_ryu.agent.packet import serial_gt

MAX_UNACKED_BYTES = 4 << 20  # per connection, kept by a backup for replay on promotion
ACKED_KEPT_BYTES = 256 << 10  # per connection, acknowledged but kept for a late comparison


def keep(conn, seq, end, payload):
    """Keep a segment [seq, end) the stack sent; False if it did not fit (over the cap)."""
    if conn.unacked is None:
        conn.unacked = deque()
    elif conn.unacked and not serial_gt(end, conn.unacked[-1][1]):
        return True  # a retransmission of what is kept already
    if conn.own_acked is not None and not serial_gt(end, conn.own_acked):
        return True  # a retransmission of what the client acknowledged
    conn.own_at = conn.seen
    if conn.unacked_bytes + len(payload) > MAX_UNACKED_BYTES:
        conn.lossy = True
        return False
    conn.unacked.append((seq, end, payload))
    conn.unacked_bytes += len(payload)
    return True


def trim(conn, own_ack):
    """Forget what the client acknowledged (``own_ack``, in the stack's own space)."""
    unacked = conn.unacked
    while unacked and not serial_gt(unacked[0][1], own_ack):
        segment = unacked.popleft()
        conn.unacked_bytes -= len(segment[2])
        if conn.acked is None:
            conn.acked = deque()
        conn.acked.append(segment)
        conn.acked_bytes += len(segment[2])
        while conn.acked_bytes > ACKED_KEPT_BYTES:
            conn.acked_bytes -= len(conn.acked.popleft()[2])


def kept(conn):
    """Every segment kept, acknowledged or not, in order of sequence."""
    if conn.acked:
        yield from conn.acked
    if conn.unacked:
        yield from conn.unacked


def take(conn):
    """(seq, payload) of every segment still unacknowledged, in order; then forgotten."""
    if conn.own_acked is not None:
        trim(conn, conn.own_acked)
    segments = [(seq, payload) for seq, _, payload in conn.unacked or ()]
    forget(conn)
    return segments


def forget(conn):
    conn.unacked, conn.unacked_bytes = None, 0
    conn.acked, conn.acked_bytes = None, 0
