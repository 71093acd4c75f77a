"""Tests for the voting parts of sbft_ryu.views: whether replies are voted (voting_view), the
per-replica vote statistics (votes_view) and the voting block of heartbeat answers."""

import pytest

from sbft_ryu import protocol, views
from sbft_ryu.cluster import ClusterState
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee

NOW = 20.0
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
VOTE_FIELDS = {"segments_compared", "divergences", "wire_divergences", "suspicion",
               "compared_recently", "divergence_rate", "reports_verified", "reports_rejected",
               "unauthenticated_heartbeats"}


@pytest.fixture
def config(raw):
    raw.update(mode="active", voting="on", vote_hold="0.3", vote_port="6000",
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    return build_config(raw)


def cluster_with(config, ports=(1, 2, 3), serve_below=None):
    cluster = ClusterState(config.replicas, 0.0, serve_below=serve_below)
    cluster.set_ports(1, {port: True for port in ports}, NOW)
    return cluster


def test_voting_off(default_config):
    assert views.voting_view(default_config, cluster_with(default_config)) == {
        "enabled": False, "voted": False, "f": 1, "reason": "voting is off"}


def test_replies_are_voted_with_2f_plus_1_replicas_up(config):
    assert views.voting_view(config, cluster_with(config)) == {
        "enabled": True, "voted": True, "f": 1, "unvoted_policy": "serve", "up": 3,
        "needed": 2, "convicts": True, "wire_checked": True,
        "reason": "3 of 3 replicas up, 2 needed to vote: replies are voted, liars are "
                  "convicted and the wire is checked"}


def test_with_f_plus_1_up_replies_are_voted_but_a_liar_cannot_be_convicted(config):
    view = views.voting_view(config, cluster_with(config, ports=(1, 2)))
    assert (view["voted"], view["convicts"], view["wire_checked"]) == (True, False, False)
    assert view["reason"] == (
        "2 of 3 replicas up, 2 needed to vote: replies are voted; a liar's bytes are withheld "
        "but it cannot be convicted (that needs 2 replicas agreeing against it: 3 up); the "
        "wire check needs 2 backup reporters (3 up), so a host bypassing its agent is not "
        "detected")


def test_below_f_plus_1_replies_are_not_voted(config):
    view = views.voting_view(config, cluster_with(config, ports=(1,)))
    assert view["voted"] is False and view["convicts"] is False
    assert view["reason"] == "1 of 3 replicas up, 2 needed to vote: replies are NOT voted"


@pytest.mark.parametrize("up, voted, convicts", [(5, True, True), (4, True, True),
                                                 (3, True, False), (2, False, False)])
def test_five_replicas_vote_with_three_up_and_convict_with_four(raw, up, voted, convicts):
    names = [f"lb{i}" for i in range(1, 6)]
    raw.update(mode="active", voting="on",
               replica=[f"{n} 10.0.0.{10 + i} 00:00:00:00:01:0{i} {i}"
                        for i, n in enumerate(names, 1)],
               replica_key=[f"{n} {(bytes([i]) * 16).hex()}" for i, n in enumerate(names, 1)])
    config = build_config(raw)
    view = views.voting_view(config, cluster_with(config, ports=range(1, up + 1)))
    assert (view["f"], view["needed"], view["up"]) == (2, 3, up)
    assert (view["voted"], view["convicts"], view["wire_checked"]) == (voted, convicts,
                                                                        convicts)


def test_with_the_stop_policy_the_service_stops_below_f_plus_1(config):
    cluster = cluster_with(config, ports=(1,), serve_below=2)
    view = views.voting_view(config, cluster)
    assert cluster.view.primary is None and view["voted"] is False
    assert view["reason"].endswith("service stopped")


def test_the_health_view_carries_the_voting_view(config):
    cluster = cluster_with(config)
    health = views.health_view(config, cluster, {}, NOW, Referee(config))
    assert health["voting"] == views.voting_view(config, cluster)
    assert all(set(r["votes"]) == VOTE_FIELDS for r in health["replicas"])


def test_vote_statistics_without_a_referee_are_zero(default_config):
    cluster = cluster_with(default_config)
    votes = views.replica_view(default_config, cluster, "lb1", NOW)["votes"]
    assert votes == {**dict.fromkeys(VOTE_FIELDS, 0), "suspicion": 0.0,
                     "compared_recently": 0.0, "divergence_rate": 0.0}


def signed(kind, name, text):
    statement = protocol.Statement(b"\n\0\0\x1f", 40000, 0, len(text), protocol.digest(text))
    return protocol.encode(kind, name, [statement], KEYS[name])


def test_vote_statistics_come_from_the_judge_and_the_agents_counters(config):
    """lb3 said "wrong" (verified, one against one), sent a forgery, then lb2's "right" made
    it the minority: one point of suspicion, one half-life before NOW."""
    cluster = cluster_with(config)
    cluster.heartbeat("lb3", 1, True, {"claims": 4, "votes_cast": 6.0}, NOW)
    referee = Referee(config)
    claim = signed(protocol.CLAIM, "lb1", b"right")
    referee.evidence("lb3", [[claim, signed(protocol.VOTE, "lb3", b"wrong")]], NOW - 5.0)
    referee.evidence("lb3", [[b"forged"]], NOW - 5.0)
    referee.evidence("lb1", [[claim, signed(protocol.VOTE, "lb2", b"right")]], NOW - 5.0)
    referee.auth_failures["lb3"] = 7
    votes = views.replica_view(config, cluster, "lb3", NOW, referee)["votes"]
    assert votes == {"segments_compared": 10, "divergences": 1, "wire_divergences": 0,
                     "suspicion": 0.5, "compared_recently": 0.0, "divergence_rate": 0.5,
                     "reports_verified": 1, "reports_rejected": 1,
                     "unauthenticated_heartbeats": 7}


# --- heartbeat answers -----------------------------------------------------------------------

ADDRESSES = {"lb3": "10.254.0.13", "lb1": "10.254.0.11", "lb2": "10.254.0.12"}


def test_the_voting_block_of_a_heartbeat_answer(config):
    cluster = cluster_with(config)
    reply = views.heartbeat_reply(config, cluster, "lb2", "nonce-7", ADDRESSES,
                                  [["10.0.0.31", 40000]])
    assert reply["nonce"] == "nonce-7"
    assert reply["active"]["voting"] is True
    assert reply["voting"] == {"required": True, "f": 1, "hold_s": 0.3, "port": 6000,
                               "unvoted": "serve", "peers": dict(sorted(ADDRESSES.items())),
                               "reset": [["10.0.0.31", 40000]], "generation": 1,
                               "generations": {"lb1": 1, "lb2": 1, "lb3": 1}}
    assert list(reply["voting"]["peers"]) == ["lb1", "lb2", "lb3"]


def test_voting_is_not_required_below_f_plus_1_and_byzantine_peers_are_left_out(config):
    cluster = cluster_with(config)
    cluster.mark_byzantine("lb3", NOW, "test")
    block = views.heartbeat_reply(config, cluster, "lb1", None, ADDRESSES)["voting"]
    assert block["required"] is True  # 2 of 3 up: f + 1, still voted
    assert block["peers"] == {"lb1": "10.254.0.11", "lb2": "10.254.0.12"}
    assert block["reset"] == []
    cluster.mark_byzantine("lb2", NOW, "test")
    block = views.heartbeat_reply(config, cluster, "lb1", None, ADDRESSES)["voting"]
    assert block["required"] is False
    assert block["peers"] == {"lb1": "10.254.0.11"}


def test_peers_are_the_up_members_a_crashed_replica_is_forgotten(config):
    cluster = cluster_with(config, ports=(1, 2))  # lb3's port is down, its address known
    block = views.heartbeat_reply(config, cluster, "lb1", None, ADDRESSES)["voting"]
    assert block["required"] is True
    assert block["peers"] == {"lb1": "10.254.0.11", "lb2": "10.254.0.12"}
    cluster.set_ports(1, {1: True, 2: True, 3: True}, NOW)
    block = views.heartbeat_reply(config, cluster, "lb1", None, ADDRESSES)["voting"]
    assert list(block["peers"]) == ["lb1", "lb2", "lb3"]


def test_without_voting_or_a_nonce_the_answer_has_neither(default_config):
    reply = views.heartbeat_reply(default_config, cluster_with(default_config), "lb1")
    assert "voting" not in reply and "nonce" not in reply


def test_no_key_is_in_any_view(config):
    cluster = cluster_with(config)
    referee = Referee(config)
    texts = [repr(views.health_view(config, cluster, {}, NOW, referee)),
             repr(views.heartbeat_reply(config, cluster, "lb1", "n", ADDRESSES))]
    for key in KEYS.values():
        assert all(key.hex() not in text for text in texts)
    assert "replica_keys" not in repr(config)
