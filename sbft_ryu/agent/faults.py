"""Test-only behaviour of the agent, behind one seam: imported only when ``--emulate-skew`` or
``--fault`` is given, and refused unless the environment says ``SBFT_TEST_FAULTS=1`` (the lab,
the tests and the benchmarks set it). A deployed agent cannot be started as a liar with one
flag, and without these options none of this code is loaded.

* ``--emulate-skew ISN:TS_MS``: another machine's TCP stack. Network namespaces share one
  kernel, whose ISN and timestamp secrets are per kernel: replicas in Mininet pick ISNs only a
  few thousand apart and identical timestamp clocks, so a test of active replication could pass
  for the wrong reason (a translation that forgets timestamps or SACK blocks would hardly
  show). :class:`Skew` sits between the stack and the translator: on the way out it shifts the
  stack's sequence numbers and TSvals as a second machine's would be, and on the way in it
  shifts acknowledgements, SACK blocks and TSecr back. A correct translator makes the shift
  invisible on the wire; a wrong one shows it at once.
* ``--fault tamper-wire``: once armed by SIGUSR1, a primary's replies leave altered past the
  vote, as from a compromised host (:class:`Tamper`).
* ``--fault false-accuse`` / ``forge-reports``: the vote engine reports made-up divergences,
  and with ``forge-reports`` also signs them in another replica's name
  (:class:`LyingVoteEngine`).

The packet path takes one adapter (:class:`PacketAdapter`; ``nfq.IDENTITY`` in production).
"""

import signal

from sbft_ryu import protocol
from sbft_ryu.agent import vote
from sbft_ryu.agent.packet import (ACK, ACK_NO, FLAGS, MASK32, OPTIONS, SACK, SEQ, TIMESTAMP, U32,
                                   changed_by, destination, header_lengths, is_tcp, options,
                                   ports, set_tcp_checksum, with_data_altered)

ENVIRONMENT = "SBFT_TEST_FAULTS"
FAULTS = ("tamper-wire", "false-accuse", "forge-reports")
VOTE_FAULTS = ("false-accuse", "forge-reports")


class Refused(ValueError):
    """A test-only option given where it is not allowed, or with a bad value."""


def check(emulate_skew, fault, environ):
    """Refuse the test-only options unless ``environ`` allows them; check their values."""
    if environ.get(ENVIRONMENT) != "1":
        given = "--emulate-skew" if emulate_skew else "--fault"
        raise Refused(f"argument {given}: a test-only option, refused unless {ENVIRONMENT}=1 "
                      "is set in the environment")
    if emulate_skew is not None:
        try:
            parse_skew(emulate_skew)
        except ValueError:
            raise Refused("argument --emulate-skew: expected ISN:TS_MS integers, got "
                          f"{emulate_skew}") from None
    if fault is not None and fault not in FAULTS:
        raise Refused(f"argument --fault: invalid choice: {fault!r} (choose from "
                      + ", ".join(repr(f) for f in FAULTS) + ")")


class TestFaults:
    """What an agent started with test-only options does differently (one per agent)."""

    def __init__(self, emulate_skew, fault, service_port):
        self.emulate_skew = emulate_skew
        self.fault = fault
        self.port = service_port
        self.tamper = Tamper() if fault == "tamper-wire" else None

    def install_signals(self):
        if self.tamper is not None:
            signal.signal(signal.SIGUSR1, self.tamper.arm)

    def packet_adapter(self):
        """A fresh adapter for a new active-mode handler."""
        skew = None
        if self.emulate_skew:
            skew = Skew(*parse_skew(self.emulate_skew), self.port)
        return PacketAdapter(skew, self.tamper)

    def vote_engine(self, *args, **kwargs):
        if self.fault in VOTE_FAULTS:
            return LyingVoteEngine(self.fault, *args, **kwargs)
        return vote.VoteEngine(*args, **kwargs)


def _same(payload):
    return payload


class PacketAdapter:
    """Where the packet path lets test behaviour in: ``outbound`` (the stack's packet before
    the translator), ``inbound`` (a translated packet for the stack, after it) and ``reply``
    (a primary's translated reply, which then goes out past the vote)."""

    def __init__(self, skew=None, reply=None):
        self.skew = skew
        self.outbound = skew.outbound if skew is not None else _same
        self.inbound = skew.inbound if skew is not None else _same
        self.reply = reply  # None: replies are voted on as usual


def parse_skew(text):
    """'ISN:TS_MS' (e.g. '1000000000:37000') → (isn offset, ts offset), both mod 2**32."""
    isn, _, ts = text.partition(":")
    return int(isn, 0) & MASK32, int(ts or "0", 0) & MASK32


class Skew:
    def __init__(self, isn, ts, service_port):
        self.isn = isn & MASK32
        self.ts = ts & MASK32
        self.port = service_port

    def outbound(self, payload):
        """The stack's packet as the emulated machine would have sent it."""
        return self._shift(payload, +1, outbound=True)

    def inbound(self, payload):
        """A translated client packet as the emulated machine's peer would see it."""
        return self._shift(payload, -1, outbound=False)

    def _shift(self, payload, sign, outbound):
        if not is_tcp(payload):
            return payload
        sport, dport = ports(payload)
        if (sport if outbound else dport) != self.port:
            return payload
        ihl, thl = header_lengths(payload)
        flags = payload[ihl + FLAGS]
        buf = bytearray(payload)
        isn, ts = (sign * self.isn) & MASK32, (sign * self.ts) & MASK32
        delta = 0
        field = ihl + (SEQ if outbound else ACK_NO)
        if outbound or flags & ACK:
            U32.pack_into(buf, field, (U32.unpack_from(buf, field)[0] + isn) & MASK32)
            delta += changed_by(payload, buf, field, field + 4)
        for kind, i, length in options(buf, ihl + OPTIONS, ihl + thl):
            if kind == TIMESTAMP and length == 10:
                at = i + 2 if outbound else i + 6  # TSval out, TSecr in
                value = U32.unpack_from(buf, at)[0]
                if outbound or value:
                    U32.pack_into(buf, at, (value + ts) & MASK32)
            elif kind == SACK and not outbound:
                for edge in range(i + 2, i + length - 3, 4):
                    U32.pack_into(buf, edge, (U32.unpack_from(buf, edge)[0] + isn) & MASK32)
        if thl > 20:
            delta += changed_by(payload, buf, ihl + OPTIONS, ihl + thl)
        set_tcp_checksum(buf, ihl, payload, delta)
        return bytes(buf)


class Tamper:
    """--fault tamper-wire: once armed by SIGUSR1, replies on connections that begin after
    that leave with their first two data bytes altered (checksum fixed), as a compromised host
    would send them past its agent; connections it already served stay honest, to show they
    continue."""

    def __init__(self):
        self.armed = False
        self.honest = set()  # client (address, port) seen before arming

    def arm(self, *_):
        self.armed = True

    def __call__(self, payload):
        client = destination(payload)
        if not self.armed:
            self.honest.add(client)
            return payload
        return payload if client in self.honest else tamper(payload)


def tamper(payload):
    """``payload`` with its first two data bytes altered and its checksum fixed."""
    return with_data_altered(payload, b"XX")


class LyingVoteEngine(vote.VoteEngine):
    """--fault false-accuse: votes honestly but accuses the primary falsely (a second,
    contradicting statement of its own) with every vote; forge-reports: also in another
    replica's name (signed with its own key, so it never verifies)."""

    def __init__(self, fault, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault = fault

    def _voted(self, statement, claim_raw):
        lie = protocol.Statement(statement.client, statement.port, statement.start,
                               statement.end, protocol.digest(b"made up"))
        generation = self.config.generation
        raws = [claim_raw, protocol.encode(protocol.VOTE, self.name, [lie], self.key, generation)]
        others = [n for n in self.config.peers if n != self.config.primary]
        if self.fault == "forge-reports" and others:
            raws.append(protocol.encode(protocol.VOTE, others[0], [lie], self.key, generation))
        self.reports.append(("evidence", raws))
