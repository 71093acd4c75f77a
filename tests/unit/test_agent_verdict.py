"""Tests for sbft_ryu.agent.verdict: TCP flags from raw IPv4 bytes and the reply verdict.

Packets are built with scapy, as the kernel would hand them to NFQUEUE (IP header first).
"""

import random

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPOption_RR, IPv6, Raw, fragment

from sbft_ryu.agent import packet as pkt
from sbft_ryu.agent import verdict

SRC, DST = "10.0.0.11", "10.0.0.200"


def tcp(flags, options=None, payload=b"", ip_flags="DF", frag=0):
    ip = IP(src=SRC, dst=DST, flags=ip_flags, frag=frag)
    if options is not None:
        ip.options = options
    packet = ip / TCP(sport=5555, dport=40000, flags=flags, seq=1000, ack=2000)
    if payload:
        packet = packet / Raw(payload)
    return bytes(packet)


SYN_ACK = tcp("SA")
ACK = tcp("A")
DATA = tcp("PA", payload=b"HTTP/1.0 200 OK\r\n\r\nhello")
FIN = tcp("FA")
RST = tcp("R")
RST_ACK = tcp("RA")


# --- tcp_flags ---------------------------------------------------------------------------

@pytest.mark.parametrize("packet, flags", [
    (SYN_ACK, pkt.SYN | pkt.ACK),
    (ACK, pkt.ACK),
    (DATA, 0x08 | pkt.ACK),
    (FIN, pkt.FIN | pkt.ACK),
    (RST, pkt.RST),
    (RST_ACK, pkt.RST | pkt.ACK),
], ids=["syn-ack", "ack", "psh-ack", "fin-ack", "rst", "rst-ack"])
def test_tcp_flags_of_plain_packets(packet, flags):
    assert packet[0] == 0x45  # no IP options: the flags are at byte 33
    assert pkt.tcp_flags(packet) == flags


def test_tcp_flags_with_dont_fragment_and_without():
    # Linux sets DF on TCP; the DF bit shares byte 6 with the fragment offset
    assert pkt.tcp_flags(tcp("SA", ip_flags="DF")) == 0x12
    assert pkt.tcp_flags(tcp("SA", ip_flags=0)) == 0x12


def test_tcp_flags_with_ip_options_record_route():
    packet = tcp("SA", options=[IPOption_RR()])
    assert packet[0] & 0x0F > 5
    assert pkt.tcp_flags(packet) == 0x12


@pytest.mark.parametrize("option_bytes", [
    b"\x01\x01\x01\x01",  # four NOPs: ihl 6
    b"\x07\x27\x04" + b"\x00" * 36 + b"\x00",  # record route with 9 slots + EOL: ihl 15
], ids=["ihl6", "ihl15"])
def test_tcp_flags_with_raw_ip_options(option_bytes):
    packet = tcp("FA", options=option_bytes, payload=b"bye")
    ihl = packet[0] & 0x0F
    assert ihl == 5 + len(option_bytes) // 4
    assert packet[ihl * 4 + 13] == 0x11  # where the flags really are
    assert pkt.tcp_flags(packet) == 0x11


def test_tcp_flags_with_ip_options_and_truncated_tcp_header():
    packet = tcp("SA", options=b"\x01" * 40)  # 60-byte IP header, 20-byte TCP header
    assert pkt.tcp_flags(packet) == 0x12
    assert pkt.tcp_flags(packet[:79]) == -1  # long enough for 40, not for 60 + 20


@pytest.mark.parametrize("packet", [
    bytes(IP(src=SRC, dst=DST) / UDP(sport=5555, dport=40000) / Raw(b"x" * 40)),
    bytes(IP(src=SRC, dst=DST) / ICMP() / Raw(b"x" * 40)),
    bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=5555, dport=40000, flags="SA")),
    bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=5555, dport=40000, flags="R")),
], ids=["udp", "icmp", "ipv6-syn-ack", "ipv6-rst"])
def test_tcp_flags_of_non_tcp_or_non_ipv4_is_minus_one(packet):
    assert len(packet) >= 40
    assert pkt.tcp_flags(packet) == -1


def test_tcp_flags_with_ihl_below_five_is_minus_one():
    packet = bytearray(SYN_ACK)
    for ihl in range(5):
        packet[0] = 0x40 | ihl
        assert pkt.tcp_flags(bytes(packet)) == -1


@pytest.mark.parametrize("packet", [SYN_ACK, tcp("SA", options=[IPOption_RR()]), RST],
                         ids=["syn-ack", "syn-ack-options", "rst"])
def test_tcp_flags_of_every_truncation_is_minus_one(packet):
    for length in range(len(packet)):
        assert pkt.tcp_flags(packet[:length]) == -1, length
    assert pkt.tcp_flags(packet) >= 0


def test_tcp_flags_accepts_memoryview_and_bytearray():
    assert pkt.tcp_flags(bytearray(SYN_ACK)) == 0x12
    assert pkt.tcp_flags(memoryview(SYN_ACK)) == 0x12


def test_tcp_flags_of_non_first_fragments_is_minus_one():
    whole = IP(src=SRC, dst=DST) / TCP(sport=5555, dport=40000, flags="PA") / Raw(b"y" * 200)
    fragments = [bytes(f) for f in fragment(whole, fragsize=48)]
    assert len(fragments) > 2
    first, rest = fragments[0], fragments[1:]
    assert pkt.tcp_flags(first) == 0x18  # the first fragment (MF set) has the header
    for packet in rest:
        assert len(packet) >= 40
        assert pkt.tcp_flags(packet) == -1


@pytest.mark.parametrize("frag", [1, 4, 255, 256, 0x1000, 0x1FFF])
@pytest.mark.parametrize("ip_flags", [0, "MF", "DF"])
def test_tcp_flags_with_fragment_offset_is_minus_one(frag, ip_flags):
    # any non-zero 13-bit offset, in either byte, whatever the flag bits: not a TCP header
    assert pkt.tcp_flags(tcp("SA", ip_flags=ip_flags, frag=frag)) == -1


def test_tcp_flags_of_random_garbage_never_raises():
    rng = random.Random(20240501)
    for _ in range(2000):
        data = rng.randbytes(rng.randint(0, 200))
        result = pkt.tcp_flags(data)
        assert isinstance(result, int)
        assert -1 <= result <= 255


def test_tcp_flags_of_random_ipv4_looking_bytes_never_raises():
    rng = random.Random(7)
    found = 0
    for _ in range(2000):
        length = rng.randint(0, 120)
        rest = rng.randbytes(max(length - 1, 0))
        data = (bytes([0x40 | rng.randint(0, 15)]) + rest)[:length]
        if len(data) > 9 and rng.random() < 0.5:  # half the time: unfragmented TCP
            data = bytearray(data)
            data[6] &= 0xE0
            data[7] = 0
            data[9] = 6
            data = bytes(data)
        result = pkt.tcp_flags(data)
        assert isinstance(result, int)
        assert -1 <= result <= 255
        found += result >= 0
    assert found > 0  # the generator did reach the parsing path


# --- reply_verdict -----------------------------------------------------------------------

@pytest.mark.parametrize("packet", [SYN_ACK, ACK, DATA, FIN, RST, RST_ACK],
                         ids=["syn-ack", "ack", "data", "fin", "rst", "rst-ack"])
def test_primary_accepts_every_reply(packet):
    assert verdict.reply_verdict(packet, True) == (verdict.ACCEPT, verdict.ACCEPTED)


@pytest.mark.parametrize("packet", [SYN_ACK, ACK, DATA, FIN],
                         ids=["syn-ack", "ack", "data", "fin"])
def test_backup_drops_replies(packet):
    assert verdict.reply_verdict(packet, False) == (verdict.DROP, verdict.DROPPED)


@pytest.mark.parametrize("packet", [RST, RST_ACK], ids=["rst", "rst-ack"])
def test_backup_drops_rsts_with_their_own_counter(packet):
    assert verdict.reply_verdict(packet, False) == (verdict.DROP, verdict.RST_DROPPED)


@pytest.mark.parametrize("primary", [True, False], ids=["primary", "backup"])
@pytest.mark.parametrize("packet", [
    b"",
    SYN_ACK[:39],
    bytes(IP(src=SRC, dst=DST) / UDP(sport=5555) / Raw(b"x" * 40)),
    tcp("SA", frag=8),
    b"\x60" + SYN_ACK[1:],
], ids=["empty", "truncated", "udp", "fragment", "version6"])
def test_malformed_is_dropped_for_both_roles(packet, primary):
    assert verdict.reply_verdict(packet, primary) == (verdict.DROP, verdict.MALFORMED)


def test_verdict_constants():
    assert verdict.ACCEPT != verdict.DROP
    assert verdict.COUNTER_NAMES[verdict.ACCEPTED] == "accepted"
    assert verdict.COUNTER_NAMES[verdict.DROPPED] == "dropped"
    assert verdict.COUNTER_NAMES[verdict.RST_DROPPED] == "rst_dropped"
    assert verdict.COUNTER_NAMES[verdict.MALFORMED] == "malformed"
    slots = sorted([verdict.ACCEPTED, verdict.DROPPED, verdict.RST_DROPPED, verdict.MALFORMED])
    assert slots == list(range(len(verdict.COUNTER_NAMES)))
