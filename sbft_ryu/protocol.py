"""What controller and agents say to each other about output voting: the wire format and its
limits, shared by both sides (the controller's judge is :mod:`sbft_ryu.voting`).

A *statement* says "for connection C, the bytes [start, end) of the reply stream have digest D";
replicas exchange them in signed batches over UDP on the management network (a primary's
**claims**, the backups' **votes**, and a backup's **abstentions**: ranges it cannot vote on,
with the reason in place of the digest: the whole connection, or only that range). Every batch
is signed with its author's *generation* (the controller bumps it at each entry of the replica
into the voting set), so evidence from before a readmission or promotion can be told from
evidence after it. Every batch carries a MAC with its author's key (one key per replica, known
to that replica and to the controller only), so a replica can neither speak nor vote for
another, and anyone can forward a batch as evidence: the controller verifies it.
Heartbeats are signed the same way (:func:`sign_body`), and carry at most ``MAX_EVIDENCE``
evidence items of at most ``MAX_BATCHES`` batches and ``MAX_WIRE`` wire reports.

Everything here is pure: bytes and plain values in, values out.
"""


import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

MAGIC = b"SBV2"  # SBV1 batches (no generation) are rejected: a tier's agents run one version
OLD_MAGICS = (b"SBV1",)
TAG = 16
DIGEST = 16
CLAIM, VOTE, ABSTAIN = 1, 2, 3
KINDS = {CLAIM: "claim", VOTE: "vote", ABSTAIN: "abstain"}
NO_DIGEST = bytes(DIGEST)
# An abstention's digest field says why (an unknown reason counts as the connection-wide one):
ABSTAIN_CONNECTION = NO_DIGEST  # cannot vote on anything of this connection
ABSTAIN_DELIVERED = bytes([1]) + bytes(DIGEST - 1)  # the client acknowledged the whole range,
# and the bytes this backup checked it received there were its own: resending is harmless
ABSTAIN_RANGE = bytes([2]) + bytes(DIGEST - 1)  # cannot vote on this range only (the client
# acknowledged part of it): the primary's stack resends from the client's acknowledgement
MAX_AUTHOR = 32
MAX_STATEMENTS = 48  # one batch stays well under 1500 bytes

_HEAD = struct.Struct("!4sBIBB")  # magic, kind, generation, author length, statement count
_STATEMENT = struct.Struct("!4sHII16s")  # client ip, client port, start, end, digest


class VotingError(ValueError):
    """A batch that does not parse or whose MAC does not verify."""


@dataclass(frozen=True)
class Statement:
    client: bytes  # 4 bytes
    port: int
    start: int
    end: int
    digest: bytes

    @property
    def range_key(self):
        return (self.client, self.port, self.start, self.end)


@dataclass(frozen=True)
class Batch:
    kind: int
    author: str
    statements: tuple
    raw: bytes  # the signed datagram, as evidence
    generation: int = 0  # the author's generation when it signed the batch


def digest(data, fin=False):
    """The digest of reply bytes (a FIN at the end counts: truncation is a divergence)."""
    # the FIN is a personalisation, not appended bytes: no byte string collides with a FIN
    return hashlib.blake2b(data, digest_size=DIGEST,
                           person=b"sbft-fin" if fin else b"sbft-data").digest()


def mac(key, data):
    return hashlib.blake2b(data, key=key, digest_size=TAG).digest()


def encode(kind, author, statements, key, generation=0):
    """A signed datagram: header (with the author's generation), author, statements, MAC."""
    name = author.encode("ascii")
    if not name or len(name) > MAX_AUTHOR or len(statements) > MAX_STATEMENTS:
        raise VotingError("author or batch size out of range")
    if not 0 <= generation <= 0xFFFFFFFF:
        raise VotingError("generation out of range")
    body = _HEAD.pack(MAGIC, kind, generation, len(name), len(statements)) + name + b"".join(
        _STATEMENT.pack(s.client, s.port, s.start, s.end, s.digest) for s in statements)
    return body + mac(key, body)


def decode(data):
    """A Batch from a datagram, without checking its MAC (see :func:`verify`). A batch of an
    older format is a VotingError like any garbled one."""
    if bytes(data[:4]) in OLD_MAGICS:
        raise VotingError("a batch of an older format (an agent of another version)")
    try:
        magic, kind, generation, length, count = _HEAD.unpack_from(data)
        if magic != MAGIC or kind not in KINDS or not 0 < length <= MAX_AUTHOR:
            raise VotingError("not a vote batch")
        at = _HEAD.size
        author = data[at:at + length].decode("ascii")
        at += length
        if len(data) != at + count * _STATEMENT.size + TAG:
            raise VotingError("batch length does not match its header")
        statements = tuple(Statement(*_STATEMENT.unpack_from(data, at + i * _STATEMENT.size))
                           for i in range(count))
    except (struct.error, UnicodeDecodeError):
        raise VotingError("truncated or garbled batch") from None
    return Batch(kind, author, statements, bytes(data), generation)


def verify(batch, key):
    return hmac.compare_digest(mac(key, batch.raw[:-TAG]), batch.raw[-TAG:])


# ---- authenticated heartbeats ------------------------------------------------------------------

def canonical(body):
    """The bytes a heartbeat MAC covers: the body without "mac", keys sorted, no spaces."""
    return json.dumps({k: v for k, v in body.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def sign_body(key, name, body):
    return mac(key, name.encode("ascii") + b"\x00" + canonical(body)).hex()


def body_signed(key, name, body):
    tag = body.get("mac")
    if not isinstance(tag, str) or not tag.isascii():
        return False
    return hmac.compare_digest(sign_body(key, name, body), tag)


# ---- limits of a heartbeat's reports (the controller rejects more; agents send no more) ------

MAX_EVIDENCE = 16  # evidence items per heartbeat
MAX_BATCHES = 6  # signed batches per evidence item
MAX_BATCH_HEX = 4096  # characters of one batch in hex
MAX_WIRE = 64  # wire reports per heartbeat
VOTE_PORT = 5557  # the UDP port agents exchange votes on, unless configured otherwise
