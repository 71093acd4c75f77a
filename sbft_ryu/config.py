"""The ``[sbft]`` options: each declared once, validated once, then frozen.

Ryu reads its configuration through oslo.config (``ryu-manager --config-file FILE``); the app
calls :func:`register_opts` and then :func:`load_config`, which checks every value and every rule
that spans options and returns a frozen :class:`SbftConfig`. Every problem is one
:class:`ConfigError` naming the option, the value and what was expected. The embedded defaults
describe the default Mininet topology (``mininet/sbft_topo.py``), so no file is needed there.

:data:`OPTIONS` is the one declaration of each option (name, parser, default, help): the oslo
options, :data:`OPTION_NAMES` and :data:`DEFAULTS` are derived from it.
"""

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from sbft_ryu import flowfile, protocol, store
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

PASSIVE, ACTIVE = "passive", "active"
MODES = (PASSIVE, ACTIVE)
SERVE, STOP = "serve", "stop"  # what to do with too few members up to vote (``unvoted``)
UNVOTED_POLICIES = (SERVE, STOP)
ON, OFF = "on", "off"
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


# ---- parsers: (option name, raw value, the options parsed before it) → value ---------------

def _int(low, high):
    def parse(option, value, _parsed):
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
    return parse


def _float(low, high):
    def parse(option, value, _parsed):
        text = str(value).strip()
        number = float(text) if _DECIMAL.match(text) else None
        if number is None or not low <= number <= high:
            raise ConfigError(option, value, f"a number of seconds {low:g}..{high:g}")
        return number
    return parse


def _choice(*choices, any_case=False):
    """One of ``choices`` (compared after stripping, and lower-casing if ``any_case``)."""
    def parse(option, value, _parsed):
        text = str(value).strip()
        if any_case:
            text = text.lower()
        if text not in choices:
            raise ConfigError(option, value, " or ".join(choices))
        return text
    return parse


def _path(_option, value, _parsed):
    return str(value or "").strip()


def _state_file(_option, value, _parsed):
    """None (not set): the default location; empty: persistence off; else the path."""
    if value is None:
        return store.default_path()
    return str(value).strip()


def _secret(_option, value, _parsed):
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


def _replica_keys(_option, values, parsed):
    """``NAME HEXKEY`` lines → {name: key bytes} (16..64 bytes each)."""
    names = {replica.name for replica in parsed["replica"] + parsed["spare"]}
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


def _replica_sources(_option, values, parsed):
    """``NAME IP`` lines → {name: management address its HTTP heartbeats must come from}."""
    names = {replica.name for replica in parsed["replica"] + parsed["spare"]}
    sources = {}
    for value in [str(v) for v in values or [] if str(v).strip()]:
        parts = value.split()
        if len(parts) != 2 or parts[0] not in names:
            raise ConfigError("replica_source", value,
                              f"NAME IP with NAME one of {sorted(names)}")
        if parts[0] in sources:
            raise ConfigError("replica_source", value, "one source per replica")
        address = _ipv4("replica_source", parts[1])
        if address in sources.values():
            # two replicas behind one address could each speak for the other
            raise ConfigError("replica_source", value, "a distinct address per replica")
        sources[parts[0]] = address
    return sources


def _token_file(_option, value, _parsed):
    """The operator's bearer token, read once at start (never printed); None: no file."""
    path = str(value or "").strip()
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("api_token_file", path,
                          f"a readable file holding the token ({exc})") from None
    if len(token) < 16 or not token.isascii() or any(c.isspace() for c in token):
        raise ConfigError("api_token_file", path, "a file holding one token of at least 16 "
                          "printable ASCII characters without spaces")
    return token.encode("ascii")


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def _host_port(option, value, item):
    """``HOST:PORT`` → (host, port); ``value`` is what the error names."""
    host, _, port = item.rpartition(":")
    if not host or not _HOST.match(host) or not _DIGITS.match(port) \
            or not 1 <= int(port) <= 65535:
        raise ConfigError(option, value, "HOST:PORT with PORT 1..65535")
    return host, int(port)


def _coordination(option, value, _parsed):
    """Empty: one controller (the local state file); ``etcd://HOST:PORT[,HOST:PORT...]``:
    several, one leader elected through etcd → the endpoints, in the order tried."""
    text = str(value or "").strip()
    if not text:
        return ()
    expected = "empty, or etcd://HOST:PORT[,HOST:PORT...] (etcd's client URLs)"
    if not text.startswith("etcd://"):
        raise ConfigError(option, value, expected)
    items = [item.strip() for item in text[len("etcd://"):].split(",")]
    if not all(items):
        raise ConfigError(option, value, expected)
    endpoints = tuple(_host_port(option, value, item) for item in items)
    if len(set(endpoints)) != len(endpoints):
        raise ConfigError(option, value, "distinct etcd endpoints")
    return endpoints


def _url(option, value, _parsed):
    """Empty (derived from the REST API's address at start) or an http(s) base URL."""
    text = str(value or "").strip().rstrip("/")
    if text and not re.match(r"^https?://[A-Za-z0-9.\[\]:-]+(:[0-9]{1,5})?(/\S*)?$", text):
        raise ConfigError(option, value, "an http:// or https:// base URL such as "
                          "http://10.0.0.1:8080, or empty")
    return text


def _ipv4(option, value, _parsed=None):
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise ConfigError(option, value, "an IPv4 address like 10.0.0.100") from None


def _mac(option, value, _parsed=None):
    text = str(value).strip().lower()
    if not _MAC.match(text):
        raise ConfigError(option, value, "a MAC address like 02:00:0a:00:00:64")
    if int(text[:2], 16) & 1:
        raise ConfigError(option, value, "a unicast MAC address (first octet even)")
    return text


def _dpid(_option, value, _parsed):
    text = str(value or "").strip()
    if not text:
        return None
    dpid = int(text, 16) if _HEX.match(text.lower()) else -1
    if dpid < 0:
        raise ConfigError("dpid", value, "a datapath id of up to 16 hex digits, or empty")
    return dpid


def _replicas(option, values, parsed):
    """``replica`` (or ``spare``) lines → Replicas, each line checked on its own."""
    vip = parsed["vip"]
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


# ---- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One ``[sbft]`` option. ``default`` is what oslo returns when the option is unset (a
    string, or a list of strings for a ``multi`` option); ``parse`` turns such a value into
    the SbftConfig field and may read the options declared before it."""

    name: str
    parse: Callable
    default: object
    help: str
    multi: bool = False


# In this order: the order of the known-name list in error messages, and the order of parsing
# (an option's parser may read the ones above it).
OPTIONS = (
    Option("flows_file", _path, "",
           "ovs-ofctl-style flows installed on every switch (empty: built-in "
           "'priority=0,actions=NORMAL')"),
    Option("vip", _ipv4, "10.0.0.100", "service virtual IPv4 address"),
    Option("vmac", _mac, "02:00:0a:00:00:64",
           "MAC address the controller answers ARP for the VIP with"),
    Option("service_port", _int(1, 65535), "5555", "service TCP port"),
    Option("replica", _replicas, list(DEFAULT_REPLICAS),
           "NAME IP MAC PORT, once per replica in priority order; "
           "a single empty value means no replicas", multi=True),
    Option("spare", _replicas, [],
           "NAME IP MAC PORT, once per spare: a replica outside the voting "
           "set, promoted into it when a member is convicted or down", multi=True),
    Option("spare_after", _float(0.0, 3600.0), "5",
           "seconds a member may be down before an up spare replaces it"),
    Option("dpid", _dpid, "", "datapath id of the service switch (empty: every switch)"),
    Option("heartbeat_timeout", _float(0.0, 60.0), "0.15",
           "seconds of agent silence before a replica is down (0: port state only)"),
    Option("heartbeat_interval", _float(0.005, 10.0), "0.05",
           "seconds between agent heartbeats, told to agents in every reply"),
    Option("agent_notify_port", _int(0, 65535), "5556",
           "UDP port agents listen on for role-change nudges (0: none)"),
    Option("startup_grace", _float(0.0, 60.0), "1.0",
           "seconds the first election waits for every replica to come up"),
    Option("service_priority", _int(1, 65535 - 99), "40000",
           "lowest priority of the service flows (they use this .. +99)"),
    Option("mode", _choice(*MODES), PASSIVE,
           f"{PASSIVE} | {ACTIVE} (replicas share one TCP sequence space)"),
    Option("active_secret", _secret, "",
           "hex key from which replicas derive shared ISNs in active mode "
           "(empty: a random one per controller start)"),
    Option("active_wscale", _int(0, 14), "7",
           "the window scale every replica announces in active mode"),
    Option("replica_key", _replica_keys, [],
           "NAME HEXKEY, once per replica: authenticates that replica's "
           "heartbeats, reports and vote batches", multi=True),
    Option("replica_source", _replica_sources, [],
           "NAME IP, once per replica (or spare) to pin: its HTTP heartbeats are accepted "
           "only from this management address", multi=True),
    Option("heartbeat_port", _int(0, 65535), str(protocol.HEARTBEAT_PORT),
           "UDP port for the heartbeats of replicas with a replica_key (0: HTTP only)"),
    Option("api_token_file", _token_file, "",
           "file holding the bearer token operator actions (readmit) require "
           "(empty: they are accepted from loopback only)"),
    Option("voting", _choice(ON, OFF, any_case=True), OFF,
           "on: Byzantine output voting (needs mode = active and every replica_key)"),
    Option("vote_port", _int(1, 65535), str(protocol.VOTE_PORT),
           "UDP port agents exchange votes on"),
    Option("vote_hold", _float(0.001, 10.0), "0.2",
           "seconds a primary holds a reply segment waiting for votes"),
    Option("suspicion_threshold", _float(1.0, 1000.0), "3",
           "suspicion points that make a replica byzantine"),
    Option("suspicion_half_life", _float(0.1, 3600.0), "5",
           "seconds in which a replica's suspicion halves"),
    Option("suspicion_rate", _float(0.0, 1.0), "0.01",
           "fraction of the ranges a replica took part in (same decaying window) "
           "that its suspicion must also reach to make it byzantine"),
    Option("unvoted", _choice(*UNVOTED_POLICIES), SERVE,
           "with fewer than f+1 members up (too few to vote): serve (unvoted) or stop"),
    Option("state_file", _state_file, None,
           "where the controller keeps its state across restarts, relative to the config "
           "file (not set: /var/lib/sbft_ryu/state.json as root, else the user's state "
           "directory; empty: nothing is kept)"),
    Option("coordination", _coordination, "",
           "empty: this controller alone, its state in state_file; "
           "etcd://HOST:PORT[,HOST:PORT...]: several controllers elect one leader through "
           "etcd and keep the state there (needs OpenFlow 1.3)"),
    Option("leader_lease", _int(1, 3600), "2",
           "seconds of the leader's etcd lease (whole seconds, as etcd counts them): a dead "
           "leader is replaced about this long after its death"),
    Option("advertise_url", _url, "",
           "this controller's REST base URL as the other controllers and /sbft/health show "
           "it (empty: http://<wsapi_host or this host's name>:<wsapi_port>)"),
)

OPTION_NAMES = tuple(option.name for option in OPTIONS)
DEFAULTS = {option.name: option.default for option in OPTIONS}  # as oslo returns them


def _parsed_default(name):
    option = next(o for o in OPTIONS if o.name == name)
    return option.parse(name, option.default, {})


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
    active_wscale: int = _parsed_default("active_wscale")
    replica_keys: dict = field(default_factory=dict, compare=False, repr=False)
    voting: bool = False
    vote_port: int = _parsed_default("vote_port")
    vote_hold: float = _parsed_default("vote_hold")
    suspicion_threshold: float = _parsed_default("suspicion_threshold")
    suspicion_half_life: float = _parsed_default("suspicion_half_life")
    suspicion_rate: float = _parsed_default("suspicion_rate")
    unvoted: str = _parsed_default("unvoted")
    spares: Tuple[Replica, ...] = ()  # run like members, outside the voting set until promoted
    spare_after: float = _parsed_default("spare_after")
    replica_sources: dict = field(default_factory=dict, compare=False)
    heartbeat_port: int = _parsed_default("heartbeat_port")
    api_token: Optional[bytes] = field(default=None, compare=False, repr=False)
    state_file: str = ""  # empty: persistence off
    # else random, kept in the state file
    active_secret_configured: bool = field(default=False, repr=False)
    coordination: Tuple[Tuple[str, int], ...] = ()  # etcd endpoints; (): standalone
    leader_lease: int = _parsed_default("leader_lease")
    advertise_url: str = ""

    @property
    def f(self):
        """Byzantine replicas tolerated: n = 2f + 1 (or more) configured members; spares do
        not count (n and f are those of the ``replica`` lines)."""
        return max(0, (len(self.replicas) - 1) // 2)

    @property
    def coordination_url(self):
        """The coordination option as given (normalised), "" standalone."""
        if not self.coordination:
            return ""
        return "etcd://" + ",".join(f"{host}:{port}" for host, port in self.coordination)

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

    return [(cfg.MultiStrOpt if option.multi else cfg.StrOpt)(
                option.name, default=option.default, help=option.help)
            for option in OPTIONS]


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
    base_dirs = {}  # option -> directory of the (last) config file that sets it
    for path in getattr(conf, "config_file", None) or ():
        for name in check_unknown_options(path) & {"flows_file", "state_file",
                                                    "api_token_file"}:
            base_dirs[name] = os.path.dirname(os.path.abspath(path))
    for name, base_dir in base_dirs.items():
        path = str(raw[name] or "").strip()
        if path and not os.path.isabs(path):
            # relative to the config file that names it, so the command works from any
            # directory
            raw[name] = os.path.join(base_dir, path)
    if str(raw.get("coordination") or "").strip() \
            and not str(raw.get("advertise_url") or "").strip():
        raw["advertise_url"] = default_advertise_url(getattr(conf, "wsapi_host", None),
                                                     getattr(conf, "wsapi_port", None))
    return build_config(raw)


def default_advertise_url(wsapi_host, wsapi_port):
    """The REST base URL others can reach: the wsapi address, or this host's name when it
    listens on every address."""
    host = str(wsapi_host or "").strip()
    if host in ("", "0.0.0.0", "::"):
        import socket

        host = socket.gethostname()
    return f"http://{host}:{int(wsapi_port or 8080)}"


def build_config(raw):
    """Validate a plain dict of option → value (strings, as oslo returns them; an absent
    option takes its default) into SbftConfig."""
    parsed = {}
    for option in OPTIONS:
        parsed[option.name] = option.parse(option.name, raw.get(option.name, option.default),
                                           parsed)
    _check(parsed, raw)
    if parsed["flows_file"]:
        flows, flows_source = flowfile.load_flows_file(parsed["flows_file"]), parsed["flows_file"]
    else:
        flows = flowfile.parse_flows(BUILTIN_FLOWS, BUILTIN_FLOWS_NAME)
        flows_source = BUILTIN_FLOWS_NAME
    return SbftConfig(vip=parsed["vip"], vmac=parsed["vmac"],
                      service_port=parsed["service_port"], replicas=parsed["replica"],
                      flows=flows, flows_source=flows_source, dpid=parsed["dpid"],
                      heartbeat_timeout=parsed["heartbeat_timeout"],
                      heartbeat_interval=parsed["heartbeat_interval"],
                      startup_grace=parsed["startup_grace"],
                      agent_notify_port=parsed["agent_notify_port"],
                      service_priority=parsed["service_priority"], mode=parsed["mode"],
                      active_secret=parsed["active_secret"],
                      active_wscale=parsed["active_wscale"],
                      replica_keys=parsed["replica_key"], voting=parsed["voting"] == ON,
                      vote_port=parsed["vote_port"], vote_hold=parsed["vote_hold"],
                      suspicion_threshold=parsed["suspicion_threshold"],
                      suspicion_half_life=parsed["suspicion_half_life"],
                      suspicion_rate=parsed["suspicion_rate"], unvoted=parsed["unvoted"],
                      spares=parsed["spare"], spare_after=parsed["spare_after"],
                      replica_sources=parsed["replica_source"],
                      heartbeat_port=parsed["heartbeat_port"],
                      api_token=parsed["api_token_file"],
                      state_file=parsed["state_file"],
                      active_secret_configured=bool(str(raw.get("active_secret") or "")
                                                    .strip()),
                      coordination=parsed["coordination"],
                      leader_lease=parsed["leader_lease"],
                      advertise_url=parsed["advertise_url"])


def _check(parsed, raw):
    """The rules that span options."""
    replicas, spares = parsed["replica"], parsed["spare"]
    _distinct(replicas + spares)
    timeout, interval = parsed["heartbeat_timeout"], parsed["heartbeat_interval"]
    if timeout and interval >= timeout:
        raise ConfigError("heartbeat_interval", raw["heartbeat_interval"],
                          f"a value below heartbeat_timeout ({timeout})")
    if parsed["heartbeat_port"] and parsed["heartbeat_port"] in (
            parsed["vote_port"], parsed["agent_notify_port"]):
        raise ConfigError("heartbeat_port", raw["heartbeat_port"],
                          "a port other than vote_port and agent_notify_port")
    if parsed["coordination"] and parsed["mode"] == ACTIVE \
            and not str(raw.get("active_secret") or "").strip():
        # each controller would hand agents its own random secret: a new leader's would
        # break every connection in flight
        raise ConfigError("active_secret", "", f"a configured secret (the same on every "
                          f"controller) when mode = {ACTIVE} and coordination is set")
    if parsed["voting"] != ON:
        return
    if parsed["mode"] != ACTIVE:
        raise ConfigError("voting", ON, f"mode = {ACTIVE} (votes compare the replicas' "
                          "output in one sequence space)")
    if len(replicas) < 3:
        raise ConfigError("voting", ON, "at least 3 replicas (n = 2f + 1, f >= 1)")
    missing = [r.name for r in replicas + spares if r.name not in parsed["replica_key"]]
    if missing:
        raise ConfigError("replica_key", "<hidden>", f"a key for every replica when voting "
                          f"(missing: {', '.join(missing)})")


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
