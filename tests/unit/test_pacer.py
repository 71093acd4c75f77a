"""Tests for sbft_lab.pacer (the open-loop HTTP client failovers are measured with) and
sbft_lab.timeline (reading its log). Every server is a loopback thread on an ephemeral
port, closed after its test."""

import asyncio
import io
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sbft_lab import pacer, timeline

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



def run(url, interval=0.01, timeout=0.5, count=5, duration=10.0, paths=False):
    out = io.StringIO()
    assert asyncio.run(pacer.run(url, interval, timeout, count, duration, out, paths)) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "summary" in lines[-1]
    return sorted(lines[:-1], key=lambda r: r["seq"]), lines[-1]["summary"]


def test_run_writes_one_line_per_request_and_a_summary(http_server):
    records, summary = run(http_server.url + "/p", count=5, paths=True)
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["ok"] and r["status"] == 200 for r in records)
    assert [r["body"] for r in records] == [f"served /p/{n}" for n in range(5)]
    assert summary == {"ok": 5, "failed": 0, "sent": 5}
    assert sorted(http_server.paths) == [f"/p/{n}" for n in range(5)]


def test_without_paths_every_request_uses_the_url_path(http_server):
    run(http_server.url + "/same", count=3)
    assert http_server.paths == ["/same"] * 3


def test_non_200_counts_as_failed(http_server):
    records, summary = run(http_server.url + "/fail", count=2)
    assert [(r["ok"], r["status"]) for r in records] == [(False, 500), (False, 500)]
    assert summary["failed"] == 2


def test_closed_port_fails_every_request(closed_port):
    records, summary = run(f"http://{HOST}:{closed_port}/", count=3)
    assert all(not r["ok"] and r["status"] == 0 and r["error"] for r in records)
    assert summary == {"ok": 0, "failed": 3, "sent": 3}


def test_it_is_open_loop_a_slow_server_does_not_slow_the_sending(raw_server):
    """Every request leaves before the first answer comes back (a closed loop would send one
    per answer). The answer takes 1 s against 10 sends 0.02 s apart: margin for a loaded
    machine, and no bound on the schedule's own precision."""
    def slow(conn, stop):
        conn.recv(1024)
        stop.wait(1.0)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nslow")
    server = raw_server(slow)
    records, summary = run(f"http://{HOST}:{server.port}/", interval=0.02, timeout=3.0,
                           count=10)
    first_answer = min(r["t"] + r["latency"] for r in records)
    assert all(r["t"] < first_answer for r in records), "sent without waiting for answers"
    assert all(r["ok"] and r["latency"] >= 0.99 for r in records)


def test_a_silent_server_times_out_at_the_deadline(raw_server):
    server = raw_server(lambda conn, stop: stop.wait(2.0))
    records, _ = run(f"http://{HOST}:{server.port}/", timeout=0.1, count=2)
    assert all(r["error"] == "TimeoutError" and 0.09 <= r["latency"] < 0.5 for r in records)


def test_a_bad_status_line_is_a_value_error(raw_server):
    server = raw_server(lambda conn, stop: (conn.recv(1024), conn.sendall(b"garbage\r\n\r\n")))
    records, _ = run(f"http://{HOST}:{server.port}/", count=1)
    assert records[0]["error"] == "ValueError" and not records[0]["ok"]


def test_bounded_by_count_and_by_duration(http_server):
    assert len(run(http_server.url, count=3)[0]) == 3
    # 0.2 s at one send per 0.05 s: at most 5 (a loaded machine may send fewer, never more)
    records, _ = run(http_server.url, interval=0.05, count=1000, duration=0.2)
    assert 1 <= len(records) <= 5


def test_zero_count_writes_only_the_summary(http_server):
    records, summary = run(http_server.url, count=0)
    assert records == [] and summary == {"ok": 0, "failed": 0, "sent": 0}


def test_main_writes_to_a_file(http_server, tmp_path):
    out = tmp_path / "log.jsonl"
    assert pacer.main(["--url", http_server.url + "/x", "--count", "2", "--interval", "0.01",
                       "--out", str(out)]) == 0
    records, summary = timeline.load(str(out))
    assert [r["seq"] for r in records] == [0, 1] and summary["ok"] == 2


# ---- timeline -----------------------------------------------------------------------------

def record(seq, t, ok, latency=0.005):
    return {"seq": seq, "t": t, "ok": ok, "latency": latency}


def test_outage_from_last_success_before_to_first_success_after():
    records = [record(0, 0.00, True), record(1, 0.02, True), record(2, 0.04, False, 0.1),
               record(3, 0.06, False, 0.1), record(4, 0.08, True), record(5, 0.10, True)]
    outage = timeline.outage(records, fault_at=0.03)
    assert outage.seconds == pytest.approx(0.085 - 0.025)
    assert outage.failed == 2 and outage.recovered


def test_outage_counts_a_success_in_flight_at_the_fault_as_before_it():
    records = [record(0, 0.00, True, 0.05), record(1, 0.02, False, 0.1),
               record(2, 0.04, True)]
    outage = timeline.outage(records, fault_at=0.01)
    assert outage.seconds == 0.0  # the service never stopped answering
    assert outage.failed == 1


def test_no_recovery_is_reported():
    outage = timeline.outage([record(0, 0.0, True), record(1, 0.02, False)], fault_at=0.01)
    assert outage.seconds is None and not outage.recovered and outage.failed == 1


def test_load_sorts_by_seq_and_skips_a_truncated_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(record(1, 0.02, True)) + "\n" + json.dumps(record(0, 0.0, True))
                    + "\n" + '{"summary": {"ok": 2}}\n{"seq": 2, "t"')
    records, summary = timeline.load(str(path))
    assert [r["seq"] for r in records] == [0, 1] and summary == {"ok": 2}
