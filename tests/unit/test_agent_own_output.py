"""Tests for sbft_ryu.agent.own_output and the voting parts of the translator: the statement
of a reply, the bytes a backup's own stack sent for a range (own_range), quiet_for, the RST
that resets a tainted connection, and the switch's copies of the primary's replies (WIRE)."""

import socket

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu import protocol
from sbft_ryu.agent import active, unacked
from sbft_ryu.agent.active import ACCEPT, DROP, WIRE, shared_values
from sbft_ryu.agent.own_output import ABSTAIN, ACKNOWLEDGED, PARTLY_ACKNOWLEDGED
from sbft_ryu.agent.own_output import statement_of

from fakes import RecordedTranslator

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
CLIENT_IP = socket.inet_aton(CLIENT)
SECRET = b"voting-test-secret"
CLIENT_ISN = 1000
SHARED, _ = shared_values(SECRET, CLIENT_IP, CPORT, socket.inet_aton(VIP), PORT, CLIENT_ISN)
NOW = 100.0


def client_pkt(flags, seq=CLIENT_ISN + 1, ack=0, data=b""):
    packet = IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=CPORT, dport=PORT, flags=flags,
                                                       seq=seq % M32, ack=ack % M32)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq, data=b"", ack=CLIENT_ISN + 1):
    packet = IP(src=VIP, dst=CLIENT, flags="DF") / TCP(sport=PORT, dport=CPORT, flags=flags,
                                                       seq=seq % M32, ack=ack % M32)
    return bytes(packet / Raw(data)) if data else bytes(packet)


def connected(own_isn, primary=False, now=NOW):
    """A translator after the client's SYN and this replica's SYN-ACK (own ISN ``own_isn``)."""
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.process(client_pkt("S", seq=CLIENT_ISN), None, primary, now)[0] == ACCEPT
    tr.process(stack_pkt("SA", own_isn), None, primary, now)
    return tr


def backup_sent(*segments, own_isn=5000, now=NOW):
    """A backup whose stack sent ``segments`` ((flags, data) from its first data byte on)."""
    tr = connected(own_isn)
    seq = own_isn + 1
    for flags, data in segments:
        assert tr.process(stack_pkt(flags, seq, data), None, False, now)[0] == DROP
        seq += len(data) + ("F" in flags)
    return tr


def own(tr, start, end, partial=False):
    """own_range for shared offsets from the first data byte."""
    return tr.own_output.own_range(CLIENT_IP, CPORT, (SHARED + 1 + start) % M32,
                                   (SHARED + 1 + end) % M32, partial)


# --- own_range ---------------------------------------------------------------------------------

def test_own_range_of_whole_segments_slices_and_spans():
    tr = backup_sent(("PA", b"HTTP/1.0 200 OK\r\n"), ("PA", b"\r\nhello"))
    assert own(tr, 0, 17) == (b"HTTP/1.0 200 OK\r\n", False)
    assert own(tr, 9, 12) == (b"200", False)
    assert own(tr, 15, 21) == (b"\r\n\r\nhe", False)  # across two segments
    assert own(tr, 0, 24) == (b"HTTP/1.0 200 OK\r\n\r\nhello", False)


def test_own_range_waits_for_bytes_the_stack_has_not_sent():
    tr = backup_sent(("PA", b"abcdef"))
    assert own(tr, 0, 10) is None
    assert own(tr, 6, 8) is None
    assert own(tr, 0, 10, partial=True) == (b"abcdef", False)  # what it has, for a quiet backup


def test_own_range_in_a_shared_space_that_wraps():
    own_isn = M32 - 3  # this stack's own sequence numbers wrap inside the data
    tr = backup_sent(("PA", b"0123456789"), own_isn=own_isn)
    assert own(tr, 2, 8) == (b"234567", False)


def test_a_fin_in_the_range_counts():
    tr = backup_sent(("FPA", b"bye"))
    assert own(tr, 0, 4) == (b"bye", True)  # data and the FIN's sequence number
    assert own(tr, 0, 3) == (b"bye", False)  # the data only
    assert own(tr, 3, 4) == (b"", True)  # the FIN alone


def test_a_fin_in_its_own_segment_counts():
    tr = backup_sent(("PA", b"bye"), ("FA", b""))
    assert own(tr, 0, 4) == (b"bye", True)
    assert own(tr, 3, 4) == (b"", True)


def test_a_stream_that_ended_before_the_range_end_differs():
    """Its stack will never send the rest: the range is answered with what came up to the FIN,
    whose digest differs from the primary's."""
    tr = backup_sent(("FPA", b"short"))
    assert own(tr, 0, 12) == (b"short", True)
    assert protocol.digest(*own(tr, 0, 12)) != protocol.digest(b"short reply!")


def test_own_range_of_an_unknown_connection_waits_then_abstains():
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.own_output.own_range(CLIENT_IP, CPORT, 1, 2) is None  # its SYN may still be queued
    assert tr.own_output.own_range(CLIENT_IP, CPORT, 1, 2, partial=True) is ABSTAIN  # joined later


def test_own_range_before_the_handshake():
    tr = RecordedTranslator(SECRET, PORT)
    tr.process(client_pkt("S", seq=CLIENT_ISN), None, False, NOW)  # no SYN-ACK of ours yet
    assert tr.own_output.own_range(CLIENT_IP, CPORT, 1, 2) is None
    # never answered
    assert tr.own_output.own_range(CLIENT_IP, CPORT, 1, 2, partial=True) is ABSTAIN


def test_own_range_answers_from_acknowledged_bytes_it_still_keeps():
    tr = backup_sent(("PA", b"abcdef"), ("PA", b"ghij"))
    ack = client_pkt("A", ack=SHARED + 1 + 6)  # the client has bytes 0..5 (from the primary)
    assert tr.process(ack, None, False, NOW)[0] == ACCEPT
    assert own(tr, 0, 6) == (b"abcdef", False)  # acknowledged, kept for a late comparison
    assert own(tr, 0, 10) == (b"abcdefghij", False)


def test_a_lagging_backup_waits_for_the_rest_of_a_range_its_catch_up_passed_into():
    """The client acknowledged 10 bytes (from the primary) before this stack produced any: its
    first 4 bytes are caught up (our own ACK moves past the range's start), yet the range is
    only not complete yet, not gone."""
    tr = connected(5000)
    assert tr.process(client_pkt("A", ack=SHARED + 1 + 10), None, False, NOW)[0] == ACCEPT
    assert tr.process(stack_pkt("PA", 5001, b"abcd"), None, False, NOW)[0] == DROP
    assert tr.snapshot()["caught_up"] == 1
    assert own(tr, 0, 10) is None  # wait: not PARTLY_ACKNOWLEDGED
    assert tr.process(stack_pkt("PA", 5005, b"efghij"), None, False, NOW)[0] == DROP
    assert own(tr, 0, 10) == (b"abcdefghij", False)


def test_own_range_says_when_the_client_acknowledged_the_range_or_its_start(monkeypatch):
    monkeypatch.setattr(unacked, "ACKED_KEPT_BYTES", 0)
    tr = backup_sent(("PA", b"abcdef"), ("PA", b"ghij"))
    ack = client_pkt("A", ack=SHARED + 1 + 6)  # the client has bytes 0..5 (from the primary)
    assert tr.process(ack, None, False, NOW)[0] == ACCEPT
    assert own(tr, 0, 6) is ACKNOWLEDGED  # trimmed: the client has all of it
    assert own(tr, 2, 6) is ACKNOWLEDGED
    assert own(tr, 0, 8) is PARTLY_ACKNOWLEDGED  # its start only
    assert own(tr, 6, 10) == (b"ghij", False)


def test_own_range_abstains_when_its_output_outgrew_what_a_backup_keeps(monkeypatch):
    monkeypatch.setattr(unacked, "MAX_UNACKED_BYTES", 60)  # (whole packets count: 46 bytes)
    tr = backup_sent(("PA", b"abcdef"), ("PA", b"ghijkl"))
    assert tr.snapshot()["unacked_overflow"] == 1
    assert own(tr, 0, 6) == (b"abcdef", False)
    assert own(tr, 6, 12) is ABSTAIN


# --- statement_of --------------------------------------------------------------------------------

def test_statement_of_a_translated_reply_is_in_the_shared_space():
    tr = connected(7000, primary=True)
    verdict, new, _ = tr.process(stack_pkt("PA", 7001, b"hello"), None, True, NOW)
    assert verdict == ACCEPT
    assert statement_of(new) == protocol.Statement(
        CLIENT_IP, CPORT, (SHARED + 1) % M32, (SHARED + 6) % M32, protocol.digest(b"hello"))


def test_statement_of_a_fin_covers_its_sequence_number():
    tr = connected(7000, primary=True)
    _, new, _ = tr.process(stack_pkt("FPA", 7001, b"bye"), None, True, NOW)
    statement = statement_of(new)
    assert (statement.end - statement.start) % M32 == 4
    assert statement.digest == protocol.digest(b"bye", fin=True)
    _, bare, _ = tr.process(stack_pkt("FA", 7004), None, True, NOW)
    assert statement_of(bare).digest == protocol.digest(b"", fin=True)


@pytest.mark.parametrize("flags", ["A", "SA", "R"])
def test_statement_of_a_segment_without_data_or_fin_is_none(flags):
    assert statement_of(stack_pkt(flags, 7001)) is None


def test_a_backup_votes_the_primarys_digest_for_the_same_bytes():
    """The premise of voting: different own ISNs, one shared space, equal statements."""
    primary = connected(7000, primary=True)
    backup = backup_sent(("PA", b"same bytes"), own_isn=123456789)
    _, new, _ = primary.process(stack_pkt("PA", 7001, b"same bytes"), None, True, NOW)
    claim = statement_of(new)
    mine = backup.own_output.own_range(claim.client, claim.port, claim.start, claim.end)
    assert protocol.digest(*mine) == claim.digest


# --- quiet_for -----------------------------------------------------------------------------------

def test_quiet_for_counts_from_the_last_new_data_of_the_stack():
    tr = backup_sent(("PA", b"abc"), now=NOW)
    assert tr.own_output.quiet_for(CLIENT_IP, CPORT, NOW + 0.5) == pytest.approx(0.5)
    tr.process(stack_pkt("PA", 5004, b"def"), None, False, NOW + 2)
    assert tr.own_output.quiet_for(CLIENT_IP, CPORT, NOW + 2.25) == pytest.approx(0.25)
    tr.process(stack_pkt("PA", 5004, b"def"), None, False, NOW + 3)  # a retransmission
    assert tr.own_output.quiet_for(CLIENT_IP, CPORT, NOW + 3) == pytest.approx(1.0)
    assert tr.own_output.quiet_for(CLIENT_IP, 1, NOW) == float("inf")


# --- the switch's copies (WIRE) ------------------------------------------------------------------

def test_a_reply_arriving_from_the_network_is_a_wire_copy():
    tr = connected(7000)
    copy = stack_pkt("PA", SHARED + 1, b"hello")  # the primary's packet, in the shared space
    assert tr.process(copy, None, False, NOW, arriving=True) == (WIRE, None, ())
    assert tr.connections[(CLIENT_IP, CPORT)].unacked is None  # not this stack's output
    assert tr.process(copy, None, False, NOW)[0] == DROP  # leaving: a backup's own reply


def test_client_packets_are_translated_whether_arriving_or_not():
    tr = connected(7000)
    assert tr.process(client_pkt("A", ack=SHARED + 1), None, False, NOW, arriving=True)[0] \
        == ACCEPT


# --- reset_packet --------------------------------------------------------------------------------

def assert_valid_rst(raw, seq):
    packet = IP(raw)
    assert (packet.src, packet.dst, packet.ttl, packet.len) == (VIP, CLIENT, 64, 40)
    assert (packet[TCP].sport, packet[TCP].dport, packet[TCP].seq) == (PORT, CPORT, seq % M32)
    assert packet[TCP].flags == "R"
    checks = IP(raw)
    del checks.chksum
    del checks[TCP].chksum
    rebuilt = IP(bytes(checks))
    assert (packet.chksum, packet[TCP].chksum) == (rebuilt.chksum, rebuilt[TCP].chksum)


def test_reset_packet_uses_the_clients_latest_ack():
    tr = connected(7000)
    tr.process(client_pkt("A", ack=SHARED + 40), None, False, NOW)
    assert_valid_rst(tr.reset_packet(CLIENT_IP, CPORT), SHARED + 40)


def test_reset_packet_before_any_client_ack_uses_the_first_byte():
    tr = connected(7000)
    assert_valid_rst(tr.reset_packet(CLIENT_IP, CPORT), SHARED + 1)


def test_reset_packet_of_an_unknown_or_unfinished_connection_is_none():
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.reset_packet(CLIENT_IP, CPORT) is None
    tr.process(client_pkt("S", seq=CLIENT_ISN), None, False, NOW)
    assert tr.reset_packet(CLIENT_IP, CPORT) is None


def test_after_a_reset_the_stack_is_silenced_and_challenge_acks_get_a_rst():
    tr = backup_sent(("PA", b"abc"))
    assert tr.reset_packet(CLIENT_IP, CPORT) is not None
    conn = tr.connections[(CLIENT_IP, CPORT)]
    assert conn.unacked is None and conn.closed & active.CLOSED_RST
    assert tr.process(stack_pkt("PA", 5004, b"more"), None, True, NOW)[0] == DROP
    assert tr.process(client_pkt("A", ack=SHARED + 77), None, True, NOW) == (DROP, None, ())
    [rst] = tr.outgoing
    assert_valid_rst(rst, SHARED + 77)  # a RST the client accepts: seq = its ACK
    assert tr.process(client_pkt("R", ack=0), None, True, NOW)[0] == DROP
    assert len(tr.outgoing) == 1  # never a RST for a RST
