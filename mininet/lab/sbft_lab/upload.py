"""Upload deterministic bodies as fast as the connection takes them and say how it ended.

    python -m sbft_lab.upload --url http://10.0.0.100:5555/upload/t1 --size 67108864 \\
        --count 1 --out upload.json [--chunked] [--mark-at BYTES --mark FILE]

``--count`` requests go on one keep-alive connection, pipelined (every body is sent without
waiting for a response); the backend answers each with its sha256 and length (JSON). The
client's kernel counters (TCP_INFO: bytes acknowledged, bytes received) are sampled every
10 ms: ``--mark FILE`` is created once the client was acknowledged ``--mark-at`` bytes (what a
test waits for before it injects a fault), and no progress in either for ``--stall`` seconds
ends the run as a hang.

One JSON object: ``{"outcome", "responses": [{"status", "sha256", "bytes"}], "expected":
[{"sha256", "bytes"}], "started", "marked", "reset_at", "finished", "acked", "error"}`` with
outcome ``ok`` (every response, each right and in order, or not: compare), ``reset`` (the
connection was reset), ``closed`` (the server closed it early), ``hang`` or ``error``. Times
are CLOCK_MONOTONIC (shared by all network namespaces of the machine).
"""

import argparse
import hashlib
import json
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse

BLOCK = 1 << 20
SAMPLE_S = 0.01
_TCP_INFO = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
_TCP_INFO_AT = 120  # their offset in struct tcp_info (Linux >= 4.1)


def block(tag, index, number, size):
    """Block ``number`` (BLOCK bytes, the last one shorter) of body ``index``."""
    length = min(BLOCK, size - number * BLOCK)
    return hashlib.shake_256(f"{tag}/{index}/{number}".encode()).digest(length)


def blocks(tag, index, size):
    return (block(tag, index, n, size) for n in range((size + BLOCK - 1) // BLOCK))


def expected(tag, index, size):
    digest = hashlib.sha256()
    for data in blocks(tag, index, size):
        digest.update(data)
    return {"sha256": digest.hexdigest(), "bytes": size}


def tcp_counters(sock):
    """(bytes the peer acknowledged, bytes received) from the kernel; (0, 0) when unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return 0, 0
    if len(info) < _TCP_INFO_AT + _TCP_INFO.size:
        return 0, 0
    return _TCP_INFO.unpack_from(info, _TCP_INFO_AT)


TCP_CLOSE = 7  # tcpi_state (the first byte of struct tcp_info) after a RST; a FIN: CLOSE_WAIT


def was_reset(sock):
    """Whether the connection ended by a RST, by the kernel's state of it: the RST's error is
    reported once, to whichever thread's call comes first (the sender's can report it as a
    broken pipe), and the receiver then sees a plain end of stream."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)[0] == TCP_CLOSE
    except (OSError, IndexError):
        return False


def requests(host, path, tag, count, size, chunked):
    """The byte pieces of ``count`` pipelined POSTs."""
    for index in range(count):
        framing = ("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
        yield (f"POST {path}-{index} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for data in blocks(tag, index, size):
            yield (b"%x\r\n" % len(data) + data + b"\r\n") if chunked else data
        if chunked:
            yield b"0\r\n\r\n"


class Upload:
    def __init__(self, args):
        self.args = args
        url = urllib.parse.urlsplit(args.url)
        self.host, self.port, self.path = url.hostname, url.port or 80, url.path
        self.tag = self.path.rsplit("/", 1)[-1]
        self.result = {"outcome": None, "responses": [], "error": None, "reset_at": None,
                       "marked": None, "acked": 0, "received": 0}
        self.done = threading.Event()
        self.progress_at = time.monotonic()
        self.sock = None

    def _reset(self, exc):
        if isinstance(exc, ConnectionResetError) and self.result["reset_at"] is None:
            self.result["reset_at"] = time.monotonic()

    def send(self):
        try:
            for piece in requests(self.host, self.path, self.tag, self.args.count,
                                  self.args.size, self.args.chunked):
                self.sock.sendall(piece)
        except OSError as exc:
            self._reset(exc)
            if self.result["error"] is None and not self.done.is_set():
                self.result["error"] = f"send: {type(exc).__name__}"

    def sample(self):
        last = (0, 0)
        while not self.done.wait(SAMPLE_S):
            now = time.monotonic()
            counters = tcp_counters(self.sock)
            if counters != last:
                last = counters
                self.progress_at = now
                self.result["acked"], self.result["received"] = counters
            if (self.args.mark and self.result["marked"] is None
                    and counters[0] >= self.args.mark_at):
                self.result["marked"] = now
                with open(self.args.mark, "w", encoding="ascii") as handle:
                    handle.write(f"{counters[0]}\n")

    def receive(self):
        """Read the responses in order; the outcome."""
        buffer = b""
        while len(self.result["responses"]) < self.args.count:
            if time.monotonic() - self.progress_at > self.args.stall:
                return "hang"
            if time.monotonic() - self.result["started"] > self.args.timeout:
                return "hang"
            try:  # (the socket blocks: the sender thread must wait for the window)
                if not select.select([self.sock], [], [], 0.2)[0]:
                    continue
                data = self.sock.recv(65536)
            except OSError as exc:
                self._reset(exc)
                self.result["error"] = f"recv: {type(exc).__name__}"
                return "reset" if self.result["reset_at"] is not None else "error"
            if not data:
                if self.result["reset_at"] is None and was_reset(self.sock):
                    self.result["reset_at"] = time.monotonic()
                return "reset" if self.result["reset_at"] is not None else "closed"
            self.progress_at = time.monotonic()
            buffer += data
            while True:
                response, buffer = _response(buffer)
                if response is None:
                    break
                self.result["responses"].append(response)
        return "ok"

    def run(self):
        args = self.args
        self.result["expected"] = [expected(self.tag, i, args.size) for i in range(args.count)]
        self.result["started"] = time.monotonic()
        self.sock = socket.create_connection((self.host, self.port), timeout=5)
        self.sock.settimeout(None)
        threads = [threading.Thread(target=self.send, daemon=True),
                   threading.Thread(target=self.sample, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            self.result["outcome"] = self.receive()
        finally:
            self.done.set()
            self.result["finished"] = time.monotonic()
            self.result["acked"], self.result["received"] = (
                max(self.result["acked"], tcp_counters(self.sock)[0]), self.result["received"])
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            for thread in threads:
                thread.join(2)
        return self.result


def _response(buffer):
    """(one parsed response, the rest of ``buffer``), or (None, buffer) if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None, buffer
    head = buffer[:end]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None, buffer
    body = buffer[end + 4:end + 4 + length]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return ({"status": status, "sha256": parsed.get("sha256"), "bytes": parsed.get("bytes")},
            buffer[end + 4 + length:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://HOST:PORT/upload/TAG")
    parser.add_argument("--size", type=int, required=True, help="bytes per body")
    parser.add_argument("--count", type=int, default=1, help="pipelined requests")
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--mark", default=None, help="file created at --mark-at bytes acked")
    parser.add_argument("--mark-at", type=int, default=0)
    parser.add_argument("--stall", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    try:
        result = Upload(args).run()
    except OSError as exc:
        result = {"outcome": "error", "error": f"connect: {type(exc).__name__}"}
    text = json.dumps(result) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0 if result["outcome"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
