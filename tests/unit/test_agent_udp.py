"""A keyed agent's UDP heartbeats: when a beat goes over UDP and when over HTTP, and the real
UdpChannel against a controller-side loop on loopback (beatwire + Referee, as the app does)."""

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from sbft_ryu import beatwire
from sbft_ryu.agent.heartbeat import Heartbeats, RoleState
from sbft_ryu.agent.heartbeat import ANSWER_EVERY, UDP_MISSES
from sbft_ryu.agent.udp import NO_ANSWER, UdpChannel, UdpMiss

KEY = bytes(range(32))


def answer(role="backup", **extra):
    return {"role": role, "epoch": 1, "primary": "lb1", "state": "up",
            "heartbeat_interval_s": 0.05, "mode": "passive", "nonce": "s1", **extra}


class HttpClient:
    def __init__(self, reply):
        self.reply, self.bodies = reply, []

    def heartbeat(self, body):
        self.bodies.append(body)
        return self.reply


class FakeUdp:
    """Scripted exchanges: an answer dict, None (use HTTP) or UdpMiss."""

    def __init__(self, *script, port=None):
        self.script, self.port, self.sent = list(script), port, []
        self.carried_counters = True

    def exchange(self, seq, service_ok, nonce, counters, timeout, answer=True):
        self.sent.append((seq, nonce, answer))
        if not answer:
            return NO_ANSWER
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def make(http, udp, reports=None):
    probe = SimpleNamespace(ok=lambda now: True)
    return Heartbeats(http, RoleState(), probe, lambda: {"claims": 2}, None,
                      clock=lambda: 100.0, key=KEY, name="lb2", udp=udp, reports=reports)


def test_the_port_comes_from_the_first_http_answer_then_beats_go_over_udp():
    http = HttpClient(answer(heartbeat_port=5558))
    udp = FakeUdp(answer("primary"), answer("primary"))
    beats = make(http, udp)
    beats.beat(0)
    assert udp.port == 5558 and len(http.bodies) == 1 and udp.sent == []
    for seq in range(1, 2 + ANSWER_EVERY):
        beats.beat(seq)
    # an answer asked for every ANSWER_EVERY beats (the first one included) and applied
    assert udp.sent == [(seq, "s1", seq % ANSWER_EVERY == 1)
                        for seq in range(1, 2 + ANSWER_EVERY)]
    assert len(http.bodies) == 1 and beats.state.role == "primary"


def test_a_nudged_beat_asks_for_its_answer():
    http = HttpClient(answer())
    udp = FakeUdp(answer(), answer("primary"), port=5558)
    beats = make(http, udp)
    beats.beat(0)
    beats.beat(1)
    beats.beat(2)
    assert udp.sent[-1][2] is False
    beats.nudged = True
    beats.beat(3)
    assert udp.sent[-1] == (3, "s1", True) and beats.state.role == "primary"


def test_after_missing_answers_in_a_row_a_beat_goes_over_http():
    http = HttpClient(answer())
    udp = FakeUdp(*[UdpMiss("lost")] * UDP_MISSES, answer(), port=5558)
    beats = make(http, udp)
    beats.beat(0)
    for seq in range(1, 1 + UDP_MISSES):
        beats.beat(seq)
    assert [asked for _, _, asked in udp.sent] == [True] * UDP_MISSES  # (after a miss too)
    assert len(http.bodies) == 1 and beats.failures == 0
    beats.beat(9)  # over HTTP: resynchronises the session if the controller lost it
    assert len(http.bodies) == 2 and http.bodies[-1]["seq"] == 9
    beats.beat(10)
    assert udp.sent[-1] == (10, "s1", False)


def test_an_answer_that_does_not_fit_sends_the_next_beat_over_http():
    http = HttpClient(answer())
    beats = make(http, FakeUdp(None, port=5558))
    beats.beat(0)
    beats.beat(1)
    beats.beat(2)
    assert len(http.bodies) == 2


def test_evidence_never_travels_over_udp():
    http = HttpClient(answer())
    pending = [[("evidence", (b"\x01" * 20,))], []]
    beats = make(http, FakeUdp(port=5558), reports=lambda: pending.pop(0) if pending else [])
    beats.beat(0)  # (no session yet: HTTP anyway)
    assert "evidence" in http.bodies[0]
    pending[:] = [[("evidence", (b"\x02" * 20,))]]
    beats.beat(1)
    assert len(http.bodies) == 2 and "evidence" in http.bodies[1]


def test_counters_too_large_for_a_datagram_go_over_http_every_second():
    clock = [100.0]
    http = HttpClient(answer())
    udp = FakeUdp(*[answer()] * 5, port=5558)
    beats = make(http, udp)
    beats.clock = lambda: clock[0]
    beats.beat(0)
    udp.carried_counters = False
    clock[0] += 0.5
    beats.beat(1)
    assert len(udp.sent) == 1
    clock[0] += 0.6
    beats.beat(2)
    assert len(http.bodies) == 2


def test_a_resync_sends_the_same_beat_over_http_at_once():
    http = HttpClient(answer(nonce="s2"))
    udp = FakeUdp(beatwire.RESYNCED, answer(), port=5558)
    beats = make(http, udp)
    beats.nonce = "s1"
    beats.beat(7)
    assert udp.sent == [(7, "s1", True)] and [b["seq"] for b in http.bodies] == [7]
    assert beats.nonce == "s2" and beats.udp_misses == 0
    beats.beat(8)
    assert udp.sent[-1][:2] == (8, "s2")


@pytest.fixture
def controller():
    """A controller-side loop on loopback: answers beat n with role "backup" and seq n, once
    with a stale answer first (to an earlier beat), and ignores seq 99."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, address = sock.recvfrom(2048)
            except socket.timeout:
                continue
            try:
                name, beat = beatwire.open_beat({"lb2": KEY}, data)
            except beatwire.BeatWireError:
                continue  # as the controller: no answer
            if beat.seq == 99:
                continue
            if beat.seq == 50:  # (as for a beat outside the session)
                sock.sendto(beatwire.resync_datagram(KEY, name, 50), address)
                continue
            if not beat.answer:
                continue
            sock.sendto(beatwire.answer_datagram(KEY, name, beat.seq - 1, answer()), address)
            sock.sendto(b"junk", address)
            sock.sendto(beatwire.answer_datagram(KEY, name, beat.seq, answer(
                counters_seen=beat.counters)), address)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    sock.close()


def test_a_real_channel_takes_only_the_verified_answer_to_its_beat(controller):
    channel = UdpChannel("127.0.0.1", KEY, "lb2", controller)
    try:
        got = channel.exchange(7, True, "s1", {"claims": 3}, timeout=2.0)
        assert got["role"] == "backup" and got["counters_seen"] == {"claims": 3}
        with pytest.raises(UdpMiss):
            channel.exchange(99, True, "s1", {}, timeout=0.1)
        assert channel.exchange(100, True, "s1", {}, timeout=2.0)["role"] == "backup"
        assert channel.exchange(101, True, "s1", {}, 2.0, answer=False) is NO_ANSWER
        assert channel.exchange(50, True, "s1", {}, 2.0) is beatwire.RESYNCED
        channel.exchange(51, True, "s1", {}, 2.0, answer=False)  # (unanswered)
        channel.exchange(50, True, "s1", {}, 0.5, answer=False)  # a RESYNC comes back late:
        eventually = []
        for i in range(20):  # bounded: 2 s
            time.sleep(0.1)
            eventually.append(channel.exchange(52 + i, True, "s1", {}, 0.5, answer=False))
            if eventually[-1] is beatwire.RESYNCED:
                break
        assert beatwire.RESYNCED in eventually  # noticed at the next send
    finally:
        channel.close()


def test_a_channel_with_another_key_never_accepts_the_answer(controller):
    channel = UdpChannel("127.0.0.1", b"\x07" * 32, "lb2", controller)
    try:
        with pytest.raises(UdpMiss):  # the controller loop cannot verify it: no answer
            channel.exchange(1, True, "s1", {}, timeout=0.2)
    finally:
        channel.close()
