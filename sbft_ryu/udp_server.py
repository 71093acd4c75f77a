"""The UDP heartbeat port's I/O shell: a native thread beside Ryu's eventlet hub.

Measured on the lab machine, waking eventlet's hub for a datagram costs about 130 µs of CPU
before any work is done: at 3 replicas × 20 beats/s that alone is 0.8 % of a core, most of the
budget. So a native thread (not a green one) blocks in ``recvfrom`` and hands each datagram to
``fast(datagram, address, now)``, which records a *steady* heartbeat (one that cannot change
the view: :meth:`sbft_ryu.core.Core.udp_steady`) and returns the answer to send; anything else
(``fast`` returns SLOW, or raises) is queued for ``slow(datagram, address)`` in a green thread
on the hub, woken through a socket pair, which does the full processing and may log. ``fast``
must touch no eventlet primitive (no logging, no locks of the hub).
"""

import collections
import time

from eventlet import patcher
from eventlet.hubs import trampoline

_socket = patcher.original("socket")
_threading = patcher.original("threading")

SLOW = object()  # ``fast``'s answer: let the hub process this datagram
QUEUED_MAX = 256  # datagrams waiting for the hub (beyond: dropped, as the network would)
RECV_SIZE = 2048


class UdpHeartbeatServer:
    def __init__(self, fast, slow, on_error=lambda: None, clock=time.monotonic):
        self.fast = fast
        self.slow = slow
        self.on_error = on_error  # counts an error of ``fast`` (called on the hub, later)
        self.clock = clock
        self.sock = None
        self._queue = collections.deque(maxlen=QUEUED_MAX)
        self._wake_r = self._wake_w = None
        self.errors = 0  # raised by ``fast`` (those datagrams went the slow way)

    def start(self, host, port, spawn):
        """Bind (OSError if the port is taken), start the thread and, with ``spawn`` (the
        hub's), the green thread of the slow path."""
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        sock.bind((host, port))
        self.sock = sock
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        _threading.Thread(target=self._receive, name="sbft-udp-heartbeats",
                          daemon=True).start()
        return spawn(self._serve_slow)

    def _receive(self):
        while True:
            try:
                data, address = self.sock.recvfrom(RECV_SIZE)
            except OSError:
                continue
            try:
                reply = self.fast(data, address[0], self.clock())
            except Exception:  # the hub logs it when it processes the datagram again
                self.errors += 1
                reply = SLOW
            if reply is SLOW:
                self._queue.append((data, address))
                try:
                    self._wake_w.send(b"!")
                except OSError:
                    pass  # the pair's buffer is full: the hub is awake anyway
            elif reply is not None:
                try:
                    self.sock.sendto(reply, address)
                except OSError:
                    pass  # the agent goes back to HTTP after a few misses

    def _serve_slow(self):
        while True:
            trampoline(self._wake_r.fileno(), read=True)
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
            while self._queue:
                data, address = self._queue.popleft()
                reply = self.slow(data, address[0])
                if reply is not None:
                    try:
                        self.sock.sendto(reply, address)
                    except OSError:
                        pass
