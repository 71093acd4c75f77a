"""Tests for sbft_ryu.tools.pacer (the paced HTTP client the agent is measured with).

Named test_agent_pacer.py to stay within this suite's file naming; it tests sbft_ryu.tools.pacer.
Every server is a loopback thread on an ephemeral port, closed after its test.
"""

import io
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sbft_ryu.tools import pacer

HOST = "127.0.0.1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.server.paths.append(self.path)
        status = 500 if self.path.startswith("/fail") else 200
        body = f"served {self.path}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    server.paths = []
    server.url = f"http://{HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(2.0)
    assert not thread.is_alive()


class RawServer:
    """Accepts connections and does ``behaviour(conn, stop)`` with each in its own thread."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handle(self, conn):
        with conn:
            try:
                self.behaviour(conn, self.stop)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(2.0)
        for thread in self.threads:
            thread.join(2.0)
        assert not any(t.is_alive() for t in [self.thread, *self.threads])
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(behaviour):
        server = RawServer(behaviour)
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


@pytest.fixture(autouse=True)
def sigterm_handler():
    """pacer.run installs a SIGTERM handler: restore pytest's afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def lines(out):
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return records[:-1], records[-1]


# --- run ---------------------------------------------------------------------------------

def test_run_writes_one_line_per_request_and_a_summary(http_server):
    out = io.StringIO()
    assert pacer.run(http_server.url + "/x", 0.005, 1.0, 5, 10.0, out) == 0
    records, summary = lines(out)
    assert summary == {"summary": {"ok": 5, "failed": 0}}
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    for record in records:
        assert set(record) == {"seq", "t", "ok", "status", "body", "latency"}
        assert (record["ok"], record["status"], record["body"]) == (True, 200, "served /x")
        assert 0 <= record["latency"] < 1.0
    times = [r["t"] for r in records]
    assert times == sorted(times)
    # open-loop schedule: request i is never sent before start + i * interval
    assert all(t - times[0] >= i * 0.005 - 0.0005 for i, t in enumerate(times))
    assert http_server.paths == ["/x"] * 5


def test_run_default_path_and_per_request_paths(http_server):
    out = io.StringIO()
    pacer.run(http_server.url, 0.001, 1.0, 2, 10.0, out)
    pacer.run(http_server.url + "/base/", 0.001, 1.0, 3, 10.0, out, paths=True)
    assert http_server.paths == ["/", "/", "/base/0", "/base/1", "/base/2"]


def test_run_counts_non_200_as_failed(http_server):
    out = io.StringIO()
    pacer.run(http_server.url + "/fail", 0.001, 1.0, 3, 10.0, out)
    records, summary = lines(out)
    assert summary == {"summary": {"ok": 0, "failed": 3}}
    assert {(r["ok"], r["status"]) for r in records} == {(False, 500)}


def test_run_against_a_closed_port_fails_every_request(closed_port):
    out = io.StringIO()
    pacer.run(f"http://{HOST}:{closed_port}/", 0.001, 0.5, 4, 10.0, out)
    records, summary = lines(out)
    assert summary == {"summary": {"ok": 0, "failed": 4}}
    assert len(records) == 4
    for record in records:
        assert (record["ok"], record["status"]) == (False, 0)
        assert record["error"] == "ConnectionRefusedError"
        assert "body" not in record


def test_run_records_a_bad_status_line_as_value_error(raw_server):
    def garbage(conn, stop):
        conn.recv(1024)
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    server = raw_server(garbage)
    out = io.StringIO()
    pacer.run(f"http://{HOST}:{server.port}/", 0.001, 1.0, 2, 10.0, out)
    records, summary = lines(out)
    assert summary == {"summary": {"ok": 0, "failed": 2}}
    assert {(r["status"], r["error"]) for r in records} == {(0, "ValueError")}


def test_run_is_bounded_by_count(http_server):
    out = io.StringIO()
    pacer.run(http_server.url, 0.001, 1.0, 3, 60.0, out)
    records, _ = lines(out)
    assert len(records) == 3


def test_run_is_bounded_by_duration(http_server):
    out = io.StringIO()
    start = time.monotonic()
    pacer.run(http_server.url, 0.05, 1.0, 100000, 0.3, out)
    elapsed = time.monotonic() - start
    records, summary = lines(out)
    assert 3 <= len(records) <= 8
    assert summary["summary"]["ok"] == len(records)
    assert elapsed < 1.0


def test_run_with_zero_count_writes_only_the_summary(closed_port):
    out = io.StringIO()
    pacer.run(f"http://{HOST}:{closed_port}/", 0.001, 0.5, 0, 10.0, out)
    assert out.getvalue() == '{"summary": {"ok": 0, "failed": 0}}\n'


def test_main_writes_to_a_file(http_server, tmp_path):
    path = tmp_path / "requests.jsonl"
    assert pacer.main(["--url", http_server.url + "/m", "--interval", "0.001", "--count", "2",
                       "--out", str(path)]) == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("status") for r in records[:-1]] == [200, 200]
    assert records[-1] == {"summary": {"ok": 2, "failed": 0}}


# --- get ---------------------------------------------------------------------------------

def test_get_returns_status_and_body(http_server):
    port = http_server.server_address[1]
    assert pacer.get(HOST, port, "/hello", 1.0) == (200, b"served /hello")


def test_get_raises_on_a_silent_server(raw_server):
    server = raw_server(lambda conn, stop: stop.wait(5))
    start = time.monotonic()
    with pytest.raises(OSError):
        pacer.get(HOST, server.port, "/", 0.2)
    assert time.monotonic() - start < 0.7


def test_get_deadline_covers_a_trickling_server(raw_server):
    def trickle(conn, stop):  # answers, one byte every 20 ms: each recv is quick
        conn.recv(1024)
        for byte in b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000:
            if stop.wait(0.02):
                return
            conn.sendall(bytes([byte]))

    server = raw_server(trickle)
    start = time.monotonic()
    with pytest.raises(OSError):
        pacer.get(HOST, server.port, "/", 0.2)
    assert time.monotonic() - start < 0.7


def test_get_caps_the_body(raw_server):
    def flood(conn, stop):
        conn.recv(1024)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + b"y" * (3 * pacer.MAX_BODY))

    server = raw_server(flood)
    status, body = pacer.get(HOST, server.port, "/", 2.0)
    assert status == 200
    assert 0 < len(body) <= pacer.MAX_BODY + 16384


def test_get_on_a_closed_port_raises_connection_refused(closed_port):
    with pytest.raises(ConnectionRefusedError):
        pacer.get(HOST, closed_port, "/", 0.5)
