"""Tests for sbft_ryu.config: validation of the [sbft] options, oslo loading, shipped files."""

import dataclasses
import os

import pytest
from oslo_config import cfg

from sbft_ryu import config, flowfile
from sbft_ryu.config import ConfigError, build_config
from sbft_ryu.model import ETH_TYPE_ARP, ETH_TYPE_IP, EXACT_MASK, FlowSpec, Match, Output, Replica

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOWS_DIR = os.path.join(REPO, "flows")

LB1 = "lb1 10.0.0.11 00:00:00:00:01:01 1"
LB2 = "lb2 10.0.0.12 00:00:00:00:01:02 2"
REPLICA_SHAPE = "NAME IP MAC PORT (space-separated, PORT the switch's OpenFlow port)"
MAX_PORT = 0xFFFFFF00


def error_of(raw, **overrides):
    with pytest.raises(ConfigError) as info:
        build_config({**raw, **overrides})
    return str(info.value)


def load_file(path):
    """Load ``path`` the way ryu-manager does: a real oslo ConfigOpts and --config-file."""
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    return config.load_config(conf)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- single options -------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"vip": "10.0.0.300"},
     "[sbft] vip = '10.0.0.300': expected an IPv4 address like 10.0.0.100"),
    ({"vip": "vip.example"},
     "[sbft] vip = 'vip.example': expected an IPv4 address like 10.0.0.100"),
    ({"vmac": "02:00:0a:00:00"},
     "[sbft] vmac = '02:00:0a:00:00': expected a MAC address like 02:00:0a:00:00:64"),
    ({"vmac": "01:00:5e:00:00:01"},
     "[sbft] vmac = '01:00:5e:00:00:01': expected a unicast MAC address (first octet even)"),
    ({"service_port": "0"}, "[sbft] service_port = '0': expected an integer 1..65535"),
    ({"service_port": "65536"}, "[sbft] service_port = '65536': expected an integer 1..65535"),
    ({"service_port": "http"}, "[sbft] service_port = 'http': expected an integer 1..65535"),
    ({"service_port": "55.5"}, "[sbft] service_port = '55.5': expected an integer 1..65535"),
    ({"dpid": "s1"},
     "[sbft] dpid = 's1': expected a datapath id of up to 16 hex digits, or empty"),
    ({"dpid": "1" * 17},
     f"[sbft] dpid = '{'1' * 17}': expected a datapath id of up to 16 hex digits, or empty"),
    ({"heartbeat_timeout": "-0.1"},
     "[sbft] heartbeat_timeout = '-0.1': expected a number of seconds 0..60"),
    ({"heartbeat_timeout": "soon"},
     "[sbft] heartbeat_timeout = 'soon': expected a number of seconds 0..60"),
    ({"heartbeat_interval": "0.15"},
     "[sbft] heartbeat_interval = '0.15': expected a value below heartbeat_timeout (0.15)"),
    ({"heartbeat_interval": "0.2"},
     "[sbft] heartbeat_interval = '0.2': expected a value below heartbeat_timeout (0.15)"),
    ({"mode": "aggressive"}, "[sbft] mode = 'aggressive': expected passive or active"),
    ({"service_priority": "0"},
     "[sbft] service_priority = '0': expected an integer 1..65436"),
    ({"service_priority": "65437"},
     "[sbft] service_priority = '65437': expected an integer 1..65436"),
    ({"agent_notify_port": "-1"},
     "[sbft] agent_notify_port = '-1': expected an integer 0..65535"),
    ({"agent_notify_port": "65536"},
     "[sbft] agent_notify_port = '65536': expected an integer 0..65535"),
    ({"agent_notify_port": "udp"},
     "[sbft] agent_notify_port = 'udp': expected an integer 0..65535"),
    ({"agent_notify_port": "5556.0"},
     "[sbft] agent_notify_port = '5556.0': expected an integer 0..65535"),
    ({"startup_grace": "-0.5"},
     "[sbft] startup_grace = '-0.5': expected a number of seconds 0..60"),
    ({"startup_grace": "60.5"},
     "[sbft] startup_grace = '60.5': expected a number of seconds 0..60"),
    ({"startup_grace": "nan"},
     "[sbft] startup_grace = 'nan': expected a number of seconds 0..60"),
    ({"startup_grace": "inf"},
     "[sbft] startup_grace = 'inf': expected a number of seconds 0..60"),
    ({"startup_grace": "1s"},
     "[sbft] startup_grace = '1s': expected a number of seconds 0..60"),
])
def test_bad_option_message(raw, overrides, message):
    assert error_of(raw, **overrides) == message


def test_error_carries_option_value_and_expectation(raw):
    with pytest.raises(ConfigError) as info:
        build_config({**raw, "mode": "x"})
    assert (info.value.option, info.value.value, info.value.expected) == (
        "mode", "x", "passive or active")
    assert isinstance(info.value, ValueError)


def test_interval_may_exceed_a_zero_timeout(raw):
    conf = build_config({**raw, "heartbeat_timeout": "0", "heartbeat_interval": "1"})
    assert (conf.heartbeat_timeout, conf.heartbeat_interval) == (0.0, 1.0)


def test_values_are_normalised(raw):
    conf = build_config({**raw, "vip": " 10.0.0.100 ", "vmac": "02:00:0A:00:00:64",
                         "service_port": "0x15b3", "dpid": "0x1", "mode": " active "})
    assert (conf.vip, conf.vmac, conf.service_port, conf.dpid, conf.mode) == (
        "10.0.0.100", "02:00:0a:00:00:64", 5555, 1, "active")


@pytest.mark.parametrize("value, port", [("0", 0), ("1", 1), ("5556", 5556), ("65535", 65535),
                                         (" 6000 ", 6000), ("0x15b4", 5556)])
def test_agent_notify_port_range_is_inclusive_and_zero_disables(raw, value, port):
    assert build_config({**raw, "agent_notify_port": value}).agent_notify_port == port


@pytest.mark.parametrize("value, grace", [("0", 0.0), ("0.25", 0.25), ("1", 1.0),
                                          ("60", 60.0), (" 2.5 ", 2.5)])
def test_startup_grace_range_is_inclusive(raw, value, grace):
    assert build_config({**raw, "startup_grace": value}).startup_grace == grace


def test_new_options_default_when_absent(raw):
    # a raw dict without them (as from an older caller) gets the registered defaults
    del raw["agent_notify_port"], raw["startup_grace"]
    del raw["active_secret"], raw["active_wscale"]
    conf = build_config(raw)
    assert (conf.agent_notify_port, conf.startup_grace) == (5556, 1.0)
    assert (len(conf.active_secret), conf.active_wscale) == (16, 7)


# --- active mode: the shared secret and window scale ---------------------------------------

SECRET_HEX = "00112233445566778899aabbccddeeff"
SECRET_EXPECTED = "16 to 32 bytes as hex (32 to 64 hex digits), or empty for a random key"


def test_active_defaults(default_config):
    assert default_config.active_wscale == 7
    assert isinstance(default_config.active_secret, bytes)
    assert len(default_config.active_secret) == 16


@pytest.mark.parametrize("value", ["", "   ", None])
def test_empty_active_secret_is_random_per_load(raw, value, monkeypatch):
    draws = iter([b"\x01" * 16, b"\x02" * 16])
    asked = []

    def urandom(n):
        asked.append(n)
        return next(draws)
    monkeypatch.setattr(config.os, "urandom", urandom)
    first = build_config({**raw, "active_secret": value})
    second = build_config({**raw, "active_secret": value})
    assert (first.active_secret, second.active_secret) == (b"\x01" * 16, b"\x02" * 16)
    assert asked == [16, 16]


def test_empty_active_secret_really_is_random(raw):
    secrets = {build_config(raw).active_secret for _ in range(4)}
    assert len(secrets) == 4 and all(len(secret) == 16 for secret in secrets)


@pytest.mark.parametrize("value, secret", [
    (SECRET_HEX, bytes.fromhex(SECRET_HEX)),  # 16 bytes: the lower bound
    (SECRET_HEX.upper(), bytes.fromhex(SECRET_HEX)),
    (f"  {SECRET_HEX}\t", bytes.fromhex(SECRET_HEX)),
    ("ab" * 32, b"\xab" * 32),  # 32 bytes: the upper bound
    ("cd" * 24, b"\xcd" * 24),
])
def test_configured_active_secret(raw, value, secret):
    conf = build_config({**raw, "active_secret": value})
    assert conf.active_secret == secret
    assert build_config({**raw, "active_secret": value}).active_secret == secret  # stable


@pytest.mark.parametrize("value", [
    "ab" * 15,  # 15 bytes
    "ab" * 33,  # 33 bytes
    "abc" + "ab" * 16,  # odd number of hex digits
    "zz" * 16,  # not hex
    "0x" + SECRET_HEX,
    "ab",
])
def test_bad_active_secret_is_hidden_in_the_error(raw, value):
    with pytest.raises(ConfigError) as info:
        build_config({**raw, "active_secret": value})
    assert str(info.value) == f"[sbft] active_secret = '<hidden>': expected {SECRET_EXPECTED}"
    assert (info.value.option, info.value.value, info.value.expected) == (
        "active_secret", "<hidden>", SECRET_EXPECTED)
    assert value not in str(info.value) and value not in repr(info.value.args)


@pytest.mark.parametrize("value, wscale", [("0", 0), ("7", 7), ("14", 14), (" 9 ", 9),
                                           ("0xe", 14)])
def test_active_wscale_range_is_inclusive(raw, value, wscale):
    assert build_config({**raw, "active_wscale": value}).active_wscale == wscale


@pytest.mark.parametrize("value", ["15", "-1", "seven", "7.0", ""])
def test_bad_active_wscale_message(raw, value):
    assert error_of(raw, active_wscale=value) == (
        f"[sbft] active_wscale = {value!r}: expected an integer 0..14")


def test_active_secret_is_not_part_of_equality_or_repr(raw):
    one = build_config({**raw, "active_secret": SECRET_HEX})
    other = build_config({**raw, "active_secret": "ff" * 16})
    assert one == other and hash(one) == hash(other)
    assert one != build_config({**raw, "active_secret": SECRET_HEX, "active_wscale": "8"})
    for text in (repr(one), str(one)):
        assert "active_secret" not in text
        assert SECRET_HEX not in text and repr(bytes.fromhex(SECRET_HEX)) not in text
        assert "active_wscale=7" in text


def test_active_secret_fields_of_the_dataclass():
    fields = {field.name: field for field in dataclasses.fields(config.SbftConfig)}
    assert (fields["active_secret"].compare, fields["active_secret"].repr) == (False, False)
    assert (fields["active_wscale"].compare, fields["active_wscale"].default) == (True, 7)


def test_load_config_reads_the_active_options(tmp_path):
    path = write(tmp_path / "sbft.conf", f"[sbft]\nmode = active\nactive_secret = {SECRET_HEX}\n"
                                         "active_wscale = 10\n")
    conf = load_file(path)
    assert (conf.mode, conf.active_secret, conf.active_wscale) == (
        "active", bytes.fromhex(SECRET_HEX), 10)


def test_load_config_with_a_bad_secret_hides_it(tmp_path):
    path = write(tmp_path / "sbft.conf", "[sbft]\nactive_secret = 0123456789abcdef\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert "0123456789abcdef" not in str(info.value)
    assert str(info.value) == f"[sbft] active_secret = '<hidden>': expected {SECRET_EXPECTED}"


def test_dpid_is_hex_without_prefix(raw):
    assert build_config({**raw, "dpid": "10"}).dpid == 16
    assert build_config({**raw, "dpid": "ffffffffffffffff"}).dpid == 2 ** 64 - 1


# --- replicas -------------------------------------------------------------------------------


@pytest.mark.parametrize("replica, message", [
    ("lb1 10.0.0.11 00:00:00:00:01:01",
     f"[sbft] replica = 'lb1 10.0.0.11 00:00:00:00:01:01': expected {REPLICA_SHAPE}"),
    ("lb1 10.0.0.11 00:00:00:00:01:01 1 extra",
     f"[sbft] replica = 'lb1 10.0.0.11 00:00:00:00:01:01 1 extra': expected {REPLICA_SHAPE}"),
    ("1lb 10.0.0.11 00:00:00:00:01:01 1",
     "[sbft] replica = '1lb 10.0.0.11 00:00:00:00:01:01 1': expected a NAME of letters, "
     "digits, '_.-' starting with a letter (at most 32)"),
    ("lb1 10.0.0.311 00:00:00:00:01:01 1",
     "[sbft] replica = 'lb1 10.0.0.311 00:00:00:00:01:01 1': expected an IPv4 address like "
     f"10.0.0.100 in {REPLICA_SHAPE}"),
    ("lb1 10.0.0.11 00:00:00:00:01 1",
     "[sbft] replica = 'lb1 10.0.0.11 00:00:00:00:01 1': expected a MAC address like "
     f"02:00:0a:00:00:64 in {REPLICA_SHAPE}"),
    ("lb1 10.0.0.11 01:00:00:00:01:01 1",
     "[sbft] replica = 'lb1 10.0.0.11 01:00:00:00:01:01 1': expected a unicast MAC address "
     f"(first octet even) in {REPLICA_SHAPE}"),
    ("lb1 10.0.0.11 00:00:00:00:01:01 eth1",
     "[sbft] replica = 'lb1 10.0.0.11 00:00:00:00:01:01 eth1': expected PORT an integer "
     f"1..{MAX_PORT} in {REPLICA_SHAPE}"),
    ("lb1 10.0.0.11 00:00:00:00:01:01 -1",
     "[sbft] replica = 'lb1 10.0.0.11 00:00:00:00:01:01 -1': expected PORT an integer "
     f"1..{MAX_PORT} in {REPLICA_SHAPE}"),
])
def test_bad_replica_message(raw, replica, message):
    assert error_of(raw, replica=[replica]) == message


@pytest.mark.parametrize("port", ["0", str(MAX_PORT + 1)])
def test_out_of_range_replica_port_names_the_replica(raw, port):
    line = f"lb1 10.0.0.11 00:00:00:00:01:01 {port}"
    assert error_of(raw, replica=[line]) == (
        f"[sbft] replica = '{line}': expected PORT an integer 1..{MAX_PORT} in {REPLICA_SHAPE}")


@pytest.mark.parametrize("second, message", [
    ("lb1 10.0.0.12 00:00:00:00:01:02 2",
     "[sbft] replica = 'lb1 / lb1': expected replicas with distinct NAMEs (both use lb1)"),
    ("lb2 10.0.0.11 00:00:00:00:01:02 2",
     "[sbft] replica = 'lb1 / lb2': expected replicas with distinct IPs (both use 10.0.0.11)"),
    ("lb2 10.0.0.12 00:00:00:00:01:01 2",
     "[sbft] replica = 'lb1 / lb2': expected replicas with distinct MACs "
     "(both use 00:00:00:00:01:01)"),
    ("lb2 10.0.0.12 00:00:00:00:01:02 1",
     "[sbft] replica = 'lb1 / lb2': expected replicas with distinct PORTs (both use 1)"),
])
def test_duplicate_replica_message(raw, second, message):
    assert error_of(raw, replica=[LB1, second]) == message


def test_duplicate_mac_is_found_whatever_the_case(raw):
    message = error_of(raw, replica=["lb1 10.0.0.11 02:00:00:00:0a:01 1",
                                     "lb2 10.0.0.12 02:00:00:00:0A:01 2"])
    assert message.endswith("distinct MACs (both use 02:00:00:00:0a:01)")


def test_replica_ip_equal_to_vip(raw):
    assert error_of(raw, replica=[LB1, "lb2 10.0.0.100 00:00:00:00:01:02 2"]) == (
        "[sbft] replica = 'lb2': expected a replica IP different from the vip 10.0.0.100")


@pytest.mark.parametrize("value", [[""], []])
def test_empty_replica_option_means_no_replicas(raw, value):
    assert build_config({**raw, "replica": value}).replicas == ()


def test_defaults_give_three_replicas_on_ports_1_to_3(default_config):
    assert default_config.replicas == (
        Replica("lb1", "10.0.0.11", "00:00:00:00:01:01", 1),
        Replica("lb2", "10.0.0.12", "00:00:00:00:01:02", 2),
        Replica("lb3", "10.0.0.13", "00:00:00:00:01:03", 3),
    )
    assert default_config.replica("lb2").port == 2
    assert default_config.replica("lb4") is None


def test_defaults_scalar_values(default_config):
    c = default_config
    assert (c.vip, c.vmac, c.service_port, c.dpid) == ("10.0.0.100", "02:00:0a:00:00:64",
                                                      5555, None)
    assert (c.heartbeat_timeout, c.heartbeat_interval) == (0.15, 0.05)
    assert (c.agent_notify_port, c.startup_grace) == (5556, 1.0)
    assert isinstance(c.agent_notify_port, int) and isinstance(c.startup_grace, float)
    assert (c.service_priority, c.mode) == (40000, "passive")


def test_replica_order_is_kept(raw):
    conf = build_config({**raw, "replica": [LB2, LB1]})
    assert [r.name for r in conf.replicas] == ["lb2", "lb1"]


# --- flows ----------------------------------------------------------------------------------


def test_empty_flows_file_gives_builtin_normal_flow(default_config):
    assert default_config.flows == (FlowSpec(Match(), (Output("NORMAL"),), priority=0),)
    assert default_config.flows_source == config.BUILTIN_FLOWS_NAME


def test_flows_file_is_loaded(raw, tmp_path):
    path = write(tmp_path / "x.flows", "# comment\narp,actions=NORMAL\n")
    conf = build_config({**raw, "flows_file": str(path)})
    assert conf.flows == (FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),)
    assert conf.flows_source == str(path)


def test_bad_flows_line_names_file_and_line(raw, tmp_path):
    path = write(tmp_path / "bad.flows", "arp,actions=NORMAL\n\nip,nw_dst=1.2.3,actions=drop\n")
    with pytest.raises(flowfile.FlowSyntaxError) as info:
        build_config({**raw, "flows_file": str(path)})
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert str(info.value).startswith(f"{path}:3: ")


def test_missing_flows_file_is_a_flow_syntax_error(raw, tmp_path):
    with pytest.raises(flowfile.FlowSyntaxError) as info:
        build_config({**raw, "flows_file": str(tmp_path / "absent.flows")})
    assert info.value.line == 0


# --- loading through oslo.config ------------------------------------------------------------


def test_register_opts_twice_is_harmless():
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    config.register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    assert conf.sbft.vip == "10.0.0.100"


def test_oslo_defaults_match_the_embedded_defaults(raw):
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=[], default_config_files=[], default_config_dirs=[])
    assert {name: getattr(conf.sbft, name) for name in config.OPTION_NAMES} == raw
    assert config.load_config(conf) == build_config(raw)


def test_load_config_reads_sbft_section_with_repeated_replicas(tmp_path):
    path = write(tmp_path / "sbft.conf", f"""\
[DEFAULT]
vip = 1.1.1.1
[sbft]
vip = 10.1.0.100
service_port = 8443
replica = {LB2}
replica = {LB1}
heartbeat_timeout = 0
mode = active
""")
    conf = load_file(path)
    assert (conf.vip, conf.service_port, conf.heartbeat_timeout, conf.mode) == (
        "10.1.0.100", 8443, 0.0, "active")
    assert [r.name for r in conf.replicas] == ["lb2", "lb1"]


def test_load_config_reads_the_notify_port_and_startup_grace(tmp_path):
    path = write(tmp_path / "sbft.conf", "[sbft]\nagent_notify_port = 0\nstartup_grace = 2.5\n")
    conf = load_file(path)
    assert (conf.agent_notify_port, conf.startup_grace) == (0, 2.5)


def test_option_names_list_the_new_options_in_order():
    assert config.OPTION_NAMES == ("flows_file", "vip", "vmac", "service_port", "replica",
                                   "spare", "spare_after", "dpid",
                                   "heartbeat_timeout", "heartbeat_interval",
                                   "agent_notify_port", "startup_grace", "service_priority",
                                   "mode", "active_secret", "active_wscale", "replica_key",
                                   "replica_source", "heartbeat_port", "api_token_file",
                                   "voting", "vote_port", "vote_hold", "suspicion_threshold",
                                   "suspicion_half_life", "suspicion_rate", "unvoted",
                                   "state_file", "coordination", "leader_lease",
                                   "advertise_url")


def test_load_config_rejects_unknown_key_with_file_and_line(tmp_path):
    path = write(tmp_path / "typo.conf", "[sbft]\nvip = 10.0.0.100\nvipp = 1.2.3.4\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert info.value.option == "vipp"
    assert str(info.value) == (
        "[sbft] vipp = 'vipp = 1.2.3.4': expected one of the [sbft] options (flows_file, vip, "
        "vmac, service_port, replica, spare, spare_after, dpid, heartbeat_timeout, "
        "heartbeat_interval, "
        f"agent_notify_port, startup_grace, service_priority, mode, active_secret, "
        f"active_wscale, replica_key, replica_source, heartbeat_port, api_token_file, "
        f"voting, vote_port, vote_hold, suspicion_threshold, "
        f"suspicion_half_life, suspicion_rate, unvoted, state_file, coordination, "
        f"leader_lease, advertise_url) at {path}:3")


def test_unknown_keys_outside_sbft_are_ignored(tmp_path):
    path = write(tmp_path / "other.conf", "[DEFAULT]\nvipp = 1\n[other]\nvipp = 2\n")
    assert load_file(path).vip == "10.0.0.100"


def test_relative_flows_file_is_relative_to_the_config_file(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    flows = write(etc / "lab.flows", "arp,actions=NORMAL\n")
    path = write(etc / "sbft.conf", "[sbft]\nflows_file = lab.flows\n")
    monkeypatch.chdir(tmp_path)  # a cwd where "lab.flows" does not exist
    conf = load_file(path)
    assert conf.flows_source == str(flows)
    assert conf.flows == (FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),)


# --- shipped files --------------------------------------------------------------------------


def test_hp_vlan7_conf_has_no_replicas_and_the_thesis_flows():
    conf = load_file(os.path.join(FLOWS_DIR, "hp-vlan7.conf"))
    assert conf.replicas == ()
    assert conf.flows_source == os.path.join(FLOWS_DIR, "hp-vlan7.flows")
    assert conf.flows == (
        FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_dst=("192.168.7.111", EXACT_MASK)),
                 (Output(11),)),
        FlowSpec(Match(dl_type=ETH_TYPE_IP, nw_dst=("192.168.7.103", EXACT_MASK)),
                 (Output(3),)),
        FlowSpec(Match(dl_type=ETH_TYPE_ARP), (Output("NORMAL"),)),
    )


def test_mininet_conf_equals_the_embedded_defaults(default_config):
    conf = load_file(os.path.join(FLOWS_DIR, "mininet.conf"))
    for field in dataclasses.fields(config.SbftConfig):
        if field.name == "active_secret":  # random per load in both: only its shape matches
            assert len(conf.active_secret) == len(default_config.active_secret) == 16
            continue
        assert getattr(conf, field.name) == getattr(default_config, field.name), field.name
    assert conf == default_config


# --- voting: replica keys and the voting options ---------------------------------------------

KEY_HEX = {name: (bytes([n]) * 16).hex() for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
KEY_LINES = [f"{name} {key}" for name, key in KEY_HEX.items()]
KEY_EXPECTED = "16 to 64 bytes as hex (32 to 128 hex digits)"


def voting_raw(raw, **overrides):
    return {**raw, "mode": "active", "voting": "on", "replica_key": list(KEY_LINES),
            **overrides}


def test_voting_defaults(default_config):
    conf = default_config
    assert (conf.voting, conf.vote_port, conf.unvoted) == (False, 5557, "serve")
    assert conf.replica_keys == {} and conf.f == 1
    # the registered defaults (conftest.DEFAULT_RAW, checked against oslo above) are the
    # dataclass's own
    fields = {field.name: field.default for field in dataclasses.fields(config.SbftConfig)}
    for name in ("vote_port", "vote_hold", "suspicion_threshold", "suspicion_half_life",
                 "suspicion_rate", "unvoted"):
        assert getattr(conf, name) == fields[name], name


def test_voting_options_default_when_absent(raw):
    for name in ("replica_key", "voting", "vote_port", "vote_hold", "suspicion_threshold",
                 "suspicion_half_life", "suspicion_rate", "unvoted"):
        del raw[name]
    assert build_config(raw) == build_config({**raw, "replica_key": []})


def with_replicas(conf, count):
    return dataclasses.replace(conf, replicas=tuple(
        Replica(f"r{n}", f"10.0.1.{n}", f"00:00:00:00:02:{n:02x}", n + 1) for n in range(count)))


@pytest.mark.parametrize("count, f", [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 3)])
def test_f_is_the_number_of_byzantine_replicas_tolerated(default_config, count, f):
    assert with_replicas(default_config, count).f == f


def test_f_is_never_negative(default_config):
    assert with_replicas(default_config, 0).f == 0


def test_voting_on_reads_every_option(raw):
    conf = build_config(voting_raw(raw, voting=" ON ", vote_port="6000", vote_hold="0.05",
                                   suspicion_threshold="5", suspicion_half_life="0.5",
                                   suspicion_rate="0.1", unvoted=" stop "))
    assert conf.voting is True
    assert (conf.vote_port, conf.vote_hold, conf.unvoted) == (6000, 0.05, "stop")
    assert (conf.suspicion_threshold, conf.suspicion_half_life, conf.suspicion_rate) == (
        5.0, 0.5, 0.1)
    assert conf.replica_keys == {name: bytes.fromhex(key) for name, key in KEY_HEX.items()}


def test_keys_without_voting_authenticate_some_replicas(raw):
    conf = build_config({**raw, "replica_key": [KEY_LINES[0], "", "  "]})  # blanks ignored
    assert conf.replica_keys == {"lb1": bytes.fromhex(KEY_HEX["lb1"])}
    assert conf.voting is False


@pytest.mark.parametrize("key", ["ab" * 16, "AB" * 64, "cd" * 40])
def test_replica_key_lengths(raw, key):
    assert build_config({**raw, "replica_key": [f"lb2 {key}"]}).replica_keys == {
        "lb2": bytes.fromhex(key)}


@pytest.mark.parametrize("key", ["ab" * 15, "ab" * 65, "zz" * 16, "abc" * 11])
def test_a_bad_replica_key_is_hidden_in_the_error(raw, key):
    with pytest.raises(ConfigError) as info:
        build_config({**raw, "replica_key": [f"lb2 {key}"]})
    assert str(info.value) == f"[sbft] replica_key = 'lb2 <hidden>': expected {KEY_EXPECTED}"
    assert key not in str(info.value)


@pytest.mark.parametrize("line, value", [
    ("lb9 " + "ab" * 16, "lb9"),  # not a replica
    ("lb1", "lb1"),  # no key
    ("lb1 " + "ab" * 16 + " extra", "lb1"),
])
def test_a_replica_key_line_must_name_a_replica_and_one_key(raw, line, value):
    message = error_of(raw, replica_key=[line])
    assert message == (f"[sbft] replica_key = {value!r}: expected NAME HEXKEY with NAME one "
                       "of ['lb1', 'lb2', 'lb3']")
    assert "ab" * 16 not in message


def test_one_key_per_replica(raw):
    assert error_of(raw, replica_key=[KEY_LINES[0], KEY_LINES[0]]) == (
        "[sbft] replica_key = 'lb1': expected one key per replica")


@pytest.mark.parametrize("value", ["yes", "true", "1", ""])
def test_voting_is_on_or_off(raw, value):
    assert error_of(raw, voting=value) == f"[sbft] voting = {value!r}: expected on or off"


def test_voting_needs_active_mode(raw):
    assert error_of(voting_raw(raw, mode="passive")) == (
        "[sbft] voting = 'on': expected mode = active (votes compare the replicas' output in "
        "one sequence space)")


def test_voting_needs_three_replicas(raw):
    assert error_of(voting_raw(raw, replica=[LB1, LB2], replica_key=KEY_LINES[:2])) == (
        "[sbft] voting = 'on': expected at least 3 replicas (n = 2f + 1, f >= 1)")


def test_voting_needs_a_key_for_every_replica(raw):
    message = error_of(voting_raw(raw, replica_key=[KEY_LINES[1]]))
    assert message == ("[sbft] replica_key = '<hidden>': expected a key for every replica when "
                       "voting (missing: lb1, lb3)")


@pytest.mark.parametrize("option, value, expected", [
    ("vote_port", "0", "an integer 1..65535"),
    ("vote_port", "65536", "an integer 1..65535"),
    ("vote_hold", "0", "a number of seconds 0.001..10"),
    ("vote_hold", "11", "a number of seconds 0.001..10"),
    ("suspicion_threshold", "0.5", "a number of seconds 1..1000"),
    ("suspicion_half_life", "0.01", "a number of seconds 0.1..3600"),
    ("suspicion_rate", "1.5", "a number of seconds 0..1"),
    ("suspicion_rate", "-0.1", "a number of seconds 0..1"),
    ("unvoted", "drop", "serve or stop"),
])
def test_bad_voting_values_name_the_option(raw, option, value, expected):
    assert error_of(voting_raw(raw), **{option: value}) == (
        f"[sbft] {option} = {value!r}: expected {expected}")


@pytest.mark.parametrize("option, value, attr, parsed", [
    ("vote_port", "1", "vote_port", 1), ("vote_port", "65535", "vote_port", 65535),
    ("vote_hold", "0.001", "vote_hold", 0.001), ("vote_hold", "10", "vote_hold", 10.0),
    ("suspicion_threshold", "1", "suspicion_threshold", 1.0),
    ("suspicion_rate", "0", "suspicion_rate", 0.0), ("suspicion_rate", "1", "suspicion_rate", 1.0),
])
def test_voting_ranges_are_inclusive(raw, option, value, attr, parsed):
    assert getattr(build_config(voting_raw(raw, **{option: value})), attr) == parsed


def test_replica_keys_are_not_part_of_equality_or_repr(raw):
    one = build_config(voting_raw(raw))
    other = build_config(voting_raw(raw, replica_key=[f"{n} {'ee' * 16}" for n in KEY_HEX]))
    assert one == other and hash(one) == hash(other)
    assert "replica_keys" not in repr(one)
    assert all(key not in repr(one) for key in KEY_HEX.values())


def test_the_config_is_frozen(raw):
    conf = build_config(voting_raw(raw))
    for name, value in (("voting", False), ("vote_hold", 1.0), ("replica_keys", {}),
                        ("unvoted", "stop")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(conf, name, value)
    assert conf.voting is True and conf.unvoted == "serve"


def test_load_config_reads_the_voting_options(tmp_path):
    lines = "".join(f"replica_key = {line}\n" for line in KEY_LINES)
    path = write(tmp_path / "sbft.conf", f"[sbft]\nmode = active\nvoting = on\n{lines}"
                                         "vote_port = 6001\nvote_hold = 0.1\nunvoted = stop\n"
                                         "suspicion_threshold = 4\nsuspicion_half_life = 2\n"
                                         "suspicion_rate = 0.05\n")
    conf = load_file(path)
    assert (conf.voting, conf.vote_port, conf.vote_hold, conf.unvoted) == (True, 6001, 0.1,
                                                                          "stop")
    assert (conf.suspicion_threshold, conf.suspicion_half_life, conf.suspicion_rate) == (
        4.0, 2.0, 0.05)
    assert set(conf.replica_keys) == {"lb1", "lb2", "lb3"}


def test_load_config_names_the_file_and_line_of_a_misspelt_voting_option(tmp_path):
    path = write(tmp_path / "typo.conf", "[sbft]\nmode = active\n\nvote_prot = 6000\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert info.value.option == "vote_prot"
    assert str(info.value).endswith(
        f"suspicion_rate, unvoted, state_file, coordination, leader_lease, advertise_url) "
        f"at {path}:4")


def test_load_config_rejects_a_bad_voting_value_naming_the_option(tmp_path):
    path = write(tmp_path / "sbft.conf", "[sbft]\nmode = active\nvote_hold = soon\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert (info.value.option, info.value.value) == ("vote_hold", "soon")


def test_load_config_with_a_bad_replica_key_hides_it(tmp_path):
    path = write(tmp_path / "sbft.conf", "[sbft]\nreplica_key = lb1 0123456789abcdef\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert "0123456789abcdef" not in str(info.value)
