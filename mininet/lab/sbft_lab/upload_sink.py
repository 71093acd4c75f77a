"""The backend side of uploads: ``POST /upload/...`` reads the whole body (``Content-Length``
or ``Transfer-Encoding: chunked``) and answers its sha256 and length as a small JSON body,
the same bytes for every replica that forwards the same request (active mode needs identical
responses). Keep-alive, so pipelined requests on one connection are answered in order.

Every body it got, complete or not, is one JSON line in the log (``--upload-log``):
``{"path", "bytes", "sha256", "complete", "declared", "peer"}``; ``peer`` is the proxy's
address, i.e. which replica forwarded it (each replica's proxy forwards every request).
"""

import asyncio
import hashlib
import json

READ = 1 << 16
HEAD_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 30.0  # no byte for this long: the body is incomplete (a proxy gave up)


class Incomplete(Exception):
    pass


def headers_of(head):
    """Lower-cased header names -> values of a request or response head (bytes)."""
    found = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            found[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return found


async def _exactly(reader, size, digest):
    got = 0
    while got < size:
        data = await asyncio.wait_for(reader.read(min(READ, size - got)), BODY_TIMEOUT_S)
        if not data:
            raise Incomplete(got)
        digest.update(data)
        got += len(data)
    return got


async def read_body(reader, headers, digest):
    """Bytes of the body read into ``digest``; Incomplete(bytes so far) if it ends early."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), BODY_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                raise Incomplete(total) from None
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    try:
                        line = await asyncio.wait_for(reader.readuntil(b"\r\n"),
                                                      BODY_TIMEOUT_S)
                    except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                        raise Incomplete(total) from None
                    if line == b"\r\n":
                        return total
            try:
                total += await _exactly(reader, size, digest)
            except Incomplete as exc:
                raise Incomplete(total + exc.args[0]) from None
            try:
                await asyncio.wait_for(reader.readexactly(2), BODY_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                raise Incomplete(total) from None
    declared = int(headers.get("content-length", "0"))
    try:
        return await _exactly(reader, declared, digest)
    except asyncio.TimeoutError:
        raise Incomplete(-1) from None


def answer(digest, size):
    body = json.dumps({"sha256": digest, "bytes": size}).encode() + b"\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def serve_uploads(reader, writer, head, log):
    """Answer upload requests on this connection, the first one's head already read, until
    the client closes, asks to close or a body ends early."""
    peer = writer.get_extra_info("peername")
    peer = peer[0] if peer else None
    while True:
        headers = headers_of(head)
        path = head.split(b" ", 2)[1].decode("ascii", "replace")
        digest = hashlib.sha256()
        try:
            size = await read_body(reader, headers, digest)
        except Incomplete as exc:
            log({"path": path, "bytes": exc.args[0], "sha256": None, "complete": False,
                 "declared": headers.get("content-length"), "peer": peer})
            return
        log({"path": path, "bytes": size, "sha256": digest.hexdigest(), "complete": True,
             "declared": headers.get("content-length"), "peer": peer})
        writer.write(answer(digest.hexdigest(), size))
        await writer.drain()
        if headers.get("connection", "").lower() == "close":
            return
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return


def json_lines(path):
    """A log function appending one JSON line per body to ``path`` (None: no log)."""
    if path is None:
        return lambda record: None

    def log(record):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    return log
