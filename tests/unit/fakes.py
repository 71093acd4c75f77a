"""Test doubles and checks shared by several unit test modules (not a test module itself)."""

import struct

from scapy.all import IP, TCP, Raw

from sbft_ryu.agent.active import EFFECTS, Translator


def tcp_packet(src, dst, sport, dport, flags, seq, ack=0, data=b""):
    """An IPv4/TCP packet's bytes (DF set; seq and ack taken modulo 2**32)."""
    raw = IP(src=src, dst=dst, flags="DF") / TCP(sport=sport, dport=dport, flags=flags,
                                                 seq=seq % 2**32, ack=ack % 2**32)
    return bytes(raw / Raw(data)) if data else bytes(raw)


def ones_sum(data):
    """The one's-complement sum of ``data`` in 16-bit words (0xFFFF over a valid header)."""
    data = bytes(data) + b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def assert_checksums_valid(raw):
    """The IPv4 and TCP checksums of ``raw`` verify, and scapy computing both afresh agrees."""
    ihl = (raw[0] & 0x0F) * 4
    assert ones_sum(raw[:ihl]) == 0xFFFF  # the IPv4 header checksum
    tcp = raw[ihl:]
    pseudo = raw[12:16] + raw[16:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert ones_sum(pseudo + tcp) == 0xFFFF  # the TCP checksum over the pseudo-header
    rebuilt = IP(raw)
    del rebuilt.chksum
    del rebuilt[TCP].chksum
    again = IP(bytes(rebuilt))
    assert (IP(raw).chksum, IP(raw)[TCP].chksum) == (again.chksum, again[TCP].chksum)


class FakeTranslator:
    """What VoteEngine asks a translator: own_range from ``own`` (range key -> (data, fin),
    ABSTAIN or None), or from ``partial`` when asked for a partial answer and it has one;
    quiet_for from ``quiet``; began_in from ``began``. Records every question; fails if asked
    in a loop."""

    def __init__(self, own=None, partial=None, quiet=0.0):
        self.own = dict(own or {})
        self.partial = dict(partial or {})
        self.quiet = quiet
        self.began = {}  # (client, port) -> the generation it began in (default: unknown)
        self.asked = []

    def own_range(self, client, port, start, end, partial=False):
        key = (client, port, start, end)
        self.asked.append((key, partial))
        if len(self.asked) > 100:
            raise RuntimeError("own_range asked over and over")
        if partial and key in self.partial:
            return self.partial[key]
        return self.own.get(key)

    def quiet_for(self, client, port, now):
        return self.quiet

    def began_in(self, client, port):
        return self.began.get((client, port))


class Token:
    """A held packet (the NFQUEUE packet or a RawSend): counts its drops."""

    def __init__(self, name="t"):
        self.name = name
        self.dropped = 0

    def drop(self):
        self.dropped += 1

    def __repr__(self):
        return f"Token({self.name})"


class QueuedPacket:
    """A queued packet: the netfilterqueue.Packet methods ActiveQueue uses, recording each
    verdict in ``calls`` (pass a list to share it with a sender and see the order)."""

    def __init__(self, payload, hook, calls=None):
        self.payload, self.hook = payload, hook
        self.calls = [] if calls is None else calls

    def get_payload(self):
        return self.payload

    def set_payload(self, payload):
        self.calls.append(("set_payload", payload))

    def accept(self):
        self.calls.append(("accept",))

    def drop(self):
        self.calls.append(("drop",))


class RecordedTranslator(Translator):
    """A real Translator whose process() returns (verdict, payload, released) and records the
    other effects of each packet in order: ``outgoing`` (send), ``to_stack`` and ``dropped``
    (tokens to drop); ``effects`` is the last full result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outgoing, self.to_stack, self.dropped = [], [], []
        self.effects = None

    def process(self, payload, token, primary, now, arriving=False):
        self.effects = super().process(payload, token, primary, now, arriving)
        assert len(self.effects) == len(EFFECTS)
        verdict, new, released, send, to_stack, drop = self.effects
        self.outgoing.extend(send)
        self.to_stack.extend(to_stack)
        self.dropped.extend(drop)
        return verdict, new, released


def abstentions_sent(engine):
    """The statements of the signed abstentions a backup's engine sent (to its primary only),
    or fails if it sent anything else (a vote)."""
    from sbft_ryu import protocol

    primary = engine.config.peers.get(engine.config.primary)
    statements = []
    for data, (address, _) in engine.sent:
        batch = protocol.decode(data)
        assert batch.kind == protocol.ABSTAIN and address == primary, (batch.kind, address)
        assert protocol.verify(batch, engine.key) and batch.author == engine.name
        assert all(s.digest == protocol.NO_DIGEST for s in batch.statements)
        statements.extend(batch.statements)
    return statements
