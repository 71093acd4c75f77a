"""Tests for sbft_lab.stream_backend and sbft_lab.fetch on 127.0.0.1.

The backend's real asyncio handler runs in an event loop of its own thread (ephemeral port);
downloads run with ``asyncio.run`` in the test's thread, as ``fetch.main`` runs them.
"""

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time

import pytest

from sbft_lab import fetch, stream_backend
from sbft_lab.stream_backend import CHUNK, content


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# --- content -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_content_has_exactly_the_size(size):
    assert len(content("/stream/x", size)) == size


def test_content_of_size_zero_is_empty():
    assert content("/stream/0", 0) == b""


def test_content_is_deterministic():
    assert content("/stream/50000", 50000) == content("/stream/50000", 50000)
    assert sha256(content("/stream/100", 100)) == sha256(content("/stream/100", 100))


def test_content_depends_on_the_path():
    one, other = content("/stream/100000", 100000), content("/stream/100001", 100000)
    assert one != other
    assert one[:CHUNK] != other[:CHUNK] and one[-100:] != other[-100:]
    assert content("/a", 64) != content("/b", 64)


def test_content_is_the_chunks_in_order_and_a_prefix_of_any_longer_object():
    seed = b"/stream/x"
    data = content("/stream/x", 2 * CHUNK + 10)
    assert data[:CHUNK] == stream_backend.chunk(seed, 0)
    assert data[CHUNK:2 * CHUNK] == stream_backend.chunk(seed, 1)
    assert data[2 * CHUNK:] == stream_backend.chunk(seed, 2)[:10]
    assert len(stream_backend.chunk(seed, 5)) == CHUNK
    for size in (0, 7, CHUNK, CHUNK + 3):
        assert content("/stream/x", size) == data[:size]


def test_content_is_not_trivially_repetitive():
    data = content("/stream/x", 4 * CHUNK)
    assert len({data[i:i + CHUNK] for i in range(0, len(data), CHUNK)}) == 4
    assert len(set(data)) > 200  # looks random: every byte value nearly


# --- a backend on 127.0.0.1 ----------------------------------------------------------------

class ServerThread:
    """An asyncio server (``handler(reader, writer)``) on 127.0.0.1:0 in its own loop thread."""

    def __init__(self, handler):
        self.loop = asyncio.new_event_loop()
        self.handler = handler
        self.server = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5.0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self.handler, "127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()

    def close(self):
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        self.loop.close()


@pytest.fixture
def backend():
    server = ServerThread(lambda r, w: stream_backend.handle(r, w, "b1"))
    yield server.url
    server.close()


@pytest.fixture
def scripted():
    """A server that answers every connection with the raw bytes given (then closes)."""
    servers = []

    def start(raw, delay=0.0):
        async def handler(reader, writer):
            try:
                await reader.readuntil(b"\r\n\r\n")
                if delay:
                    await asyncio.sleep(delay)
                writer.write(raw)
                await writer.drain()
            finally:
                writer.close()
        servers.append(ServerThread(handler))
        return servers[-1].url
    yield start
    for server in servers:
        server.close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


def get(url, timeout=5.0, index=0):
    return asyncio.run(fetch.fetch(index, url, timeout))


def raw_get(port, target):
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


# --- the backend's answers -----------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 100, CHUNK, CHUNK + 1])
def test_backend_answers_the_exact_object(backend, size):
    port = int(backend.rsplit(":", 1)[1])
    response = raw_get(port, f"/stream/{size}?rate=0")
    assert response == (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        + f"Content-Length: {size}\r\n".encode()
                        + b"Connection: close\r\n\r\n" + content(f"/stream/{size}", size))


@pytest.mark.parametrize("target", ["/hello", "/stream/", "/stream/abc", "/stream/10/x",
                                    "/streams/10", "/"])
def test_backend_answers_other_paths_with_a_short_body(backend, target):
    port = int(backend.rsplit(":", 1)[1])
    path = target.split("?")[0]
    body = f"b1 {path}\n".encode()
    assert raw_get(port, target) == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     + f"Content-Length: {len(body)}\r\n".encode()
                                     + b"Connection: close\r\n\r\n" + body)


BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("rate", ["fast", "1,5", "0x10", "10kB", "%20"])
def test_backend_answers_a_bad_rate_with_400(backend, rate):
    port = int(backend.rsplit(":", 1)[1])
    assert raw_get(port, f"/stream/100?rate={rate}") == BAD_REQUEST


@pytest.mark.parametrize("query", ["", "?rate=", "?rate=0", "?rate=0.0", "?other=x"])
def test_backend_streams_unpaced_without_a_rate(backend, query):
    port = int(backend.rsplit(":", 1)[1])
    response = raw_get(port, f"/stream/100{query}")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(content("/stream/100", 100))


def test_backend_checks_the_rate_of_streams_only(backend):
    port = int(backend.rsplit(":", 1)[1])
    assert raw_get(port, "/hello?rate=fast").startswith(b"HTTP/1.1 200 OK\r\n")


def test_fetch_of_a_bad_rate_is_a_400_and_not_ok(backend):
    result = get(f"{backend}/stream/100?rate=fast")
    assert (result["ok"], result["status"], result["bytes"], result["error"]) == (
        False, 400, 0, None)


# --- fetch ---------------------------------------------------------------------------------

RESULT_KEYS = {"index", "ok", "status", "bytes", "sha256", "max_stall_s", "stall_end", "started",
               "finished", "error", "port"}


def test_fetch_an_unpaced_stream(backend):
    before = time.monotonic()
    result = get(f"{backend}/stream/100000?rate=0", index=4)
    assert set(result) == RESULT_KEYS
    assert (result["index"], result["ok"], result["status"], result["error"]) == (
        4, True, 200, None)
    assert result["bytes"] == 100000
    assert result["sha256"] == sha256(content("/stream/100000", 100000))
    assert isinstance(result["max_stall_s"], float) and 0 <= result["max_stall_s"] < 2.0
    assert before <= result["started"] <= result["finished"] <= time.monotonic()
    # stall_end: when the longest pause ended (rounded to 0.1 ms)
    assert result["started"] - 0.001 <= result["stall_end"] <= result["finished"] + 0.001
    assert isinstance(result["port"], int) and 0 < result["port"] < 65536  # the client's port


def test_fetch_a_paced_stream(backend):
    """50000 bytes at 200000 B/s: four chunks, each due CHUNK/rate (~82 ms) after the last."""
    result = get(f"{backend}/stream/50000?rate=200000")
    assert (result["ok"], result["status"], result["bytes"], result["error"]) == (
        True, 200, 50000, None)
    assert result["sha256"] == sha256(content("/stream/50000", 50000))  # the query is no seed
    assert result["finished"] - result["started"] >= 0.2
    assert 0.04 <= result["max_stall_s"] < 2.0  # the pauses between chunks


def test_fetch_a_short_body(backend):
    result = get(f"{backend}/hello?x=1")
    assert (result["ok"], result["status"], result["bytes"], result["error"]) == (
        True, 200, len(b"b1 /hello\n"), None)
    assert result["sha256"] == sha256(b"b1 /hello\n")


def test_fetch_against_a_closed_port(backend):
    result = get(f"http://127.0.0.1:{closed_port()}/stream/10")
    assert (result["ok"], result["status"], result["bytes"]) == (False, 0, 0)
    assert result["error"] == "ConnectionRefusedError"
    assert result["max_stall_s"] is None
    assert (result["stall_end"], result["port"]) == (None, None)  # never connected
    assert result["sha256"] == sha256(b"")
    assert result["started"] <= result["finished"]


def test_fetch_times_out_on_a_slow_stream(backend):
    # the first chunk comes at once, the next only after CHUNK / rate = ~0.33 s
    started = time.monotonic()
    result = get(f"{backend}/stream/1000000?rate=50000", timeout=0.15)
    assert time.monotonic() - started < 2.0
    assert (result["ok"], result["status"], result["error"]) == (False, 200, "TimeoutError")
    assert 0 < result["bytes"] < 1000000
    assert result["max_stall_s"] is None  # only measured for a download that ended
    assert result["finished"] - result["started"] >= 0.15


@pytest.mark.parametrize("raw, status, length", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", 200, 5),  # cut short
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n12345", 200, 5),  # more than announced
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n12345", 200, 5),  # nothing announced
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!", 404, 5),
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", 503, 0),
])
def test_fetch_is_ok_only_for_a_200_with_the_announced_length(scripted, raw, status, length):
    result = get(scripted(raw) + "/stream/10")
    assert (result["ok"], result["status"], result["bytes"], result["error"]) == (
        False, status, length, None)
    assert result["max_stall_s"] is not None


def test_fetch_reads_a_lower_case_content_length(scripted):
    result = get(scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n12345") + "/x")
    assert (result["ok"], result["bytes"], result["sha256"]) == (True, 5, sha256(b"12345"))


@pytest.mark.parametrize("raw, error", [
    (b"", "IncompleteReadError"),  # closed before any answer
    (b"HTTP/1.1 200 OK\r\nContent-Le", "IncompleteReadError"),
    (b"HTTP/1.1 OK\r\n\r\n", "ValueError"),
    (b"garbage\r\n\r\n", "IndexError"),
])
def test_fetch_names_the_error_of_a_broken_answer(scripted, raw, error):
    result = get(scripted(raw) + "/x")
    assert (result["ok"], result["error"]) == (False, error)


def test_fetch_of_a_url_without_a_port_uses_80(monkeypatch):
    opened = []

    async def open_connection(host, port):
        opened.append((host, port))
        raise ConnectionRefusedError
    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    result = get("http://127.0.0.1/stream/1")
    assert opened == [("127.0.0.1", 80)]
    assert result["error"] == "ConnectionRefusedError"


def test_run_all_fetches_concurrently(backend):
    started = time.monotonic()
    results = asyncio.run(fetch.run_all(f"{backend}/stream/50000?rate=200000", 4, 5.0))
    # four paced downloads of at least 0.33 s each, side by side (one after the other: 1.31 s)
    assert time.monotonic() - started < 1.25
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert all(r["ok"] and r["sha256"] == sha256(content("/stream/50000", 50000))
               for r in results)


# --- fetch.main ----------------------------------------------------------------------------

def test_main_writes_the_results_and_succeeds_when_all_are_ok(backend, tmp_path):
    out = tmp_path / "fetch.json"
    assert fetch.main(["--url", f"{backend}/stream/20000?rate=0", "--count", "3",
                       "--timeout", "5", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.count("\n") == 1
    data = json.loads(text)
    assert list(data) == ["results"]
    assert [r["index"] for r in data["results"]] == [0, 1, 2]
    for result in data["results"]:
        assert set(result) == RESULT_KEYS
        assert (result["ok"], result["bytes"], result["error"]) == (True, 20000, None)
        assert result["sha256"] == sha256(content("/stream/20000", 20000))


def test_main_fails_when_a_download_fails(tmp_path):
    out = tmp_path / "fetch.json"
    assert fetch.main(["--url", f"http://127.0.0.1:{closed_port()}/stream/10", "--count", "2",
                       "--timeout", "5", "--out", str(out)]) == 1
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [(r["index"], r["ok"], r["error"]) for r in results] == [
        (0, False, "ConnectionRefusedError"), (1, False, "ConnectionRefusedError")]


def test_main_fails_when_only_some_downloads_fail(tmp_path):
    """One connection answers in full, the others are cut short: 1."""
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    async def handler(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answers.pop() if answers else
                         b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort")
            await writer.drain()
        finally:
            writer.close()
    server = ServerThread(handler)
    try:
        out = tmp_path / "fetch.json"
        assert fetch.main(["--url", server.url + "/x", "--count", "3", "--timeout", "5",
                           "--out", str(out)]) == 1
    finally:
        server.close()
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert sorted(r["ok"] for r in results) == [False, False, True]


def test_main_writes_to_stdout_by_default(backend, capsys):
    assert fetch.main(["--url", f"{backend}/hello"]) == 0
    out = capsys.readouterr().out
    [result] = json.loads(out)["results"]
    assert (result["index"], result["ok"], result["sha256"]) == (0, True, sha256(b"b1 /hello\n"))


def test_main_needs_a_url(capsys):
    with pytest.raises(SystemExit) as info:
        fetch.main([])
    assert info.value.code == 2
    assert "--url" in capsys.readouterr().err


# --- stream_backend.serve ------------------------------------------------------------------

def test_serve_answers_on_the_given_address_and_port():
    async def scenario():
        port = closed_port()
        task = asyncio.create_task(stream_backend.serve("127.0.0.1", port, "b9"))
        try:
            for _ in range(500):  # until it listens
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.01)
                else:
                    writer.close()
                    break
            url = f"http://127.0.0.1:{port}"
            return await asyncio.gather(fetch.fetch(0, url + "/stream/20000", 5.0),
                                        fetch.fetch(1, url + "/x", 5.0))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    stream, other = asyncio.run(scenario())
    assert (stream["ok"], stream["sha256"]) == (True, sha256(content("/stream/20000", 20000)))
    assert (other["ok"], other["sha256"]) == (True, sha256(b"b9 /x\n"))



# --- fetch: the request target and the socket ----------------------------------------------

@pytest.fixture
def recording():
    """A server that records each request's head and answers ``200`` with a 2-byte body."""
    heads = []

    async def handler(reader, writer):
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()
    server = ServerThread(handler)
    yield server, heads
    server.close()


@pytest.mark.parametrize("suffix, target", [
    ("", "/"), ("/", "/"), ("?x=1", "/?x=1"), ("/a/b?c=d&e", "/a/b?c=d&e"),
    ("/stream/10", "/stream/10")])
def test_fetch_sends_the_path_and_query_and_slash_for_none(recording, suffix, target):
    server, heads = recording
    result = get(server.url + suffix)
    assert (result["ok"], result["bytes"]) == (True, 2)
    [head] = heads
    assert head == (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Connection: close\r\n\r\n").encode()


@pytest.fixture
def writers(monkeypatch):
    """Every StreamWriter fetch opens."""
    opened = []
    real = asyncio.open_connection

    async def open_connection(host, port):
        reader, writer = await real(host, port)
        opened.append(writer)
        return reader, writer
    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    return opened


def test_fetch_closes_its_socket_after_a_download(backend, writers):
    assert get(f"{backend}/hello")["ok"] is True
    [writer] = writers
    assert writer.is_closing()


def test_fetch_closes_its_socket_on_a_timeout(backend, writers):
    result = get(f"{backend}/stream/1000000?rate=50000", timeout=0.15)
    assert result["error"] == "TimeoutError"
    [writer] = writers
    assert writer.is_closing()


@pytest.mark.parametrize("raw, error", [
    (b"HTTP/1.1 OK\r\n\r\n", "ValueError"),
    (b"garbage\r\n\r\n", "IndexError"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "IncompleteReadError"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "ValueError"),
])
def test_fetch_closes_its_socket_on_a_broken_answer(scripted, writers, raw, error):
    result = get(scripted(raw) + "/x")
    assert (result["ok"], result["error"]) == (False, error)
    [writer] = writers
    assert writer.is_closing()


def test_the_server_sees_the_end_of_a_timed_out_download():
    """After a timeout the server's next read is the end of the stream, while fetch's event
    loop is still running (not when the socket is garbage-collected)."""
    seen = []
    release = threading.Event()

    async def handler(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            await writer.drain()
            seen.append(await asyncio.wait_for(reader.read(1), 5.0))
        finally:
            release.set()
            writer.close()
    server = ServerThread(handler)
    try:
        async def scenario():
            result = await fetch.fetch(0, server.url + "/x", 0.2)
            for _ in range(250):  # the server's read, while this loop still runs
                if release.is_set():
                    break
                await asyncio.sleep(0.02)
            return result
        result = asyncio.run(scenario())
    finally:
        server.close()
    assert (result["error"], result["bytes"]) == ("TimeoutError", 5)
    assert seen == [b""]
