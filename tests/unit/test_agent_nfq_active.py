"""Tests for sbft_ryu.agent.nfq.ActiveQueue: the NFQUEUE shell around the active translator,
with a fake netfilterqueue packet (no kernel)."""

import types

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import active, client_input, nfq
from sbft_ryu.agent.active import Translator, shared_values
from sbft_ryu.agent.faults import PacketAdapter, Skew

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
SECRET = b"queue-test-secret"
CLIENT_ISN, OWN_ISN, OWN_TS = 5000, M32 - 10, 70000
SHARED_ISN, TS_BASE = shared_values(SECRET, bytes([10, 0, 0, 31]), CPORT, bytes([10, 0, 0, 100]),
                                    PORT, CLIENT_ISN)
NOP2 = [("NOP", None), ("NOP", None)]


def ts(tsval, tsecr=0):
    return ("Timestamp", (tsval % M32, tsecr % M32))


def client_pkt(flags, seq, ack=0, options=(), data=b""):
    packet = IP(src=CLIENT, dst=VIP, flags="DF", id=7) / TCP(
        sport=CPORT, dport=PORT, flags=flags, seq=seq % M32, ack=ack % M32,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq, ack=0, options=(), data=b"", ip_id=321):
    packet = IP(src=VIP, dst=CLIENT, flags="DF", id=ip_id) / TCP(
        sport=PORT, dport=CPORT, flags=flags, seq=seq % M32, ack=ack % M32,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


SYN = client_pkt("S", CLIENT_ISN, 0, [("MSS", 1460), ("SAckOK", b""), ts(11, 0),
                                      ("NOP", None), ("WScale", 7)])
SYN_ACK = stack_pkt("SA", OWN_ISN, CLIENT_ISN + 1, [("MSS", 1460), ("SAckOK", b""),
                                                    ts(OWN_TS, 11), ("NOP", None),
                                                    ("WScale", 7)], ip_id=0)
HS_ACK = client_pkt("A", CLIENT_ISN + 1, SHARED_ISN + 1, NOP2 + [ts(12, TS_BASE)])
REQUEST = client_pkt("PA", CLIENT_ISN + 1, SHARED_ISN + 1, NOP2 + [ts(13, TS_BASE)],
                     data=b"GET / HTTP/1.0\r\n\r\n")
RESPONSE = stack_pkt("PA", OWN_ISN + 1, CLIENT_ISN + 19, NOP2 + [ts(OWN_TS + 3, 13)],
                     data=b"HTTP/1.0 200 OK\r\n\r\nhi")


PRE_ROUTING, POST_ROUTING = 0, 4  # netfilter hooks: sbft-in/sbft-wire (raw), sbft-out (mangle)


def hook_of(payload):
    """The hook a packet is queued at: the client's packets (to the service port) arrive in
    PREROUTING, the stack's replies leave in POSTROUTING."""
    if not isinstance(payload, bytes) or len(payload) < 40:
        return POST_ROUTING
    ihl = (payload[0] & 0x0F) * 4
    return PRE_ROUTING if payload[ihl + 2:ihl + 4] == PORT.to_bytes(2, "big") else POST_ROUTING


class FakePacket:
    """The netfilterqueue.Packet methods ActiveQueue uses; records every call. ``hook``: where
    the kernel queued it (by default from the packet's direction)."""

    def __init__(self, payload, fail_get=False, fail_set=False, fail_accept=False,
                 fail_drop=False, hook=None):
        self.payload = payload
        self.hook = hook_of(payload) if hook is None else hook
        self.fail_get, self.fail_set = fail_get, fail_set
        self.fail_accept, self.fail_drop = fail_accept, fail_drop
        self.calls = []

    def get_payload(self):
        if self.fail_get:
            raise RuntimeError("payload gone")
        return self.payload

    def set_payload(self, payload):
        self.calls.append(("set_payload", payload))
        if self.fail_set:
            raise RuntimeError("set_payload failed")

    def accept(self):
        self.calls.append(("accept",))
        if self.fail_accept:
            raise OSError("verdict failed")

    def drop(self):
        self.calls.append(("drop",))
        if self.fail_drop:
            raise OSError("verdict failed")

    def verdicts(self):
        return [call[0] for call in self.calls if call[0] in ("accept", "drop")]


def make_queue(primary=True, skew=None):
    state = types.SimpleNamespace(primary=primary)
    return nfq.ActiveQueue(state, Translator(SECRET, PORT), PacketAdapter(skew))


def feed(queue, payload, **fail):
    packet = FakePacket(payload, **fail)
    queue.callback(packet)
    return packet


def translated(payload, primary=True, before=(SYN, SYN_ACK)):
    """What a bare translator makes of ``payload`` after ``before``."""
    tr = Translator(SECRET, PORT)
    for raw in before:
        tr.process(raw, None, primary, 1000.0)
    return tr.process(payload, None, primary, 1000.0)


def test_accept_sets_the_translated_payload_then_accepts(clock):
    queue = make_queue(primary=True)
    assert feed(queue, SYN).calls == [("accept",)]  # nothing to translate: no set_payload
    synack = feed(queue, SYN_ACK)
    assert synack.calls == [("set_payload", translated(SYN_ACK, before=(SYN,))[1]),
                            ("accept",)]
    assert IP(synack.calls[0][1])[TCP].seq == SHARED_ISN
    request = feed(queue, REQUEST)
    assert request.calls == [("set_payload", translated(REQUEST)[1]), ("accept",)]
    assert IP(request.calls[0][1])[TCP].ack == (OWN_ISN + 1) % M32
    response = feed(queue, RESPONSE)
    assert response.calls == [("set_payload", translated(RESPONSE)[1]), ("accept",)]
    assert IP(response.calls[0][1])[TCP].seq == (SHARED_ISN + 1) % M32
    assert queue.snapshot()["callback_errors"] == 0


def test_unknown_inbound_is_accepted_unchanged(clock):
    queue = make_queue()
    assert feed(queue, REQUEST).calls == [("accept",)]
    assert queue.snapshot()["passed_unknown_in"] == 1


def test_drop_paths(clock):
    queue = make_queue(primary=False)
    assert feed(queue, RESPONSE).calls == [("drop",)]  # unknown connection
    feed(queue, SYN)
    assert feed(queue, SYN_ACK).calls == [("drop",)]  # a backup's
    assert feed(queue, RESPONSE).calls == [("drop",)]
    assert feed(queue, b"\x45garbage").calls == [("drop",)]  # malformed
    snap = queue.snapshot()
    assert (snap["unknown_out"], snap["dropped_backup"], snap["malformed"]) == (1, 2, 1)


@pytest.mark.parametrize("primary", [True, False])
def test_a_reply_arriving_from_the_network_is_dropped_untranslated(clock, primary):
    """A packet *from* the service port queued in PREROUTING is a copy of another replica's
    reply (the wire check): never delivered, never mistaken for this stack's own."""
    queue = make_queue(primary=primary)
    feed(queue, SYN)
    feed(queue, SYN_ACK)
    copy = feed(queue, RESPONSE, hook=PRE_ROUTING)
    assert copy.calls == [("drop",)]
    snap = queue.snapshot()
    assert (snap["translated_out"], snap["dropped_backup"]) == (int(primary), int(not primary))
    assert snap["callback_errors"] == 0


@pytest.mark.parametrize("primary", [True, False])
def test_held_packets_get_their_verdict_when_the_synack_goes(clock, primary):
    queue = make_queue(primary=primary)
    feed(queue, SYN)
    ack, request = feed(queue, HS_ACK), feed(queue, REQUEST)
    assert ack.calls == [] and request.calls == []  # held: no verdict yet
    assert queue.snapshot()["held"] == 2
    synack = feed(queue, SYN_ACK)
    assert synack.verdicts() == (["accept"] if primary else ["drop"])
    assert ack.calls == [("set_payload", translated(HS_ACK, primary)[1]), ("accept",)]
    assert request.calls == [("set_payload", translated(REQUEST, primary)[1]), ("accept",)]
    assert IP(request.calls[0][1])[TCP].ack == (OWN_ISN + 1) % M32
    assert queue.snapshot()["released"] == 2


def test_tick_drops_expired_held_packets(clock):
    queue = make_queue()
    feed(queue, SYN)
    held = feed(queue, HS_ACK)
    queue.tick(clock[0] + active.HOLD_S / 2)
    assert held.calls == []
    queue.tick(clock[0] + active.HOLD_S + 0.1)
    assert held.calls == [("drop",)]
    assert queue.snapshot()["hold_expired"] == 1
    queue.tick(clock[0] + 10)
    assert held.calls == [("drop",)]  # once only
    assert feed(queue, SYN_ACK).verdicts() == ["accept"]  # nothing left to release
    assert held.calls == [("drop",)]


def test_tick_drops_packets_of_a_replaced_connection(clock):
    queue = make_queue()
    feed(queue, SYN)
    held = feed(queue, HS_ACK)
    feed(queue, client_pkt("S", CLIENT_ISN + 777, 0))  # same port, new ISN
    queue.tick(clock[0])
    assert held.calls == [("drop",)]


def test_tick_counts_failing_drops(clock):
    queue = make_queue()
    feed(queue, SYN)
    feed(queue, HS_ACK, fail_drop=True)
    queue.tick(clock[0] + active.HOLD_S + 1)
    assert queue.snapshot()["callback_errors"] == 1


@pytest.mark.parametrize("fail", ["fail_get", "fail_set", "fail_accept"])
def test_exception_drops_and_counts(clock, fail):
    queue = make_queue()
    feed(queue, SYN)
    feed(queue, SYN_ACK)
    packet = feed(queue, REQUEST, **{fail: True})
    assert packet.calls[-1] == ("drop",)
    assert queue.snapshot()["callback_errors"] == 1


def test_exception_in_drop_itself_is_swallowed(clock):
    queue = make_queue()
    packet = feed(queue, REQUEST, fail_get=True, fail_drop=True)
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["callback_errors"] == 1


def test_every_released_packet_gets_a_verdict_even_if_one_fails(clock):
    queue = make_queue()
    feed(queue, SYN)
    first = feed(queue, HS_ACK, fail_accept=True)
    second = feed(queue, REQUEST)
    synack = feed(queue, SYN_ACK)
    assert synack.verdicts() == ["accept"]  # exactly one verdict each
    assert first.verdicts() and second.verdicts() == ["accept"]


def test_released_packets_get_verdicts_even_if_the_synack_verdict_fails(clock):
    queue = make_queue()
    feed(queue, SYN)
    held = feed(queue, HS_ACK)
    feed(queue, SYN_ACK, fail_accept=True)
    assert held.verdicts() == ["accept"]


class SpyTranslator(Translator):
    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []
        self.results = []

    def process(self, payload, token, primary, now, arriving=False):
        self.seen.append(payload)
        result = super().process(payload, token, primary, now, arriving)
        self.results.append(result)
        return result


def test_skew_outbound_before_and_inbound_after_the_translator(clock):
    skew = Skew(1000000000, 37000, PORT)
    spy = SpyTranslator(SECRET, PORT)
    queue = nfq.ActiveQueue(types.SimpleNamespace(primary=True), spy, PacketAdapter(skew))
    plain = make_queue()
    for raw in (SYN, HS_ACK, SYN_ACK, REQUEST, RESPONSE):
        skewed_packet = feed(queue, raw)
        plain_packet = feed(plain, raw)
        assert spy.seen[-1] == skew.outbound(raw)  # the translator sees the skewed stack
        verdict, new, released = spy.results[-1][:3]
        if verdict == active.ACCEPT and new is not None:
            assert skewed_packet.calls[0] == ("set_payload", skew.inbound(new))
        # a skew is invisible on the wire: same calls as an unskewed replica
        assert skewed_packet.calls == plain_packet.calls
    assert IP(spy.seen[2])[TCP].seq == (OWN_ISN + 1000000000) % M32
    # the released handshake ACK reached the (emulated) stack in its own space
    assert spy.results[2][2][0][1] != skew.inbound(spy.results[2][2][0][1])


def test_skewed_released_packets_are_unskewed(clock):
    skew = Skew(M32 - 5, 123, PORT)
    queue = make_queue(skew=skew)
    feed(queue, SYN)
    held = feed(queue, REQUEST)
    feed(queue, SYN_ACK)
    payload = held.calls[0][1]
    assert IP(payload)[TCP].ack == (OWN_ISN + 1) % M32  # the real stack's own space
    assert dict(IP(payload)[TCP].options)["Timestamp"] == (13, OWN_TS)


def test_snapshot_has_translator_counters_callback_errors_and_connections(clock):
    queue = make_queue()
    feed(queue, SYN)
    feed(queue, REQUEST, fail_get=True)
    snap = queue.snapshot()
    assert set(snap) == (set(active.COUNTER_NAMES) | set(active.GAUGE_NAMES)
                         | {"connections", "callback_errors"})
    assert snap["connections"] == 1 and snap["callback_errors"] == 1
    assert all(snap[name] == 0 for name in active.COUNTER_NAMES)


def test_callback_uses_the_monotonic_clock_for_hold_time(clock):
    queue = make_queue()
    feed(queue, SYN)
    clock[0] += 50.0  # the hold starts when the packet arrives, not at the SYN
    held = feed(queue, HS_ACK)
    queue.tick(clock[0] + active.HOLD_S - 0.1)
    assert held.calls == []
    queue.tick(clock[0] + active.HOLD_S + 0.1)
    assert held.calls == [("drop",)]


# --- close: the handler was swapped out ------------------------------------------------------

def test_close_drops_every_held_packet_once(clock):
    queue = make_queue()
    feed(queue, SYN)
    ack, request = feed(queue, HS_ACK), feed(queue, REQUEST)
    assert ack.calls == request.calls == []
    queue.close()
    assert ack.calls == [("drop",)] and request.calls == [("drop",)]
    queue.tick(clock[0] + active.HOLD_S + 1)  # nothing is dropped twice
    queue.close()
    assert ack.calls == [("drop",)] and request.calls == [("drop",)]
    assert queue.snapshot()["callback_errors"] == 0


def test_close_drops_packets_of_a_replaced_connection_not_yet_handed_out(clock):
    """Held packets of a connection replaced by a new SYN are dropped with that SYN (an
    effect of it); close does not drop them twice."""
    queue = make_queue()
    feed(queue, SYN)
    held = feed(queue, HS_ACK)
    assert held.calls == []
    feed(queue, client_pkt("S", CLIENT_ISN + 777, 0))  # same port, new ISN
    assert held.calls == [("drop",)]
    queue.close()
    assert held.calls == [("drop",)]


def test_close_drops_the_held_packets_of_every_connection(clock):
    queue = make_queue()
    held = []
    for port in (40001, 40002, 40003):
        for flags, seq in (("S", 100), ("A", 101)):
            packet = IP(src=CLIENT, dst=VIP) / TCP(sport=port, dport=PORT, flags=flags, seq=seq,
                                                   ack=1 if flags == "A" else 0)
            fed = feed(queue, bytes(packet))
            if flags == "A":
                held.append(fed)
    assert [p.calls for p in held] == [[]] * 3
    queue.close()
    assert [p.calls for p in held] == [[("drop",)]] * 3


def test_close_without_held_packets_gives_no_verdict(clock):
    queue = make_queue()
    packets = [feed(queue, raw) for raw in (SYN, SYN_ACK, HS_ACK, REQUEST, RESPONSE)]
    calls = [list(p.calls) for p in packets]
    queue.close()
    assert [p.calls for p in packets] == calls  # every one had its verdict already
    assert queue.snapshot()["callback_errors"] == 0


def test_close_survives_a_failing_drop(clock):
    queue = make_queue()
    feed(queue, SYN)
    failing = feed(queue, HS_ACK, fail_drop=True)
    other = feed(queue, REQUEST)
    queue.close()  # does not raise
    assert failing.calls == [("drop",)] and other.calls == [("drop",)]


def test_close_of_a_fresh_queue_is_harmless(clock):
    queue = make_queue()
    queue.close()
    assert queue.snapshot()["callback_errors"] == 0


def test_reply_queue_close_is_a_no_op():
    state = types.SimpleNamespace(primary=True, fast_mark=None)
    queue = nfq.ReplyQueue(state)
    before = queue.snapshot()
    assert queue.close() is None
    assert queue.snapshot() == before


# --- uploads: a new primary that lacks acknowledged client bytes resets (issue 10) ------------

def wire_ack(ack):
    """The switch's copy of the primary's pure ACK (arrives in PREROUTING)."""
    return FakePacket(stack_pkt("A", SHARED_ISN + 1, ack), hook=PRE_ROUTING)


def test_a_promoted_backup_resets_a_connection_it_lost_client_bytes_of(clock):
    sent = []
    state = types.SimpleNamespace(primary=False)
    queue = nfq.ActiveQueue(state, Translator(SECRET, PORT), PacketAdapter(None), sent.append)
    for payload in (SYN, SYN_ACK, HS_ACK, REQUEST):
        feed(queue, payload)
    feed(queue, stack_pkt("A", OWN_ISN + 1, CLIENT_ISN + 19))  # its stack has the request
    primary_ack = CLIENT_ISN + 19 + 50000  # the client was acknowledged 50000 bytes more
    wire = wire_ack(primary_ack)
    queue.callback(wire)
    assert wire.verdicts() == ["drop"]  # a copy: read, never delivered
    clock[0] += 1.0  # its stack did not move: the bytes are lost
    queue.tick(clock[0])
    assert queue.snapshot()["bytes_missing"] == 50000 and sent == []  # a backup resets nothing
    state.primary = True
    queue.tick(clock[0])
    rsts = {IP(p)[TCP].dport: IP(p)[TCP] for p in sent}
    assert set(rsts) == {PORT, CPORT}  # one to its own stack, one to the client
    assert rsts[CPORT].flags == "R" and rsts[CPORT].seq == (SHARED_ISN + 1) % M32
    assert rsts[PORT].flags == "R" and rsts[PORT].seq == CLIENT_ISN + 19
    assert queue.snapshot()["input_lost_resets"] == 1


def test_a_lost_input_reset_is_repeated_and_a_stale_acknowledged_point_still_resets(clock):
    """Promoted while the old primary's copies were still queued (it saw none: its stack looks
    caught up), its stack stalled short of bytes the client sent (a hole): reset within
    STALL_S and a tick, and the RST repeated at RESET_AGAIN_S with the client's latest ACK
    (a first RST the client dropped must not leave it hanging)."""
    sent = []
    state = types.SimpleNamespace(primary=False)
    queue = nfq.ActiveQueue(state, Translator(SECRET, PORT), PacketAdapter(None), sent.append)
    for payload in (SYN, SYN_ACK, HS_ACK, REQUEST):
        feed(queue, payload)
    feed(queue, stack_pkt("A", OWN_ISN + 1, CLIENT_ISN + 19))  # its stack has the request
    feed(queue, client_pkt("PA", CLIENT_ISN + 19 + 5000, SHARED_ISN + 1, data=b"y" * 1000))
    state.primary = True
    queue.tick(clock[0])
    assert sent == []  # nothing says it lost anything yet
    clock[0] += client_input.STALL_S + 0.01
    queue.tick(clock[0])
    to_client = [IP(p)[TCP] for p in sent if IP(p)[TCP].dport == CPORT]
    assert [(t.flags, t.seq) for t in to_client] == [("R", (SHARED_ISN + 1) % M32)]
    feed(queue, client_pkt("A", CLIENT_ISN + 19 + 6000, SHARED_ISN + 1 + 7))  # its RCV.NXT moved
    del sent[:]
    for delay in nfq.RESET_AGAIN_S:
        queue.tick(clock[0] + delay)
    assert [(IP(p)[TCP].flags, IP(p)[TCP].seq) for p in sent if IP(p)[TCP].dport == CPORT] == [
        ("R", (SHARED_ISN + 1 + 7) % M32)] * len(nfq.RESET_AGAIN_S)


def test_a_tick_hands_a_stalled_backup_stack_the_client_bytes_it_dropped(clock):
    sent = []
    queue = nfq.ActiveQueue(types.SimpleNamespace(primary=False), Translator(SECRET, PORT),
                            PacketAdapter(None), sent.append)
    for payload in (SYN, SYN_ACK, HS_ACK, REQUEST):
        feed(queue, payload)
    clock[0] += 1.0  # its stack never acknowledged the request (dropped it)
    queue.tick(clock[0])
    [again] = sent
    assert IP(again)[TCP].seq == CLIENT_ISN + 1 and bytes(IP(again)[TCP].payload) == \
        b"GET / HTTP/1.0\r\n\r\n"
    assert queue.snapshot()["client_reinjected"] == 18
