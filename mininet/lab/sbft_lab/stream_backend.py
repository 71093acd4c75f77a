"""A backend that streams large deterministic objects slowly (active-replication tests).

    python -m sbft_lab.stream_backend --bind 10.0.0.21 --port 8081

``GET /stream/<bytes>?rate=<bytes per second>&piece=<bytes>`` answers ``<bytes>`` bytes of
content that depends only on the path (so every replica's proxy fetches the same bytes), paced
at ``rate`` in writes of ``piece`` bytes (512..16384, default 16384);
:func:`content` produces the same bytes for a client to check. ``POST /upload/...`` reads the
whole body and answers its sha256 and length (:mod:`sbft_lab.upload_sink`, logged to
``--upload-log``). Any other path gets a short body.
"""

import argparse
import asyncio
import hashlib
import sys
import urllib.parse

from sbft_lab import upload_sink

CHUNK = 16384
MAX_SIZE = 1 << 30


def chunk(seed, index):
    return hashlib.shake_256(seed + index.to_bytes(8, "big")).digest(CHUNK)


def content(path, size):
    """The whole object ``path`` (without query) of ``size`` bytes, as the backend sends it."""
    seed = path.encode()
    return b"".join(chunk(seed, i) for i in range((size + CHUNK - 1) // CHUNK))[:size]


async def handle(reader, writer, name, log=upload_sink.json_lines(None)):
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        target = request.split(b" ", 2)[1].decode("ascii", "replace")
        url = urllib.parse.urlsplit(target)
        parts = url.path.split("/")
        if request.startswith(b"POST ") and url.path.startswith("/upload/"):
            await upload_sink.serve_uploads(reader, writer, request, log)
        elif len(parts) == 3 and parts[1] == "stream" and parts[2].isdigit():
            size = min(int(parts[2]), MAX_SIZE)
            query = urllib.parse.parse_qs(url.query)
            try:
                rate = float(query.get("rate", ["0"])[0]) or None
                int(query.get("piece", [str(CHUNK)])[0])
            except ValueError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                return
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
            piece = min(max(int(query.get("piece", [str(CHUNK)])[0]), 512), CHUNK)
            seed = url.path.encode()
            loop = asyncio.get_running_loop()
            start = loop.time()
            sent = 0
            for index, offset in enumerate(range(0, size, CHUNK)):
                block = chunk(seed, index)[:size - offset]
                for at in range(0, len(block), piece):  # smaller writes: a smoother stream
                    writer.write(block[at:at + piece])
                    await writer.drain()
                    sent += len(block[at:at + piece])
                    if rate and sent < size:
                        delay = start + sent / rate - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
        else:
            body = f"{name} {url.path}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, IndexError,
            ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(bind, port, name, upload_log=None):
    log = upload_sink.json_lines(upload_log)
    server = await asyncio.start_server(lambda r, w: handle(r, w, name, log), bind, port)
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--name", default="stream")
    parser.add_argument("--upload-log", default=None, help="JSON lines, one per upload body")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.bind, args.port, args.name, args.upload_log))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
