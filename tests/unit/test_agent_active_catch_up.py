"""Tests for sbft_ryu.agent.active.Translator._catch_up: a backup's stack that sends bytes (or a
FIN) the client already acknowledged in the shared space gets a pure ACK for them from the
translator (``to_stack``), as if from the client, since the client will never acknowledge them
again. Pure: bytes in, bytes out, time passed in."""

import socket

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import active, unacked
from sbft_ryu.agent.active import ACCEPT, DROP, HOLD, shared_values

from fakes import RecordedTranslator, assert_checksums_valid

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
CLIENT_IP, VIP_IP = socket.inet_aton(CLIENT), socket.inet_aton(VIP)
SECRET = b"catch-up-test-secret"
CLIENT_ISN, OWN_ISN, OWN_TS = 1000, 5000, 70000
SHARED, TS_BASE = shared_values(SECRET, CLIENT_IP, CPORT, VIP_IP, PORT, CLIENT_ISN)
NOW = 100.0
NOP2 = [("NOP", None), ("NOP", None)]
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
AFTER_REQUEST = CLIENT_ISN + 1 + len(REQUEST)  # the client's next sequence number
BODY = b"HTTP/1.0 200 OK\r\n\r\nhello"


def ts(tsval, tsecr=0):
    return ("Timestamp", (tsval % M32, tsecr % M32))


def client_pkt(flags, seq, ack=0, data=b"", options=(), window=8192):
    packet = IP(src=CLIENT, dst=VIP, flags="DF", id=7) / TCP(
        sport=CPORT, dport=PORT, flags=flags, seq=seq % M32, ack=ack % M32, window=window,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq, data=b"", options=()):
    packet = IP(src=VIP, dst=CLIENT, flags="DF", id=321) / TCP(
        sport=PORT, dport=CPORT, flags=flags, seq=seq % M32, ack=AFTER_REQUEST,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def shared(offset):
    """The shared sequence number of the reply's byte ``offset`` (0: the first data byte)."""
    return (SHARED + 1 + offset) % M32


def own_seq(offset, own_isn=OWN_ISN):
    return (own_isn + 1 + offset) % M32


def connected(primary=False, timestamps=True, own_isn=OWN_ISN, request=True, window=8192,
              now=NOW):
    """A replica after the client's SYN, its own SYN-ACK and (``request``) the client's
    request (advertising ``window``), each with timestamps (``timestamps``) in Linux's usual
    NOP NOP TS layout."""
    tr = RecordedTranslator(SECRET, PORT)
    syn_options = [ts(11)] if timestamps else []
    assert tr.process(client_pkt("S", CLIENT_ISN, options=syn_options), None, primary,
                      now)[0] == ACCEPT
    synack_options = [ts(OWN_TS, 11)] if timestamps else []
    tr.process(stack_pkt("SA", own_isn, options=synack_options), None, primary, now)
    if request:
        options = NOP2 + [ts(12, TS_BASE)] if timestamps else []
        assert tr.process(client_pkt("PA", CLIENT_ISN + 1, SHARED + 1, REQUEST, options,
                                     window), None, primary, now)[0] == ACCEPT
    return tr


def client_acks(tr, offset, tsval=13, tsecr=TS_BASE + 5, window=8192, primary=False,
                options=None, now=NOW):
    """The client acknowledges the reply up to ``offset`` (bytes the primary sent)."""
    if options is None:
        options = NOP2 + [ts(tsval, tsecr)]
    packet = client_pkt("A", AFTER_REQUEST, shared(offset), options=options, window=window)
    assert tr.process(packet, None, primary, now)[0] == ACCEPT


def stack_sends(tr, flags, offset, data=b"", primary=False, timestamps=True, now=NOW):
    options = NOP2 + [ts(OWN_TS + 3, 13)] if timestamps else []
    return tr.process(stack_pkt(flags, own_seq(offset), data, options), None, primary, now)


def conn_of(tr):
    return tr.connections[(CLIENT_IP, CPORT)]


# --- the catch-up ACK ---------------------------------------------------------------------------

def test_a_lagging_backup_gets_a_pure_ack_for_data_the_client_acknowledged():
    tr = connected(window=4321)
    client_acks(tr, len(BODY), window=4321)  # the primary's reply reached the client
    assert tr.to_stack == []
    assert stack_sends(tr, "PA", 0, BODY) == (DROP, None, ())  # the backup's stack catches up
    [raw] = tr.to_stack
    packet = IP(raw)
    assert (packet.src, packet.dst, packet.proto, packet.ttl) == (CLIENT, VIP, 6, 64)
    assert (packet.version, packet.ihl, packet.len, packet.id, packet.flags, packet.frag) == (
        4, 5, 52, 0, "DF", 0)
    assert (packet[TCP].sport, packet[TCP].dport) == (CPORT, PORT)
    assert packet[TCP].seq == AFTER_REQUEST  # the client's next sequence number
    assert packet[TCP].ack == own_seq(len(BODY))  # the segment's end, in the stack's space
    assert packet[TCP].flags == "A" and packet[TCP].dataofs == 8
    assert packet[TCP].window == 4321  # the client's window field
    assert packet[TCP].urgptr == 0 and not packet[TCP].payload
    # the client's timestamp option as translated: its TSval, the TSecr in the stack's clock
    assert packet[TCP].options == NOP2 + [ts(13, OWN_TS + 5)]
    assert_checksums_valid(raw)
    assert tr.snapshot()["caught_up"] == 1


def test_the_catch_up_ack_is_what_the_translator_makes_of_the_clients_own_ack():
    """Except for the ACK number (the segment's end rather than the clamped one), the stack
    receives what the client's last ACK would give it once the stack caught up."""
    tr = connected()
    client_acks(tr, len(BODY))
    stack_sends(tr, "PA", 0, BODY)
    [raw] = tr.to_stack
    replay = connected()
    stack_sends(replay, "PA", 0, BODY)  # this one sent the bytes before the client's ACK
    packet = client_pkt("A", AFTER_REQUEST, shared(len(BODY)), options=NOP2 + [ts(13,
                                                                                  TS_BASE + 5)])
    _, expected, _ = replay.process(packet, None, False, NOW)
    assert IP(raw)[TCP].seq == IP(expected)[TCP].seq
    assert IP(raw)[TCP].ack == IP(expected)[TCP].ack
    assert IP(raw)[TCP].options == IP(expected)[TCP].options


def test_exactly_at_the_clients_ack_it_catches_up_short_of_it_not():
    tr = connected()
    client_acks(tr, 10)
    stack_sends(tr, "PA", 0, BODY[:6])  # covered
    stack_sends(tr, "PA", 6, BODY[6:10])  # covered exactly: end == the client's ACK
    assert [IP(raw)[TCP].ack for raw in tr.to_stack] == [own_seq(6), own_seq(10)]
    stack_sends(tr, "PA", 10, BODY[10:])  # beyond it: the client will acknowledge these
    assert len(tr.to_stack) == 2 and tr.snapshot()["caught_up"] == 2


def test_a_fin_the_client_acknowledged_is_caught_up_with_its_sequence_number():
    tr = connected()
    client_acks(tr, len(BODY) + 1)  # the primary's data and FIN
    stack_sends(tr, "FPA", 0, BODY)
    [raw] = tr.to_stack
    assert IP(raw)[TCP].ack == own_seq(len(BODY) + 1)
    assert_checksums_valid(raw)


def test_a_bare_fin_the_client_acknowledged_is_caught_up():
    """The case the catch-up exists for: a FIN never acknowledged keeps the socket closing."""
    tr = connected()
    client_acks(tr, len(BODY) + 1)
    stack_sends(tr, "PA", 0, BODY)
    stack_sends(tr, "FA", len(BODY))
    assert [IP(raw)[TCP].ack for raw in tr.to_stack] == [own_seq(len(BODY)),
                                                         own_seq(len(BODY) + 1)]
    assert conn_of(tr).own_acked == own_seq(len(BODY) + 1)


def test_data_acknowledged_only_without_the_fin_gets_no_ack_for_the_fin():
    tr = connected()
    client_acks(tr, len(BODY))  # the client has the data, not (yet) the FIN
    stack_sends(tr, "FPA", 0, BODY)
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0


def test_catch_up_updates_own_acked_and_trims_what_a_new_primary_would_replay():
    tr = connected()
    client_acks(tr, 10)
    stack_sends(tr, "PA", 0, BODY[:10])
    conn = conn_of(tr)
    assert conn.own_acked == own_seq(10)
    assert not conn.unacked and conn.unacked_bytes == 0  # kept, then trimmed at once
    # but still there for the vote engine to compare with the primary's bytes
    assert [(seq, end) for seq, end, _ in conn.acked] == [(own_seq(0), own_seq(10))]
    assert tr.own_output.own_range(CLIENT_IP, CPORT, shared(0), shared(10))[0] == BODY[:10]
    stack_sends(tr, "PA", 10, BODY[10:])  # not acknowledged yet: kept for a replay
    assert [(seq, end) for seq, end, _ in conn.unacked] == [(own_seq(10), own_seq(len(BODY)))]
    assert conn.own_acked == own_seq(10)
    replayed = tr.replay()
    assert [IP(raw)[Raw].load for raw in replayed] == [BODY[10:]]


def test_catch_up_trims_earlier_segments_still_kept():
    tr = connected()
    stack_sends(tr, "PA", 0, BODY[:5])  # sent before the client acknowledged anything
    client_acks(tr, len(BODY))  # clamped to the 5 bytes this stack sent
    conn = conn_of(tr)
    assert not conn.unacked  # the client's (clamped) ACK trimmed the first segment
    stack_sends(tr, "PA", 5, BODY[5:])
    assert [IP(raw)[TCP].ack for raw in tr.to_stack] == [own_seq(len(BODY))]
    assert not conn.unacked and conn.unacked_bytes == 0
    assert [seq for seq, _, _ in conn.acked] == [own_seq(0), own_seq(5)]
    assert conn.own_acked == own_seq(len(BODY))
    assert tr.replay() == []


def test_acknowledged_bytes_kept_for_comparison_are_bounded(monkeypatch):
    monkeypatch.setattr(unacked, "ACKED_KEPT_BYTES", 100)  # (whole packets count)
    tr = connected()
    client_acks(tr, len(BODY))
    stack_sends(tr, "PA", 0, BODY[:5])
    stack_sends(tr, "PA", 5, BODY[5:])
    conn = conn_of(tr)
    assert [seq for seq, _, _ in conn.acked] == [own_seq(5)] and conn.acked_bytes <= 100
    stack_sends(tr, "PA", 0, BODY[:5])  # a retransmission of acknowledged bytes: not kept
    assert not conn.unacked and [seq for seq, _, _ in conn.acked] == [own_seq(5)]


def test_a_retransmission_of_acknowledged_bytes_is_caught_up_again():
    """The stack retransmits when the catch-up ACK was lost: it needs another."""
    tr = connected()
    client_acks(tr, len(BODY))
    stack_sends(tr, "PA", 0, BODY)
    stack_sends(tr, "PA", 0, BODY, now=NOW + 0.3)
    assert len(tr.to_stack) == 2 and tr.to_stack[0] == tr.to_stack[1]
    assert tr.snapshot()["caught_up"] == 2


def test_catch_up_in_a_shared_space_that_wraps():
    own_isn = M32 - 7  # the stack's sequence numbers wrap inside the reply
    tr = connected(own_isn=own_isn)
    client_acks(tr, len(BODY))
    assert tr.process(stack_pkt("PA", own_seq(0, own_isn), BODY,
                                NOP2 + [ts(OWN_TS + 3, 13)]), None, False, NOW)[0] == DROP
    [raw] = tr.to_stack
    assert IP(raw)[TCP].ack == own_seq(len(BODY), own_isn) == len(BODY) - 7 + 1
    assert_checksums_valid(raw)


def test_without_client_timestamps_the_ack_has_no_options():
    tr = connected(timestamps=False)
    client_acks(tr, len(BODY), options=[])
    stack_sends(tr, "PA", 0, BODY, timestamps=False)
    [raw] = tr.to_stack
    packet = IP(raw)
    assert (packet.len, packet[TCP].dataofs, packet[TCP].options) == (40, 5, [])
    assert (packet[TCP].seq, packet[TCP].ack) == (AFTER_REQUEST, own_seq(len(BODY)))
    assert_checksums_valid(raw)


def test_a_timestamp_in_another_layout_is_not_copied():
    """Only Linux's NOP NOP TS layout is remembered; any other gives an ACK without options."""
    tr = connected(timestamps=True, request=False)
    odd = [ts(12, TS_BASE), ("NOP", None), ("NOP", None)]  # 12 bytes, TS first
    assert tr.process(client_pkt("PA", CLIENT_ISN + 1, SHARED + 1, REQUEST, odd), None, False,
                      NOW)[0] == ACCEPT
    client_acks(tr, len(BODY), options=[("MSS", 1460), ("NOP", None), ("NOP", None),
                                        ("NOP", None), ("NOP", None), ("EOL", None),
                                        ("EOL", None), ("EOL", None), ("EOL", None)])
    stack_sends(tr, "PA", 0, BODY)
    [raw] = tr.to_stack
    assert IP(raw)[TCP].options == [] and IP(raw).len == 40
    assert_checksums_valid(raw)


def test_the_clients_sequence_number_follows_its_latest_data():
    tr = connected()
    more = b"second request\r\n"
    assert tr.process(client_pkt("PA", AFTER_REQUEST, shared(0), more, NOP2 + [ts(14, TS_BASE)],
                                 window=3000), None, False, NOW)[0] == ACCEPT
    old = client_pkt("PA", CLIENT_ISN + 1, shared(0), REQUEST, NOP2 + [ts(12, TS_BASE)],
                     window=7777)
    tr.process(old, None, False, NOW)  # a retransmission of older data: seq, window stay
    client_acks(tr, len(BODY), options=[], window=3000)
    stack_sends(tr, "PA", 0, BODY)
    [raw] = tr.to_stack
    assert IP(raw)[TCP].seq == AFTER_REQUEST + len(more)
    assert IP(raw)[TCP].window == 3000


def test_the_clients_fin_counts_in_its_next_sequence_number():
    tr = connected()
    fin = client_pkt("FA", AFTER_REQUEST, shared(len(BODY)), options=NOP2 + [ts(14,
                                                                              TS_BASE + 6)])
    assert tr.process(fin, None, False, NOW)[0] == ACCEPT
    stack_sends(tr, "PA", 0, BODY)
    [raw] = tr.to_stack
    assert IP(raw)[TCP].seq == AFTER_REQUEST + 1
    assert IP(raw)[TCP].options == NOP2 + [ts(14, OWN_TS + 6)]


def test_the_window_is_the_one_of_the_clients_latest_packet():
    """A pure ACK does not advance the client's sequence number, but its window is the
    latest (the client's receive window grows, or reopens after a zero window)."""
    tr = connected()  # the request advertised 8192
    client_acks(tr, len(BODY), tsval=13, window=999)
    stack_sends(tr, "PA", 0, BODY)
    [raw] = tr.to_stack
    assert IP(raw)[TCP].options == NOP2 + [ts(13, OWN_TS + 5)]  # (the latest ACK's option)
    assert IP(raw)[TCP].window == 999


def test_client_packets_released_after_the_synack_count_for_the_catch_up():
    """The handshake race: the client's request and its ACK of the primary's reply and FIN
    were held for this backup's SYN-ACK; released, they still tell what a catch-up needs (its
    FIN would stay unacknowledged otherwise)."""
    tr = RecordedTranslator(SECRET, PORT)
    tr.process(client_pkt("S", CLIENT_ISN), None, False, NOW)
    request = client_pkt("PA", CLIENT_ISN + 1, SHARED + 1, REQUEST)
    fin = client_pkt("FA", AFTER_REQUEST, shared(len(BODY) + 1))  # the primary's reply + FIN
    assert tr.process(request, "t1", False, NOW)[0] == HOLD
    assert tr.process(fin, "t2", False, NOW)[0] == HOLD
    _, _, released = tr.process(stack_pkt("SA", OWN_ISN), None, False, NOW)
    assert [token for token, _ in released] == ["t1", "t2"]
    assert tr.process(stack_pkt("FPA", own_seq(0), BODY), None, False, NOW)[0] == DROP
    [raw] = tr.to_stack
    assert (IP(raw)[TCP].seq, IP(raw)[TCP].ack) == (AFTER_REQUEST + 1, own_seq(len(BODY) + 1))


# --- when there is no catch-up ------------------------------------------------------------------

def test_not_for_the_primary():
    tr = connected(primary=True)
    client_acks(tr, len(BODY), primary=True)
    verdict, new, _ = stack_sends(tr, "PA", 0, BODY, primary=True)
    assert verdict == ACCEPT and new is not None  # its segment leaves, translated
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0


def test_not_before_the_client_acknowledged_that_far():
    tr = connected()
    stack_sends(tr, "PA", 0, BODY)  # no ACK of the reply yet
    client_acks(tr, 5)
    stack_sends(tr, "PA", 0, BODY)  # a retransmission: only 5 of its bytes acknowledged
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0
    assert conn_of(tr).own_acked == own_seq(5)


def test_not_before_any_client_ack_of_the_reply():
    tr = connected()  # the request acknowledged only our SYN-ACK
    stack_sends(tr, "PA", 0, BODY)
    assert tr.to_stack == []


def test_not_for_a_retransmitted_synack_the_client_acknowledged():
    tr = connected()
    assert stack_sends(tr, "SA", -1)[0] == DROP  # own ISN again: covered by the client's ACK
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0


def test_not_for_a_rst_even_with_data():
    tr = connected()
    client_acks(tr, len(BODY))
    assert stack_sends(tr, "RA", 0, BODY[:4])[0] == DROP
    assert stack_sends(tr, "R", len(BODY))[0] == DROP
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0


def test_not_for_a_pure_ack_of_the_stack():
    tr = connected()
    client_acks(tr, len(BODY))
    stack_sends(tr, "A", 0)  # no data, no FIN: nothing to acknowledge
    assert tr.to_stack == []


def test_not_for_an_unknown_connection_or_one_before_its_synack():
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.process(stack_pkt("PA", own_seq(0), BODY), None, False, NOW)[0] == DROP
    tr.process(client_pkt("S", CLIENT_ISN), None, False, NOW)
    assert tr.process(stack_pkt("PA", own_seq(0), BODY), None, False, NOW)[0] == DROP
    assert tr.to_stack == [] and tr.snapshot()["caught_up"] == 0


def test_not_after_the_connection_was_reset_by_us():
    tr = connected()
    client_acks(tr, len(BODY))
    assert tr.reset_packet(CLIENT_IP, CPORT) is not None
    assert stack_sends(tr, "PA", 0, BODY)[0] == DROP  # its leftovers are silenced
    assert tr.to_stack == []


def test_to_stack_is_only_appended_to():
    """The queue takes the list after each packet; the translator never sends by itself."""
    tr = connected()
    client_acks(tr, len(BODY))
    stack_sends(tr, "PA", 0, BODY[:5])
    first = list(tr.to_stack)
    stack_sends(tr, "PA", 5, BODY[5:])
    assert tr.to_stack[:1] == first and len(tr.to_stack) == 2
    assert tr.outgoing == []  # RSTs for the client go elsewhere
    assert "caught_up" in active.COUNTER_NAMES
