"""Tests for sbft_ryu.agent.active: the active-replication sequence/timestamp translator.

Every packet is built with scapy as the kernel would hand it to NFQUEUE (IPv4 header first) and
every result is parsed back with scapy; checksums are checked against scapy's recomputation.
The client 10.0.0.31:40000 talks to the VIP 10.0.0.100:5555: inbound = client → replica,
outbound = replica → client.
"""

import random
import socket

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPOption_RR, IPv6, Raw

from sbft_ryu.agent import active
from sbft_ryu.agent.active import ACCEPT, DROP, HOLD, shared_values

from fakes import RecordedTranslator

M32 = 2**32
CLIENT, VIP, CPORT, PORT = "10.0.0.31", "10.0.0.100", 40000, 5555
SECRET = b"sbft-test-secret"
KEY = (socket.inet_aton(CLIENT), CPORT)
CLIENT_TS = 777000  # the client's own timestamp clock

# Client ISNs chosen (by search, asserted below) so that the derived shared values sit near 2**32.
ISN_SEQ_WRAP = 370835  # shared ISN = 2**32 - 2539: the shared sequence space wraps after 2538 bytes
ISN_TS_WRAP = 660825  # shared timestamp base = 2**32 - 36665: the shared clock wraps after 36.7 s
ISN_PLAIN = 1000


# ---- packet helpers -------------------------------------------------------------------------

def client_pkt(flags, seq=0, ack=0, options=(), data=b"", window=502, ip_id=4321, df=True,
               cport=CPORT, client=CLIENT):
    """A client → VIP segment."""
    ip = IP(src=client, dst=VIP, flags="DF" if df else 0, id=ip_id)
    packet = ip / TCP(sport=cport, dport=PORT, flags=flags, seq=seq % M32, ack=ack % M32,
                      window=window, options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def stack_pkt(flags, seq=0, ack=0, options=(), data=b"", window=509, ip_id=1111, df=True,
              cport=CPORT, client=CLIENT, ip_options=None):
    """A segment of the replica's own stack, VIP → client (before translation)."""
    ip = IP(src=VIP, dst=client, flags="DF" if df else 0, id=ip_id)
    if ip_options is not None:
        ip.options = ip_options
    packet = ip / TCP(sport=PORT, dport=cport, flags=flags, seq=seq % M32, ack=ack % M32,
                      window=window, options=list(options))
    return bytes(packet / Raw(data)) if data else bytes(packet)


def ts(tsval, tsecr=0):
    return ("Timestamp", (tsval % M32, tsecr % M32))


def sack(*edges):
    return ("SAck", tuple(edge % M32 for edge in edges))


def syn(client_isn=ISN_PLAIN, tsval=CLIENT_TS, with_ts=True, cport=CPORT, client=CLIENT):
    options = [("MSS", 1460), ("SAckOK", b"")]
    if with_ts:
        options.append(ts(tsval, 0))
    options += [("NOP", None), ("WScale", 7)]
    return client_pkt("S", seq=client_isn, options=options, window=64240, cport=cport,
                      client=client)


def synack(own_isn, client_isn=ISN_PLAIN, tsval=5000, wscale=7, with_ts=True, ip_id=0,
           window=65160, cport=CPORT, client=CLIENT):
    options = [("MSS", 1460), ("SAckOK", b"")]
    if with_ts:
        options.append(ts(tsval, CLIENT_TS))
    options += [("NOP", None), ("WScale", wscale)]
    return stack_pkt("SA", seq=own_isn, ack=client_isn + 1, options=options, window=window,
                     ip_id=ip_id, cport=cport, client=client)


def tcp_options(raw):
    return dict(IP(raw)[TCP].options)


def tcp_option_offset(raw, kind):
    """Offset (from the TCP header) of the first option ``kind`` in ``raw``."""
    ihl = (raw[0] & 0x0F) * 4
    i, end = ihl + 20, ihl + (raw[ihl + 12] >> 4) * 4
    while i < end:
        if raw[i] == kind:
            return i - ihl
        i += 1 if raw[i] == 1 else raw[i + 1]
    raise AssertionError("option %d not found" % kind)


def ones_sum(data):
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def assert_checksums(raw):
    """The IP and TCP checksums in ``raw`` equal scapy's recomputation (deleting the chksum
    fields and re-serialising) or, for the +0/-0 ambiguity only, the one's-complement sum over
    the header / pseudo-header and segment verifies."""
    packet = IP(raw)
    del packet.chksum
    del packet[TCP].chksum
    rebuilt = bytes(packet)
    ihl = (raw[0] & 0x0F) * 4
    assert len(rebuilt) == len(raw)
    strip = lambda b: b[:10] + b[12:ihl + 16] + b[ihl + 18:]  # noqa: E731
    assert strip(rebuilt) == strip(raw), "scapy did not round-trip the packet"
    if raw[10:12] != rebuilt[10:12]:
        assert ones_sum(raw[:ihl]) == 0xFFFF, "IP checksum wrong"
    if raw[ihl + 16:ihl + 18] != rebuilt[ihl + 16:ihl + 18]:
        segment = raw[ihl:]
        pseudo = raw[12:20] + bytes((0, 6)) + len(segment).to_bytes(2, "big")
        assert ones_sum(pseudo + segment) == 0xFFFF, "TCP checksum wrong"


class Replica:
    """A Translator plus the values this replica's own stack uses for one connection."""

    def __init__(self, own_isn, own_ts=5000, wscale=7, primary=True, client_isn=ISN_PLAIN,
                 secret=SECRET, shared_wscale=7):
        self.tr = RecordedTranslator(secret, PORT, shared_wscale=shared_wscale)
        self.own_isn, self.own_ts, self.ws = own_isn % M32, own_ts % M32, wscale
        self.primary = primary
        self.client_isn = client_isn
        self.shared_isn, self.ts_base = shared_values(
            secret, socket.inet_aton(CLIENT), CPORT, socket.inet_aton(VIP), PORT, client_isn)
        self.now = 100.0

    def process(self, raw, token="t", primary=None):
        return self.tr.process(raw, token, self.primary if primary is None else primary,
                               self.now)

    def handshake(self, with_ts=True, ip_id=0):
        verdict, new, released = self.process(syn(self.client_isn, with_ts=with_ts))
        assert (verdict, new, released) == (ACCEPT, None, ())
        out = self.process(synack(self.own_isn, self.client_isn, self.own_ts, self.ws,
                                  with_ts=with_ts, ip_id=ip_id))
        return out

    def own_seq(self, k):
        """Own sequence number of stream byte ``k`` (0: the first data byte)."""
        return (self.own_isn + 1 + k) % M32

    def shared_seq(self, k):
        return (self.shared_isn + 1 + k) % M32

    def send(self, k, data, own_ts_delta=0, flags="PA", primary=None):
        """This replica's stack sends ``data`` at stream offset ``k``."""
        raw = stack_pkt(flags, seq=self.own_seq(k), ack=self.client_isn + 1, data=data,
                        window=(1 << 19) >> self.ws,  # 512 KiB in this stack's own scale
                        options=[("NOP", None), ("NOP", None),
                                 ts(self.own_ts + own_ts_delta, CLIENT_TS)])
        return self.process(raw, primary=primary)

    def conn(self):
        return self.tr.connections[KEY]


def counters(translator):
    return translator.snapshot()


# ---- the client ISNs used for the wrap-around tests really wrap -----------------------------

def test_search_constants_give_shared_values_near_the_wrap():
    ip, vip = socket.inet_aton(CLIENT), socket.inet_aton(VIP)
    assert shared_values(SECRET, ip, CPORT, vip, PORT, ISN_SEQ_WRAP)[0] == M32 - 2539
    assert shared_values(SECRET, ip, CPORT, vip, PORT, ISN_TS_WRAP)[1] == M32 - 36665


# ---- 1. replicas are indistinguishable on the wire -----------------------------------------

REPLICA_STACKS = [  # (own ISN, own SYN-ACK TSval, own window scale, IP ID)
    (3, 12345, 7, 0x1111),
    (2**31 + 7, 2**31 + 1, 9, 0x2222),
    (M32 - 1, M32 - 10, 14, 0x3333),
    (M32 - 1500, 0, 2, 0xFFFF),
]


@pytest.mark.parametrize("client_isn", [ISN_PLAIN, ISN_SEQ_WRAP, ISN_TS_WRAP, M32 - 1])
def test_synacks_of_all_replicas_are_byte_identical(client_isn):
    outs = []
    for own_isn, own_ts, ws, ip_id in REPLICA_STACKS:
        replica = Replica(own_isn, own_ts, ws, client_isn=client_isn)
        verdict, new, released = replica.handshake(ip_id=ip_id)
        assert verdict == ACCEPT and released == ()
        parsed = IP(new)
        assert parsed.id == 0  # DF: the IP ID of an atomic datagram means nothing
        assert parsed[TCP].seq == replica.shared_isn
        options = dict(parsed[TCP].options)
        assert options["Timestamp"] == (replica.ts_base, CLIENT_TS)
        assert options["WScale"] == 7
        assert_checksums(new)
        outs.append(new)
    assert all(out == outs[0] for out in outs)


def test_synack_advertises_the_configured_shared_wscale():
    replica = Replica(99, wscale=7, shared_wscale=9)
    _, new, _ = replica.handshake()
    assert tcp_options(new)["WScale"] == 9
    assert_checksums(new)


def test_ip_id_of_non_df_packets_is_kept():
    replica = Replica(99)
    replica.handshake()
    raw = stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"x", df=False,
                    ip_id=0xBEEF)
    verdict, new, _ = replica.process(raw)
    assert verdict == ACCEPT
    assert IP(new).id == 0xBEEF and IP(new).flags == 0
    assert new[:10] == raw[:10] and new[12:20] == raw[12:20]  # IP header untouched
    assert_checksums(new)


def test_ip_header_with_options_gets_id_zeroed_and_checksums_right():
    replica = Replica(99)
    replica.handshake()
    raw = stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"abc",
                    ip_id=0x4242, ip_options=[IPOption_RR(routers=["1.2.3.4"])],
                    options=[ts(5100, CLIENT_TS)])
    verdict, new, _ = replica.process(raw)
    assert verdict == ACCEPT
    parsed = IP(new)
    assert parsed.ihl > 5 and parsed.id == 0
    assert parsed[TCP].seq == replica.shared_seq(0)
    assert parsed[TCP].options[0] == ("Timestamp", (replica.ts_base + 100, CLIENT_TS))
    assert_checksums(new)


def test_shared_values_deterministic_and_depend_on_every_field_and_the_secret():
    ip, vip = socket.inet_aton(CLIENT), socket.inet_aton(VIP)
    base = shared_values(SECRET, ip, CPORT, vip, PORT, 1000)
    assert base == shared_values(SECRET, ip, CPORT, vip, PORT, 1000)
    assert all(0 <= value < M32 for value in base)
    variants = [
        shared_values(b"another-secret", ip, CPORT, vip, PORT, 1000),
        shared_values(SECRET + b"x", ip, CPORT, vip, PORT, 1000),
        shared_values(SECRET, socket.inet_aton("10.0.0.32"), CPORT, vip, PORT, 1000),
        shared_values(SECRET, ip, CPORT + 1, vip, PORT, 1000),
        shared_values(SECRET, ip, CPORT, socket.inet_aton("10.0.0.101"), PORT, 1000),
        shared_values(SECRET, ip, CPORT, vip, PORT + 1, 1000),
        shared_values(SECRET, ip, CPORT, vip, PORT, 1001),
    ]
    for variant in variants:  # both halves change (64 bits of keyed hash)
        assert variant[0] != base[0] and variant[1] != base[1]
    assert len(set(variants)) == len(variants)


def test_translator_uses_shared_values_of_the_connection():
    replica = Replica(12, client_isn=424242, secret=b"k" * 32)
    _, new, _ = replica.handshake()
    expected = shared_values(b"k" * 32, socket.inet_aton(CLIENT), CPORT, socket.inet_aton(VIP),
                             PORT, 424242)
    assert IP(new)[TCP].seq == expected[0]
    assert tcp_options(new)["Timestamp"][0] == expected[1]


# ---- 2. the client's ACKs back into each replica's own space, across the wrap --------------

WRAP_REPLICAS = [(M32 - 1, M32 - 5), (M32 - 1500, 100), (M32 - 4000, M32 - 2000), (7, 2**31)]


def test_client_acks_and_tsecr_translate_back_across_the_wrap():
    replicas = [Replica(isn, tsv, ws, client_isn=ISN_SEQ_WRAP)
                for (isn, tsv), ws in zip(WRAP_REPLICAS, (7, 9, 5, 14))]
    for replica in replicas:
        replica.handshake()
    shared_isn, ts_base = replicas[0].shared_isn, replicas[0].ts_base
    assert shared_isn == M32 - 2539
    cseq = ISN_SEQ_WRAP + 1
    # the handshake ACK and the request
    for packet in (client_pkt("A", cseq, shared_isn + 1, [("NOP", None), ("NOP", None),
                                                         ts(CLIENT_TS + 1, ts_base)]),
                   client_pkt("PA", cseq, shared_isn + 1, [("NOP", None), ("NOP", None),
                                                          ts(CLIENT_TS + 2, ts_base)],
                              data=b"GET / HTTP/1.0\r\n\r\n")):
        for replica in replicas:
            verdict, new, released = replica.process(packet)
            assert verdict == ACCEPT and released == ()
            parsed = IP(new)
            assert parsed[TCP].ack == (replica.own_isn + 1) % M32
            assert parsed[TCP].seq == cseq  # the client's own space is untouched
            assert dict(parsed[TCP].options)["Timestamp"][1] == replica.own_ts
            assert bytes(parsed[TCP].payload) == bytes(IP(packet)[TCP].payload)
            assert_checksums(new)
    # four 1448-byte segments: crosses the shared wrap and every replica's own wrap
    segment = bytes(range(256)) * 5 + b"z" * 168
    for n in range(4):
        k = n * len(segment)
        wires = []
        for replica in replicas:
            verdict, new, _ = replica.send(k, segment, own_ts_delta=1000 * (n + 1))
            assert verdict == ACCEPT
            assert IP(new)[TCP].seq == replica.shared_seq(k)
            wires.append(new)
            assert_checksums(new)
        assert all(wire == wires[0] for wire in wires)  # identical on the wire
        shared_tsval = tcp_options(wires[0])["Timestamp"][0]
        assert shared_tsval == (ts_base + 1000 * (n + 1)) % M32
        ack = client_pkt("A", cseq + 18, shared_isn + 1 + k + len(segment),
                         [("NOP", None), ("NOP", None), ts(CLIENT_TS + 3 + n, shared_tsval)])
        for replica in replicas:
            verdict, new, _ = replica.process(ack)
            assert verdict == ACCEPT
            parsed = IP(new)
            assert parsed[TCP].ack == replica.own_seq(k + len(segment))
            assert dict(parsed[TCP].options)["Timestamp"][1] == \
                (replica.own_ts + 1000 * (n + 1)) % M32
            assert_checksums(new)
    # the data really crossed 2**32 in the shared space and in each own space
    assert replicas[0].shared_seq(0) > replicas[0].shared_seq(4 * len(segment))
    for replica in replicas[:3]:
        assert replica.own_seq(0) > replica.own_seq(4 * len(segment)) or replica.own_seq(0) == 0
    for replica in replicas:
        assert counters(replica.tr)["ack_clamped"] == 0
        assert counters(replica.tr)["translated_in"] == 6
        assert counters(replica.tr)["translated_out"] == 5


def test_shared_timestamp_clock_wraps():
    replicas = [Replica(500, 5000, client_isn=ISN_TS_WRAP), Replica(9, M32 - 20000,
                                                                     client_isn=ISN_TS_WRAP)]
    for replica in replicas:
        replica.handshake()
    ts_base = replicas[0].ts_base
    assert ts_base == M32 - 36665
    for step in range(1, 6):  # own clocks advance 20 s per step: the shared clock wraps at 2
        expected = (ts_base + 20000 * step) % M32
        for replica in replicas:
            _, new, _ = replica.send(100 * step, b"d" * 100, own_ts_delta=20000 * step)
            assert tcp_options(new)["Timestamp"][0] == expected
            # the client echoes it (this also raises the floor past the wrap)
            _, back, _ = replica.process(client_pkt(
                "A", ISN_TS_WRAP + 1, replica.shared_seq(100 * step + 100),
                [("NOP", None), ("NOP", None), ts(CLIENT_TS, expected)]))
            assert tcp_options(back)["Timestamp"][1] == (replica.own_ts + 20000 * step) % M32
            assert_checksums(back)
    assert (ts_base + 20000 * 5) % M32 < ts_base  # wrapped


# ---- 3. ACK clamping ----------------------------------------------------------------------

@pytest.mark.parametrize("own_isn", [1000, M32 - 600])
def test_ack_beyond_own_data_is_clamped_and_within_is_exact(own_isn):
    backup = Replica(own_isn, primary=False)
    backup.handshake()
    assert backup.send(0, b"a" * 1000)[0] == DROP  # a backup: dropped, but its state advanced
    ack_options = [("NOP", None), ("NOP", None), ts(CLIENT_TS, backup.ts_base)]
    # the primary already sent 3000 bytes: the client acknowledges them
    _, new, _ = backup.process(client_pkt("A", ISN_PLAIN + 1, backup.shared_seq(3000),
                                          ack_options))
    assert IP(new)[TCP].ack == backup.own_seq(1000)
    assert counters(backup.tr)["ack_clamped"] == 1
    assert_checksums(new)
    for k in (0, 1, 500, 999, 1000):  # within what this replica sent: exact
        _, new, _ = backup.process(client_pkt("A", ISN_PLAIN + 1, backup.shared_seq(k),
                                              ack_options))
        assert IP(new)[TCP].ack == backup.own_seq(k)
        assert_checksums(new)
    assert counters(backup.tr)["ack_clamped"] == 1
    _, new, _ = backup.process(client_pkt("A", ISN_PLAIN + 1, backup.shared_seq(1001)))
    assert IP(new)[TCP].ack == backup.own_seq(1000)
    assert counters(backup.tr)["ack_clamped"] == 2
    assert_checksums(new)


def test_handshake_ack_acks_exactly_isn_plus_one():
    replica = Replica(M32 - 1)
    replica.handshake()
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_isn + 1))
    assert IP(new)[TCP].ack == 0  # own ISN 2**32-1, +1 wraps
    assert counters(replica.tr)["ack_clamped"] == 0
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_isn + 2))
    assert IP(new)[TCP].ack == 0
    assert counters(replica.tr)["ack_clamped"] == 1


def test_segment_without_ack_flag_keeps_ack_field():
    replica = Replica(77)
    replica.handshake()
    raw = client_pkt("R", ISN_PLAIN + 1, ack=123456)
    verdict, new, _ = replica.process(raw)
    assert verdict == ACCEPT
    assert new == raw  # nothing to translate: no ACK flag, no options
    assert_checksums(new)


# ---- 4. SACK --------------------------------------------------------------------------------

def sacked_replica(own_isn=5000, sent=4000):
    replica = Replica(own_isn)
    replica.handshake()
    for k in range(0, sent, 1000):
        replica.send(k, b"s" * 1000)
    return replica


@pytest.mark.parametrize("nblocks", [1, 2, 3, 4])
@pytest.mark.parametrize("own_isn", [5000, M32 - 2500])
def test_sack_blocks_translated_edge_by_edge(nblocks, own_isn):
    replica = sacked_replica(own_isn)
    blocks = [(1000, 1500), (2000, 2500), (3000, 3200), (3500, 4000)][:nblocks]
    edges = [replica.shared_seq(e) for block in blocks for e in block]
    options = [("NOP", None), ("NOP", None), sack(*edges)]
    if nblocks < 4:
        options += [("NOP", None), ("NOP", None), ts(CLIENT_TS, replica.ts_base)]
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(0), options))
    opts = tcp_options(new)
    assert opts["SAck"] == tuple(replica.own_seq(e) for block in blocks for e in block)
    assert IP(new)[TCP].ack == replica.own_seq(0)
    if nblocks < 4:
        assert opts["Timestamp"] == (CLIENT_TS, replica.own_ts)
    assert_checksums(new)


def test_sack_blocks_beyond_own_data_become_empty_or_clamped():
    replica = sacked_replica(sent=2000)  # own_max = byte 2000
    blocks = [(2500, 3000),  # wholly beyond: empty at own max
              (1500, 2600),  # straddles: right edge clamped
              (500, 2000)]  # ends exactly at own max: exact
    edges = [replica.shared_seq(e) for block in blocks for e in block]
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(0),
                                           [("NOP", None), ("NOP", None), sack(*edges)]))
    top = replica.own_seq(2000)
    assert tcp_options(new)["SAck"] == (top, top, replica.own_seq(1500), top,
                                        replica.own_seq(500), top)
    assert replica.conn().own_max == top
    assert_checksums(new)


def test_dsack_below_snd_una_translated():
    replica = sacked_replica()
    # D-SACK: the first block reports a duplicate below the cumulative ACK
    options = [("NOP", None), ("NOP", None),
               sack(replica.shared_seq(0), replica.shared_seq(1000),
                    replica.shared_seq(3000), replica.shared_seq(4000))]
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(2000),
                                           options))
    assert IP(new)[TCP].ack == replica.own_seq(2000)
    assert tcp_options(new)["SAck"] == (replica.own_seq(0), replica.own_seq(1000),
                                        replica.own_seq(3000), replica.own_seq(4000))
    assert_checksums(new)


@pytest.mark.parametrize("layout", [
    "nop_sack", "sack_ts", "nop_ts_sack", "nop3_sack2", "ts_nop_sack", "nop_sack_eol_pad"])
@pytest.mark.parametrize("own_isn", [5000, M32 - 2500, 0x8000FFFF])
def test_options_at_odd_offsets_keep_checksum_right(layout, own_isn):
    replica = sacked_replica(own_isn)
    blk1 = sack(replica.shared_seq(1000), replica.shared_seq(2000))
    blk2 = sack(replica.shared_seq(1000), replica.shared_seq(1500),
                replica.shared_seq(2500), replica.shared_seq(3999))
    stamp = ts(CLIENT_TS + 9, replica.ts_base)
    nop = ("NOP", None)
    options = {
        "nop_sack": [nop, blk1],
        "sack_ts": [blk1, stamp],
        "nop_ts_sack": [nop, stamp, blk1],
        "nop3_sack2": [nop, nop, nop, blk2],
        "ts_nop_sack": [stamp, nop, blk1],
        "nop_sack_eol_pad": [nop, blk1, ("EOL", None)],
    }[layout]
    raw = client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(1000), options, data=b"odd")
    if layout in ("nop_sack", "nop_ts_sack", "nop3_sack2", "ts_nop_sack", "nop_sack_eol_pad"):
        assert tcp_option_offset(raw, 5) % 2 == 1  # the SACK option sits at an odd offset
    _, new, _ = replica.process(raw)
    opts = tcp_options(new)
    if "SAck" in opts and len(opts["SAck"]) == 2:
        assert opts["SAck"] == (replica.own_seq(1000), replica.own_seq(2000))
    else:
        assert opts["SAck"] == (replica.own_seq(1000), replica.own_seq(1500),
                                replica.own_seq(2500), replica.own_seq(3999))
    if "Timestamp" in opts:
        assert opts["Timestamp"] == (CLIENT_TS + 9, replica.own_ts)
    assert_checksums(new)


# ---- 5. timestamps ------------------------------------------------------------------------

def test_outbound_tsval_is_own_plus_offset_with_the_echo_floor():
    replica = Replica(300, own_ts=1000)
    replica.handshake()
    base = replica.ts_base
    _, new, _ = replica.send(0, b"a", own_ts_delta=250)
    assert tcp_options(new)["Timestamp"] == ((base + 250) % M32, CLIENT_TS)
    # a faster former primary's TSval, echoed by the client: the floor rises
    _, back, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(1),
                                            [("NOP", None), ("NOP", None),
                                             ts(CLIENT_TS + 1, base + 5000)]))
    assert tcp_options(back)["Timestamp"] == (CLIENT_TS + 1, 1000 + 5000)
    _, new, _ = replica.send(1, b"b", own_ts_delta=300)  # our clock is behind: floored
    assert tcp_options(new)["Timestamp"][0] == (base + 5000) % M32
    assert_checksums(new)
    _, new, _ = replica.send(2, b"c", own_ts_delta=5000)  # equal to the floor
    assert tcp_options(new)["Timestamp"][0] == (base + 5000) % M32
    _, new, _ = replica.send(3, b"d", own_ts_delta=7000)  # ahead of the floor: own clock
    assert tcp_options(new)["Timestamp"][0] == (base + 7000) % M32
    # an older echo never lowers the floor
    replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(1),
                               [("NOP", None), ("NOP", None), ts(CLIENT_TS + 2, base + 10)]))
    _, new, _ = replica.send(4, b"e", own_ts_delta=400)
    assert tcp_options(new)["Timestamp"][0] == (base + 5000) % M32
    assert_checksums(new)


def test_floor_across_the_timestamp_wrap():
    replica = Replica(300, own_ts=10, client_isn=ISN_TS_WRAP)
    replica.handshake()
    base = replica.ts_base  # 2**32 - 36665
    echoed = (base + 40000) % M32  # past the wrap
    assert echoed < base
    replica.process(client_pkt("A", ISN_TS_WRAP + 1, replica.shared_seq(0),
                               [("NOP", None), ("NOP", None), ts(CLIENT_TS, echoed)]))
    _, new, _ = replica.send(0, b"x", own_ts_delta=100)  # base + 100: before the wrap
    assert tcp_options(new)["Timestamp"][0] == echoed
    _, new, _ = replica.send(1, b"y", own_ts_delta=50000)
    assert tcp_options(new)["Timestamp"][0] == (base + 50000) % M32


def test_tsecr_zero_is_untouched_and_does_not_raise_the_floor():
    replica = Replica(300, own_ts=1000)
    replica.handshake()
    raw = client_pkt("PA", ISN_PLAIN + 1, replica.shared_seq(0),
                     [("NOP", None), ("NOP", None), ts(CLIENT_TS + 5, 0)], data=b"q")
    _, new, _ = replica.process(raw)
    assert tcp_options(new)["Timestamp"] == (CLIENT_TS + 5, 0)
    assert replica.conn().ts_floor is None
    assert_checksums(new)
    _, out, _ = replica.send(0, b"r", own_ts_delta=1)
    assert tcp_options(out)["Timestamp"][0] == (replica.ts_base + 1) % M32


def test_connection_without_timestamps_changes_only_seq_and_ack():
    replica = Replica(M32 - 3, own_ts=1000)
    _, new, _ = replica.handshake(with_ts=False)
    assert replica.conn().ts_off is None
    assert "Timestamp" not in tcp_options(new)
    assert_checksums(new)
    # a stray TS option on such a connection is left alone in both directions
    raw = stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"hello",
                    options=[("NOP", None), ("NOP", None), ts(1234, 99)], ip_id=0)
    _, new, _ = replica.process(raw)
    assert tcp_options(new)["Timestamp"] == (1234, 99)
    assert IP(new)[TCP].seq == replica.shared_seq(0)
    assert new[:24] == raw[:24] and new[28:36] == raw[28:36] and new[38:] == raw[38:]
    assert_checksums(new)
    raw = client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(5),
                     [("NOP", None), ("NOP", None), ts(4321, 1234)])
    _, back, _ = replica.process(raw)
    assert tcp_options(back)["Timestamp"] == (4321, 1234)
    assert IP(back)[TCP].ack == replica.own_seq(5)
    assert back[:28] == raw[:28] and back[32:36] == raw[32:36] and back[38:] == raw[38:]
    assert_checksums(back)


def test_packets_without_any_option():
    replica = Replica(40, own_ts=1000)
    replica.handshake()
    raw = stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"abc", ip_id=0)
    _, new, _ = replica.process(raw)
    assert IP(new)[TCP].dataofs == 5 and IP(new)[TCP].seq == replica.shared_seq(0)
    assert new[:24] == raw[:24] and new[28:36] == raw[28:36] and new[38:] == raw[38:]
    assert_checksums(new)
    raw = client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(3))
    _, back, _ = replica.process(raw)
    assert IP(back)[TCP].ack == replica.own_seq(3)
    assert_checksums(back)


# ---- window scaling ---------------------------------------------------------------------

@pytest.mark.parametrize("own_ws, window, expected", [
    (7, 1234, 1234),  # same scale: untouched
    (9, 100, 400),
    (5, 0xFFFF, 0x3FFF),
    (14, 0x1000, 0xFFFF),  # does not fit: clamped
    (2, 1000, 31),  # coarser shared scale: rounded down
])
def test_window_rescaled_to_shared_scale(own_ws, window, expected):
    replica = Replica(40, wscale=own_ws)
    replica.handshake()
    raw = stack_pkt("A", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, window=window)
    _, new, _ = replica.process(raw)
    assert IP(new)[TCP].window == expected
    assert_checksums(new)


# ---- 6. checksums: random packets and checksum_delta ---------------------------------------

def random_options(rng):
    """A random, well-formed option list (at most 40 bytes): NOP runs, MSS, WS, SACKOK, TS,
    SACK with 1-4 blocks, EOL (scapy pads with EOL to a multiple of 4)."""
    options, size = [], 0
    while rng.random() < 0.75:
        kind = rng.choice(["nop", "nop", "mss", "ws", "sackok", "ts", "ts", "sack", "sack",
                           "eol"])
        if kind == "nop":
            count = rng.randint(1, 3)
            item, n = [("NOP", None)] * count, count
        elif kind == "mss":
            item, n = [("MSS", rng.randrange(536, 9000))], 4
        elif kind == "ws":
            item, n = [("WScale", rng.randrange(0, 15))], 3
        elif kind == "sackok":
            item, n = [("SAckOK", b"")], 2
        elif kind == "ts":
            item, n = [ts(rng.randrange(M32), rng.choice([0, rng.randrange(M32)]))], 10
        elif kind == "sack":
            blocks = rng.randint(1, 4)
            item, n = [sack(*(rng.randrange(M32) for _ in range(2 * blocks)))], 2 + 8 * blocks
        else:
            item, n = [("EOL", None)], 1
        if size + n > 40:
            break
        options += item
        size += n
        if kind == "eol":
            break
    return options


def field(raw, offset, size):
    return int.from_bytes(raw[offset:offset + size], "big")


def expected_ack(conn, ack):
    own = (ack - conn.seq_off) % M32
    return conn.own_max if active.serial_gt(own, conn.own_max) else own


@pytest.mark.parametrize("own_isn, own_ws", [(0x12345678, 7), (M32 - 7, 2), (3, 14),
                                             (2**31 - 1, 9)])
def test_random_packets_have_correct_checksums(own_isn, own_ws):
    rng = random.Random(own_isn ^ own_ws)
    replica = Replica(own_isn, own_ts=rng.randrange(M32), wscale=own_ws)
    replica.handshake()
    conn = replica.conn()
    sent = 0
    for n in range(500):
        length = rng.choice([0, 0, 1, rng.randrange(1, 1461), rng.randrange(1, 64) * 2 + 1])
        data = rng.randbytes(length)
        df = rng.random() < 0.8
        ip_options = [IPOption_RR(routers=["10.9.9.9"])] if rng.random() < 0.05 else None
        if n % 2:  # outbound
            flags = rng.choice(["A", "PA", "FA", "FPA", "RA", "R", "SA", "PAU"])
            k = max(0, sent + rng.randrange(-3000, 2000))
            raw = stack_pkt(flags, seq=replica.own_seq(k), ack=rng.randrange(M32), data=data,
                            options=random_options(rng), window=rng.randrange(65536),
                            ip_id=rng.randrange(65536), df=df, ip_options=ip_options)
            sent = max(sent, k + length)
            verdict, new, _ = replica.process(raw)
            assert verdict == ACCEPT
            ihl = (raw[0] & 0x0F) * 4
            assert field(new, ihl + 4, 4) == replica.shared_seq(k)
            if df:
                assert field(new, 4, 2) == 0
            if "S" not in flags:
                assert field(new, ihl + 14, 2) == min(0xFFFF, field(raw, ihl + 14, 2)
                                                      << own_ws >> 7)
        else:  # inbound
            flags = rng.choice(["A", "PA", "FA", "RA", "R", "PAU", "", "P", "SA"])
            ack = (replica.shared_seq(0) + rng.randrange(-2000, sent + 4000)) % M32
            raw = client_pkt(flags, seq=rng.randrange(M32), ack=ack, data=data,
                             options=random_options(rng), window=rng.randrange(65536),
                             ip_id=rng.randrange(65536), df=df)
            want = expected_ack(conn, ack)
            verdict, new, _ = replica.process(raw)
            assert verdict == ACCEPT
            if new is None:
                new = raw
            assert field(new, 28, 4) == (want if "A" in flags else ack)
            assert new[:20] == raw[:20]  # inbound never touches the IP header
        assert len(new) == len(raw)
        assert_checksums(new)


# ---- 7. retransmissions, reordering, FIN/RST, backup vs primary ------------------------------

def test_retransmission_translates_identically():
    replica = Replica(M32 - 10)
    replica.handshake()
    first = replica.send(0, b"payload" * 100)
    replica.send(700, b"more")
    second = replica.send(0, b"payload" * 100)
    assert first == second and first[0] == ACCEPT
    assert_checksums(first[1])


def test_synack_retransmission_translates_identically():
    replica = Replica(99, own_ts=5000)
    _, first, _ = replica.handshake()
    verdict, again, released = replica.process(synack(99, tsval=5000))
    assert verdict == ACCEPT and again == first and released == ()
    assert replica.conn().seq_off == (replica.shared_isn - 99) % M32  # not re-learned


def test_out_of_order_segments_translate_statelessly_and_own_max_only_grows():
    replica = Replica(M32 - 1000, primary=False)
    replica.handshake()
    # the stack (e.g. retransmitting) emits a later segment first
    assert replica.send(2000, b"B" * 1000, primary=True)[0] == ACCEPT
    top = replica.own_seq(3000)
    assert replica.conn().own_max == top
    for k in (1000, 0, 2500):
        verdict, new, _ = replica.send(k, b"A" * 500, primary=True)
        assert IP(new)[TCP].seq == replica.shared_seq(k)
        assert replica.conn().own_max == top
    # an ACK for all of it is exact, beyond is clamped to the highest byte
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(3000)))
    assert IP(new)[TCP].ack == top
    _, new, _ = replica.process(client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(3001)))
    assert IP(new)[TCP].ack == top
    assert counters(replica.tr)["ack_clamped"] == 1


def test_backup_drops_but_advances_and_primary_accepts():
    backup = Replica(M32 - 300, primary=False)
    primary = Replica(700, primary=True)
    verdict, new, _ = backup.handshake()
    assert (verdict, new) == (DROP, None)
    verdict, synack_wire, _ = primary.handshake()
    assert verdict == ACCEPT
    assert counters(backup.tr)["dropped_backup"] == 1
    assert backup.send(0, b"x" * 1000) == (DROP, None, ())
    verdict, new, _ = primary.send(0, b"x" * 1000)
    assert verdict == ACCEPT and IP(new)[TCP].seq == primary.shared_seq(0)
    assert counters(backup.tr)["dropped_backup"] == 2
    assert counters(backup.tr)["translated_out"] == 0
    assert counters(primary.tr)["translated_out"] == 2
    ack = client_pkt("A", ISN_PLAIN + 1, primary.shared_seq(1000))
    _, new, _ = backup.process(ack)
    assert IP(new)[TCP].ack == backup.own_seq(1000)  # the dropped data counts
    assert counters(backup.tr)["ack_clamped"] == 0
    # promoted: the same translator now lets its packets out, translated like the primary's
    verdict, b_wire, _ = backup.send(1000, b"y" * 10, primary=True)
    verdict2, p_wire, _ = primary.send(1000, b"y" * 10)
    assert verdict == verdict2 == ACCEPT
    assert IP(b_wire)[TCP].seq == IP(p_wire)[TCP].seq == primary.shared_seq(1000)


@pytest.mark.parametrize("who", ["out", "in"])
def test_rst_translated_marks_closed_and_is_forgotten_after_closed_s(who):
    replica = Replica(5, own_ts=0)
    replica.handshake()
    if who == "out":
        verdict, new, _ = replica.process(stack_pkt("RA", seq=replica.own_seq(0),
                                                    ack=ISN_PLAIN + 1))
        assert IP(new)[TCP].seq == replica.shared_seq(0)
    else:
        verdict, new, _ = replica.process(client_pkt("RA", ISN_PLAIN + 1, replica.shared_seq(0)))
        assert IP(new)[TCP].ack == replica.own_seq(0)
    assert verdict == ACCEPT
    assert_checksums(new)
    assert replica.conn().closed & active.CLOSED_RST
    assert replica.tr.expire(replica.now + active.CLOSED_S - 0.5) == []
    assert KEY in replica.tr.connections
    # idle and closed connections are looked for every SCAN_S
    replica.tr.expire(replica.now + active.CLOSED_S - 0.5 + active.SCAN_S)
    assert KEY not in replica.tr.connections


def test_fin_both_ways_translated_and_forgotten_after_closed_s():
    replica = Replica(M32 - 2)
    replica.handshake()
    verdict, new, _ = replica.send(0, b"bye", flags="FPA")
    assert verdict == ACCEPT and IP(new)[TCP].seq == replica.shared_seq(0)
    assert replica.conn().own_max == replica.own_seq(4)  # 3 bytes + FIN
    assert replica.conn().closed == active.FIN_OUT
    replica.now += 0.1
    fin_in = client_pkt("FA", ISN_PLAIN + 1, replica.shared_seq(4),
                        [("NOP", None), ("NOP", None), ts(CLIENT_TS, replica.ts_base)])
    _, back, _ = replica.process(fin_in)
    assert IP(back)[TCP].ack == replica.own_seq(4)  # the FIN is acknowledged exactly
    assert counters(replica.tr)["ack_clamped"] == 0
    assert replica.conn().closed == active.FIN_IN | active.FIN_OUT
    assert_checksums(back)
    replica.tr.expire(replica.now + active.CLOSED_S - 1)
    assert KEY in replica.tr.connections
    replica.tr.expire(replica.now + active.CLOSED_S - 1 + active.SCAN_S)
    assert KEY not in replica.tr.connections


def test_half_closed_connection_lives_until_idle():
    replica = Replica(8)
    replica.handshake()
    replica.send(0, b"bye", flags="FPA")
    replica.tr.expire(replica.now + active.CLOSED_S + 1)
    assert KEY in replica.tr.connections
    replica.tr.expire(replica.now + active.IDLE_S + 1)
    assert KEY not in replica.tr.connections


def test_activity_keeps_a_connection_and_idle_forgets_it():
    replica = Replica(8)
    replica.handshake()
    replica.now += active.IDLE_S - 1
    replica.send(0, b"still here")
    replica.tr.expire(replica.now + 2)
    assert KEY in replica.tr.connections
    replica.tr.expire(replica.now + active.IDLE_S + 1)
    assert KEY not in replica.tr.connections


# ---- 8. the handshake race ------------------------------------------------------------------

def race_packets(replica, n):
    """The client's handshake ACK and ``n - 1`` request segments (sent before our SYN-ACK)."""
    packets = [client_pkt("A", ISN_PLAIN + 1, replica.shared_isn + 1,
                          [("NOP", None), ("NOP", None), ts(CLIENT_TS + 1, replica.ts_base)])]
    for i in range(n - 1):
        packets.append(client_pkt("PA", ISN_PLAIN + 1 + 10 * i, replica.shared_isn + 1,
                                  [("NOP", None), ("NOP", None),
                                   ts(CLIENT_TS + 2 + i, replica.ts_base)],
                                  data=b"%010d" % i))
    return packets


@pytest.mark.parametrize("primary", [True, False])
def test_packets_before_own_synack_are_held_and_released_translated(primary):
    replica = Replica(M32 - 1, own_ts=42, primary=primary)
    assert replica.process(syn())[0] == ACCEPT
    packets = race_packets(replica, 5)
    for i, raw in enumerate(packets):
        assert replica.process(raw, token=("held", i)) == (HOLD, None, ())
    assert counters(replica.tr)["held"] == 5
    verdict, new, released = replica.process(synack(M32 - 1, tsval=42), token="synack")
    assert verdict == (ACCEPT if primary else DROP)
    assert [token for token, _ in released] == [("held", i) for i in range(5)]
    # released exactly as if the SYN-ACK had come first
    reference = Replica(M32 - 1, own_ts=42, primary=primary)
    reference.handshake()
    for (token, payload), raw in zip(released, packets):
        assert payload == reference.process(raw)[1]
        parsed = IP(payload)
        assert parsed[TCP].ack == 0  # own ISN + 1, wrapped
        assert dict(parsed[TCP].options)["Timestamp"][1] == 42
        assert_checksums(payload)
    snap = counters(replica.tr)
    assert snap["released"] == 5 and snap["hold_overflow"] == 0
    assert replica.tr.expire(replica.now + 10) == []  # nothing left held


def test_hold_overflow_drops_beyond_max_held():
    replica = Replica(10)
    replica.process(syn())
    packets = race_packets(replica, active.MAX_HELD + 3)
    verdicts = [replica.process(raw, token=i)[0] for i, raw in enumerate(packets)]
    assert verdicts == [HOLD] * active.MAX_HELD + [DROP] * 3
    assert counters(replica.tr)["hold_overflow"] == 3
    _, _, released = replica.process(synack(10))
    assert [token for token, _ in released] == list(range(active.MAX_HELD))


def test_held_too_long_are_expired():
    replica = Replica(10)
    replica.process(syn())
    for i, raw in enumerate(race_packets(replica, 3)):
        replica.process(raw, token=i)
    t0 = replica.now
    assert replica.tr.expire(t0 + active.HOLD_S) == []
    assert replica.tr.expire(t0 + active.HOLD_S + 0.01) == [0, 1, 2]
    assert counters(replica.tr)["hold_expired"] == 3
    assert replica.tr.expire(t0 + active.HOLD_S + 0.02) == []
    _, _, released = replica.process(synack(10))
    assert released == ()
    # a later retransmission is translated normally
    _, new, _ = replica.process(race_packets(replica, 1)[0])
    assert IP(new)[TCP].ack == 11


def test_new_syn_on_same_port_replaces_connection_and_discards_held():
    replica = Replica(10)
    replica.process(syn(ISN_PLAIN))
    for i, raw in enumerate(race_packets(replica, 2)):
        replica.process(raw, token=("old", i))
    # the client gives up and reuses the port with a new ISN
    assert replica.process(syn(ISN_PLAIN + 99999)) == (ACCEPT, None, ())
    assert replica.tr.connections[KEY].client_isn == ISN_PLAIN + 99999
    assert replica.tr.dropped == [("old", 0), ("old", 1)]  # with the SYN: no waiting
    assert replica.tr.expire(replica.now) == []
    _, new, released = replica.process(synack(10, client_isn=ISN_PLAIN + 99999))
    assert released == ()
    fresh = shared_values(SECRET, KEY[0], CPORT, socket.inet_aton(VIP), PORT, ISN_PLAIN + 99999)
    assert IP(new)[TCP].seq == fresh[0]


def test_syn_retransmission_keeps_connection_and_held_packets():
    replica = Replica(10)
    replica.process(syn())
    replica.process(race_packets(replica, 1)[0], token="h")
    assert replica.process(syn()) == (ACCEPT, None, ())
    assert replica.tr.expire(replica.now) == []
    _, _, released = replica.process(synack(10))
    assert [token for token, _ in released] == ["h"]


# ---- 9. unknown connections and malformed input --------------------------------------------

def test_inbound_non_syn_for_unknown_connection_passes_unchanged():
    tr = RecordedTranslator(SECRET, PORT)
    raw = client_pkt("PA", 5, 6, data=b"hi")
    assert tr.process(raw, "t", True, 1.0) == (ACCEPT, None, ())
    assert counters(tr)["passed_unknown_in"] == 1
    assert counters(tr)["connections"] == 0


def test_outbound_for_unknown_or_before_synack_is_dropped():
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.process(stack_pkt("PA", 1, 2, data=b"x"), "t", True, 1.0) == (DROP, None, ())
    tr.process(syn(), "s", True, 1.0)
    for flags in ("A", "PA", "R", "RA", "FA"):
        assert tr.process(stack_pkt(flags, 1, 2), "t", True, 1.0) == (DROP, None, ())
    assert counters(tr)["unknown_out"] == 6
    # another client's packet is unknown too
    assert tr.process(stack_pkt("A", 1, 2, client="10.0.0.99"), "t", True, 1.0)[0] == DROP
    assert counters(tr)["unknown_out"] == 7


def valid_packet():
    return client_pkt("PA", 1, 2, [("NOP", None), ("NOP", None), ts(1, 2)], data=b"0123456789")


MALFORMED = {
    "empty": b"",
    "short": b"\x45\x00\x00\x14",
    "ipv6": bytes(IPv6(src="::1", dst="::2") / TCP(sport=CPORT, dport=PORT) / Raw(b"x" * 40)),
    "udp": bytes(IP(src=CLIENT, dst=VIP) / UDP(sport=CPORT, dport=PORT) / Raw(b"x" * 40)),
    "icmp": bytes(IP(src=CLIENT, dst=VIP) / ICMP() / Raw(b"x" * 40)),
    "later_fragment": bytes(IP(src=CLIENT, dst=VIP, frag=3, proto=6) / Raw(b"x" * 40)),
    "ihl_too_small": b"\x44" + valid_packet()[1:],
    "tcp_offset_too_small": (lambda p: p[:32] + bytes([0x40]) + p[33:])(valid_packet()),
    "tcp_options_past_end": (lambda p: p[:32] + bytes([0xF0]) + p[33:])(valid_packet()[:52]),
    "ihl_past_end": b"\x4f" + valid_packet()[1:44],
    "neither_port": bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=2)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_is_dropped_and_counted(name):
    tr = RecordedTranslator(SECRET, PORT)
    assert tr.process(MALFORMED[name], "t", True, 1.0) == (DROP, None, ())
    assert counters(tr)["malformed"] == 1


def test_first_fragment_is_dropped_as_malformed():
    replica = Replica(77)
    replica.handshake()
    for raw in (client_pkt("PA", ISN_PLAIN + 1, replica.shared_seq(0), data=b"x" * 40),
                stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"x" * 40)):
        raw = bytearray(raw)
        raw[6] |= 0x20  # MF, offset 0: the first fragment of a larger segment
        assert replica.process(bytes(raw)) == (DROP, None, ())
    assert counters(replica.tr)["malformed"] == 2


def established_translator():
    replica = Replica(M32 - 50)
    replica.handshake()
    return replica


def test_truncations_of_the_headers_are_dropped():
    replica = established_translator()
    out = stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"abc",
                    options=[("NOP", None), ("NOP", None), ts(9, 9)])
    for raw in (valid_packet(), out, synack(M32 - 50)):
        header_len = 20 + (raw[32] >> 4) * 4
        for cut in range(header_len):
            before = counters(replica.tr)["malformed"]
            assert replica.process(raw[:cut]) == (DROP, None, ())
            assert counters(replica.tr)["malformed"] == before + 1


def test_truncations_inside_the_data_are_dropped():
    replica = established_translator()
    for raw in (client_pkt("PA", ISN_PLAIN + 1, replica.shared_seq(0), data=b"0123456789"),
                stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1,
                          data=b"0123456789")):
        for cut in range(len(raw) - 10, len(raw)):
            before = counters(replica.tr)["malformed"]
            assert replica.process(raw[:cut]) == (DROP, None, ())
            assert counters(replica.tr)["malformed"] == before + 1


def test_fuzz_random_bytes_never_raise():
    rng = random.Random(20240601)
    replica = established_translator()
    tr = replica.tr
    rejected = 0
    for n in range(3000):
        kind = n % 3
        if kind == 0:  # pure garbage
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 100)))
        else:  # plausible IPv4/TCP headers with random contents (deeper paths)
            size = rng.randrange(20, 120)
            raw = bytearray(rng.randrange(256) for _ in range(size))
            raw[0] = 0x45 if rng.random() < 0.9 else rng.randrange(256)
            if size > 9:
                raw[9] = 6
            if size > 7:
                raw[6] &= rng.choice([0x40, 0xFF])
                raw[7] = 0 if rng.random() < 0.9 else raw[7]
            ports = rng.choice([(CPORT, PORT), (PORT, CPORT)])
            if size >= 24:
                raw[20:24] = ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big")
            if size >= 16 and rng.random() < 0.5:
                raw[12:20] = (socket.inet_aton(CLIENT) + socket.inet_aton(VIP)
                              if ports[1] == PORT else socket.inet_aton(VIP)
                              + socket.inet_aton(CLIENT))
            if size >= 33 and kind == 2:
                raw[32] = (rng.randrange(5, 16) << 4) | (raw[32] & 0x0F)
            raw = bytes(raw)
        verdict, new, released = tr.process(raw, ("fuzz", n), n % 2 == 0, 100.0 + n * 1e-3)
        assert verdict in (ACCEPT, DROP, HOLD)
        if new is not None:
            assert verdict == ACCEPT and len(new) == len(raw)
        for token, payload in released:
            assert isinstance(payload, bytes)
        if kind == 0 and (len(raw) < 40 or raw[0] >> 4 != 4 or raw[9] != 6):
            assert (verdict, new) == (DROP, None)
            rejected += 1
        tr.expire(100.0 + n * 1e-3)
    assert counters(tr)["malformed"] >= rejected > 900


def test_mutated_valid_packets_never_raise():
    rng = random.Random(99)
    replica = established_translator()
    base = [client_pkt("A", ISN_PLAIN + 1, replica.shared_seq(0),
                       [("NOP", None), sack(1, 2, 3, 4), ts(1, 2)]),
            stack_pkt("PA", seq=replica.own_seq(0), ack=ISN_PLAIN + 1, data=b"abc",
                      options=[("MSS", 1460), ("NOP", None), ("WScale", 3), ts(5, 6)]),
            synack(M32 - 50)]
    for n in range(1500):
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(20, len(raw))] = rng.randrange(256)
        verdict, new, _ = replica.process(bytes(raw), token=n)
        assert verdict in (ACCEPT, DROP, HOLD)
        if new is not None:
            assert len(new) == len(raw)


# ---- 10. the connection table is bounded ----------------------------------------------------

def fill_table(tr):
    """8 connections seen at 0.0 .. 0.7; 41001 has a held packet (seen 0.15), 41000 is
    refreshed by a retransmitted SYN at 0.8."""
    for port in range(8):
        tr.process(syn(cport=41000 + port), "s", True, port / 10)
    assert len(tr.connections) == 8
    assert tr.process(client_pkt("A", ISN_PLAIN + 1, 5, cport=41001), "held-1", True,
                      0.15)[0] == HOLD
    tr.process(syn(cport=41000), "s", True, 0.8)
    assert len(tr.connections) == 8


def test_table_full_evicts_handshakes_first_then_the_least_recently_seen(monkeypatch):
    """A SYN flood must not cost established connections: connections still in their
    handshake go first; only if that is not enough, the least recently seen half."""
    monkeypatch.setattr(active, "MAX_CONNECTIONS", 8)
    tr = RecordedTranslator(SECRET, PORT)
    fill_table(tr)  # all 8 still in their handshake
    established = (KEY[0], 41003)
    tr.process(stack_pkt("SA", seq=777, ack=ISN_PLAIN + 1, cport=41003), "sa", False, 0.85)
    assert tr.connections[established].seq_off is not None
    tr.process(syn(cport=42000), "s", True, 0.9)
    assert set(tr.connections) == {established, (KEY[0], 42000)}
    assert counters(tr)["hold_expired"] == 0
    for port in range(100):
        tr.process(syn(cport=43000 + port), "s", True, 1.0 + port)
        assert len(tr.connections) <= 8
        assert established in tr.connections
    assert (KEY[0], 43099) in tr.connections


def test_held_tokens_of_evicted_connections_come_back_with_the_syn(monkeypatch):
    monkeypatch.setattr(active, "MAX_CONNECTIONS", 8)
    tr = RecordedTranslator(SECRET, PORT)
    fill_table(tr)
    tr.process(syn(cport=42000), "s", True, 0.9)  # evicts 41001 with its held packet
    assert (KEY[0], 41001) not in tr.connections
    assert tr.effects[5] == ("held-1",) and tr.expire(0.9) == []


def test_discarded_tokens_come_back_with_a_forced_expire(monkeypatch):
    monkeypatch.setattr(active, "MAX_CONNECTIONS", 2)
    tr = RecordedTranslator(SECRET, PORT)
    tr.process(syn(cport=41000), "s", True, 0.0)
    tr.process(syn(cport=41001), "s", True, 0.1)
    assert tr.process(client_pkt("A", ISN_PLAIN + 1, 5, cport=41000), "old", True, 0.2)[0] == HOLD
    tr.process(syn(ISN_PLAIN + 5, cport=41000), "s", True, 0.3)  # same port, new ISN, table full
    assert tr.dropped == ["old"] and tr.expire(0.3) == []


def test_full_table_keeps_working_connections_translating(monkeypatch):
    monkeypatch.setattr(active, "MAX_CONNECTIONS", 4)
    replica = Replica(77)
    replica.handshake()
    tr = replica.tr
    for port in range(3):
        tr.process(syn(cport=45000 + port), "s", True, 200.0 + port)
    replica.now = 300.0
    _, new, _ = replica.send(0, b"alive")  # the oldest is seen again
    tr.process(syn(cport=46000), "s", True, 301.0)
    assert KEY in tr.connections and len(tr.connections) <= 4
