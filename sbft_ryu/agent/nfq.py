"""The thin I/O shell around the verdict: NFQUEUE in, verdict out, counters; nothing else.

No logging, formatting, buffering or sleeping per packet. The loop waits on the queue's file
descriptor with a short timeout so a stop request is seen within ``poll_s``.
"""

import select

from sbft_ryu.agent import verdict

COPY_RANGE = 128  # IPv4 + TCP headers with options; the reply filter never reads payload
ERRORS = len(verdict.COUNTER_NAMES)  # one more counter slot: callback failures


class ReplyQueue:
    """Verdicts the replica's replies on NFQUEUE ``queue_num`` with the role in ``state``."""

    def __init__(self, queue_num, state):
        self.queue_num = queue_num
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

    def serve(self, stop, poll_s=0.2):
        """Run until ``stop`` (a threading.Event) is set; unbinds the queue on the way out."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(self.queue_num, self.callback, mode=COPY_PACKET, range=COPY_RANGE)
        try:
            fd = nfq.get_fd()
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], poll_s)
                if ready:
                    nfq.run(block=False)
        finally:
            nfq.unbind()
