"""The thin I/O shell around the decisions: NFQUEUE in, verdict out, counters; nothing else.

No logging, formatting, buffering or sleeping per packet. One queue carries both directions
(a replica's packets stay in order), and :class:`QueueRunner` hands each packet to the current
handler: :class:`ReplyQueue` in passive mode, :class:`ActiveQueue` in active mode. The loop
waits on the queue's file descriptor with a short timeout, so a stop request is seen and held
packets are expired within ``poll_s``.
"""

import logging
import os
import select
import time

from sbft_ryu.agent import active, verdict
from sbft_ryu.agent import packet as packet_
from sbft_ryu.agent.own_output import statement_of

LOG = logging.getLogger("sbft.agent")
ERROR_LOG_S = 10.0
COPY_RANGE = 0xFFFF  # whole packets: active mode rewrites them
# The kernel queue's depth (packets awaiting a verdict) and its socket's buffer. The defaults
# (1024 packets) overflowed under bulk uploads through three agents on two cores: a backup
# then loses client bytes the primary acknowledges, for good (nothing resends them).
QUEUE_MAX_LEN = 16384
TICK_S = 0.1  # the handler's tick: expiry, resets, re-injection (its urgent part also
              # inside a long batch)
CHECK_EVERY = 32  # packets between two looks at the clock inside a batch
QUEUE_SOCK_LEN = 32 * 1024 * 1024
NFQ_PROC = "/proc/net/netfilter/nfnetlink_queue"
ERRORS = len(verdict.COUNTER_NAMES)  # one more counter slot: callback failures
# A primary's RST is sent again this long after the first (seconds since it; then forgotten),
# each time with the client's latest acknowledgement: the first may carry an acknowledgement
# the client has moved past (bytes still in flight from the old primary; a lagging queue), and
# a client drops a RST below its next expected byte silently, then waits forever on a download.
RESET_AGAIN_S = (0.2, 0.6, 1.5)
RESETS_TRACKED = 4096


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

    def urgent(self, now):
        pass

    def close(self):
        pass

    def fds(self):
        return []

    def readable(self, fd, now):
        pass

    def flush(self):
        pass


class RawSend:
    """A token for a packet the agent sends itself (a replay): held and released like a
    queued packet, but its 'accept' sends it past the queue."""

    __slots__ = ("payload", "sender")

    def __init__(self, payload, sender):
        self.payload = payload
        self.sender = sender

    def set_payload(self, payload):
        self.payload = payload

    def accept(self):
        self.sender(self.payload)

    def drop(self):
        pass


def _same(payload):
    return payload


class Identity:
    """The packet adapter of a production agent: nothing between the stack and the translator
    (agent/faults.py has the test one)."""

    outbound = inbound = staticmethod(_same)
    reply = None  # a primary's replies are voted on


IDENTITY = Identity()


class ActiveQueue:
    """Active mode: translate every packet (both directions) into the shared sequence space;
    a primary's replies leave (after the backups' votes, when voting), a backup's are dropped
    after its state advanced."""

    def __init__(self, state, translator, adapter=None, sender=None, vote=None,
                 vote_socket=None):
        self.state = state
        self.translator = translator
        # tests only (agent/faults.py): an emulated skew, a primary that lies past the vote
        self.adapter = adapter if adapter is not None else IDENTITY
        self.errors = 0
        self.sender = sender  # sends a translated packet itself (the replay on promotion)
        self.vote = vote  # a VoteEngine when voting
        self.vote_socket = vote_socket
        self._error_logged = float("-inf")
        self.reset = frozenset()  # (client ip, port) to reset as primary (controller's list)
        self._reset_done = set()
        self.resets_sent = 0
        self._resets = {}  # (client ip, port) -> [when first sent, repeats done]
        self._primary = state.primary
        translator.begun = [] if vote is not None else None  # new connections, for forget

    def snapshot(self):
        counters = self.translator.snapshot()
        counters["callback_errors"] = self.errors
        if self.vote is not None:
            counters.update(self.vote.counters)
            counters["resets_sent"] = self.resets_sent
        return counters

    def fds(self):
        return [self.vote_socket] if self.vote_socket is not None else []

    def callback(self, packet):
        if self.state.primary != self._primary:
            self._role_changed()
        adapter = self.adapter
        effects = _NO_EFFECTS
        try:
            payload = packet.get_payload()
            arriving = packet.hook == _PRE_ROUTING
            if not arriving:
                payload = adapter.outbound(payload)
            primary = self.state.primary
            now = time.monotonic()
            effects = self.translator.process(payload, packet, primary, now, arriving)
            decision, new = effects[0], effects[1]
            if decision == active.ACCEPT:
                self._accept(packet, new, primary and not arriving, now)
            elif decision == active.DROP:
                packet.drop()
                if self.vote is not None and self.vote.waiting and not arriving:
                    client = packet_.destination(payload)
                    if client is not None:
                        self.vote.on_own_output(client, now)
            elif decision == active.WIRE:
                packet.drop()  # a copy: look, never deliver
                if self.vote is not None:
                    statement = statement_of(payload)
                    if statement is not None:
                        self.vote.on_wire(statement, now)
        except Exception as exc:  # never let a packet escape without a verdict
            self._error(exc)
            _drop(packet)
        begun = self.translator.begun
        if begun:
            for key in begun:
                self.vote.forget(key)
            begun.clear()
        _, _, released, send, to_stack, drop = effects
        if released:
            self._release(released)
        for extra in send:
            self._send(extra)
        for extra in to_stack:
            self._send(adapter.inbound(extra))
        for held in drop:
            if not _drop(held):
                self.errors += 1

    def _accept(self, packet, new, reply, now):
        """Accept a packet with its translated bytes (``new``; None: unchanged), unless it is
        a primary's reply (``reply``) that waits for the backups' votes."""
        if new is not None:
            new = self.adapter.inbound(new)
            if reply:
                if self.adapter.reply is not None:  # a compromised host: past the vote
                    new = self.adapter.reply(new)
                elif self.vote is not None and self._held_for_votes(packet, new, now):
                    return  # its verdict comes with the votes
            packet.set_payload(new)
        packet.accept()

    def _held_for_votes(self, token, payload, now):
        """Hold a primary's translated reply for the backups' votes: True if held."""
        statement = statement_of(payload)
        if statement is None:
            return False
        held, dropped = self.vote.hold(token, payload, statement, now)
        for replaced in dropped:
            _drop(replaced)
        return held

    def _error(self, exc):
        """Count a failure; log one in ERROR_LOG_S at most (never per packet)."""
        self.errors += 1
        now = time.monotonic()
        if now - self._error_logged >= ERROR_LOG_S:
            self._error_logged = now
            LOG.warning("packet handling failed (%d so far): %r", self.errors, exc,
                        exc_info=self.errors == 1)

    def _release(self, released):
        for held, data in released:  # verdicts for packets kept earlier
            try:
                held.set_payload(self.adapter.inbound(data))
                held.accept()
            except Exception as exc:
                self._error(exc)
                _drop(held)

    def readable(self, fd, now):
        """Datagrams on the vote socket: votes may release held replies."""
        for _ in range(64):
            try:
                data = self.vote_socket.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._error(exc)
                break
            for held, payload in self.vote.receive(data, now):
                try:
                    held.set_payload(payload)
                    held.accept()
                except Exception as exc:
                    self._error(exc)
                    _drop(held)
        self.flush()

    def flush(self):
        if self.vote is not None:
            self.vote.flush()

    def tick(self, now):
        self.urgent(now)
        for held in self.translator.expire(now):
            if not _drop(held):
                self.errors += 1
        if self.vote is not None:
            for held in self.vote.expire(now):
                _drop(held)
            resets, self.vote.resets = self.vote.resets, []
            for client, port in resets:
                packet = self.translator.reset_packet(client, port)
                if packet is not None:
                    self._send(packet)
                    self._sent_reset(client, port, now)
            self.vote.flush()
        if self._resets:
            self._reset_again(now)

    def urgent(self, now):
        """The part of the tick that may not wait for a backlog of queued packets to drain
        (the runner also calls it in the middle of a long batch): a role change, the
        controller's resets, kept client bytes for the stack, a new primary's checks of its
        connections. Expiry is not in it: packets still queued may be the very answers a held
        packet waits for (the stack's own output a vote needs)."""
        if self.state.primary != self._primary:
            self._role_changed()
        elif self._primary and self.reset - self._reset_done:
            self._apply_resets()
        for packet in self.translator.survey(now):  # kept client bytes its stack lacks
            self._send(self.adapter.inbound(packet))
        if self._primary:
            self._reset_lost_input(now)

    def _sent_reset(self, client, port, now):
        if len(self._resets) >= RESETS_TRACKED:
            del self._resets[next(iter(self._resets))]
        self._resets[(client, port)] = [now, 0]

    def _reset_again(self, now):
        """Repeat each RST at RESET_AGAIN_S with the client's latest acknowledgement (only
        while primary: a backup's packets never reach the client)."""
        for conn, entry in list(self._resets.items()):
            if entry[1] >= len(RESET_AGAIN_S):
                del self._resets[conn]
            elif now - entry[0] >= RESET_AGAIN_S[entry[1]]:
                entry[1] += 1
                packet = self.translator.reset_again(*conn) if self._primary else None
                if packet is not None:
                    self._send(packet)

    def _role_changed(self):
        """Just promoted: reset the connections the old primary corrupted on the wire and
        those this stack lacks acknowledged client bytes of (at once if lost, else after
        client_input.CATCH_UP_S), and re-send what this replica's stack sent as a backup and
        the client has not acknowledged (through the vote, when voting), instead of leaving
        it to the stack's retransmission timer."""
        self._primary = self.state.primary
        if not self._primary or self.sender is None:
            return
        now = time.monotonic()
        self._apply_resets()
        for packet in self.translator.promoted(now):  # kept client bytes its stack lacks
            self._send(self.adapter.inbound(packet))
        self._reset_lost_input(now)
        for packet in self.translator.replay():
            if self.vote is None or not self._held_for_votes(RawSend(packet, self._send),
                                                             packet, now):
                self._send(packet)
        self.flush()

    def _reset_lost_input(self, now):
        """Reset the connections this new primary cannot continue: its stack lacks client
        bytes the old primary acknowledged (the client will never resend them)."""
        to_client, to_stack = self.translator.verify_input(now)
        for packet in to_stack:
            self._send(self.adapter.inbound(packet))
        for packet in to_client:
            if packet is not None:
                self._send(packet)
        keys = getattr(self.translator, "lost_reset_keys", None)
        while keys:  # repeated at RESET_AGAIN_S with the client's latest acknowledgement
            client, port = keys.pop()
            self._sent_reset(client, port, now)

    def _apply_resets(self):
        """Reset every connection the controller lists (a lying primary's bytes reached its
        client): never continue it with honest bytes."""
        for client, port in sorted(self.reset - self._reset_done):
            self._reset_done.add((client, port))
            packet = self.translator.reset_packet(client, port)
            if packet is not None:
                self._send(packet)
                self.resets_sent += 1
                self._sent_reset(client, port, time.monotonic())

    def _send(self, packet):
        try:
            self.sender(packet)
        except OSError as exc:
            self._error(exc)

    def close(self):
        """Drop every packet still held: this handler is no longer current. The connection
        state stays, should the handler become current again."""
        for held in self.translator.take_held():
            _drop(held)
        if self.vote is not None:
            for held in self.vote.take_pending():
                _drop(held)


_PRE_ROUTING = 0  # NF_INET_PRE_ROUTING: the packet arrived from the network
_NO_EFFECTS = (active.DROP, None, (), (), (), ())


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
        self._woken = False
        self._poll_s = TICK_S
        self._last_tick = 0.0
        self._last_urgent = 0.0
        self._since_check = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self):
        """Make the packet thread tick now (any thread), e.g. after a role change."""
        self._woken = True  # (read inside a long batch, where the pipe is not looked at)
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
        # nfq.run() returns only once the socket is empty: under a steady backlog (an
        # upload at line rate) that can take seconds, and the urgent part of the tick (role
        # changes, resets of connections a new primary cannot continue, re-injection) must
        # not wait for it. The full tick (expiry) runs once the batch is done, as before.
        self._since_check += 1
        if self._since_check >= CHECK_EVERY:
            self._since_check = 0
            now = time.monotonic()
            if self._woken or now - self._last_urgent >= self._poll_s:
                self._woken = False
                self._last_urgent = now
                self.handler.urgent(now)

    def _tick(self, now):
        self._woken = False
        self._last_tick = self._last_urgent = now
        while self._retired:
            retired = self._retired.pop()
            if retired is not self.handler:
                retired.close()
        self.handler.tick(now)

    def serve(self, stop, poll_s=TICK_S):
        """Run until ``stop`` (a threading.Event) is set; unbinds the queue on the way out."""
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(self.queue_num, self._dispatch, max_len=QUEUE_MAX_LEN, mode=COPY_PACKET,
                 range=COPY_RANGE, sock_len=QUEUE_SOCK_LEN)
        self._poll_s = poll_s
        try:
            fd = nfq.get_fd()
            self._last_tick = time.monotonic()
            while not stop.is_set():
                handler = self.handler
                extra = handler.fds()
                ready, _, _ = select.select([fd, self._wake_r, *extra], [], [], poll_s)
                if self._wake_r in ready:
                    self._woken = True
                    try:
                        os.read(self._wake_r, 64)
                    except OSError:
                        pass
                if fd in ready:
                    nfq.run(block=False)
                    handler.flush()
                now = time.monotonic()
                for other in extra:
                    if other in ready:
                        handler.readable(other, now)
                if self._woken or now - self._last_tick >= poll_s:
                    self._tick(now)
        finally:
            nfq.unbind()
            os.close(self._wake_r)
            os.close(self._wake_w)


def queue_drops(proc_text, queue_num):
    """(packets the kernel dropped: queue full, packets it could not hand to the agent's
    socket) for ``queue_num`` in the text of NFQ_PROC (this network namespace's queues);
    None if the queue is not bound."""
    for line in proc_text.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[0].isdigit() and int(fields[0]) == queue_num:
            try:
                return int(fields[5]), int(fields[6])
            except ValueError:
                return None
    return None
