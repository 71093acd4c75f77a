"""Tests for sbft_ryu.agent.nfq.ActiveQueue with the translator's catch-up ACKs: a backup's
queue sends ``translator.to_stack`` through its sender after the packet's verdict, through the
emulated skew's inbound shift when one is set. Fake packets and sender: no kernel."""

import socket
import types

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import nfq
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.agent.faults import PacketAdapter, Skew

from fakes import QueuedPacket, RecordedTranslator, assert_checksums_valid

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
SECRET = b"queue-catch-up-secret"
CLIENT_ISN, OWN_ISN, OWN_TS = 5000, 9000, 70000
SHARED, TS_BASE = shared_values(SECRET, socket.inet_aton(CLIENT), CPORT, socket.inet_aton(VIP),
                                PORT, CLIENT_ISN)
NOP2 = [("NOP", None), ("NOP", None)]
PRE_ROUTING, POST_ROUTING = 0, 4
REQUEST_DATA = b"GET / HTTP/1.0\r\n\r\n"
AFTER_REQUEST = CLIENT_ISN + 1 + len(REQUEST_DATA)
BODY = b"HTTP/1.0 200 OK\r\n\r\nhi"


def ts(tsval, tsecr=0):
    return ("Timestamp", (tsval % M32, tsecr % M32))


def client_pkt(flags, seq, ack=0, options=(), data=b""):
    packet = IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=CPORT, dport=PORT, flags=flags,
                                                       seq=seq % M32, ack=ack % M32,
                                                       window=5000, options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq, options=(), data=b""):
    packet = IP(src=VIP, dst=CLIENT, flags="DF") / TCP(sport=PORT, dport=CPORT, flags=flags,
                                                       seq=seq % M32, ack=AFTER_REQUEST,
                                                       options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


SYN = client_pkt("S", CLIENT_ISN, options=[ts(11)])
SYN_ACK = stack_pkt("SA", OWN_ISN, [ts(OWN_TS, 11)])
REQUEST = client_pkt("PA", CLIENT_ISN + 1, SHARED + 1, NOP2 + [ts(12, TS_BASE)], REQUEST_DATA)
CLIENT_ACK = client_pkt("A", AFTER_REQUEST, SHARED + 1 + len(BODY), NOP2 + [ts(13, TS_BASE + 4)])
RESPONSE = stack_pkt("PA", OWN_ISN + 1, NOP2 + [ts(OWN_TS + 3, 13)], BODY)


def make(primary=False, skew=None, fail_send=False):
    """(queue, log of verdicts and sends in order)."""
    log = []

    def sender(packet):
        if fail_send:
            raise OSError("no route")
        log.append(("sent", packet))

    queue = nfq.ActiveQueue(types.SimpleNamespace(primary=primary), Translator(SECRET, PORT),
                            PacketAdapter(skew), sender)
    queue.log = log
    return queue


def feed(queue, payload, hook):
    queue.callback(QueuedPacket(payload, hook, queue.log))


def lagging_backup(queue):
    """The client's request and its ACK of the primary's reply reach the backup before its
    own stack sent that reply."""
    for payload, hook in ((SYN, PRE_ROUTING), (SYN_ACK, POST_ROUTING), (REQUEST, PRE_ROUTING),
                          (CLIENT_ACK, PRE_ROUTING)):
        feed(queue, payload, hook)
    assert not any(entry[0] == "sent" for entry in queue.log)
    queue.log.clear()


def test_a_backup_sends_the_catch_up_ack_after_the_verdict(clock):
    queue = make()
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    assert [entry[0] for entry in queue.log] == ["drop", "sent"]  # the verdict first
    raw = queue.log[1][1]
    packet = IP(raw)
    assert (packet.src, packet.dst, packet[TCP].sport, packet[TCP].dport) == (CLIENT, VIP,
                                                                              CPORT, PORT)
    assert (packet[TCP].seq, packet[TCP].ack) == (AFTER_REQUEST, OWN_ISN + 1 + len(BODY))
    assert packet[TCP].flags == "A" and packet[TCP].window == 5000
    assert packet[TCP].options == NOP2 + [ts(13, OWN_TS + 4)]
    assert_checksums_valid(raw)
    assert not hasattr(queue.translator, "to_stack")  # an effect of the packet: none left
    assert queue.snapshot()["caught_up"] == 1 and queue.snapshot()["callback_errors"] == 0


def test_the_catch_up_ack_is_sent_once(clock):
    queue = make()
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    queue.log.clear()
    feed(queue, CLIENT_ACK, PRE_ROUTING)  # any later packet: nothing left to send
    queue.tick(clock[0] + 1)
    assert [entry[0] for entry in queue.log] == ["set_payload", "accept"]


def test_a_retransmission_sends_another(clock):
    queue = make()
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    feed(queue, RESPONSE, POST_ROUTING)
    assert [entry[0] for entry in queue.log] == ["drop", "sent", "drop", "sent"]
    assert queue.log[1] == queue.log[3]


def test_nothing_is_sent_for_output_the_client_has_not_acknowledged(clock):
    queue = make()
    for payload, hook in ((SYN, PRE_ROUTING), (SYN_ACK, POST_ROUTING), (REQUEST, PRE_ROUTING),
                          (RESPONSE, POST_ROUTING)):
        feed(queue, payload, hook)
    assert not any(entry[0] == "sent" for entry in queue.log)


def test_a_primary_sends_no_catch_up_ack(clock):
    queue = make(primary=True)
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    assert [entry[0] for entry in queue.log] == ["set_payload", "accept"]


def test_a_failing_sender_is_counted_and_the_list_is_still_taken(clock):
    queue = make(fail_send=True)
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    assert queue.log == [("drop",)]
    assert not hasattr(queue.translator, "to_stack")
    assert queue.snapshot()["callback_errors"] == 1


def test_with_a_skew_the_catch_up_ack_reaches_the_stack_in_its_own_space(clock):
    """The translator sees the emulated machine's numbers: the ACK is shifted back, so the
    real stack gets its own sequence numbers and timestamp clock."""
    skew = Skew(1000000000, 37000, PORT)
    queue = make(skew=skew)
    lagging_backup(queue)
    feed(queue, RESPONSE, POST_ROUTING)
    [(_, raw)] = [entry for entry in queue.log if entry[0] == "sent"]
    packet = IP(raw)
    assert (packet[TCP].seq, packet[TCP].ack) == (AFTER_REQUEST, OWN_ISN + 1 + len(BODY))
    assert packet[TCP].options == NOP2 + [ts(13, OWN_TS + 4)]
    assert_checksums_valid(raw)
    # exactly the skew's inbound shift of what the translator made in the skewed space
    skewed = RecordedTranslator(SECRET, PORT)
    for payload, outbound in ((SYN, False), (SYN_ACK, True), (REQUEST, False),
                              (CLIENT_ACK, False), (RESPONSE, True)):
        skewed.process(skew.outbound(payload) if outbound else payload, None, False, 0.0)
    [made] = skewed.to_stack
    assert IP(made)[TCP].ack == (OWN_ISN + 1 + len(BODY) + 1000000000) % M32
    assert raw == skew.inbound(made)
