"""Tests for the lab's upload tools on 127.0.0.1: the backend's upload sink
(sbft_lab.upload_sink through stream_backend.handle) and the client (sbft_lab.upload)."""

import json
import socket
import threading
import time

import pytest

from sbft_lab import stream_backend, upload, upload_sink

from test_tools import ServerThread


@pytest.fixture
def sink(tmp_path):
    log = tmp_path / "uploads.jsonl"
    server = ServerThread(lambda r, w: stream_backend.handle(
        r, w, "b1", upload_sink.json_lines(str(log))))
    yield server, log
    server.close()


def records(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def run_client(url, tmp_path, **options):
    out = tmp_path / "result.json"
    argv = ["--url", url, "--out", str(out)]
    for key, value in options.items():
        if value is not False:
            argv += [f"--{key.replace('_', '-')}"] if value is True else [
                f"--{key.replace('_', '-')}", str(value)]
    upload.main(argv)
    return json.loads(out.read_text())


@pytest.mark.parametrize("chunked", [False, True])
def test_pipelined_uploads_are_answered_in_order_with_their_digests(sink, tmp_path, chunked):
    server, log = sink
    size = 3 * upload.BLOCK + 123
    result = run_client(f"{server.url}/upload/pipe", tmp_path, size=size,
                        count=3, chunked=chunked)
    assert result["outcome"] == "ok"
    assert [(r["status"], r["sha256"], r["bytes"]) for r in result["responses"]] == [
        (200, e["sha256"], size) for e in result["expected"]]
    assert len({e["sha256"] for e in result["expected"]}) == 3  # three different bodies
    assert [(r["path"], r["complete"], r["sha256"]) for r in records(log)] == [
        (f"/upload/pipe-{i}", True, e["sha256"]) for i, e in enumerate(result["expected"])]


def test_a_body_that_ends_early_is_logged_incomplete(sink):
    server, log = sink
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /upload/cut-0 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 400)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not log.exists():
        time.sleep(0.02)
    [record] = records(log)
    assert (record["path"], record["bytes"], record["complete"], record["sha256"]) == (
        "/upload/cut-0", 400, False, None)


def test_the_client_reports_a_reset_and_when(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def reset_after_some():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # linger 0: a RST

    thread = threading.Thread(target=reset_after_some)
    thread.start()
    before = time.monotonic()
    result = run_client(f"http://127.0.0.1:{port}/upload/r", tmp_path, size=8 << 20, stall=5)
    thread.join(5)
    listener.close()
    assert result["outcome"] == "reset" and before <= result["reset_at"] <= time.monotonic()


def test_a_server_that_closes_early_is_closed_not_reset(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def close_after_some():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.shutdown(socket.SHUT_WR)  # a FIN, then read what comes until the client goes
        conn.settimeout(5)
        for _ in range(10_000):  # (bounded: 8 MiB in pieces of up to 64 KiB, then the end)
            try:
                if not conn.recv(65536):
                    break
            except OSError:
                break
        conn.close()

    thread = threading.Thread(target=close_after_some)
    thread.start()
    result = run_client(f"http://127.0.0.1:{port}/upload/c", tmp_path, size=8 << 20, stall=5)
    thread.join(5)
    listener.close()
    assert result["outcome"] == "closed" and result["reset_at"] is None


def test_the_client_reports_a_hang_after_its_stall_limit(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (in the kernel) and never reads: the window closes
    port = listener.getsockname()[1]
    started = time.monotonic()
    result = run_client(f"http://127.0.0.1:{port}/upload/h", tmp_path, size=32 << 20,
                        stall=0.5, timeout=10)
    listener.close()
    assert result["outcome"] == "hang" and time.monotonic() - started < 8
