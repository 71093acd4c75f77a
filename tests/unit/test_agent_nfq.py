"""Tests for sbft_ryu.agent.nfq.ReplyQueue.callback with a fake NFQUEUE packet (no kernel)."""

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import nfq, verdict
from sbft_ryu.agent.heartbeat import RoleState
from sbft_ryu.agent.iptables import fast_mark


def reply(flags, payload=b""):
    packet = IP(src="10.0.0.11", dst="10.0.0.200") / TCP(sport=5555, dport=40000, flags=flags)
    return bytes(packet / Raw(payload)) if payload else bytes(packet)


DATA = reply("PA", b"hello")
SYN_ACK = reply("SA")
RST = reply("R")


class FakePacket:
    """The netfilterqueue.Packet methods the callback uses; records every verdict call."""

    def __init__(self, payload, fail_payload=False, fail_drop=False, mark=0):
        self.payload = payload
        self.mark = mark
        self.fail_payload = fail_payload
        self.fail_drop = fail_drop
        self.calls = []

    def get_payload(self):
        if self.fail_payload:
            raise RuntimeError("payload gone")
        return self.payload

    def get_mark(self):
        return self.mark

    def accept(self):
        self.calls.append(("accept",))

    def drop(self):
        self.calls.append(("drop",))
        if self.fail_drop:
            raise OSError("verdict failed")

    def set_mark(self, mark):
        self.calls.append(("set_mark", mark))

    def repeat(self):
        self.calls.append(("repeat",))


def make_queue(primary=False, mark=None):
    state = RoleState()
    state.primary = primary
    state.fast_mark = mark
    return nfq.ReplyQueue(1, state)


def test_snapshot_names_and_initial_zeroes():
    queue = make_queue()
    assert queue.queue_num == 1
    assert queue.snapshot() == {"accepted": 0, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 0}
    assert list(queue.snapshot()) == [*verdict.COUNTER_NAMES, "callback_errors"]


def test_a_fresh_role_state_drops():
    queue = nfq.ReplyQueue(1, RoleState())
    packet = FakePacket(SYN_ACK)
    queue.callback(packet)
    assert packet.calls == [("drop",)]


def test_backup_drops_and_counts():
    queue = make_queue(primary=False)
    packets = [FakePacket(p) for p in (SYN_ACK, DATA, DATA, RST)]
    for packet in packets:
        queue.callback(packet)
    assert [p.calls for p in packets] == [[("drop",)]] * 4
    assert queue.snapshot() == {"accepted": 0, "dropped": 3, "rst_dropped": 1, "malformed": 0,
                                "callback_errors": 0}


def test_backup_ignores_a_stale_fast_mark():
    queue = make_queue(primary=False, mark=fast_mark(3))
    packet = FakePacket(DATA)
    queue.callback(packet)
    assert packet.calls == [("drop",)]


def test_primary_without_fast_path_accepts():
    queue = make_queue(primary=True, mark=None)
    packets = [FakePacket(p) for p in (SYN_ACK, DATA, RST)]
    for packet in packets:
        queue.callback(packet)
    assert [p.calls for p in packets] == [[("accept",)]] * 3
    assert queue.snapshot()["accepted"] == 3


def test_primary_with_fast_path_marks_then_repeats():
    mark = fast_mark(7)
    queue = make_queue(primary=True, mark=mark)
    packet = FakePacket(DATA)
    queue.callback(packet)
    assert packet.calls == [("set_mark", mark), ("repeat",)]
    assert queue.snapshot()["accepted"] == 1


def test_a_repeated_packet_the_kernel_could_not_cache_is_accepted_not_repeated_again():
    """A reply without a conntrack entry (e.g. a stack's RST) keeps no connmark; were it
    repeated again it would go round the queue forever."""
    mark = fast_mark(7)
    queue = make_queue(primary=True, mark=mark)
    packet = FakePacket(DATA, mark=mark)
    queue.callback(packet)
    assert packet.calls == [("accept",)]


def test_the_marked_packet_is_accepted_once_and_counted_once():
    mark = fast_mark(7)
    queue = make_queue(primary=True, mark=mark)
    first_pass = FakePacket(DATA)
    queue.callback(first_pass)
    second_pass = FakePacket(DATA, mark=mark)  # what the kernel hands back after NF_REPEAT
    queue.callback(second_pass)
    assert first_pass.calls == [("set_mark", mark), ("repeat",)]
    assert second_pass.calls == [("accept",)]
    assert ("repeat",) not in second_pass.calls and len(second_pass.calls) == 1
    assert queue.snapshot()["accepted"] == 2  # one per pass through the queue


def test_a_marked_rst_without_conntrack_entry_does_not_loop():
    mark = fast_mark(2)
    queue = make_queue(primary=True, mark=mark)
    packet = FakePacket(RST, mark=mark)
    for _ in range(3):  # however often the kernel hands it back, it is never repeated
        queue.callback(packet)
    assert packet.calls == [("accept",)] * 3


@pytest.mark.parametrize("stale", [fast_mark(6), 0x1, 0xFFFFFFFF])
def test_a_packet_with_another_mark_is_marked_for_this_generation(stale):
    mark = fast_mark(7)
    queue = make_queue(primary=True, mark=mark)
    packet = FakePacket(SYN_ACK, mark=stale)
    queue.callback(packet)
    assert packet.calls == [("set_mark", mark), ("repeat",)]


def test_a_marked_packet_at_a_primary_without_fast_path_is_accepted():
    queue = make_queue(primary=True, mark=None)
    packet = FakePacket(DATA, mark=fast_mark(7))  # e.g. marked before the fast path went away
    queue.callback(packet)
    assert packet.calls == [("accept",)]


def test_a_marked_packet_at_a_backup_is_dropped():
    mark = fast_mark(7)
    for state_mark in (mark, None):
        queue = make_queue(primary=False, mark=state_mark)
        packet = FakePacket(DATA, mark=mark)
        queue.callback(packet)
        assert packet.calls == [("drop",)]


def test_a_marked_malformed_packet_is_still_dropped():
    mark = fast_mark(7)
    queue = make_queue(primary=True, mark=mark)
    packet = FakePacket(b"\x45\x00garbage", mark=mark)
    queue.callback(packet)
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["malformed"] == 1


def test_get_mark_failure_drops_and_counts():
    class NoMark(FakePacket):
        def get_mark(self):
            raise OSError("no mark")
    queue = make_queue(primary=True, mark=fast_mark(7))
    packet = NoMark(DATA)
    queue.callback(packet)
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["callback_errors"] == 1


@pytest.mark.parametrize("primary", [True, False], ids=["primary", "backup"])
def test_malformed_is_dropped_and_counted(primary):
    queue = make_queue(primary=primary, mark=fast_mark(1) if primary else None)
    packet = FakePacket(b"\x45\x00garbage")
    queue.callback(packet)
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["malformed"] == 1
    assert queue.snapshot()["callback_errors"] == 0


def test_role_change_is_seen_by_the_next_packet():
    queue = make_queue(primary=True)
    first, second = FakePacket(DATA), FakePacket(DATA)
    queue.callback(first)
    queue.state.primary = False
    queue.callback(second)
    assert first.calls == [("accept",)]
    assert second.calls == [("drop",)]


def test_payload_error_drops_and_counts():
    queue = make_queue(primary=True)
    packet = FakePacket(DATA, fail_payload=True)
    queue.callback(packet)
    assert packet.calls == [("drop",)]
    assert queue.snapshot() == {"accepted": 0, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 1}


def test_drop_that_raises_does_not_propagate():
    queue = make_queue(primary=False)
    packet = FakePacket(DATA, fail_payload=True, fail_drop=True)
    queue.callback(packet)  # must not raise
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["callback_errors"] == 1
    # the normal path's drop() raising: counted once as dropped and once as an error
    packet = FakePacket(DATA, fail_drop=True)
    queue.callback(packet)
    assert packet.calls == [("drop",), ("drop",)]
    assert queue.snapshot()["callback_errors"] == 2


def test_payload_of_wrong_type_is_an_error_not_an_escape():
    queue = make_queue(primary=True)
    packet = FakePacket(None)  # len(None) raises TypeError inside the verdict
    queue.callback(packet)
    assert packet.calls == [("drop",)]
    assert queue.snapshot()["callback_errors"] == 1
