"""Heartbeats over UDP: the datagrams of keyed replicas and the controller's answers. Pure.

A datagram is ``MAGIC, kind, name length, name, payload, MAC`` (the MAC, 16 bytes of keyed
BLAKE2b as for vote batches, covers everything before it, with the replica's ``replica_key``).
At most MAX_DATAGRAM bytes, so it never fragments on the management network.

* BEAT (agent → controller): the payload is the zlib-compressed JSON of a heartbeat body
  ``{"seq", "service_ok", "nonce", "counters", "answer"}``; ``counters`` is left out when it
  would not fit (the controller keeps the last ones; the agent refreshes them over HTTP);
  ``answer`` false: the agent wants no answer to this beat (it asks every few beats, after a
  nudge and after a miss: sending answers is most of what a beat costs the controller).
  Evidence and wire reports never travel here: a heartbeat carrying them goes over HTTP.
* ANSWER (controller → agent): the beat's sequence number, then the compressed JSON of the
  same answer HTTP gives. An answer that would not fit is sent as USE_HTTP (the sequence
  number only): the agent's next heartbeat goes over HTTP.

* RESYNC (controller → agent): the beat's MAC verified but it is not in the controller's
  current session (the controller restarted, or the datagram is a replay): it changed nothing,
  and the agent's next heartbeat goes over HTTP, where a 401 offers a new session. Without it
  an agent would wait for missing answers before it found out.

The sequence number in the answer ties it to one beat: an agent applies an answer only to the
beat it just sent, so an old answer replayed to it is ignored (a replayed RESYNC costs the
agent one heartbeat over HTTP). A datagram whose MAC does not verify is answered with nothing
(:mod:`sbft_ryu.referee` decides what is in the session).
"""

import hmac
import json
import struct
import zlib
from typing import NamedTuple, Optional

from sbft_ryu.protocol import MAX_AUTHOR, TAG, mac

MAGIC = b"SBH1"
BEAT, ANSWER, USE_HTTP, RESYNC = 1, 2, 3, 4
RESYNCED = object()  # open_answer / UdpChannel: the controller asked for a new session
MAX_DATAGRAM = 1200
MAX_JSON = 16 * 1024  # a verified payload inflates to at most this
MAX_COUNTERS = 64
_HEAD = struct.Struct("!4sBB")  # magic, kind, name length
_SEQ = struct.Struct("!Q")


class BeatWireError(ValueError):
    """A datagram that does not parse, verify or validate."""


class Beat(NamedTuple):
    """A verified UDP heartbeat, shaped like rest.Heartbeat (``counters`` None: not sent)."""

    seq: int
    service_ok: bool
    counters: Optional[dict]
    nonce: str
    answer: bool = True  # whether the agent waits for an answer to this beat
    evidence: tuple = ()
    wire: tuple = ()


def _pack(kind, name, key, payload):
    raw = name.encode("ascii")
    if not 0 < len(raw) <= MAX_AUTHOR:
        raise BeatWireError("name length out of range")
    body = _HEAD.pack(MAGIC, kind, len(raw)) + raw + payload
    return body + mac(key, body)


def _unpack(datagram):
    """(kind, name, payload) of a well-formed datagram, its MAC not checked."""
    data = bytes(datagram)
    if len(data) > MAX_DATAGRAM or len(data) < _HEAD.size + TAG:
        raise BeatWireError("datagram size out of range")
    magic, kind, length = _HEAD.unpack_from(data)
    if magic != MAGIC or kind not in (BEAT, ANSWER, USE_HTTP, RESYNC) or \
            not 0 < length <= MAX_AUTHOR:
        raise BeatWireError("not a heartbeat datagram")
    end = _HEAD.size + length
    if len(data) < end + TAG:
        raise BeatWireError("truncated datagram")
    try:
        name = data[_HEAD.size:end].decode("ascii")
    except UnicodeDecodeError:
        raise BeatWireError("name is not ASCII") from None
    return kind, name, data[end:-TAG]


def _verified(key, datagram):
    data = bytes(datagram)
    if not hmac.compare_digest(mac(key, data[:-TAG]), data[-TAG:]):
        raise BeatWireError("MAC does not verify")


def _deflate(value):
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode("utf-8"), 6)


def _inflate(payload):
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(payload, MAX_JSON)
        if inflater.unconsumed_tail:
            raise BeatWireError("payload inflates beyond the limit")
        return json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, BeatWireError):
            raise
        raise BeatWireError(f"payload is not compressed JSON ({exc})") from None


# ---- agent → controller -------------------------------------------------------------------

def beat_datagram(key, name, seq, service_ok, nonce, counters, answer=True):
    """(the signed BEAT datagram, whether it carries the counters): without them if they do
    not fit; (None, False) if even that does not fit (a nonce far beyond what controllers
    issue)."""
    body = {"seq": seq, "service_ok": service_ok, "nonce": nonce, "counters": counters}
    if not answer:
        body["answer"] = False
    for candidate in (body, {k: v for k, v in body.items() if k != "counters"}):
        datagram = _pack(BEAT, name, key, _deflate(candidate))
        if len(datagram) <= MAX_DATAGRAM:
            return datagram, "counters" in candidate
    return None, False


def open_beat(keys, datagram):
    """(name, Beat) of a BEAT datagram whose MAC verifies with its replica's key in ``keys``;
    BeatWireError otherwise (an unknown or keyless name included). The MAC is checked before
    anything is inflated or parsed."""
    kind, name, payload = _unpack(datagram)
    key = keys.get(name)
    if kind != BEAT or key is None:
        raise BeatWireError("not a heartbeat of a keyed replica")
    _verified(key, datagram)
    body = _inflate(payload)
    if not isinstance(body, dict):
        raise BeatWireError("payload is not an object")
    seq, service_ok, nonce = body.get("seq"), body.get("service_ok"), body.get("nonce")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BeatWireError("seq must be a non-negative integer")
    if not isinstance(service_ok, bool) or not isinstance(nonce, str):
        raise BeatWireError("service_ok must be a boolean and nonce a string")
    counters = body.get("counters")
    if counters is not None and not (
            isinstance(counters, dict) and len(counters) <= MAX_COUNTERS
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                    for v in counters.values())):
        raise BeatWireError(f"counters must be at most {MAX_COUNTERS} non-negative numbers")
    return name, Beat(seq, service_ok, counters, nonce, body.get("answer") is not False)


# ---- controller → agent -------------------------------------------------------------------

class AnswerCache:
    """The last compressed answer per replica: between changes of role or epoch an agent gets
    the same answer every beat, and compressing it again would cost more than the rest.
    :meth:`keyed` goes further: the caller names what the answer depends on (``key``), and
    the answer is built (``build()``) only when that changed."""

    def __init__(self):
        self._last = {}  # name -> (answer, compressed)
        self._keyed = {}  # name -> (key, compressed)

    def deflated(self, name, answer):
        last = self._last.get(name)
        if last is None or last[0] != answer:
            last = self._last[name] = (answer, _deflate(answer))
        return last[1]

    def keyed(self, name, key, build):
        last = self._keyed.get(name)
        if last is None or last[0] != key:
            last = self._keyed[name] = (key, self.deflated(name, build()))
        return last[1]


def answer_datagram(key, name, seq, answer, cache=None):
    """The signed ANSWER to beat ``seq``, or USE_HTTP when the answer does not fit."""
    payload = cache.deflated(name, answer) if cache is not None else _deflate(answer)
    return answer_from_payload(key, name, seq, payload)


def answer_from_payload(key, name, seq, payload):
    """answer_datagram with the answer already compressed (AnswerCache)."""
    datagram = _pack(ANSWER, name, key, _SEQ.pack(seq) + payload)
    if len(datagram) <= MAX_DATAGRAM:
        return datagram
    return _pack(USE_HTTP, name, key, _SEQ.pack(seq))


def resync_datagram(key, name, seq):
    """The signed RESYNC for a verified beat outside the current session."""
    return _pack(RESYNC, name, key, _SEQ.pack(seq))


def is_resync(key, name, datagram):
    """Whether ``datagram`` is a RESYNC the controller signed for this agent (any beat)."""
    try:
        kind, who, _ = _unpack(datagram)
        if kind != RESYNC or who != name:
            return False
        _verified(key, datagram)
    except BeatWireError:
        return False
    return True


def open_answer(key, name, seq, datagram):
    """The answer (a dict) to this agent's beat ``seq``; None for USE_HTTP; RESYNCED for a
    RESYNC (to any beat); BeatWireError if it is not a verified answer of the controller to
    exactly that beat."""
    if is_resync(key, name, datagram):
        return RESYNCED
    kind, who, payload = _unpack(datagram)
    if kind not in (ANSWER, USE_HTTP) or who != name:
        raise BeatWireError("not an answer to this replica")
    _verified(key, datagram)
    if len(payload) < _SEQ.size or _SEQ.unpack_from(payload)[0] != seq:
        raise BeatWireError("an answer to another heartbeat")
    if kind == USE_HTTP:
        return None
    answer = _inflate(payload[_SEQ.size:])
    if not isinstance(answer, dict):
        raise BeatWireError("answer is not an object")
    return answer
