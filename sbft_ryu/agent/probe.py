"""The replica's own probe of its proxy on VIP:port, over loopback (never queued).

With a path, an HTTP GET that must answer 200 (HAProxy's ``monitor-uri`` answers without
touching a backend); without one, a TCP connect. ``ok(now)`` is true only for a recent success,
so a probe thread that stalls counts as a failure.
"""

import socket
import time

STALE_AFTER = 3  # probe intervals


def probe_once(host, port, path, timeout):
    """True if the proxy answered: a connect, or with ``path`` a ``200`` status line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if not path:
                return True
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
            head = b""
            while b"\r\n" not in head and len(head) < 64:
                chunk = sock.recv(64)
                if not chunk:
                    break
                head += chunk
            status = head.split(b"\r\n", 1)[0].split()
            return len(status) >= 2 and status[1] == b"200"
    except OSError:
        return False


class ServiceProbe:
    def __init__(self, port, path, timeout, interval, host=None, clock=time.monotonic,
                 check=probe_once):
        self.host = host  # the VIP; learned from the controller when not given
        self.port = port
        self.path = path
        self.timeout = timeout
        self.interval = interval
        self.clock = clock
        self.check = check
        self.last_ok = False
        self.last_at = None
        self.failures = 0

    def ok(self, now):
        return (self.last_ok and self.last_at is not None
                and now - self.last_at <= STALE_AFTER * self.interval)

    def run(self, stop, on_tick=None):
        while not stop.is_set():
            if self.host:
                result = self.check(self.host, self.port, self.path, self.timeout)
                self.last_ok, self.last_at = result, self.clock()
                self.failures += not result
            if on_tick is not None:
                on_tick()
            stop.wait(self.interval)
