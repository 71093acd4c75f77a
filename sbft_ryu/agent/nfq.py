"""The thin I/O shell around the decisions: NFQUEUE in, verdict out, counters; nothing else.

No logging, formatting, buffering or sleeping per packet. One queue carries both directions
(a replica's packets stay in order), and :class:`QueueRunner` hands each packet to the current
handler: :class:`ReplyQueue` in passive mode, :class:`ActiveQueue` in active mode. The loop
waits on the queue's file descriptor with a short timeout, so a stop request is seen and held
packets are expired within ``poll_s``.
"""

import os
import select
import time

from sbft_ryu.agent import active, verdict

COPY_RANGE = 0xFFFF  # whole packets: active mode rewrites them
ERRORS = len(verdict.COUNTER_NAMES)  # one more counter slot: callback failures


class ReplyQueue:
    """Passive mode: verdicts the replica's replies with the role in ``state``."""

    def __init__(self, state):
        self.state = state
        self.counters = [0] * (len(verdict.COUNTER_NAMES) + 1)

    def snapshot(self):
        names = (*verdict.COUNTER_NAMES, "callback_errors")
        return dict(zip(names, self.counters))

    def callback(self, packet):
        counters = self.counters
        state = self.state
        try:
            decision, slot = verdict.reply_verdict(packet.get_payload(), state.primary)
            counters[slot] += 1
            if decision != verdict.ACCEPT:
                packet.drop()
            elif state.fast_mark is None or packet.get_mark() == state.fast_mark:
                packet.accept()  # (a marked packet came back: the kernel could not cache it)
            else:  # let the kernel cache this verdict for the rest of the connection
                packet.set_mark(state.fast_mark)
                packet.repeat()
        except Exception:  # never let a packet escape without a verdict
            counters[ERRORS] += 1
            try:
                packet.drop()
            except Exception:
                pass

    def tick(self, now):
        pass

    def close(self):
        pass


class ActiveQueue:
    """Active mode: translate every packet (both directions) into the shared sequence space;
    a primary's replies leave, a backup's are dropped after its state advanced."""

    def __init__(self, state, translator, skew=None, sender=None):
        self.state = state
        self.translator = translator
        self.skew = skew
        self.errors = 0
        self.sender = sender  # sends a translated packet itself (the replay on promotion)
        self._primary = state.primary

    def snapshot(self):
        counters = self.translator.snapshot()
        counters["callback_errors"] = self.errors
        return counters

    def callback(self, packet):
        if self.state.primary != self._primary:
            self._role_changed()
        skew = self.skew
        released = ()
        try:
            payload = packet.get_payload()
            if skew is not None:
                payload = skew.outbound(payload)
            decision, new, released = self.translator.process(
                payload, packet, self.state.primary, time.monotonic())
            if decision == active.ACCEPT:
                if new is not None:
                    packet.set_payload(skew.inbound(new) if skew is not None else new)
                packet.accept()
            elif decision == active.DROP:
                packet.drop()
        except Exception:  # never let a packet escape without a verdict
            self.errors += 1
            _drop(packet)
        for held, data in released:  # verdicts for packets kept by earlier callbacks
            try:
                held.set_payload(skew.inbound(data) if skew is not None else data)
                held.accept()
            except Exception:
                self.errors += 1
                _drop(held)

    def tick(self, now):
        if self.state.primary != self._primary:
            self._role_changed()
        for held in self.translator.expire(now):
            if not _drop(held):
                self.errors += 1

    def _role_changed(self):
        """Just promoted: re-send what this replica's stack sent as a backup and the client
        has not acknowledged, instead of leaving it to the stack's retransmission timer."""
        self._primary = self.state.primary
        if not self._primary or self.sender is None:
            return
        for packet in self.translator.replay():
            try:
                self.sender(packet)
            except OSError:
                self.errors += 1

    def close(self):
        """Drop every packet still held: this handler is no longer current. The connection
        state stays, should the handler become current again."""
        for conn in self.translator.connections.values():
            for held, _ in conn.held or ():
                _drop(held)
            conn.held = None
        for held in self.translator.discarded:
            _drop(held)
        self.translator.discarded = []


def _drop(packet):
    """A drop verdict for a packet whose verdict may already be set; False if it failed."""
    try:
        packet.drop()
        return True
    except Exception:
        return False


class QueueRunner:
    """Binds NFQUEUE ``queue_num`` and hands every packet to ``self.handler`` (swappable at
    any time: one attribute read per packet)."""

    def __init__(self, queue_num, handler):
        self.queue_num = queue_num
        self.handler = handler
        self._retired = []  # handlers swapped out: closed by the packet thread at its tick
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self):
        """Make the packet thread tick now (any thread), e.g. after a role change."""
        try:
            os.write(self._wake_w, b"w")
        except OSError:  # the pipe is full (a tick is pending anyway) or closed
            pass

    def swap(self, handler):
        """Make ``handler`` current (any thread); returns the previous one, which is closed
        (its held packets dropped) at the next tick."""
        previous, self.handler = self.handler, handler
        self._retired.append(previous)
        return previous

    def _dispatch(self, packet):
        self.handler.callback(packet)

    def serve(self, stop, poll_s=0.2):
        """Run until ``stop`` (a threading.Event) is set; unbinds the queue on the way out."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(self.queue_num, self._dispatch, mode=COPY_PACKET, range=COPY_RANGE)
        try:
            fd = nfq.get_fd()
            last_tick = time.monotonic()
            while not stop.is_set():
                ready, _, _ = select.select([fd, self._wake_r], [], [], poll_s)
                woken = self._wake_r in ready
                if woken:
                    try:
                        os.read(self._wake_r, 64)
                    except OSError:
                        pass
                if fd in ready:
                    nfq.run(block=False)
                now = time.monotonic()
                if woken or now - last_tick >= poll_s:
                    last_tick = now
                    while self._retired:
                        retired = self._retired.pop()
                        if retired is not self.handler:
                            retired.close()
                    self.handler.tick(now)
        finally:
            nfq.unbind()
            os.close(self._wake_r)
            os.close(self._wake_w)
