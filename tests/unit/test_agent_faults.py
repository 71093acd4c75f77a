"""Tests for sbft_ryu.agent.faults: the emulation of another host's TCP stack and its
composition with the active translator (a skew must be invisible on the wire), and the seam
itself: the test-only options are refused unless SBFT_TEST_FAULTS=1, and the module is loaded
only when one is given."""

import os
import socket
import subprocess
import sys

import pytest
from scapy.all import IP, TCP, UDP, Raw

from sbft_ryu.agent import cli, faults
from sbft_ryu.agent.active import ACCEPT, DROP, HOLD, shared_values
from sbft_ryu.agent.faults import Skew, parse_skew

from fakes import RecordedTranslator

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
SECRET = b"skew-test-secret"
CLIENT_ISN = 123456789


def client_pkt(flags, seq=0, ack=0, options=(), data=b"", window=502):
    packet = IP(src=CLIENT, dst=VIP, flags="DF", id=77) / TCP(
        sport=CPORT, dport=PORT, flags=flags, seq=seq % M32, ack=ack % M32, window=window,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq=0, ack=0, options=(), data=b"", window=509, ip_id=999):
    packet = IP(src=VIP, dst=CLIENT, flags="DF", id=ip_id) / TCP(
        sport=PORT, dport=CPORT, flags=flags, seq=seq % M32, ack=ack % M32, window=window,
        options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def ts(tsval, tsecr=0):
    return ("Timestamp", (tsval % M32, tsecr % M32))


def sack(*edges):
    return ("SAck", tuple(edge % M32 for edge in edges))


def assert_checksums(raw):
    packet = IP(raw)
    rebuilt = IP(raw)
    del rebuilt.chksum
    del rebuilt[TCP].chksum
    reference = IP(bytes(rebuilt))
    assert len(bytes(rebuilt)) == len(raw)
    assert packet.chksum == reference.chksum
    assert packet[TCP].chksum == reference[TCP].chksum


def tcp(raw):
    return IP(raw)[TCP]


# ---- parse_skew ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1000000000:37000", (1000000000, 37000)),
    ("5:-12000", (5, M32 - 12000)),
    ("-12000", (M32 - 12000, 0)),
    ("-1:-1", (M32 - 1, M32 - 1)),
    ("0x10:0x20", (16, 32)),
    ("0xFFFFFFFF:0", (M32 - 1, 0)),
    ("0x1FFFFFFFF:4294967297", (M32 - 1, 1)),  # mod 2**32
    ("12", (12, 0)),
    ("12:", (12, 0)),
    ("0:0", (0, 0)),
])
def test_parse_skew(text, expected):
    assert parse_skew(text) == expected


@pytest.mark.parametrize("text", ["", ":5", "abc", "1:xyz", "1.5:2", "1:2:3", "0x:1", " : "])
def test_parse_skew_rejects_bad_input(text):
    with pytest.raises(ValueError):
        parse_skew(text)


# ---- Skew.outbound / Skew.inbound -----------------------------------------------------------

@pytest.mark.parametrize("isn, tsd", [(1000000000, 37000), (M32 - 5, M32 - 12000), (0, 0)])
def test_outbound_shifts_seq_and_tsval(isn, tsd):
    skew = Skew(isn, tsd, PORT)
    raw = stack_pkt("PA", seq=M32 - 3, ack=5000, data=b"hello!!",
                    options=[("NOP", None), ts(M32 - 1, 4242), ("NOP", None), ("WScale", 3)])
    out = skew.outbound(raw)
    seg = tcp(out)
    assert seg.seq == (M32 - 3 + isn) % M32
    assert seg.ack == 5000
    assert dict(seg.options)["Timestamp"] == ((M32 - 1 + tsd) % M32, 4242)
    assert dict(seg.options)["WScale"] == 3
    assert bytes(seg.payload) == b"hello!!"
    assert out[:20] == raw[:20]
    assert_checksums(out)


def test_outbound_without_options_and_on_synack():
    skew = Skew(77, 5, PORT)
    out = skew.outbound(stack_pkt("A", seq=10, ack=20))
    assert tcp(out).seq == 87 and tcp(out).ack == 20
    assert_checksums(out)
    out = skew.outbound(stack_pkt("SA", seq=M32 - 1, ack=20,
                                  options=[("MSS", 1460), ts(100, 9)]))
    assert tcp(out).seq == 76 and dict(tcp(out).options)["Timestamp"] == (105, 9)
    assert_checksums(out)


def test_outbound_leaves_other_packets_alone():
    skew = Skew(77, 5, PORT)
    inbound = client_pkt("A", 1, 2, [ts(3, 4)])
    other = bytes(IP(src=VIP, dst=CLIENT) / TCP(sport=22, dport=CPORT, seq=1) / Raw(b"x" * 30))
    udp = bytes(IP(src=VIP, dst=CLIENT) / UDP(sport=PORT, dport=CPORT) / Raw(b"x" * 30))
    for raw in (inbound, other, udp, b"", b"\x45" * 10):
        assert skew.outbound(raw) == raw


@pytest.mark.parametrize("isn, tsd", [(1000000000, 37000), (M32 - 5, M32 - 12000)])
def test_inbound_shifts_ack_sack_and_tsecr_back(isn, tsd):
    skew = Skew(isn, tsd, PORT)
    raw = client_pkt("A", seq=M32 - 2, ack=3, data=b"abc",
                     options=[("NOP", None), ts(55, 1), ("NOP", None),
                              sack(10, 20, M32 - 1, 2)])
    out = skew.inbound(raw)
    seg = tcp(out)
    assert seg.seq == M32 - 2  # the client's space
    assert seg.ack == (3 - isn) % M32
    opts = dict(seg.options)
    assert opts["Timestamp"] == (55, (1 - tsd) % M32)
    assert opts["SAck"] == tuple((e - isn) % M32 for e in (10, 20, M32 - 1, 2))
    assert out[:20] == raw[:20]
    assert_checksums(out)


@pytest.mark.parametrize("nblocks", [1, 2, 3, 4])
def test_inbound_shifts_every_sack_edge(nblocks):
    skew = Skew(1000, 0, PORT)
    edges = [5000 + 100 * i for i in range(2 * nblocks)]
    out = skew.inbound(client_pkt("A", 1, 9000, [("NOP", None), ("NOP", None), sack(*edges)]))
    assert dict(tcp(out).options)["SAck"] == tuple(e - 1000 for e in edges)
    assert_checksums(out)


def test_inbound_keeps_tsecr_zero_and_ack_without_ack_flag():
    skew = Skew(1000, 500, PORT)
    out = skew.inbound(client_pkt("PA", 1, 9000, [("NOP", None), ("NOP", None), ts(7, 0)],
                                  data=b"q"))
    assert dict(tcp(out).options)["Timestamp"] == (7, 0)
    assert tcp(out).ack == 8000
    assert_checksums(out)
    out = skew.inbound(client_pkt("R", 1, 9000))
    assert tcp(out).ack == 9000
    assert_checksums(out)


def test_inbound_leaves_other_packets_alone():
    skew = Skew(77, 5, PORT)
    outbound = stack_pkt("A", 1, 2, [ts(3, 4)])
    for raw in (outbound, b"", b"\x45" * 39):
        assert skew.inbound(raw) == raw


def test_outbound_then_inverse_skew_is_identity():
    skew, inverse = Skew(123456, 789, PORT), Skew(-123456, -789, PORT)
    raw = stack_pkt("PA", seq=M32 - 100, ack=1, data=b"xyz", options=[ts(M32 - 2, 3)])
    assert inverse.outbound(skew.outbound(raw)) == raw


# ---- composition: a skewed stack behind the translator is invisible ---------------------------

class Host:
    """A replica: translator, optional skew, the exact steps of nfq.ActiveQueue.callback."""

    def __init__(self, skew=None, primary=True):
        self.tr = RecordedTranslator(SECRET, PORT)
        self.skew = skew
        self.primary = primary

    def feed(self, raw, token, now):
        """What leaves the queue: (verdict, wire bytes or None, [(token, wire bytes)])."""
        skew = self.skew
        payload = skew.outbound(raw) if skew is not None else raw
        verdict, new, released = self.tr.process(payload, token, self.primary, now)
        if verdict == ACCEPT:
            wire = raw if new is None else (skew.inbound(new) if skew is not None else new)
        else:
            wire = None
        released = [(t, skew.inbound(p) if skew is not None else p) for t, p in released]
        return verdict, wire, released


OWN_ISN, OWN_TS = M32 - 700, 3_000_000


def exchange():
    """A whole connection as (direction, stack/client packet): the stack values are the same
    for every replica; the client uses the shared values."""
    shared_isn, ts_base = shared_values(SECRET, socket.inet_aton(CLIENT), CPORT,
                                        socket.inet_aton(VIP), PORT, CLIENT_ISN)
    c = CLIENT_ISN + 1
    own = lambda k: OWN_ISN + 1 + k  # noqa: E731
    shr = lambda k: shared_isn + 1 + k  # noqa: E731
    nop2 = [("NOP", None), ("NOP", None)]
    request = b"GET /file HTTP/1.0\r\n\r\n"
    body = bytes(range(256)) * 4
    steps = [
        ("in", client_pkt("S", CLIENT_ISN, 0, [("MSS", 1460), ("SAckOK", b""), ts(100, 0),
                                               ("NOP", None), ("WScale", 7)], window=64240)),
        # the handshake race: the client's ACK and request before our SYN-ACK
        ("in", client_pkt("A", c, shr(0), nop2 + [ts(101, ts_base)])),
        ("in", client_pkt("PA", c, shr(0), nop2 + [ts(102, ts_base)], data=request)),
        ("out", stack_pkt("SA", OWN_ISN, c, [("MSS", 1460), ("SAckOK", b""),
                                              ts(OWN_TS, 100), ("NOP", None), ("WScale", 9)],
                          window=65160, ip_id=0)),
        ("in", client_pkt("PA", c, shr(0), nop2 + [ts(103, ts_base)], data=request)),
        ("out", stack_pkt("A", own(0), c + len(request), nop2 + [ts(OWN_TS + 5, 103)],
                          window=300)),
    ]
    for n in range(4):  # four segments of 1024 bytes
        steps.append(("out", stack_pkt("PA", own(1024 * n), c + len(request),
                                       nop2 + [ts(OWN_TS + 10 + n, 103)], data=body,
                                       window=300, ip_id=1000 + n)))
    steps += [
        # SACK: 1 and 3 lost; one block beyond what was sent (another replica ran ahead)
        ("in", client_pkt("A", c + len(request), shr(1024),
                          nop2 + [ts(104, ts_base + 13), ("NOP", None), ("NOP", None),
                                  sack(shr(2048), shr(3072), shr(4096), shr(5000))])),
        ("out", stack_pkt("PA", own(1024), c + len(request), nop2 + [ts(OWN_TS + 20, 104)],
                          data=body, window=300)),  # retransmission
        # D-SACK below the cumulative ACK, an ACK beyond own data (clamped), a high TSecr
        ("in", client_pkt("A", c + len(request), shr(3072),
                          [("NOP", None), sack(shr(1024), shr(2048)), ts(105, ts_base + 9000)])),
        ("in", client_pkt("A", c + len(request), shr(8000), nop2 + [ts(106, ts_base + 20)])),
        ("out", stack_pkt("PA", own(3072), c + len(request), nop2 + [ts(OWN_TS + 30, 106)],
                          data=body, window=300)),  # floored TSval
        ("out", stack_pkt("FA", own(4096), c + len(request), nop2 + [ts(OWN_TS + 40, 106)],
                          window=300)),
        ("in", client_pkt("FA", c + len(request), shr(4097), nop2 + [ts(107, ts_base + 9000)])),
        ("out", stack_pkt("A", own(4097), c + len(request) + 1, nop2 + [ts(OWN_TS + 41, 107)],
                          window=300)),
        ("in", client_pkt("A", c + len(request) + 1, shr(4097),
                          nop2 + [ts(108, ts_base + 9000)])),
    ]
    return steps


# (701, M32 - OWN_TS + 1): the skewed SYN-ACK TSval is 1 and the own clock wraps right after
# ISN wrap. (Not + 0: a skewed TSval of exactly 0 comes back as TSecr 0, which Skew.inbound, like
# the translator, must read as "no echo": an inherent 1-in-2**32 ambiguity, not tested.)
SKEWS = [(1000000000, 37000), (M32 - 1, M32 - 1), (701, M32 - OWN_TS + 1), (2**31, 2**31 + 1),
         (12345, 0), (0, 999)]


@pytest.mark.parametrize("primary", [True, False])
@pytest.mark.parametrize("isn, tsd", SKEWS)
def test_skewed_replica_is_identical_on_the_wire(isn, tsd, primary):
    plain = Host(primary=primary)
    skewed = Host(Skew(isn, tsd, PORT), primary=primary)
    verdicts = []
    for n, (direction, raw) in enumerate(exchange()):
        now = 10.0 + n / 100
        a = plain.feed(raw, n, now)
        b = skewed.feed(raw, n, now)
        assert a == b, "step %d (%s) differs" % (n, direction)
        verdicts.append(a[0])
        for wire in [a[1]] + [p for _, p in a[2]]:
            if wire is not None:
                assert_checksums(wire)
    expected_out = ACCEPT if primary else DROP
    assert verdicts[:4] == [ACCEPT, HOLD, HOLD, expected_out]
    assert plain.tr.snapshot() == skewed.tr.snapshot()
    snap = plain.tr.snapshot()
    assert snap["released"] == 2 and snap["ack_clamped"] == 1 and snap["malformed"] == 0


def test_skew_is_visible_without_translation():
    """Sanity check of the composition test: the skew does change what the stack sends."""
    raw = exchange()[5][1]
    assert Skew(1000000000, 37000, PORT).outbound(raw) != raw


# ---- the seam: refused unless the environment allows it, loaded only when asked ---------------

AGENT_ARGS = ["--name", "lb1", "--controller", "http://10.254.0.254:8080"]
TEST_ONLY = [["--emulate-skew", "1000:37000"], ["--fault", "tamper-wire"],
             ["--fault", "false-accuse"], ["--fault", "forge-reports"],
             ["--emulate-skew", "1:2", "--fault", "tamper-wire"]]


@pytest.mark.parametrize("option", TEST_ONLY)
@pytest.mark.parametrize("value", [None, "", "0", "yes", "1 "])
def test_the_test_only_options_are_refused_unless_the_environment_allows_them(
        option, value, monkeypatch, capsys):
    if value is None:
        monkeypatch.delenv(faults.ENVIRONMENT, raising=False)
    else:
        monkeypatch.setenv(faults.ENVIRONMENT, value)
    with pytest.raises(SystemExit) as info:
        cli.parse_args(AGENT_ARGS + option)
    assert info.value.code == 2
    assert (f"sbft-agent: error: argument {option[0]}: a test-only option, refused unless "
            "SBFT_TEST_FAULTS=1 is set in the environment") in capsys.readouterr().err


@pytest.mark.parametrize("option", TEST_ONLY)
def test_the_test_only_options_are_taken_where_the_environment_allows_them(
        option, test_faults_allowed):
    config, _ = cli.parse_args(AGENT_ARGS + option)
    assert (config.emulate_skew, config.fault) != (None, None)


def test_main_refuses_a_liar_without_the_environment(monkeypatch, capsys):
    monkeypatch.delenv(faults.ENVIRONMENT, raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(AGENT_ARGS + ["--fault", "false-accuse"])
    assert info.value.code == 2 and "refused unless SBFT_TEST_FAULTS=1" in capsys.readouterr().err


LOADED = """
import sys
from sbft_ryu.agent import cli
agent = cli.Agent(cli.parse_args(sys.argv[1:])[0])
print("sbft_ryu.agent.faults" in sys.modules, agent.faults is not None)
"""


@pytest.mark.parametrize("option, loaded", [([], "False False"),
                                            (["--emulate-skew", "1:2"], "True True")])
def test_the_faults_module_is_loaded_only_for_a_test_only_option(option, loaded):
    env = dict(os.environ, SBFT_TEST_FAULTS="1")
    out = subprocess.run([sys.executable, "-c", LOADED, *AGENT_ARGS, *option], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == loaded.split()
