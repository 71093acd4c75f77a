"""Tests for sbft_ryu.agent.nfq: ReplyQueue.callback with a fake NFQUEUE packet, and
QueueRunner.serve with a fake ``netfilterqueue.NetfilterQueue`` (no kernel).

ActiveQueue is tested in test_active_queue.py."""

import os
import threading
import time

import netfilterqueue
import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import active, nfq, verdict
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
    return nfq.ReplyQueue(state)


def test_snapshot_names_and_initial_zeroes():
    queue = make_queue()
    assert queue.snapshot() == {"accepted": 0, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 0}
    assert list(queue.snapshot()) == [*verdict.COUNTER_NAMES, "callback_errors"]


def test_a_fresh_role_state_drops():
    queue = nfq.ReplyQueue(RoleState())
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


def test_reply_queue_tick_is_a_no_op():
    queue = make_queue(primary=True)
    queue.callback(FakePacket(DATA))
    before = queue.snapshot()
    assert queue.tick(time.monotonic()) is None
    assert queue.snapshot() == before


def test_reply_queue_no_longer_owns_the_queue():
    queue = make_queue()
    assert not hasattr(queue, "queue_num") and not hasattr(queue, "serve")
    with pytest.raises(TypeError):
        nfq.ReplyQueue(1, RoleState())


def test_whole_packets_are_copied():
    # active mode rewrites packets, so it needs all of them (netfilterqueue 1.1 clamps this to
    # its receive buffer: about 4 KB, well above a 1500-byte MTU)
    assert nfq.COPY_RANGE == 0xFFFF


# --- QueueRunner.serve with a fake NetfilterQueue --------------------------------------------

class FakeNetfilterQueue:
    """netfilterqueue.NetfilterQueue as serve() uses it: ``get_fd`` is a pipe that becomes
    readable when packets are pending; ``run(block=False)`` hands them to the bound callback."""

    made = []

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.pending = []
        self.bound = None
        self.runs = []
        self.unbound = 0
        FakeNetfilterQueue.made.append(self)

    def bind(self, queue_num, callback, max_len=None, mode=None, range=None, sock_len=None):
        self.bound = {"queue_num": queue_num, "callback": callback, "mode": mode,
                      "range": range, "max_len": max_len, "sock_len": sock_len}

    def get_fd(self):
        return self.read_fd

    def deliver(self, *packets):
        self.pending.extend(packets)
        os.write(self.write_fd, b"!")

    def run(self, block=True):
        self.runs.append(block)
        try:
            os.read(self.read_fd, 4096)
        except BlockingIOError:
            pass
        while self.pending:
            self.bound["callback"](self.pending.pop(0))

    def unbind(self):
        self.unbound += 1
        os.close(self.read_fd)
        os.close(self.write_fd)


@pytest.fixture
def fake_nfq(monkeypatch):
    monkeypatch.setattr(FakeNetfilterQueue, "made", [])
    monkeypatch.setattr(netfilterqueue, "NetfilterQueue", FakeNetfilterQueue)
    return FakeNetfilterQueue.made


class RecordingHandler:
    """A packet handler: records packets, ticks, flushes and readable fds (``extra``: the fds
    it asks the runner to watch); ``on_packet(handler, packet)`` hook."""

    def __init__(self, on_packet=None, extra=()):
        self.packets = []
        self.ticks = []
        self.urgents = []  # the urgent part of a tick, in the middle of a long batch
        self.flushes = 0
        self.read = []
        self.extra = list(extra)
        self.on_packet = on_packet

    def callback(self, packet):
        self.packets.append(packet)
        if self.on_packet is not None:
            self.on_packet(self, packet)

    def tick(self, now):
        self.ticks.append(now)

    def urgent(self, now):
        self.urgents.append(now)

    def fds(self):
        return self.extra

    def readable(self, fd, now):
        os.read(fd, 64)
        self.read.append(fd)

    def flush(self):
        self.flushes += 1


def serve_in_thread(runner, stop, poll_s=0.01):
    errors = []

    def target():
        try:
            runner.serve(stop, poll_s=poll_s)
        except BaseException as exc:  # reported to the test
            errors.append(exc)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_runner_binds_whole_packets_and_unbinds_when_stopped(fake_nfq):
    handler = RecordingHandler()
    runner = nfq.QueueRunner(3, handler)
    assert (runner.queue_num, runner.handler) == (3, handler)
    stop = threading.Event()
    stop.set()
    runner.serve(stop)
    [queue] = fake_nfq
    assert queue.bound["queue_num"] == 3
    assert (queue.bound["mode"], queue.bound["range"]) == (netfilterqueue.COPY_PACKET, 0xFFFF)
    # a deep queue and socket: the defaults (1024 packets) overflowed under bulk uploads
    assert queue.bound["max_len"] >= 16384 and queue.bound["sock_len"] >= 16 << 20
    assert queue.runs == [] and queue.unbound == 1
    assert handler.packets == [] and handler.ticks == []


def test_runner_dispatches_every_packet_to_the_current_handler(fake_nfq):
    """The handler may be swapped at any time (a mode change): the next packet goes to the
    new one."""
    stop = threading.Event()
    second = RecordingHandler(on_packet=lambda h, p: p == "p4" and stop.set())
    runner = nfq.QueueRunner(1, None)
    first = RecordingHandler(on_packet=lambda h, p: p == "p2" and setattr(runner, "handler",
                                                                          second))
    runner.handler = first
    thread, errors = serve_in_thread(runner, stop)
    wait_for(lambda: fake_nfq)
    fake_nfq[0].deliver("p1", "p2", "p3", "p4")
    thread.join(2.0)
    assert not thread.is_alive() and errors == []
    assert first.packets == ["p1", "p2"]  # swapped by p2's own callback
    assert second.packets == ["p3", "p4"]
    assert fake_nfq[0].runs and set(fake_nfq[0].runs) == {False}  # never blocks in run
    assert fake_nfq[0].unbound == 1


def test_runner_ticks_the_current_handler_every_poll(fake_nfq):
    stop = threading.Event()
    first, second = RecordingHandler(), RecordingHandler()
    runner = nfq.QueueRunner(1, first)
    started = time.monotonic()
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    wait_for(lambda: len(first.ticks) >= 3)
    runner.handler = second
    wait_for(lambda: len(second.ticks) >= 2)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive() and errors == []
    ticks = first.ticks + second.ticks
    assert ticks == sorted(ticks) and ticks[0] >= started + 0.01
    assert all(later - earlier >= 0.01 for earlier, later in zip(ticks, ticks[1:]))
    assert first.packets == second.packets == []
    assert fake_nfq[0].runs == []  # nothing was readable: no run without packets


def test_runner_ticks_while_packets_keep_coming(fake_nfq):
    stop = threading.Event()
    handler = RecordingHandler()
    runner = nfq.QueueRunner(1, handler)
    thread, errors = serve_in_thread(runner, stop, poll_s=0.02)
    wait_for(lambda: fake_nfq)
    deadline = time.monotonic() + 0.15
    sent = 0
    while time.monotonic() < deadline:  # a packet every ~2 ms: select never times out
        fake_nfq[0].deliver(sent)
        sent += 1
        time.sleep(0.002)
    wait_for(lambda: len(handler.packets) == sent)
    stop.set()
    thread.join(2.0)
    assert errors == []
    assert handler.packets == list(range(sent))
    assert len(handler.ticks) >= 3  # expiry of held packets is not starved by traffic


def test_runner_unbinds_when_a_handler_raises(fake_nfq):
    def explode(handler, packet):
        raise RuntimeError("handler bug")
    runner = nfq.QueueRunner(1, RecordingHandler(on_packet=explode))
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop)
    wait_for(lambda: fake_nfq)
    fake_nfq[0].deliver("p1")
    thread.join(2.0)
    assert not thread.is_alive()
    assert [type(exc) for exc in errors] == [RuntimeError]
    assert fake_nfq[0].unbound == 1


def test_runner_with_the_reply_queue_gives_verdicts(fake_nfq):
    stop = threading.Event()
    queue = make_queue(primary=False)
    runner = nfq.QueueRunner(1, queue)
    thread, errors = serve_in_thread(runner, stop)
    wait_for(lambda: fake_nfq)
    packets = [FakePacket(DATA), FakePacket(SYN_ACK)]
    fake_nfq[0].deliver(*packets)
    wait_for(lambda: queue.snapshot()["dropped"] == 2)
    stop.set()
    thread.join(2.0)
    assert errors == []
    assert [p.calls for p in packets] == [[("drop",)], [("drop",)]]


# --- QueueRunner.swap: the previous handler is closed by the packet thread at its next tick ---

class ClosingHandler(RecordingHandler):
    """A RecordingHandler that also records close() (and the thread it ran in) in ``log``."""

    def __init__(self, name, log):
        super().__init__()
        self.name = name
        self.log = log
        self.closed_in = []

    def tick(self, now):
        super().tick(now)
        self.log.append(("tick", self.name))

    def close(self):
        self.closed_in.append(threading.current_thread())
        self.log.append(("close", self.name))


def test_swap_makes_the_handler_current_at_once_and_returns_the_previous_one():
    log = []
    first, second = ClosingHandler("first", log), ClosingHandler("second", log)
    runner = nfq.QueueRunner(1, first)
    assert runner.swap(second) is first
    assert runner.handler is second
    assert runner.swap(first) is second
    assert runner.handler is first
    assert log == []  # nothing is closed outside the packet thread's tick


def test_a_swapped_out_handler_is_closed_once_by_the_packet_thread_before_the_tick(fake_nfq):
    log = []
    first, second = ClosingHandler("first", log), ClosingHandler("second", log)
    runner = nfq.QueueRunner(1, first)
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    wait_for(lambda: len(first.ticks) >= 1)
    assert runner.swap(second) is first
    wait_for(lambda: len(second.ticks) >= 3)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive() and errors == []
    assert first.closed_in == [thread]  # once, in the packet thread
    assert second.closed_in == []
    closed_at = log.index(("close", "first"))
    assert log[closed_at + 1] == ("tick", "second")  # closed before the new handler's tick
    assert ("tick", "first") not in log[closed_at:]


def test_packets_after_a_swap_go_to_the_new_handler_and_the_old_one_is_closed(fake_nfq):
    log = []
    stop = threading.Event()
    first, second = ClosingHandler("first", log), ClosingHandler("second", log)
    runner = nfq.QueueRunner(1, first)
    first.on_packet = lambda h, p: p == "p2" and runner.swap(second)
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    wait_for(lambda: fake_nfq)
    fake_nfq[0].deliver("p1", "p2", "p3")
    wait_for(lambda: second.packets == ["p3"] and first.closed_in)
    stop.set()
    thread.join(2.0)
    assert errors == []
    assert first.packets == ["p1", "p2"]
    assert len(first.closed_in) == 1 and second.closed_in == []


def test_a_handler_swapped_back_before_the_tick_is_not_closed(fake_nfq):
    """A failed mode switch swaps the previous handler back: only the handler that is no
    longer current is closed."""
    log = []
    first, second = ClosingHandler("first", log), ClosingHandler("second", log)
    runner = nfq.QueueRunner(1, first)
    runner.swap(second)
    runner.swap(first)  # before the packet thread ticked
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    wait_for(lambda: len(first.ticks) >= 3)
    stop.set()
    thread.join(2.0)
    assert errors == []
    assert first.closed_in == []
    assert len(second.closed_in) == 1
    assert second.ticks == []


def test_every_handler_swapped_out_between_two_ticks_is_closed(fake_nfq):
    log = []
    handlers = [ClosingHandler(name, log) for name in ("a", "b", "c", "d")]
    runner = nfq.QueueRunner(1, handlers[0])
    for handler in handlers[1:]:
        runner.swap(handler)
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    wait_for(lambda: len(handlers[3].ticks) >= 2)
    stop.set()
    thread.join(2.0)
    assert errors == []
    assert [len(h.closed_in) for h in handlers] == [1, 1, 1, 0]


def test_the_reply_and_active_queues_can_be_retired(fake_nfq):
    """Both real handlers have close(): swapping between them never breaks the packet
    thread."""
    state = RoleState()
    reply_queue = nfq.ReplyQueue(state)
    active_queue = nfq.ActiveQueue(state, active.Translator(b"k" * 16, 5555))
    runner = nfq.QueueRunner(1, reply_queue)
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop, poll_s=0.01)
    runner.swap(active_queue)
    time.sleep(0.05)
    runner.swap(reply_queue)
    time.sleep(0.05)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive() and errors == []
    assert runner.handler is reply_queue


# --- the handler's own fds (the vote socket), flush, and wake ----------------------------------

def test_the_reply_queue_watches_nothing_and_flushes_nothing():
    queue = make_queue()
    assert queue.fds() == []
    assert queue.flush() is None and queue.readable(0, 1.0) is None


def test_runner_hands_the_handlers_readable_fds_to_it(fake_nfq):
    read_fd, write_fd = os.pipe()
    try:
        handler = RecordingHandler(extra=[read_fd])
        runner = nfq.QueueRunner(1, handler)
        stop = threading.Event()
        thread, errors = serve_in_thread(runner, stop, poll_s=5.0)
        os.write(write_fd, b"vote")
        wait_for(lambda: handler.read)
        stop.set()
        runner.wake()
        thread.join(2.0)
        assert errors == [] and handler.read == [read_fd]
        assert handler.packets == []
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_runner_flushes_the_handler_after_handing_out_packets(fake_nfq):
    stop = threading.Event()
    handler = RecordingHandler(on_packet=lambda h, p: p == "p2" and stop.set())
    runner = nfq.QueueRunner(1, handler)
    thread, errors = serve_in_thread(runner, stop, poll_s=5.0)
    wait_for(lambda: fake_nfq)
    fake_nfq[0].deliver("p1", "p2")  # one run: the claims they made go out in one flush
    thread.join(2.0)
    assert errors == [] and handler.packets == ["p1", "p2"]
    assert handler.flushes == 1


def test_wake_makes_the_packet_thread_tick_before_its_poll(fake_nfq):
    handler = RecordingHandler()
    runner = nfq.QueueRunner(1, handler)
    stop = threading.Event()
    started = time.monotonic()
    thread, errors = serve_in_thread(runner, stop, poll_s=30.0)
    wait_for(lambda: fake_nfq)
    runner.wake()
    wait_for(lambda: handler.ticks)
    assert handler.ticks[0] - started < 2.0  # not the 30 s poll
    stop.set()
    runner.wake()  # also ends the wait at once
    thread.join(2.0)
    assert not thread.is_alive() and errors == []


def test_wake_closes_retired_handlers_at_once(fake_nfq):
    log = []
    first, second = ClosingHandler("first", log), ClosingHandler("second", log)
    runner = nfq.QueueRunner(1, first)
    stop = threading.Event()
    thread, errors = serve_in_thread(runner, stop, poll_s=30.0)
    wait_for(lambda: fake_nfq)
    runner.swap(second)
    runner.wake()
    wait_for(lambda: first.closed_in)
    stop.set()
    runner.wake()
    thread.join(2.0)
    assert errors == [] and log[:2] == [("close", "first"), ("tick", "second")]


def test_wake_never_blocks_or_raises():
    runner = nfq.QueueRunner(1, RecordingHandler())
    for _ in range(70000):  # more than a pipe holds: the rest are dropped
        runner.wake()
    os.close(runner._wake_r)
    os.close(runner._wake_w)
    runner.wake()  # a closed pipe (the runner ended) is ignored too


def test_runner_runs_the_urgent_part_of_the_tick_inside_a_long_batch(fake_nfq):
    """run(block=False) returns only once the queue is empty: under a steady backlog the
    handler's urgent part (role change, resets, re-injection) still runs every poll_s (the
    runner looks at the clock every CHECK_EVERY packets); the full tick, which expires held
    packets, waits for the batch to end (the packets still queued may be what they wait for)."""
    stop = threading.Event()
    runner = nfq.QueueRunner(1, None)

    def slow(handler, packet):
        time.sleep(0.001)  # a batch of 2000 such packets lasts seconds, well over poll_s
        if packet == 1999:
            stop.set()
    handler = RecordingHandler(on_packet=slow)
    runner.handler = handler
    thread, errors = serve_in_thread(runner, stop, poll_s=0.05)
    wait_for(lambda: fake_nfq)
    started = time.monotonic()
    fake_nfq[0].deliver(*range(2000))
    thread.join(10.0)
    ended = time.monotonic()
    assert not thread.is_alive() and errors == []
    assert len(handler.packets) == 2000
    urgents = handler.urgents
    assert len(urgents) >= 5  # (one run() call: none without the in-batch check)
    assert all(later - earlier >= 0.05 for earlier, later in zip(urgents, urgents[1:]))
    assert not [t for t in handler.ticks if started + 0.2 < t < ended - 0.2]  # no expiry


def test_a_wake_inside_a_long_batch_runs_the_urgent_part_at_the_next_check(fake_nfq):
    stop = threading.Event()
    runner = nfq.QueueRunner(1, None)

    def on_packet(handler, packet):
        if packet == 10:
            runner.wake()  # e.g. a role change, from the heartbeat thread
        if packet == nfq.CHECK_EVERY * 2:
            stop.set()
    handler = RecordingHandler(on_packet=on_packet)
    runner.handler = handler
    thread, errors = serve_in_thread(runner, stop, poll_s=60)
    wait_for(lambda: fake_nfq)
    fake_nfq[0].deliver(*range(nfq.CHECK_EVERY * 2 + 1))
    thread.join(5.0)
    assert not thread.is_alive() and errors == []
    assert len(handler.urgents) >= 1  # within the batch, although poll_s is a minute
