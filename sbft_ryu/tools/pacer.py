"""A paced HTTP client: one GET every interval, each on a new TCP connection, with a deadline.

    python -m sbft_ryu.tools.pacer --url http://10.0.0.100:5555/ --interval 0.02 \\
        --timeout 0.1 --duration 5 --out requests.jsonl

Writes one JSON line per request: ``{"seq", "t" (CLOCK_MONOTONIC at send, shared by every
network namespace of the machine), "latency", "ok", "status", "error", "body"}`` and a final
summary line ``{"summary": {...}}``. Bounded by ``--count`` and ``--duration``; stops on SIGTERM.
"""

import argparse
import json
import signal
import socket
import sys
import time
import urllib.parse

MAX_BODY = 65536


def get(host, port, path, timeout):
    """(status, body bytes) of one HTTP/1.0 GET, or raises OSError/ValueError; total deadline."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
        chunks = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline")
            sock.settimeout(remaining)
            chunk = sock.recv(16384)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                break
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"bad status line {head[:40]!r}")
    return int(status_line[1]), body


def run(url, interval, timeout, count, duration, out, paths=False):
    parts = urllib.parse.urlsplit(url)
    host, port, base = parts.hostname, parts.port or 80, parts.path or "/"
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    start = time.monotonic()
    next_at = start
    ok = failed = 0
    for seq in range(count):
        if stopping or time.monotonic() - start >= duration:
            break
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_at += interval
        path = f"{base.rstrip('/')}/{seq}" if paths else base
        sent = time.monotonic()
        record = {"seq": seq, "t": round(sent, 6)}
        try:
            status, body = get(host, port, path, timeout)
            record.update(ok=status == 200, status=status, body=body.decode("utf-8", "replace"))
        except (OSError, ValueError) as exc:
            record.update(ok=False, status=0, error=type(exc).__name__)
        record["latency"] = round(time.monotonic() - sent, 6)
        ok += record["ok"]
        failed += not record["ok"]
        out.write(json.dumps(record) + "\n")
        out.flush()
    out.write(json.dumps({"summary": {"ok": ok, "failed": failed}}) + "\n")
    out.flush()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=0.1)
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--paths", action="store_true", help="append /<seq> to the path")
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    try:
        return run(args.url, args.interval, args.timeout, args.count, args.duration, out,
                   args.paths)
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
