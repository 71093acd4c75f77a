"""Tests for sbft_ryu.agent.probe: probe_once over loopback, ServiceProbe with a fake clock."""

import socket
import threading
import time

import pytest

from sbft_ryu.agent import probe

HOST = "127.0.0.1"


class LoopbackServer:
    """Accepts on 127.0.0.1:<ephemeral>; answers each request with ``answer`` (None: never)."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []
        self.stop = threading.Event()
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.answer is None:
                self.held.append(conn)  # never answers, never closes (until teardown)
                continue
            with conn:
                conn.settimeout(1.0)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(1024)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(2)
        assert not self.thread.is_alive()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def start(answer):
        server = LoopbackServer(answer)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


@pytest.fixture
def closed_port():
    sock = socket.create_server((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --- probe_once --------------------------------------------------------------------------

def test_connect_probe_to_a_listener_is_true():
    with socket.create_server((HOST, 0)) as listener:  # the kernel completes the handshake
        assert probe.probe_once(HOST, listener.getsockname()[1], "", 0.5) is True


def test_connect_probe_to_a_closed_port_is_false(closed_port):
    assert probe.probe_once(HOST, closed_port, "", 0.5) is False


def test_http_probe_200_is_true(serve):
    server = serve(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert probe.probe_once(HOST, server.port, "/health", 1.0) is True
    assert server.requests == [b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 503 Service Unavailable\r\n\r\n<html>no server available</html>",
    b"HTTP/1.0 404 Not Found\r\n\r\n",
    b"HTTP/1.0 2000 OK\r\n\r\n",
    b"garbage\r\n\r\n",
    b"",  # closes without answering
], ids=["503", "404", "2000", "garbage", "empty"])
def test_http_probe_other_answers_are_false(serve, answer):
    server = serve(answer)
    assert probe.probe_once(HOST, server.port, "/health", 1.0) is False


def test_http_probe_to_a_closed_port_is_false(closed_port):
    assert probe.probe_once(HOST, closed_port, "/health", 0.5) is False


def test_http_probe_of_a_silent_server_is_false_within_the_timeout(serve):
    server = serve(None)
    timeout = 0.2
    start = time.monotonic()
    assert probe.probe_once(HOST, server.port, "/health", timeout) is False
    assert time.monotonic() - start < timeout + 0.5


def test_connect_probe_ignores_a_silent_server(serve):
    server = serve(None)
    assert probe.probe_once(HOST, server.port, "", 0.5) is True


# --- ServiceProbe ------------------------------------------------------------------------

class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_ok_is_false_before_any_probe():
    service = probe.ServiceProbe(5555, "", 0.1, 0.05, host=HOST, clock=Clock())
    assert service.ok(100.0) is False


def test_ok_only_within_three_intervals_of_the_last_success():
    clock = Clock(100.0)
    results = [True]
    stop = threading.Event()

    def check(host, port, path, timeout):
        stop.set()  # one probe per run()
        return results[0]

    service = probe.ServiceProbe(5555, "", 0.1, 0.5, host=HOST, clock=clock, check=check)
    service.run(stop)
    assert service.last_at == 100.0
    assert service.ok(100.0)
    assert service.ok(101.5)  # exactly 3 intervals
    assert not service.ok(101.51)
    assert not service.ok(200.0)
    # a failed probe is not ok, however recent
    results[0] = False
    clock.now = 102.0
    stop.clear()
    service.run(stop)
    assert not service.ok(102.0)
    assert service.failures == 1


def test_run_probes_with_its_parameters_and_counts_failures():
    calls = []
    stop = threading.Event()
    answers = iter([True, False, False, True])

    def check(host, port, path, timeout):
        calls.append((host, port, path, timeout))
        result = next(answers)
        if len(calls) == 4:
            stop.set()
        return result

    service = probe.ServiceProbe(5555, "/up", 0.1, 0.001, host="10.0.0.100", clock=Clock(),
                                 check=check)
    service.run(stop)
    assert calls == [("10.0.0.100", 5555, "/up", 0.1)] * 4
    assert service.failures == 2
    assert service.last_ok is True


def test_run_without_host_does_not_check_but_ticks():
    stop = threading.Event()
    ticks = []

    def check(*args):
        raise AssertionError("check called without a host")

    def on_tick():
        ticks.append(1)
        if len(ticks) == 3:
            stop.set()

    service = probe.ServiceProbe(5555, "", 0.1, 0.001, host=None, clock=Clock(), check=check)
    service.run(stop, on_tick)
    assert len(ticks) == 3
    assert not service.ok(100.0)


def test_run_starts_probing_once_the_host_is_learned():
    stop = threading.Event()
    checked = []
    service = probe.ServiceProbe(5555, "", 0.1, 0.001, host=None, clock=Clock(),
                                 check=lambda *args: checked.append(args) or True)

    def on_tick():  # what Agent._observe does with the controller's answer
        service.host = "10.0.0.100"
        if checked:
            stop.set()

    service.run(stop, on_tick)
    assert checked == [("10.0.0.100", 5555, "", 0.1)]
    assert service.ok(100.0)


def test_run_returns_at_once_when_stop_is_already_set():
    stop = threading.Event()
    stop.set()
    service = probe.ServiceProbe(5555, "", 0.1, 10.0, host=HOST, clock=Clock(),
                                 check=lambda *args: pytest.fail("probed after stop"))
    service.run(stop)


def test_run_stops_when_the_event_is_set_from_another_thread():
    stop = threading.Event()
    service = probe.ServiceProbe(5555, "", 0.1, 0.01, host=HOST, clock=Clock(),
                                 check=lambda *args: True)
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.05)
    stop.set()
    thread.join(1.0)
    assert not thread.is_alive()
    assert service.ok(100.0)
