"""An open-loop HTTP client: one GET every interval, each on a new TCP connection, each with its
own deadline, whether or not earlier requests have finished (a closed-loop client would stop
sending during an outage and so hide part of it).

    python -m sbft_lab.pacer --url http://10.0.0.100:5555/p --paths --interval 0.02 \\
        --timeout 0.1 --duration 5 --out requests.jsonl

Writes one JSON line per request as it completes: ``{"seq", "t" (CLOCK_MONOTONIC at send,
shared by every network namespace of the machine), "latency", "ok", "status", "error",
"body"}``, then a summary line ``{"summary": {...}}``. Bounded by ``--count`` and
``--duration``; stops sending on SIGTERM and waits at most one deadline for what is in flight.
"""

import argparse
import asyncio
import json
import signal
import sys
import time
import urllib.parse

MAX_BODY = 65536


async def get(host, port, path, timeout, with_head=False):
    """(status, body bytes) of one HTTP/1.0 GET within ``timeout`` seconds, or raises; with
    ``with_head``, (status, body, head)."""
    async def exchange():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii"))
            data = await reader.read(MAX_BODY)
            while data and len(data) < MAX_BODY:
                more = await reader.read(MAX_BODY - len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            writer.close()

    data = await asyncio.wait_for(exchange(), timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"bad status line {head[:40]!r}")
    if with_head:
        return int(status_line[1]), body, head
    return int(status_line[1]), body


async def one(seq, sent, host, port, path, timeout, out, totals, heads=False):
    record = {"seq": seq, "t": round(sent, 6)}
    try:
        status, body, head = await get(host, port, path, timeout, with_head=True)
        record.update(ok=status == 200, status=status, body=body.decode("utf-8", "replace"))
        if heads:
            record["head"] = head.decode("latin-1")
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        record.update(ok=False, status=0, error=type(exc).__name__)
    record["latency"] = round(time.monotonic() - sent, 6)
    totals[record["ok"]] += 1
    out.write(json.dumps(record) + "\n")


async def run(url, interval, timeout, count, duration, out, paths=False, heads=False):
    parts = urllib.parse.urlsplit(url)
    host, port, base = parts.hostname, parts.port or 80, parts.path or "/"
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    except (RuntimeError, ValueError):  # not the main thread: no signal handling
        pass
    totals = {True: 0, False: 0}
    tasks = []
    start = time.monotonic()
    for seq in range(count):
        due = start + seq * interval
        if stopping.is_set() or due - start >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        path = f"{base.rstrip('/')}/{seq}" if paths else base
        tasks.append(asyncio.ensure_future(
            one(seq, time.monotonic(), host, port, path, timeout, out, totals, heads)))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1.0)
    out.write(json.dumps({"summary": {"ok": totals[True], "failed": totals[False],
                                      "sent": len(tasks)}}) + "\n")
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
    parser.add_argument("--heads", action="store_true", help="record each response's header")
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    # line-buffered: a benchmark reads the log while the pacer runs
    out = (sys.stdout if args.out == "-"
           else open(args.out, "w", encoding="utf-8", buffering=1))
    try:
        return asyncio.run(run(args.url, args.interval, args.timeout, args.count,
                               args.duration, out, args.paths, args.heads))
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
