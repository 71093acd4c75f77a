"""Parse the subset of ovs-ofctl flow syntax (``ovs-ofctl add-flow``) that people actually write.

A flows file holds one flow per line; ``#`` starts a comment and blank lines are skipped. A flow
is match fields separated by commas and/or whitespace, then ``actions=`` with the rest of the line:

    ip,idle_timeout=0,nw_dst=192.168.7.111,actions=output:11
    arp actions=NORMAL

Supported, with lower-case names only:

* shorthands ``ip``, ``arp``, ``tcp``, ``udp``, ``icmp``;
* ``in_port``, ``dl_src``, ``dl_dst``, ``dl_vlan`` (0..4095, or 0xffff for "no VLAN tag"),
  ``dl_type``, ``nw_proto``, ``nw_src``, ``nw_dst`` (``addr``, ``addr/len`` or ``addr/mask``; any
  mask, contiguous or not), ``tp_src``, ``tp_dst``, ``arp_op``, ``arp_spa``, ``arp_tpa`` and the
  OpenFlow 1.2+ spellings in ``ALIASES``;
* ``priority``, ``idle_timeout``, ``hard_timeout``, ``cookie``.

Integers are decimal or ``0x`` hex. As in OpenFlow 1.0, on ARP flows ``nw_src``/``nw_dst``/
``nw_proto`` are the sender address, target address and opcode (stored as ``arp_spa``/``arp_tpa``/
``arp_op``). Field order does not matter; prerequisites (``nw_*`` need ip or arp, ``tp_*`` need tcp
or udp, ``arp_*`` need arp) are checked once the line is read.

Actions, comma separated: ``output:PORT``, a bare port number, the reserved ports NORMAL, FLOOD,
ALL, CONTROLLER, IN_PORT, LOCAL (any case), ``mod_dl_src:MAC``, ``mod_dl_dst:MAC``,
``mod_vlan_vid:VID``, ``strip_vlan``, and ``drop`` alone (an empty action list). Unlike
ovs-ofctl, an empty ``actions=`` is an error: write ``drop``.

Everything else (tables, masks on MACs, IPv6, ``CONTROLLER:max_len``, ...) is rejected with a
:class:`FlowSyntaxError` that names the offending text.
"""

import ipaddress
import os
import re

from sbft_ryu.model import (
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    EXACT_MASK,
    IP_PROTO_ICMP,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    RESERVED_PORTS,
    FlowSpec,
    Match,
    Output,
    SetDlDst,
    SetDlSrc,
    SetVlanVid,
    StripVlan,
)

__all__ = ["ALIASES", "FlowSyntaxError", "load_flows_file", "parse_flow", "parse_flows"]


class FlowSyntaxError(ValueError):
    """A flow the parser cannot accept: where (``path``, ``line``), what (``token``) and why."""

    def __init__(self, path, line, token, reason):
        self.path, self.line, self.token, self.reason = path, line, token, reason
        super().__init__(f"{path}:{line}: {reason} near '{token}'")


_MAX_PORT = 0xFFFFFF00
_INT = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_MAC = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}")
_SEPARATORS = re.compile(r"[\s,]+")
_ACTIONS = re.compile(r"(?:^|[\s,])actions=")


def _uint(low, high, shown):
    """A parser for integers in low..high; ``shown`` is how error messages write the range."""

    def parse(key, text):
        # int(text, 0) also rejects decimal leading zeros ("011"), which C's strtoul reads as octal.
        try:
            value = int(text, 0) if _INT.fullmatch(text) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"{key} must be {shown}")
        return value

    return parse


def _mac(key, text):
    if not _MAC.fullmatch(text):
        raise ValueError("invalid MAC address")
    return ":".join(f"{int(octet, 16):02x}" for octet in text.split(":"))


def _ipv4(key, text):
    """``addr``, ``addr/len`` or ``addr/dotted-mask`` -> (masked address, mask)."""
    address, slash, mask = text.partition("/")
    try:
        address = ipaddress.IPv4Address(address)
        if not slash:
            mask = ipaddress.IPv4Address(EXACT_MASK)
        elif re.fullmatch(r"[0-9]{1,2}", mask) and int(mask) <= 32:
            mask = ipaddress.IPv4Network(f"0.0.0.0/{int(mask)}").netmask
        else:
            mask = ipaddress.IPv4Address(mask)
    except ValueError:
        raise ValueError("invalid IPv4 address or mask") from None
    return str(ipaddress.IPv4Address(int(address) & int(mask))), str(mask)


def _vlan(key, text):
    vid = _uint(0, 0xFFFF, "0..4095 or 0xffff")(key, text)
    if 4095 < vid < 0xFFFF:
        raise ValueError(f"{key} must be 0..4095 or 0xffff")
    return vid


_U16 = _uint(0, 0xFFFF, "0..65535")
_FIELDS = {
    "in_port": _uint(1, _MAX_PORT, "1..0xffffff00"),
    "dl_src": _mac,
    "dl_dst": _mac,
    "dl_vlan": _vlan,
    "dl_type": _uint(0, 0xFFFF, "0..0xffff"),
    "nw_proto": _uint(0, 255, "0..255"),
    "nw_src": _ipv4,
    "nw_dst": _ipv4,
    "tp_src": _U16,
    "tp_dst": _U16,
    "arp_op": _uint(0, 255, "0..255"),  # OpenFlow 1.0 carries the opcode in 8-bit nw_proto
    "arp_spa": _ipv4,
    "arp_tpa": _ipv4,
    "priority": _U16,
    "idle_timeout": _U16,
    "hard_timeout": _U16,
    "cookie": _uint(0, 2**64 - 1, "0..0xffffffffffffffff"),
}
_FLOW_ATTRIBUTES = ("priority", "cookie", "idle_timeout", "hard_timeout")

# OpenFlow 1.2+ (OXM) spellings -> the ovs-ofctl names used in model.Match.
ALIASES = {
    "eth_src": "dl_src",
    "eth_dst": "dl_dst",
    "eth_type": "dl_type",
    "vlan_vid": "dl_vlan",
    "ip_proto": "nw_proto",
    "ip_src": "nw_src",
    "ipv4_src": "nw_src",
    "ip_dst": "nw_dst",
    "ipv4_dst": "nw_dst",
    "tcp_src": "tp_src",
    "udp_src": "tp_src",
    "tcp_dst": "tp_dst",
    "udp_dst": "tp_dst",
}

_SHORTHANDS = {
    "ip": {"dl_type": ETH_TYPE_IP},
    "arp": {"dl_type": ETH_TYPE_ARP},
    "tcp": {"dl_type": ETH_TYPE_IP, "nw_proto": IP_PROTO_TCP},
    "udp": {"dl_type": ETH_TYPE_IP, "nw_proto": IP_PROTO_UDP},
    "icmp": {"dl_type": ETH_TYPE_IP, "nw_proto": IP_PROTO_ICMP},
}

# On ARP flows OpenFlow 1.0's nw_* fields carry ARP's addresses and opcode.
_ARP_FIELDS = {"nw_src": "arp_spa", "nw_dst": "arp_tpa", "nw_proto": "arp_op"}


def _action(item):
    """One action as written -> a model action; raises ValueError(reason)."""
    name, colon, argument = item.partition(":")
    if item.upper() in RESERVED_PORTS:
        return Output(item.upper())
    if _INT.fullmatch(item) or (name == "output" and colon):
        port = item if not colon else argument
        if port.upper() in RESERVED_PORTS:
            return Output(port.upper())
        return Output(_uint(1, _MAX_PORT, "1..0xffffff00")("output port", port))
    if name.upper() == "CONTROLLER" and colon:
        raise ValueError("CONTROLLER:max_len is not supported")
    if name in ("mod_dl_src", "mod_dl_dst") and colon:
        mac = _mac(name, argument)
        return SetDlSrc(mac) if name == "mod_dl_src" else SetDlDst(mac)
    if name == "mod_vlan_vid" and colon:
        return SetVlanVid(_uint(0, 4095, "0..4095")(name, argument))
    if item == "strip_vlan":
        return StripVlan()
    raise ValueError("unknown action")


def _collect(head, error):
    """The match part's tokens -> {canonical name: (value, token, given explicitly)}."""
    fields = {}
    shorthands = set()

    def put(name, value, token, explicit):
        if name in fields:
            old_value, old_token, old_explicit = fields[name]
            if explicit and old_explicit:
                raise error(token, "duplicate field")
            if value != old_value:
                raise error(token, f"conflicts with {old_token}")
            if not explicit:
                return
        fields[name] = (value, token, explicit)

    for token in _SEPARATORS.split(head):
        if not token:
            continue
        key, equals, value = token.partition("=")
        if not equals:
            if token not in _SHORTHANDS:
                raise error(token, "unknown field")
            if token in shorthands:
                raise error(token, "duplicate field")
            shorthands.add(token)
            for name, implied in _SHORTHANDS[token].items():
                put(name, implied, token, False)
            continue
        name = ALIASES.get(key, key)
        if name not in _FIELDS:
            raise error(token, "unknown field")
        try:
            parsed = _FIELDS[name](key, value)
        except ValueError as exc:
            raise error(token, str(exc)) from None
        put(name, parsed, token, True)
    return fields


def _check(fields, error):
    """Move ARP's nw_* fields to arp_* and enforce prerequisites, in place."""
    dl_type = fields.get("dl_type", (None,))[0]
    if dl_type == ETH_TYPE_ARP:
        for nw_name, arp_name in _ARP_FIELDS.items():
            if nw_name in fields:
                if arp_name in fields:
                    raise error(fields[nw_name][1], "duplicate field")
                fields[arp_name] = fields.pop(nw_name)
    nw_proto = fields.get("nw_proto", (None,))[0]
    for name, (_, token, _) in fields.items():
        key = token.partition("=")[0]
        if name in ("nw_src", "nw_dst", "nw_proto") and dl_type != ETH_TYPE_IP:
            raise error(token, f"{key} needs ip or arp")
        if name in ("tp_src", "tp_dst") and (
            dl_type != ETH_TYPE_IP or nw_proto not in (IP_PROTO_TCP, IP_PROTO_UDP)
        ):
            raise error(token, f"{key} needs tcp or udp")
        if name.startswith("arp_") and dl_type != ETH_TYPE_ARP:
            raise error(token, f"{key} needs arp")


def _actions(tail, error):
    items = [item for item in _SEPARATORS.split(tail) if item]
    if not items:
        raise error("actions=", "missing actions")
    if "drop" in items:
        if len(items) > 1:
            raise error("drop", "drop cannot be combined with other actions")
        return ()
    actions = []
    for item in items:
        try:
            actions.append(_action(item))
        except ValueError as exc:
            raise error(item, str(exc)) from None
    return tuple(actions)


def parse_flow(text, path="<string>", line=1):
    """Parse one flow (no comment) into a FlowSpec; errors name ``path`` and ``line``."""

    def error(token, reason):
        return FlowSyntaxError(path, line, token, reason)

    found = _ACTIONS.search(text)
    if not found:
        raise error(text.strip(), "missing actions=")
    fields = _collect(text[: found.start()], error)
    _check(fields, error)
    actions = _actions(text[found.end() :], error)
    values = {name: value for name, (value, _, _) in fields.items()}
    attributes = {name: values.pop(name) for name in _FLOW_ATTRIBUTES if name in values}
    return FlowSpec(Match(**values), actions, **attributes)


def parse_flows(text, path):
    """Parse a flows file's text; the first bad line raises FlowSyntaxError."""
    flows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.partition("#")[0]
        if line.strip():
            flows.append(parse_flow(line, path, number))
    return tuple(flows)


def load_flows_file(path):
    """Read a UTF-8 flows file and parse it; an unreadable file is a FlowSyntaxError at line 0."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FlowSyntaxError(path, 0, path, f"cannot read flows file: {reason}") from exc
    return parse_flows(text, path)
