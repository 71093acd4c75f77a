"""Tests for the ``spare`` and ``spare_after`` options of sbft_ryu.config: same form and checks
as ``replica`` lines, no clash with any member, keys for spares, n and f from members only."""

import pytest

from sbft_ryu.config import ConfigError, build_config

LB4 = "lb4 10.0.0.14 00:00:00:00:01:04 4"
LB5 = "lb5 10.0.0.15 00:00:00:00:01:05 5"
SHAPE = "NAME IP MAC PORT (space-separated, PORT the switch's OpenFlow port)"
KEYS = {name: (bytes([n]) * 16).hex() for n, name in enumerate(("lb1", "lb2", "lb3", "lb4"), 1)}


def error_of(raw, **overrides):
    with pytest.raises(ConfigError) as info:
        build_config({**raw, **overrides})
    return str(info.value)


def test_no_spares_by_default(default_config):
    assert default_config.spares == () and default_config.spare_after == 5.0
    assert default_config.nodes == default_config.replicas


def test_spares_are_parsed_in_order_and_do_not_change_n_or_f(raw):
    conf = build_config({**raw, "spare": [LB4, LB5], "spare_after": "2.5"})
    assert [s.name for s in conf.spares] == ["lb4", "lb5"]
    assert (conf.spares[0].ip, conf.spares[0].mac, conf.spares[0].port) == (
        "10.0.0.14", "00:00:00:00:01:04", 4)
    assert conf.f == 1 and len(conf.replicas) == 3 and conf.spare_after == 2.5
    assert [r.name for r in conf.nodes] == ["lb1", "lb2", "lb3", "lb4", "lb5"]
    assert conf.replica("lb5") == conf.spares[1]


@pytest.mark.parametrize("line, expected", [
    ("lb4 10.0.0.14 00:00:00:00:01:04", SHAPE),
    ("4lb 10.0.0.14 00:00:00:00:01:04 4",
     "a NAME of letters, digits, '_.-' starting with a letter (at most 32)"),
    ("lb4 10.0.0.300 00:00:00:00:01:04 4", f"an IPv4 address like 10.0.0.100 in {SHAPE}"),
    ("lb4 10.0.0.14 01:00:00:00:01:04 4", f"a unicast MAC address (first octet even) in {SHAPE}"),
    ("lb4 10.0.0.14 00:00:00:00:01:04 0", f"PORT an integer 1..4294967040 in {SHAPE}"),
])
def test_a_bad_spare_line_names_the_spare_option(raw, line, expected):
    assert error_of(raw, spare=[line]) == f"[sbft] spare = {line!r}: expected {expected}"


def test_a_spare_on_the_vip_is_rejected(raw):
    assert error_of(raw, spare=["lb4 10.0.0.100 00:00:00:00:01:04 4"]) == (
        "[sbft] spare = 'lb4': expected a replica IP different from the vip 10.0.0.100")


@pytest.mark.parametrize("line, attr, value", [
    ("lb1 10.0.0.14 00:00:00:00:01:04 4", "NAME", "lb1"),
    ("lb4 10.0.0.11 00:00:00:00:01:04 4", "IP", "10.0.0.11"),
    ("lb4 10.0.0.14 00:00:00:00:01:01 4", "MAC", "00:00:00:00:01:01"),
    ("lb4 10.0.0.14 00:00:00:00:01:04 1", "PORT", "1"),
])
def test_a_spare_clashing_with_a_member_is_rejected(raw, line, attr, value):
    assert error_of(raw, spare=[line]) == (
        f"[sbft] spare = 'lb1 / {line.split()[0]}': expected replicas and spares with "
        f"distinct {attr}s (both use {value})")


def test_two_spares_clashing_are_rejected_as_spares(raw):
    assert error_of(raw, spare=[LB4, LB4.replace("lb4", "lb5")]) == (
        "[sbft] spare = 'lb4 / lb5': expected replicas with distinct IPs (both use 10.0.0.14)")


@pytest.mark.parametrize("value", ["-1", "x", "3601"])
def test_spare_after_is_a_bounded_number_of_seconds(raw, value):
    assert error_of(raw, spare_after=value) == (
        f"[sbft] spare_after = {value!r}: expected a number of seconds 0..3600")


def test_replica_key_accepts_spare_names_and_voting_needs_their_keys(raw):
    voting = {**raw, "mode": "active", "voting": "on", "spare": [LB4]}
    keys = [f"{name} {key}" for name, key in KEYS.items()]
    conf = build_config({**voting, "replica_key": keys})
    assert set(conf.replica_keys) == {"lb1", "lb2", "lb3", "lb4"}
    assert error_of(voting, replica_key=keys[:3]) == (
        "[sbft] replica_key = '<hidden>': expected a key for every replica when voting "
        "(missing: lb4)")
    assert "NAME one of ['lb1', 'lb2', 'lb3']" in error_of(raw, replica_key=[keys[3]])
