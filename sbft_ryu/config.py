"""The ``[sbft]`` options: registered once with oslo.config, validated once, then frozen.

Ryu reads its configuration through oslo.config (``ryu-manager --config-file FILE``); the app
calls :func:`register_opts` and then :func:`load_config`, which checks every value and every rule
that spans options and returns a frozen :class:`SbftConfig`. Every problem is one
:class:`ConfigError` naming the option, the value and what was expected. The embedded defaults
describe the default Mininet topology (``mininet/sbft_topo.py``), so no file is needed there.
"""

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

from sbft_ryu import flowfile
from sbft_ryu.model import FlowSpec, Replica

GROUP = "sbft"

# Flows installed when no flows_file is given: plain L2 learning for everything the service
# flows do not claim (they sit at higher priorities).
BUILTIN_FLOWS = "priority=0,actions=NORMAL\n"
BUILTIN_FLOWS_NAME = "<built-in flows>"

DEFAULT_REPLICAS = (
    "lb1 10.0.0.11 00:00:00:00:01:01 1",
    "lb2 10.0.0.12 00:00:00:00:01:02 2",
    "lb3 10.0.0.13 00:00:00:00:01:03 3",
)

MODES = ("passive", "active")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")
_HEX = re.compile(r"^(0x)?[0-9a-f]{1,16}$")
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]*)?$")
MAX_PORT = 0xFFFFFF00


class ConfigError(ValueError):
    """An invalid ``[sbft]`` value: names the option, the value and what was expected."""

    def __init__(self, option, value, expected):
        self.option = option
        self.value = value
        self.expected = expected
        super().__init__(f"[{GROUP}] {option} = {value!r}: expected {expected}")


@dataclass(frozen=True)
class SbftConfig:
    vip: str
    vmac: str
    service_port: int
    replicas: Tuple[Replica, ...]
    flows: Tuple[FlowSpec, ...]
    flows_source: str
    dpid: Optional[int]
    heartbeat_timeout: float
    heartbeat_interval: float
    agent_notify_port: int
    startup_grace: float
    service_priority: int
    mode: str
    # random per start unless configured: not part of a config's identity, never printed
    active_secret: bytes = field(default=b"", compare=False, repr=False)
    active_wscale: int = 7
    replica_keys: dict = field(default_factory=dict, compare=False, repr=False)
    voting: bool = False
    vote_port: int = 5557
    vote_hold: float = 0.2
    suspicion_threshold: float = 3.0
    suspicion_half_life: float = 5.0
    suspicion_rate: float = 0.01
    unvoted: str = "serve"
    spares: Tuple[Replica, ...] = ()  # run like members, outside the voting set until promoted
    spare_after: float = 5.0

    @property
    def f(self):
        """Byzantine replicas tolerated: n = 2f + 1 (or more) configured members; spares do
        not count (n and f are those of the ``replica`` lines)."""
        return max(0, (len(self.replicas) - 1) // 2)

    @property
    def nodes(self):
        """Members then spares, in configured order: every replica the controller knows."""
        return self.replicas + self.spares

    def replica(self, name):
        for replica in self.nodes:
            if replica.name == name:
                return replica
        return None


def _opts():
    from oslo_config import cfg

    return [
        cfg.StrOpt("flows_file", default="",
                   help="ovs-ofctl-style flows installed on every switch (empty: built-in "
                        "'priority=0,actions=NORMAL')"),
        cfg.StrOpt("vip", default="10.0.0.100", help="service virtual IPv4 address"),
        cfg.StrOpt("vmac", default="02:00:0a:00:00:64",
                   help="MAC address the controller answers ARP for the VIP with"),
        cfg.StrOpt("service_port", default="5555", help="service TCP port"),
        cfg.MultiStrOpt("replica", default=list(DEFAULT_REPLICAS),
                        help="NAME IP MAC PORT, once per replica in priority order; "
                             "a single empty value means no replicas"),
        cfg.StrOpt("dpid", default="",
                   help="datapath id of the service switch (empty: every switch)"),
        cfg.StrOpt("heartbeat_timeout", default="0.15",
                   help="seconds of agent silence before a replica is down (0: port state only)"),
        cfg.StrOpt("heartbeat_interval", default="0.05",
                   help="seconds between agent heartbeats, told to agents in every reply"),
        cfg.StrOpt("agent_notify_port", default="5556",
                   help="UDP port agents listen on for role-change nudges (0: none)"),
        cfg.StrOpt("startup_grace", default="1.0",
                   help="seconds the first election waits for every replica to come up"),
        cfg.StrOpt("service_priority", default="40000",
                   help="lowest priority of the service flows (they use this .. +99)"),
        cfg.StrOpt("mode", default="passive",
                   help="passive | active (replicas share one TCP sequence space)"),
        cfg.StrOpt("active_secret", default="",
                   help="hex key from which replicas derive shared ISNs in active mode "
                        "(empty: a random one per controller start)"),
        cfg.StrOpt("active_wscale", default="7",
                   help="the window scale every replica announces in active mode"),
        cfg.MultiStrOpt("replica_key", default=[],
                        help="NAME HEXKEY, once per replica: authenticates that replica's "
                             "heartbeats, reports and vote batches"),
        cfg.StrOpt("voting", default="off",
                   help="on: Byzantine output voting (needs mode = active and every "
                        "replica_key)"),
        cfg.StrOpt("vote_port", default="5557", help="UDP port agents exchange votes on"),
        cfg.StrOpt("vote_hold", default="0.2",
                   help="seconds a primary holds a reply segment waiting for votes"),
        cfg.StrOpt("suspicion_threshold", default="3",
                   help="suspicion points that make a replica byzantine"),
        cfg.StrOpt("suspicion_half_life", default="5",
                   help="seconds in which a replica's suspicion halves"),
        cfg.StrOpt("suspicion_rate", default="0.01",
                   help="fraction of the ranges a replica took part in (same decaying window) "
                        "that its suspicion must also reach to make it byzantine"),
        cfg.MultiStrOpt("spare", default=[],
                        help="NAME IP MAC PORT, once per spare: a replica outside the voting "
                             "set, promoted into it when a member is convicted or down"),
        cfg.StrOpt("spare_after", default="5",
                   help="seconds a member may be down before an up spare replaces it"),
        cfg.StrOpt("unvoted", default="serve",
                   help="with fewer than f+1 members up (too few to vote): serve (unvoted) "
                        "or stop"),
    ]


OPTION_NAMES = ("flows_file", "vip", "vmac", "service_port", "replica", "spare", "spare_after",
                "dpid",
                "heartbeat_timeout", "heartbeat_interval", "agent_notify_port", "startup_grace",
                "service_priority", "mode", "active_secret", "active_wscale", "replica_key",
                "voting", "vote_port", "vote_hold", "suspicion_threshold",
                "suspicion_half_life", "suspicion_rate", "unvoted")


def register_opts(conf):
    """Register the [sbft] group on ``conf`` (idempotent, as Ryu apps may be loaded twice)."""
    try:
        conf.register_opts(_opts(), group=GROUP)
    except Exception as exc:  # oslo raises DuplicateOptError only if a definition differs
        if type(exc).__name__ != "DuplicateOptError":
            raise


def load_config(conf):
    """Validate the [sbft] group of an oslo ConfigOpts and return a frozen SbftConfig."""
    group = getattr(conf, GROUP)
    raw = {name: getattr(group, name) for name in OPTION_NAMES}
    base_dir = None
    for path in getattr(conf, "config_file", None) or ():
        if "flows_file" in check_unknown_options(path):
            base_dir = os.path.dirname(os.path.abspath(path))
    flows_file = str(raw["flows_file"] or "").strip()
    if flows_file and base_dir and not os.path.isabs(flows_file):
        # relative to the config file that names it, so the command works from any directory
        raw["flows_file"] = os.path.join(base_dir, flows_file)
    return build_config(raw)


def build_config(raw):
    """Validate a plain dict of option → value (strings, as oslo returns them) into SbftConfig."""
    vip = _ipv4("vip", raw["vip"])
    vmac = _mac("vmac", raw["vmac"])
    service_port = _int("service_port", raw["service_port"], 1, 65535)
    replicas = _replicas(raw["replica"], vip)
    spares = _replicas(raw.get("spare", []), vip, option="spare")
    _distinct(replicas + spares)
    spare_after = _float("spare_after", raw.get("spare_after", "5"), 0.0, 3600.0)
    dpid = _dpid(raw["dpid"])
    timeout = _float("heartbeat_timeout", raw["heartbeat_timeout"], 0.0, 60.0)
    interval = _float("heartbeat_interval", raw["heartbeat_interval"], 0.005, 10.0)
    if timeout and interval >= timeout:
        raise ConfigError("heartbeat_interval", raw["heartbeat_interval"],
                          f"a value below heartbeat_timeout ({timeout})")
    grace = _float("startup_grace", raw.get("startup_grace", "1.0"), 0.0, 60.0)
    notify_port = _int("agent_notify_port", raw.get("agent_notify_port", "5556"), 0, 65535)
    priority = _int("service_priority", raw["service_priority"], 1, 65535 - 99)
    mode = str(raw["mode"]).strip()
    if mode not in MODES:
        raise ConfigError("mode", raw["mode"], " or ".join(MODES))
    secret = _secret(raw.get("active_secret", ""))
    wscale = _int("active_wscale", raw.get("active_wscale", "7"), 0, 14)
    keys = _replica_keys(raw.get("replica_key", []), replicas + spares)
    voting = str(raw.get("voting", "off")).strip().lower()
    if voting not in ("on", "off"):
        raise ConfigError("voting", raw.get("voting"), "on or off")
    voting = voting == "on"
    if voting and mode != "active":
        raise ConfigError("voting", "on", "mode = active (votes compare the replicas' "
                          "output in one sequence space)")
    if voting and len(replicas) < 3:
        raise ConfigError("voting", "on", "at least 3 replicas (n = 2f + 1, f >= 1)")
    missing = [r.name for r in replicas + spares if r.name not in keys]
    if voting and missing:
        raise ConfigError("replica_key", "<hidden>", f"a key for every replica when voting "
                          f"(missing: {', '.join(missing)})")
    vote_port = _int("vote_port", raw.get("vote_port", "5557"), 1, 65535)
    vote_hold = _float("vote_hold", raw.get("vote_hold", "0.2"), 0.001, 10.0)
    threshold = _float("suspicion_threshold", raw.get("suspicion_threshold", "3"), 1.0, 1000.0)
    half_life = _float("suspicion_half_life", raw.get("suspicion_half_life", "5"), 0.1, 3600.0)
    rate = _float("suspicion_rate", raw.get("suspicion_rate", "0.01"), 0.0, 1.0)
    unvoted = str(raw.get("unvoted", "serve")).strip()
    if unvoted not in ("serve", "stop"):
        raise ConfigError("unvoted", raw.get("unvoted"), "serve or stop")
    flows_file = str(raw["flows_file"] or "").strip()
    if flows_file:
        flows = flowfile.load_flows_file(flows_file)
    else:
        flows, flows_file = flowfile.parse_flows(BUILTIN_FLOWS, BUILTIN_FLOWS_NAME), BUILTIN_FLOWS_NAME
    return SbftConfig(vip=vip, vmac=vmac, service_port=service_port, replicas=replicas,
                      flows=flows, flows_source=flows_file, dpid=dpid,
                      heartbeat_timeout=timeout, heartbeat_interval=interval,
                      startup_grace=grace, agent_notify_port=notify_port,
                      service_priority=priority, mode=mode, active_secret=secret,
                      active_wscale=wscale, replica_keys=keys, voting=voting,
                      vote_port=vote_port, vote_hold=vote_hold, suspicion_threshold=threshold,
                      suspicion_half_life=half_life, suspicion_rate=rate, unvoted=unvoted,
                      spares=spares, spare_after=spare_after)


def check_unknown_options(path):
    """oslo.config ignores unknown keys; a typo in [sbft] should not be silently dropped.

    Returns the [sbft] keys the file sets.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return set()  # oslo already reported unreadable files
    keys = set()
    section = None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        if text.startswith("[") and text.endswith("]"):
            section = text[1:-1].strip()
            continue
        if section == GROUP and not line[:1].isspace():
            key = re.split(r"[=:]", text, maxsplit=1)[0].strip()
            if key not in OPTION_NAMES:
                raise ConfigError(key, text, f"one of the [{GROUP}] options "
                                  f"({', '.join(OPTION_NAMES)}) at {path}:{number}")
            keys.add(key)
    return keys


def _int(option, value, low, high):
    text = str(value).strip().lower()
    if _DIGITS.match(text):
        number = int(text, 10)
    elif text.startswith("0x") and _HEX.match(text):
        number = int(text, 16)
    else:
        number = None
    if number is None or not low <= number <= high:
        raise ConfigError(option, value, f"an integer {low}..{high}")
    return number


def _float(option, value, low, high):
    text = str(value).strip()
    number = float(text) if _DECIMAL.match(text) else None
    if number is None or not low <= number <= high:
        raise ConfigError(option, value, f"a number of seconds {low:g}..{high:g}")
    return number


def _secret(value):
    text = str(value or "").strip()
    if not text:
        return os.urandom(16)  # every agent gets it from this controller
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if not 16 <= len(secret) <= 32:
        raise ConfigError("active_secret", "<hidden>", "16 to 32 bytes as hex (32 to 64 hex "
                          "digits), or empty for a random key")
    return secret


def _replica_keys(values, replicas):
    """``NAME HEXKEY`` lines → {name: key bytes} (16..64 bytes each)."""
    names = {replica.name for replica in replicas}
    keys = {}
    for value in [str(v) for v in values or [] if str(v).strip()]:
        parts = value.split()
        if len(parts) != 2 or parts[0] not in names:
            raise ConfigError("replica_key", parts[0] if parts else value,
                              f"NAME HEXKEY with NAME one of {sorted(names)}")
        try:
            key = bytes.fromhex(parts[1])
        except ValueError:
            key = b""
        if not 16 <= len(key) <= 64:
            raise ConfigError("replica_key", f"{parts[0]} <hidden>",
                              "16 to 64 bytes as hex (32 to 128 hex digits)")
        if parts[0] in keys:
            raise ConfigError("replica_key", parts[0], "one key per replica")
        keys[parts[0]] = key
    return keys


def _ipv4(option, value):
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise ConfigError(option, value, "an IPv4 address like 10.0.0.100") from None


def _mac(option, value):
    text = str(value).strip().lower()
    if not _MAC.match(text):
        raise ConfigError(option, value, "a MAC address like 02:00:0a:00:00:64")
    if int(text[:2], 16) & 1:
        raise ConfigError(option, value, "a unicast MAC address (first octet even)")
    return text


def _dpid(value):
    text = str(value or "").strip()
    if not text:
        return None
    dpid = int(text, 16) if _HEX.match(text.lower()) else -1
    if dpid < 0:
        raise ConfigError("dpid", value, "a datapath id of up to 16 hex digits, or empty")
    return dpid


def _replicas(values, vip, option="replica"):
    """``replica`` (or ``spare``) lines → Replicas, each line checked on its own."""
    values = [str(v) for v in (values or [])]
    if values == [""] or not values:
        return ()
    replicas = []
    for value in values:
        expected = "NAME IP MAC PORT (space-separated, PORT the switch's OpenFlow port)"
        parts = value.split()
        if len(parts) != 4:
            raise ConfigError(option, value, expected)
        name, ip, mac, port = parts
        if not _NAME.match(name):
            raise ConfigError(option, value, "a NAME of letters, digits, '_.-' "
                              "starting with a letter (at most 32)")
        try:
            ip = _ipv4(option, ip)
            mac = _mac(option, mac)
        except ConfigError as exc:
            raise ConfigError(option, value, exc.expected + f" in {expected}") from None
        port = int(port) if _DIGITS.match(port) else 0
        if not 1 <= port <= MAX_PORT:
            raise ConfigError(option, value, f"PORT an integer 1..{MAX_PORT} in {expected}")
        if ip == vip:
            raise ConfigError(option, name, f"a replica IP different from the vip {vip}")
        replicas.append(Replica(name=name, ip=ip, mac=mac, port=port))
    _distinct(replicas, option)
    return tuple(replicas)


def _distinct(replicas, option=None):
    """No two replicas (members or spares: ``option`` None) share a name, IP, MAC or port."""
    for attr in ("name", "ip", "mac", "port"):
        seen = {}
        for replica in replicas:
            key = getattr(replica, attr)
            if key in seen:
                raise ConfigError(option or "spare", f"{seen[key].name} / {replica.name}",
                                  f"replicas with distinct {attr.upper()}s (both use {key})"
                                  if option else f"replicas and spares with distinct "
                                  f"{attr.upper()}s (both use {key})")
            seen[key] = replica
