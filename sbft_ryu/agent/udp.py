"""A keyed agent's heartbeats over UDP (:mod:`sbft_ryu.beatwire`): one datagram out, the
controller's signed answer to exactly that beat back, within a deadline.

Cheap for the controller (no HTTP parsing) and tolerant of loss: a lost datagram or answer
costs one beat; the heartbeat loop (:class:`~sbft_ryu.agent.heartbeat.Heartbeats`) goes back to
HTTP after a few misses, which also starts a new session if the controller lost the old one.
"""

import select
import socket
import time

from sbft_ryu import beatwire


NO_ANSWER = object()  # exchange(..., answer=False): the beat went out, nothing is awaited


class UdpMiss(Exception):
    """No verified answer to this beat in time (lost, late, or the session is gone)."""


class UdpChannel:
    """Opens its socket at the first beat; ``port`` None until the controller names it."""

    def __init__(self, host, key, name, port=None, clock=time.monotonic):
        self.host = host
        self.key = key
        self.name = name
        self.port = port
        self.clock = clock
        self.carried_counters = True  # whether the last beat had room for the counters
        self._sock = None

    def exchange(self, seq, service_ok, nonce, counters, timeout, answer=True):
        """Send beat ``seq``; return the controller's answer (a dict), None when it asks for
        HTTP (the answer would not fit, or neither would the beat), NO_ANSWER when none was
        asked for, beatwire.RESYNCED when the controller wants a new session (this beat or an
        earlier one was outside it: this one may not have been sent); UdpMiss otherwise."""
        datagram, self.carried_counters = beatwire.beat_datagram(
            self.key, self.name, seq, service_ok, nonce, counters, answer)
        if datagram is None:
            return None
        try:
            sock = self._socket()
            resync = False
            for _ in range(64):  # drop answers to earlier beats that came late (bounded)
                try:
                    late = sock.recv(beatwire.MAX_DATAGRAM + 1)
                except BlockingIOError:
                    break
                resync = resync or beatwire.is_resync(self.key, self.name, late)
            if resync:  # an earlier beat was outside the controller's session
                return beatwire.RESYNCED
            sock.send(datagram)
        except OSError as exc:
            self.close()
            raise UdpMiss(str(exc)) from None
        if not answer:
            return NO_ANSWER
        deadline = self.clock() + timeout
        for _ in range(64):  # bounded: a flood of junk cannot keep the loop here
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                break
            try:
                data = sock.recv(beatwire.MAX_DATAGRAM + 1)
            except OSError:
                continue  # e.g. ICMP port unreachable: wait out the deadline
            try:
                return beatwire.open_answer(self.key, self.name, seq, data)
            except beatwire.BeatWireError:
                continue  # not (a verified answer to) this beat
        raise UdpMiss("no answer in time")

    def _socket(self):
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((self.host, self.port))  # only the controller's datagrams come in
            self._sock = sock
        return self._sock

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
