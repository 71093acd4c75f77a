"""Download URLs concurrently and report, per download, what arrived and its longest stall.

    python -m sbft_lab.fetch --url http://10.0.0.100:5555/stream/4194304?rate=1000000 \\
        --count 50 --timeout 60 --out fetch.json

One JSON object: ``{"results": [{"index", "ok", "status", "bytes", "sha256", "max_stall_s",
"started", "finished", "error"}]}``; ``ok`` means a 200 whose body had the announced length.
Times are CLOCK_MONOTONIC (shared by all network namespaces of the machine).
"""

import argparse
import asyncio
import hashlib
import json
import sys
import time
import urllib.parse


async def fetch(index, url, timeout):
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    result = {"index": index, "ok": False, "status": 0, "bytes": 0, "sha256": None,
              "max_stall_s": None, "stall_end": None, "started": time.monotonic(),
              "finished": None, "error": None, "port": None}
    digest = hashlib.sha256()
    writers = []
    try:
        async def run():
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            writers.append(writer)
            result["port"] = writer.get_extra_info("sockname")[1]
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                         "Connection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            result["status"] = int(head.split(b" ", 2)[1])
            length = None
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            last = time.monotonic()
            stall = 0.0
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                if not data:
                    break
                if now - last > stall:
                    stall = now - last
                    result["stall_end"] = round(now, 4)
                last = now
                digest.update(data)
                result["bytes"] += len(data)
            writer.close()
            result["max_stall_s"] = round(stall, 4)
            result["ok"] = result["status"] == 200 and length == result["bytes"]
        await asyncio.wait_for(run(), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
            IndexError, asyncio.LimitOverrunError) as exc:
        result["error"] = type(exc).__name__
    finally:
        for writer in writers:
            writer.close()
    result["sha256"] = digest.hexdigest()
    result["finished"] = time.monotonic()
    return result


async def run_all(url, count, timeout):
    return await asyncio.gather(*(fetch(i, url, timeout) for i in range(count)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args(argv)
    results = asyncio.run(run_all(args.url, args.count, args.timeout))
    text = json.dumps({"results": results}) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
