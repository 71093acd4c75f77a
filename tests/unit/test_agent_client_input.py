"""Tests for the client's bytes in active mode (sbft_ryu.agent.client_input through the
Translator): what a replica's stack received against what the client was acknowledged, the
per-cause counters, and the reset a new primary sends for a connection it cannot continue.
Pure: bytes in, bytes out, time passed in."""

import socket

from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import active, client_input, nfq
from sbft_ryu.agent.active import ACCEPT, DROP, WIRE, shared_values
from sbft_ryu.agent.own_output import ABSTAIN

from fakes import RecordedTranslator, assert_checksums_valid

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
CLIENT_IP, VIP_IP = socket.inet_aton(CLIENT), socket.inet_aton(VIP)
SECRET = b"client-input-test-secret"
CLIENT_ISN, OWN_ISN = 1000, 5000
SHARED, _ = shared_values(SECRET, CLIENT_IP, CPORT, VIP_IP, PORT, CLIENT_ISN)
NOW = 100.0
START = CLIENT_ISN + 1  # the client's first data byte
PIECE = b"x" * 1000


def client_pkt(flags, seq, data=b"", ack=None):
    packet = IP(src=CLIENT, dst=VIP, flags="DF") / TCP(
        sport=CPORT, dport=PORT, flags=flags, seq=seq % M32,
        ack=(SHARED + 1 if ack is None else ack) % M32, window=8192)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, ack, window=100, seq=OWN_ISN + 1):
    """This replica's stack: a segment acknowledging ``ack`` with ``window`` (scale 0)."""
    return bytes(IP(src=VIP, dst=CLIENT, flags="DF") / TCP(
        sport=PORT, dport=CPORT, flags=flags, seq=seq % M32, ack=ack % M32, window=window))


def wire_pkt(ack):
    """The switch's copy of the primary's pure ACK (shared space, as it left)."""
    return bytes(IP(src=VIP, dst=CLIENT, flags="DF") / TCP(
        sport=PORT, dport=CPORT, flags="A", seq=(SHARED + 1) % M32, ack=ack % M32,
        window=100))


def connected(primary=False, window=65535):
    tr = RecordedTranslator(SECRET, PORT)
    tr.process(client_pkt("S", CLIENT_ISN), None, primary, NOW)
    tr.process(bytes(IP(src=VIP, dst=CLIENT, flags="DF") / TCP(
        sport=PORT, dport=CPORT, flags="SA", seq=OWN_ISN, ack=START, window=window)),
        None, primary, NOW)
    tr.process(client_pkt("A", START), None, primary, NOW)
    return tr


def conn_of(tr):
    return tr.connections[(CLIENT_IP, CPORT)]


def backup_behind(received, acknowledged, at=NOW):
    """A backup whose stack received ``received`` client bytes (at ``at``) while the primary
    acknowledged ``acknowledged`` to the client."""
    tr = connected()
    assert tr.process(stack_pkt("A", START + received), None, False, at)[0] == DROP
    assert tr.process(wire_pkt(START + acknowledged), None, False, at, arriving=True)[0] == WIRE
    return tr


# --- the points and the gauges ------------------------------------------------------------------

def test_a_backup_learns_the_acknowledged_point_from_the_wire_copy_and_counts_what_it_lacks():
    tr = backup_behind(received=3000, acknowledged=10000)
    conn = conn_of(tr)
    assert (conn.own_rcv, conn.peer_ack) == (START + 3000, START + 10000)
    assert client_input.missing(conn) == 7000
    tr.survey(NOW)
    assert tr.snapshot()["connections_behind"] == 1
    assert tr.snapshot()["bytes_missing"] == 7000


def test_a_backup_level_with_the_primary_misses_nothing():
    tr = backup_behind(received=10000, acknowledged=10000)
    tr.survey(NOW)
    assert (tr.snapshot()["connections_behind"], tr.snapshot()["bytes_missing"]) == (0, 0)
    ahead = backup_behind(received=12000, acknowledged=10000)  # ahead: nothing missing
    assert client_input.missing(conn_of(ahead)) == 0


def test_the_acknowledged_point_only_moves_forward_also_on_a_new_primary():
    tr = backup_behind(received=0, acknowledged=10000)
    tr.process(wire_pkt(START + 5000), None, False, NOW, arriving=True)  # reordered copy
    assert conn_of(tr).peer_ack == START + 10000
    # a new primary still drains the old primary's copies its queue held at the promotion:
    # what they acknowledged the client is what its stack must have to continue
    assert tr.process(wire_pkt(START + 20000), None, True, NOW, arriving=True)[0] == WIRE
    assert conn_of(tr).peer_ack == START + 20000


def test_a_connection_missing_bytes_whose_stack_stalls_is_lost_and_a_moving_one_is_not():
    tr = backup_behind(received=3000, acknowledged=10000)
    tr.survey(NOW + client_input.STALL_S / 2)
    assert not conn_of(tr).input_lost
    tr.survey(NOW + client_input.STALL_S + 0.01)
    assert conn_of(tr).input_lost
    tr.process(stack_pkt("A", START + 4000), None, False, NOW + 1.0)  # it advanced
    tr.survey(NOW + 1.0)
    assert not conn_of(tr).input_lost and tr.snapshot()["bytes_missing"] == 6000


# --- the causes -------------------------------------------------------------------------------

def test_a_hole_in_the_clients_stream_counts_as_gap_bytes():
    tr = connected()
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    tr.process(client_pkt("PA", START + 3000, PIECE), None, False, NOW)  # 2000 skipped
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)  # a resend: no gap
    assert tr.snapshot()["client_gap_bytes"] == 2000


def test_bytes_beyond_the_window_the_stack_announced_are_counted():
    tr = connected()
    tr.process(stack_pkt("A", START, window=1500), None, False, NOW)  # edge: START + 1500
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    assert tr.snapshot()["client_beyond_window"] == 0
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)  # 500 beyond
    tr.process(client_pkt("PA", START + 2000, PIECE), None, False, NOW)  # all beyond
    assert tr.snapshot()["client_beyond_window"] == 1500


def test_the_window_edge_uses_the_stacks_window_scale():
    tr = RecordedTranslator(SECRET, PORT)
    tr.process(client_pkt("S", CLIENT_ISN), None, False, NOW)
    tr.process(bytes(IP(src=VIP, dst=CLIENT, flags="DF") / TCP(
        sport=PORT, dport=CPORT, flags="SA", seq=OWN_ISN, ack=START, window=65535,
        options=[("WScale", 4)])), None, False, NOW)
    assert conn_of(tr).own_edge == START + 65535  # a SYN's window is not scaled
    tr.process(stack_pkt("A", START, window=100), None, False, NOW)
    assert conn_of(tr).own_edge == START + 1600


# --- a new primary that cannot continue resets at once, or after CATCH_UP_S -----------------

def assert_client_rst(raw, seq):
    packet = IP(raw)
    assert (packet.src, packet.dst, packet[TCP].sport, packet[TCP].dport) == (
        VIP, CLIENT, PORT, CPORT)
    assert packet[TCP].flags == "R" and packet[TCP].seq == seq % M32 and packet[TCP].ack == 0
    assert_checksums_valid(raw)


def test_a_new_primary_resets_a_lost_connection_at_once_with_rsts_the_client_and_stack_accept():
    tr = backup_behind(received=3000, acknowledged=10000)
    client_ack = SHARED + 1  # what the client's latest segment acknowledged (its RCV.NXT)
    tr.process(client_pkt("PA", START + 12000, PIECE, ack=client_ack), None, False, NOW)
    later = NOW + client_input.STALL_S + 0.01
    tr.survey(later)
    tr.promoted(later)
    [to_client], [to_stack] = tr.verify_input(later)
    assert_client_rst(to_client, client_ack)
    stack = IP(to_stack)  # as from the client, at the stack's own receive point
    assert (stack.src, stack.dst, stack[TCP].sport, stack[TCP].dport) == (
        CLIENT, VIP, CPORT, PORT)
    assert stack[TCP].flags == "R" and stack[TCP].seq == START + 3000
    assert_checksums_valid(to_stack)
    assert tr.snapshot()["input_lost_resets"] == 1
    assert tr.verify_input(later + 1) == ([], [])  # once
    # what its stack still sends never reaches the client
    assert tr.process(stack_pkt("A", START + 3000), None, True, later)[0] == DROP


def test_a_late_connection_gets_catch_up_time_and_is_kept_when_its_bytes_arrive():
    tr = backup_behind(received=3000, acknowledged=10000)
    tr.promoted(NOW)  # its stack moved just now: late, not lost
    assert tr.verify_input(NOW) == ([], [])
    tr.process(stack_pkt("A", START + 10000), None, True, NOW + 0.2)  # the rest arrived
    assert tr.verify_input(NOW + client_input.CATCH_UP_S) == ([], [])
    assert tr.snapshot()["input_lost_resets"] == 0


def test_a_late_connection_still_missing_bytes_at_its_deadline_is_reset():
    tr = backup_behind(received=3000, acknowledged=10000)
    tr.promoted(NOW)
    tr.process(stack_pkt("A", START + 6000), None, True, NOW + 0.2)  # some, not all
    assert tr.verify_input(NOW + client_input.CATCH_UP_S - 0.01) == ([], [])
    to_client, to_stack = tr.verify_input(NOW + client_input.CATCH_UP_S)
    assert len(to_client) == len(to_stack) == 1
    assert IP(to_stack[0])[TCP].seq == START + 6000


def test_a_promotion_leaves_connections_that_miss_nothing_alone():
    tr = backup_behind(received=10000, acknowledged=10000)
    tr.promoted(NOW)
    assert tr.verify_input(NOW + 10) == ([], [])


# --- the watchdog: a new primary whose acknowledged point is stale (its queue was backlogged)

def stale_promotion():
    """A backup whose agent saw the client send 12000 bytes but whose stack got 3000 (the rest
    dropped before the stack: lost), and whose last copy of the primary's ACKs said 3000 (the
    later copies were still queued when it was promoted): it looks caught up."""
    tr = backup_behind(received=3000, acknowledged=3000)
    tr.process(client_pkt("PA", START + 11000, PIECE), None, False, NOW)  # after a hole
    tr.promoted(NOW)
    return tr


def test_a_new_primary_resets_a_stack_stalled_short_of_the_clients_bytes_with_a_stale_ack():
    tr = stale_promotion()
    assert tr.verify_input(NOW) == ([], [])
    assert tr.verify_input(NOW + client_input.STALL_S - 0.01) == ([], [])
    [to_client], [to_stack] = tr.verify_input(NOW + client_input.STALL_S + 0.01)
    assert_client_rst(to_client, SHARED + 1)
    assert IP(to_stack)[TCP].seq == START + 3000
    assert tr.lost_reset_keys == [(CLIENT_IP, CPORT)]
    assert tr.snapshot()["input_lost_resets"] == 1


def test_the_old_primarys_queued_copies_give_a_new_primary_a_deadline():
    tr = backup_behind(received=3000, acknowledged=3000)
    tr.promoted(NOW)
    tr.process(wire_pkt(START + 10000), None, True, NOW + 0.1, arriving=True)  # drained late
    tr.process(stack_pkt("A", START + 6000), None, True, NOW + 0.2)  # moving, not there
    assert tr.verify_input(NOW + 0.2) == ([], [])
    to_client, _ = tr.verify_input(NOW + client_input.CATCH_UP_S)
    assert len(to_client) == 1


def test_the_watchdog_leaves_a_moving_stack_and_one_that_got_everything_alone():
    tr = stale_promotion()
    tr.process(stack_pkt("A", START + 5000), None, True, NOW + 0.2)  # moving (kept bytes)
    assert tr.verify_input(NOW + client_input.STALL_S) == ([], [])
    tr.process(stack_pkt("A", START + 12000), None, True, NOW + 0.3)  # all the client sent
    assert tr.verify_input(NOW + 0.4) == ([], [])
    assert tr.verify_input(NOW + 10) == ([], [])  # no longer watched: a later stall is not ours
    closed = stale_promotion()  # a window the proxy closed is its pace, not a hole
    closed.process(stack_pkt("A", START + 3000, window=0), None, True, NOW)
    assert closed.verify_input(NOW + 1) == ([], [])
    assert tr.snapshot()["input_lost_resets"] == closed.snapshot()["input_lost_resets"] == 0


# --- voting: a backup that lost client bytes abstains on the connection -----------------------

def test_a_backup_that_lost_client_bytes_abstains_on_the_connection():
    tr = backup_behind(received=3000, acknowledged=10000)
    tr.survey(NOW + client_input.STALL_S + 0.01)
    assert tr.own_output.own_range(CLIENT_IP, CPORT, SHARED + 1, SHARED + 100) is ABSTAIN


# --- the kernel queue's drops -----------------------------------------------------------------

PROC = ("    1  12345     0 2 65535     7     3     99  1\n"
        "    4  12346    10 2 65535   100     0   1000  1\n")


def test_queue_drops_are_read_for_the_agents_queue():
    assert nfq.queue_drops(PROC, 1) == (7, 3)
    assert nfq.queue_drops(PROC, 4) == (100, 0)
    assert nfq.queue_drops(PROC, 2) is None
    assert nfq.queue_drops("", 1) is None
    assert nfq.queue_drops("    1  x  0 2 65535 seven 3 99 1\n", 1) is None


def test_the_counters_and_gauges_are_reported():
    snap = active.Translator(SECRET, PORT).snapshot()
    for name in ("client_gap_bytes", "client_beyond_window", "input_lost_resets",
                 "connections_behind", "bytes_missing"):
        assert snap[name] == 0
    assert ACCEPT == active.ACCEPT


# --- a backup keeps the client's segments until its stack has them ---------------------------

def test_a_backup_keeps_segments_until_its_stack_acknowledges_them():
    tr = connected()
    for i in range(3):
        assert tr.process(client_pkt("PA", START + 1000 * i, PIECE), None, False, NOW)[0] == \
            ACCEPT
    assert tr.parked_bytes == 3000 and len(conn_of(tr).parked) == 3
    tr.process(stack_pkt("A", START + 2000), None, False, NOW)  # it has the first two
    assert tr.parked_bytes == 1000 and len(conn_of(tr).parked) == 1
    tr.process(stack_pkt("A", START + 3000), None, False, NOW)
    assert tr.parked_bytes == 0 and conn_of(tr).parked is None


def test_a_primary_keeps_nothing_the_client_resends_to_it():
    tr = connected(primary=True)
    tr.process(client_pkt("PA", START, PIECE), None, True, NOW)
    assert tr.parked_bytes == 0 and conn_of(tr).parked is None


def test_segments_beyond_the_window_are_dropped_kept_and_handed_over_once_there_is_room():
    tr = connected()
    tr.process(stack_pkt("A", START, window=1000), None, False, NOW)  # edge: START + 1000
    assert tr.process(client_pkt("PA", START, PIECE), None, False, NOW)[0] == ACCEPT
    assert tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)[0] == DROP
    assert tr.process(client_pkt("PA", START + 2000, PIECE), None, False, NOW)[0] == DROP
    assert tr.snapshot()["client_beyond_window"] == 2000
    tr.to_stack.clear()
    tr.process(stack_pkt("A", START + 1000, window=1000), None, False, NOW)  # room for one
    [given] = tr.to_stack
    assert IP(given)[TCP].seq == START + 1000 and bytes(IP(given)[TCP].payload) == PIECE
    assert_checksums_valid(given)
    tr.process(stack_pkt("A", START + 2000, window=5000), None, False, NOW)
    assert IP(tr.to_stack[-1])[TCP].seq == START + 2000 and len(tr.to_stack) == 2
    assert tr.snapshot()["client_reinjected"] == 2000
    tr.process(stack_pkt("A", START + 2000, window=5000), None, False, NOW)  # a dup ACK
    assert len(tr.to_stack) == 2  # each is handed over once on ACKs


def test_a_stalled_stack_gets_the_kept_bytes_again_only_if_it_waits_for_a_kept_one():
    tr = connected()
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)
    # its stack dropped them (short of memory): its receive point stays at START
    assert tr.survey(NOW + client_input.REINJECT_S / 2) == []
    again = tr.survey(NOW + client_input.REINJECT_S)
    assert [IP(p)[TCP].seq for p in again] == [START, START + 1000]
    hole = connected()  # a hole no one kept (dropped before the agent): nothing to give
    hole.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)
    assert hole.survey(NOW + 1) == []


def test_kept_bytes_that_continue_the_stack_are_not_missing():
    tr = connected()
    tr.process(stack_pkt("A", START, window=1000), None, False, NOW)
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)  # beyond: kept
    tr.process(wire_pkt(START + 2000), None, False, NOW, arriving=True)
    assert client_input.missing(conn_of(tr)) == 0  # late, not lost: succession counts it
    # a new primary gives its stack CATCH_UP_S to take them, then resets: a client must not
    # wait for a stack far behind
    tr.promoted(NOW + 5)
    assert tr.verify_input(NOW + 5) == ([], [])
    to_client, _ = tr.verify_input(NOW + 5 + client_input.CATCH_UP_S)
    assert len(to_client) == 1


def test_kept_bytes_are_bounded_and_freed_with_the_connection(monkeypatch):
    monkeypatch.setattr(client_input, "MAX_PARKED_BYTES", 1500)
    tr = connected()
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)
    assert tr.parked_bytes == 1000 and tr.snapshot()["client_park_overflow"] == 1000
    tr.reset_packet(CLIENT_IP, CPORT)
    assert tr.parked_bytes == 0


def test_a_new_primary_whose_stack_advances_on_kept_bytes_is_given_time_to_catch_up():
    """Its agent keeps every byte the stack lacks and the stack moves: the reset waits past
    CATCH_UP_S (a reset would cost the client the whole upload), up to CATCH_UP_MAX_S."""
    tr = connected()
    tr.process(stack_pkt("A", START, window=1000), None, False, NOW)
    for i in range(6):  # the first is in the window, the others beyond it: all kept
        tr.process(client_pkt("PA", START + i * 1000, PIECE), None, False, NOW)
    tr.process(wire_pkt(START + 6000), None, False, NOW, arriving=True)
    conn = conn_of(tr)
    assert client_input.missing(conn) == 0 and client_input.stack_behind(conn) == 6000
    tr.promoted(NOW)
    step = client_input.STALL_S / 2
    at, point = NOW, START
    while at < NOW + client_input.CATCH_UP_MAX_S - step:  # it advances, slowly
        at += step
        point += 200  # (19 steps: 3800 of the 6000 bytes)
        tr.process(stack_pkt("A", point, window=1000), None, True, at)
        assert tr.verify_input(at) == ([], []), at - NOW
    assert at - NOW > client_input.CATCH_UP_S
    to_client, to_stack = tr.verify_input(NOW + client_input.CATCH_UP_MAX_S)
    assert len(to_client) == len(to_stack) == 1  # still behind: reset, never a hang


def test_a_catching_up_stack_that_stalls_is_reset():
    tr = connected()
    tr.process(stack_pkt("A", START, window=1000), None, False, NOW)
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW)
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)
    tr.process(wire_pkt(START + 2000), None, False, NOW, arriving=True)
    tr.promoted(NOW)
    moved = NOW + client_input.CATCH_UP_S - 0.1
    tr.process(stack_pkt("A", START + 1000, window=1000), None, True, moved)
    assert tr.verify_input(NOW + client_input.CATCH_UP_S) == ([], [])  # it moved 0.1 s ago
    to_client, _ = tr.verify_input(moved + client_input.STALL_S + 0.01)
    assert len(to_client) == 1


def test_a_resent_segment_that_fills_a_hole_behind_newer_ones_continues_the_stream():
    """The client resends what the primary missed too: the copy reaches the backup after
    newer segments, and the kept bytes must still count (and be handed over) in sequence."""
    tr = connected()
    tr.process(stack_pkt("A", START, window=1500), None, False, NOW)  # edge: START + 1500
    tr.process(client_pkt("PA", START + 1000, PIECE), None, False, NOW)  # a hole before it
    tr.process(client_pkt("PA", START + 2000, PIECE), None, False, NOW)  # beyond the window
    tr.process(wire_pkt(START + 3000), None, False, NOW, arriving=True)
    conn = conn_of(tr)
    assert client_input.missing(conn) == 3000  # (nothing continues the stack yet)
    tr.to_stack.clear()
    tr.process(client_pkt("PA", START, PIECE), None, False, NOW + 0.05)  # the resent one
    assert client_input.missing(conn) == 0
    assert [seq for seq, *_ in conn.parked] == [START, START + 1000, START + 2000]
    # its stack dropped the resent one and the one after (short of memory): a stall hands
    # over everything from its receive point in order, the hole filler first
    again = tr.survey(NOW + 0.05 + client_input.REINJECT_S)
    assert [IP(p)[TCP].seq for p in again] == [START, START + 1000]


def test_a_resent_segment_is_kept_in_its_place_near_the_end_and_sorted_when_far(monkeypatch):
    monkeypatch.setattr(client_input, "INSERT_SCAN", 3)
    conn = conn_of(connected())
    for i in (0, 1, 3, 4, 5):  # (the 3rd piece went missing: a hole)
        client_input.park(conn, START + i * 1000, 1000, b"", True)
    client_input.park(conn, START + 2000, 1000, b"", True)  # resent: 3 from the end
    assert [s - START for s, *_ in conn.parked] == [0, 1000, 2000, 3000, 4000, 5000]
    assert not conn.parked_disorder  # placed, no sort needed
    for i in (7, 8, 9, 10, 11):
        client_input.park(conn, START + i * 1000, 1000, b"", True)
    client_input.park(conn, START + 6000, 1000, b"", True)  # 5 from the end: beyond the scan
    assert conn.parked_disorder
    assert [s - START for s, *_ in client_input.in_order(conn)] == [i * 1000 for i in range(12)]
    assert not conn.parked_disorder
