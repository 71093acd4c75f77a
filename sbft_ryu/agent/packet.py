"""IPv4/TCP bytes for the agent: the one place that knows where the header fields are.

Accessors and field offsets, the one TCP option walker, the one incremental checksum
(RFC 1624) and the one builder of the segments the agent makes itself (RSTs to a client,
catch-up ACKs for its own stack). Everything works on ``bytes``/``bytearray`` with ``struct``;
nothing here keeps state. TCP field offsets (``SEQ``, ``ACK_NO``, ...) count from the start of
the TCP header (``ihl``), addresses from the start of the datagram.
"""

import struct

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IPPROTO_TCP = 6
MASK32 = 0xFFFFFFFF
HALF32 = 0x80000000

# IPv4 header
SRC = slice(12, 16)  # source address
DST = slice(16, 20)  # destination address
IP_ID = 4
FRAGMENT = 6  # the byte with the DF and MF flags
IP_CHECKSUM = 10
DONT_FRAGMENT = 0x40
# TCP header, from its start
SPORT = 0
DPORT = 2
SEQ = 4
ACK_NO = 8
OFFSET = 12
FLAGS = 13
WINDOW = 14
CHECKSUM = 16
OPTIONS = 20
# TCP option kinds
WSCALE, SACK, TIMESTAMP = 3, 5, 8
NOP_NOP_TS = b"\x01\x01\x08\x0a"  # Linux's usual layout: 12 bytes of options, TS at +4/+8

TCP_HEADER = struct.Struct("!HHIIBBHH")  # ports, seq, ack, data offset, flags, window, checksum
U32 = struct.Struct("!I")
U16 = struct.Struct("!H")
IPV4_HEAD = struct.Struct("!BxHxxBBxB")  # version/IHL, total length, flags+fragment, protocol
_IPV4_FLAGS = struct.Struct("!B5xHxB")  # version/IHL, flags+fragment offset, protocol
# header lengths by the byte that holds them (a table: the hot path does one lookup)
IHL = tuple((b & 0x0F) * 4 if b >> 4 == 4 else 0 for b in range(256))  # 0: not IPv4
THL = tuple((b >> 4) * 4 for b in range(256))  # from the TCP data offset byte
FRAGMENTED = 0x3F  # MF and the fragment offset's high bits, in the byte at offset 6
_IP_HEAD = struct.Struct("!BBHHHBBH4s4s")
_TCP_HEAD = struct.Struct("!HHIIBBHHH")


def serial_gt(a, b):
    """a > b in 32-bit serial number arithmetic (RFC 1982)."""
    return 0 < ((a - b) & MASK32) < HALF32


def parse(payload):
    """(ihl, thl, sport, dport, seq, ack, flags, window, checksum) of a whole, unfragmented
    IPv4/TCP datagram whose length is the one announced; ValueError (or struct.error)
    otherwise."""
    if len(payload) < 40:
        raise ValueError
    version_ihl, total, fragment, fragment_lo, protocol = IPV4_HEAD.unpack_from(payload)
    ihl = IHL[version_ihl]
    if (ihl < 20 or protocol != IPPROTO_TCP or fragment & FRAGMENTED or fragment_lo
            or total != len(payload)):
        raise ValueError
    sport, dport, seq, ack, offset, flags, window, csum = TCP_HEADER.unpack_from(payload, ihl)
    thl = THL[offset]
    if thl < 20 or total < ihl + thl:
        raise ValueError
    return ihl, thl, sport, dport, seq, ack, flags, window, csum


def header_lengths(payload):
    """(IP header length, TCP header length) of a datagram known to be well formed."""
    ihl = (payload[0] & 0x0F) * 4
    return ihl, (payload[ihl + OFFSET] >> 4) * 4


def tcp_flags(payload):
    """TCP flags of an IPv4 packet, or -1 if it is not a whole, first-fragment TCP header."""
    if len(payload) < 40:
        return -1
    version_ihl, fragment, protocol = _IPV4_FLAGS.unpack_from(payload)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or protocol != IPPROTO_TCP:
        return -1
    if fragment & 0x1FFF:  # a fragment offset: only the first fragment carries TCP
        return -1
    if len(payload) < ihl + 20:
        return -1
    return payload[ihl + FLAGS]


def ports(payload):
    """(source port, destination port) of a TCP datagram (None if too short for them)."""
    if len(payload) < 24:
        return None
    ihl = (payload[0] & 0x0F) * 4
    if len(payload) < ihl + 4:
        return None
    return struct.unpack_from("!HH", payload, ihl)


def is_tcp(payload):
    return len(payload) >= 40 and payload[9] == IPPROTO_TCP


def options(buf, start, end):
    """(kind, offset, length) of each well-formed TCP option in buf[start:end]; stops at the
    end-of-options kind or at the first malformed one (the rest is left as it is)."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            return
        length = buf[i + 1]
        if length < 2 or i + length > end:
            return
        yield kind, i, length
        i += length


def checksum_after(csum, delta):
    """The Internet checksum after the summed data changed by ``delta`` (new - old of
    16-bit-aligned fields; a 32-bit field counts as one number since 2**16 = 1 mod 0xFFFF);
    ``checksum_after(0xFFFF, sum)`` is the checksum of data summing to ``sum``."""
    result = (0xFFFF - csum + delta) % 0xFFFF
    return 0xFFFF - result if result else 0


def changed_by(old, new, start, end):
    """``delta`` for :func:`checksum_after` of bytes [start, end) (16-bit aligned)."""
    return int.from_bytes(new[start:end], "big") - int.from_bytes(old[start:end], "big")


def set_tcp_checksum(buf, ihl, old, delta):
    """Patch the TCP checksum of ``buf`` for a change of ``delta`` from ``old``."""
    U16.pack_into(buf, ihl + CHECKSUM,
                  checksum_after(U16.unpack_from(old, ihl + CHECKSUM)[0], delta))


def clear_ip_id(buf, payload):
    """Set the IP ID of a don't-fragment datagram to 0 (it means nothing there), fixing the
    header checksum; a datagram that may be fragmented keeps its ID."""
    if payload[FRAGMENT] & DONT_FRAGMENT and (payload[IP_ID] or payload[IP_ID + 1]):
        ip_id = U16.unpack_from(payload, IP_ID)[0]
        buf[IP_ID] = buf[IP_ID + 1] = 0
        U16.pack_into(buf, IP_CHECKSUM,
                      checksum_after(U16.unpack_from(payload, IP_CHECKSUM)[0], -ip_id))


def build(src, dst, sport, dport, seq, ack, flags, window=0, tcp_options=b""):
    """A TCP segment without data (IPv4, DF, TTL 64, ID 0), checksums filled in."""
    ip = bytearray(_IP_HEAD.pack(0x45, 0, 40 + len(tcp_options), 0, 0x4000, 64, IPPROTO_TCP,
                                 0, src, dst))
    tcp = bytearray(_TCP_HEAD.pack(sport, dport, seq, ack, (5 + len(tcp_options) // 4) << 4,
                                   flags, window, 0, 0) + tcp_options)
    U16.pack_into(ip, IP_CHECKSUM, checksum_after(0xFFFF, int.from_bytes(ip, "big")))
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    U16.pack_into(tcp, CHECKSUM, checksum_after(0xFFFF, int.from_bytes(pseudo + tcp, "big")))
    return bytes(ip + tcp)


def with_data_altered(payload, replacement=b"XX"):
    """``payload`` with its first data bytes replaced by ``replacement`` (an even number of
    bytes), checksum fixed; as it is when it carries fewer data bytes."""
    ihl, thl = header_lengths(payload)
    data = ihl + thl
    if len(payload) < data + len(replacement):
        return payload
    buf = bytearray(payload)
    buf[data:data + len(replacement)] = replacement
    set_tcp_checksum(buf, ihl, payload, changed_by(payload, buf, data, data + len(replacement)))
    return bytes(buf)


def destination(payload):
    """(destination address, destination port) of a TCP datagram; None if too short."""
    found = ports(payload)
    return None if found is None else (bytes(payload[DST]), found[1])
