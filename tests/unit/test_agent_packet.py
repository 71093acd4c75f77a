"""Tests for sbft_ryu.agent.packet: the header accessors, the one TCP option walker, the one
incremental checksum (against a from-scratch checksum) and the one builder of the segments the
agent makes itself."""

import random
import socket

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import packet
from sbft_ryu.agent.packet import changed_by, checksum_after

from fakes import assert_checksums_valid, ones_sum

M32 = 2**32


def segment(flags="PA", data=b"", options=(), ip_flags="DF", **ip):
    raw = IP(src="10.0.0.31", dst="10.0.0.100", flags=ip_flags, **ip) / TCP(
        sport=40000, dport=5555, flags=flags, seq=7, ack=9, window=512, options=list(options))
    return bytes(raw / Raw(data)) if data else bytes(raw)


# ---- parsing -------------------------------------------------------------------------------

def test_parse_reads_every_field_of_a_whole_datagram():
    raw = segment(data=b"hello", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    assert packet.parse(raw) == (20, 32, 40000, 5555, 7, 9, 0x18, 512, IP(raw)[TCP].chksum)
    assert packet.header_lengths(raw) == (20, 32)
    assert packet.ports(raw) == (40000, 5555)
    assert packet.destination(raw) == (socket.inet_aton("10.0.0.100"), 5555)
    assert raw[packet.SRC] == socket.inet_aton("10.0.0.31")


@pytest.mark.parametrize("raw", [
    segment()[:39],  # too short
    segment(ip_flags="MF"),  # a fragment
    bytes(IP(src="10.0.0.31", dst="10.0.0.100", frag=3) / TCP()),  # a later fragment
    segment() + b"x",  # longer than announced
    bytes(IP(src="10.0.0.31", dst="10.0.0.100") / Raw(b"\0" * 40)),  # no TCP (protocol 0)
], ids=["short", "mf", "offset", "length", "not-tcp"])
def test_parse_refuses_what_is_not_a_whole_tcp_datagram(raw):
    with pytest.raises(ValueError):
        packet.parse(raw)


def test_parse_refuses_a_tcp_header_length_below_20():
    raw = bytearray(segment())
    raw[20 + packet.OFFSET] = 4 << 4
    with pytest.raises(ValueError):
        packet.parse(bytes(raw))


# ---- the option walker ----------------------------------------------------------------------

def test_options_yields_each_well_formed_option_and_skips_nops():
    buf = bytes([1, 1, 8, 10]) + bytes(8) + bytes([3, 3, 7, 1, 0, 9, 9])
    assert list(packet.options(buf, 0, len(buf))) == [(8, 2, 10), (3, 12, 3)]  # stops at EOL


@pytest.mark.parametrize("buf", [bytes([8]), bytes([8, 1]), bytes([8, 12, 0, 0])],
                         ids=["no-length", "length-below-2", "beyond-the-end"])
def test_options_stops_at_a_malformed_option(buf):
    assert list(packet.options(buf, 0, len(buf))) == []


# ---- the builder and the data rewrite -------------------------------------------------------

def test_build_makes_a_valid_segment_with_options():
    client, vip = socket.inet_aton("10.0.0.31"), socket.inet_aton("10.0.0.100")
    ts = bytes([1, 1, 8, 10]) + (5).to_bytes(4, "big") + (6).to_bytes(4, "big")
    raw = packet.build(client, vip, 40000, 5555, 100, 200, packet.ACK, 777, ts)
    assert_checksums_valid(raw)
    parsed = IP(raw)
    assert (parsed.src, parsed.dst, parsed.flags, parsed.ttl, parsed.id) == (
        "10.0.0.31", "10.0.0.100", "DF", 64, 0)
    assert (parsed[TCP].seq, parsed[TCP].ack, parsed[TCP].flags, parsed[TCP].window) == (
        100, 200, "A", 777)
    assert parsed[TCP].options == [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]


def test_with_data_altered_fixes_the_checksum_and_leaves_short_packets():
    raw = segment(data=b"HTTP/1.0 200 OK")
    altered = packet.with_data_altered(raw)
    assert IP(altered)[Raw].load == b"XXTP/1.0 200 OK"
    assert_checksums_valid(altered)
    short = segment(data=b"H")
    assert packet.with_data_altered(short) == short


def test_clear_ip_id_only_for_a_dont_fragment_datagram():
    raw = segment(id=4321)
    buf = bytearray(raw)
    packet.clear_ip_id(buf, raw)
    assert IP(bytes(buf)).id == 0 and ones_sum(bytes(buf)[:20]) == 0xFFFF
    may_fragment = segment(id=4321, ip_flags=0)
    buf = bytearray(may_fragment)
    packet.clear_ip_id(buf, may_fragment)
    assert bytes(buf) == may_fragment


# ---- the incremental checksum ----------------------------------------------------------------

def scratch_checksum(data):
    return 0xFFFF - ones_sum(data)


def checksum_delta(csum, old, new, regions):
    """The packet module's one incremental checksum over the changed (disjoint) regions."""
    return checksum_after(csum, sum(changed_by(old, new, start, end) for start, end in regions))


def test_checksum_delta_against_a_from_scratch_checksum():
    rng = random.Random(1624)
    for _ in range(3000):
        size = rng.randrange(20, 120)
        old = bytearray(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.05:
            old = bytearray(size)  # all zero: the -0 case
        csum = scratch_checksum(old)
        new = bytearray(old)
        regions = []
        for _ in range(rng.randint(0, 3)):
            start = rng.randrange(0, size // 2) * 2
            end = min(size - size % 2, start + 2 * rng.randint(1, 6))
            if end <= start:
                continue
            for i in range(start, end):
                new[i] = rng.choice([0, 0xFF, rng.randrange(256)])
            regions.append((start, end))
        regions.sort()
        merged = []  # checksum_delta wants disjoint regions
        for start, end in regions:
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        got = checksum_delta(csum, bytes(old), bytes(new), merged)
        want = scratch_checksum(new)
        assert 0 <= got <= 0xFFFF
        assert got == want or got % 0xFFFF == want % 0xFFFF  # +0 / -0


def test_checksum_delta_with_the_checksum_inside_the_header():
    rng = random.Random(7)
    for _ in range(2000):
        size = rng.randrange(20, 80)
        header = bytearray(rng.randrange(256) for _ in range(size))
        header[16:18] = b"\0\0"
        header[16:18] = scratch_checksum(header).to_bytes(2, "big")
        assert ones_sum(header) == 0xFFFF
        new = bytearray(header)
        new[4:8] = rng.randrange(M32).to_bytes(4, "big")
        new[20:size - size % 2] = bytes(rng.randrange(256) for _ in range(size - size % 2 - 20))
        csum = checksum_delta(int.from_bytes(header[16:18], "big"), memoryview(header),
                              memoryview(new), [(4, 8), (20, size - size % 2)])
        new[16:18] = csum.to_bytes(2, "big")
        assert ones_sum(new) == 0xFFFF


def test_checksum_delta_without_regions_is_identity():
    for csum in (1, 0x1234, 0xFFFE, 0):
        assert checksum_delta(csum, b"ab", b"ab", []) == csum
    assert checksum_delta(0xFFFF, b"", b"", []) == 0  # -0 becomes +0


