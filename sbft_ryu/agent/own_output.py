"""The voting read side of the translator: what this replica's own stack sent, and in which of
its generations a connection began (:meth:`OwnOutput.began_in`).

A backup answers the primary's claims with the digest of the bytes its own stack produced for
the same shared-space range (:meth:`OwnOutput.own_range`, from the unacknowledged buffer) and
judges whether its stack has gone quiet (:meth:`OwnOutput.quiet_for`); a reply's statement is
read from its bytes (:func:`statement_of`). Reads only; the translator owns the state.
"""

from sbft_ryu import protocol
from sbft_ryu.agent import unacked
from sbft_ryu.agent.packet import DST, FIN, HALF32, MASK32, TCP_HEADER, header_lengths, \
    serial_gt

ABSTAIN = "abstain"  # own_range: this replica cannot vote on the connection any more
ACKNOWLEDGED = "acknowledged"  # own_range: the client acknowledged the whole range
PARTLY_ACKNOWLEDGED = "partly acknowledged"  # own_range: the client acknowledged its start
RST_OUT = 16  # Connection.closed: this replica's own stack sent a RST


def statement_of(payload):
    """The voting statement of a reply in the shared space (translated, or copied from the
    wire): its range and digest; None for a segment without data or FIN."""
    ihl, thl = header_lengths(payload)
    _, dport, seq, _, _, flags, _, _ = TCP_HEADER.unpack_from(payload, ihl)
    data = memoryview(payload)[ihl + thl:]
    fin = bool(flags & FIN)
    if not data and not fin:
        return None
    return protocol.Statement(bytes(payload[DST]), dport, seq,
                              (seq + len(data) + fin) & MASK32, protocol.digest(data, fin))


class OwnOutput:
    """own_range, began_in and quiet_for over a translator's connection table."""

    def __init__(self, connections):
        self.connections = connections

    def own_range(self, client, port, start, end, partial=False):
        """(data, fin) that this replica's own stack sent for shared-space [start, end), or
        None while it has not sent all of it. If its own stream ended (FIN) before ``end``,
        what it sent up to its FIN: it will never send the rest, so the range differs.
        ``partial``: whatever it has sent of the range so far.

        :data:`ACKNOWLEDGED` or :data:`PARTLY_ACKNOWLEDGED` when the client already
        acknowledged all of the range or its start (the bytes were trimmed: whether they are
        the ones this backup checked is the vote engine's question); :data:`ABSTAIN` when it
        cannot know anything of the connection any more: its output outgrew what a backup
        keeps, its stack lost client bytes the client was acknowledged (``input_lost``, see
        client_input.py), or (``partial``) the connection is not one its stack took part in or
        its own proxy aborted it."""
        conn = self.connections.get((client, port))
        if conn is None or conn.seq_off is None:
            # not (yet) a connection of ours: wait; after the patience, it never was (this
            # replica joined later, or its stack never answered the SYN)
            return ABSTAIN if partial else None
        if conn.input_lost:  # its stack lacks request bytes the client was acknowledged:
            return ABSTAIN  # it will never answer this connection as the others do
        own_start = (start - conn.seq_off) & MASK32
        length = (end - start) & MASK32
        pieces = []
        have = 0  # bytes of [own_start, own_start + length) collected, contiguously
        fin = False
        for seq, _, payload in unacked.kept(conn):
            ihl, thl = header_lengths(payload)
            data_at = ihl + thl
            size = len(payload) - data_at
            offset = (own_start + have - seq) & MASK32  # where we need to start in this one
            if offset >= HALF32:
                break  # a hole before this segment
            if offset < size:
                take = min(size - offset, length - have)
                pieces.append(payload[data_at + offset:data_at + offset + take])
                have += take
            if TCP_HEADER.unpack_from(payload, ihl)[5] & FIN and offset <= size \
                    and have < length:
                fin = True  # our stream ends here: at the range's end, or short of it
                break
            if have >= length:
                break
        if have < length and not fin:
            if conn.lossy:
                return ABSTAIN
            if not have and conn.own_acked is not None and serial_gt(conn.own_acked, own_start):
                # its start is gone (trimmed). With a start in hand the rest is only not
                # produced yet, even when a catch-up ACK (ours) already passed the range's start
                own_end = (own_start + length) & MASK32
                return PARTLY_ACKNOWLEDGED if serial_gt(own_end, conn.own_acked) \
                    else ACKNOWLEDGED
            if partial and conn.closed & RST_OUT:
                return ABSTAIN  # our own proxy aborted it: an omission, not other bytes
            if not partial:
                return None
        return b"".join(pieces), fin

    def began_in(self, client, port):
        """The generation this replica was in when the connection began (None: unknown)."""
        conn = self.connections.get((client, port))
        return conn.generation if conn is not None else None

    def quiet_for(self, client, port, now):
        """Seconds since this replica's stack last sent new data on the connection."""
        conn = self.connections.get((client, port))
        return now - conn.own_at if conn is not None else float("inf")
