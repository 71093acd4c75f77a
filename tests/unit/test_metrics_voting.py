"""Tests for the voting metrics of sbft_ryu.metrics (_voting): whether replies are voted, which
replicas are byzantine, and the per-replica vote statistics of the health view, with voting on
and off."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sbft_ryu import metrics, views
from sbft_ryu.cluster import ClusterState
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee

NOW = 20.0
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
COUNTERS = ("segments_compared", "divergences", "wire_divergences", "reports_verified",
            "reports_rejected", "unauthenticated_heartbeats")
GAUGES = ("replies_voted", "replica_byzantine", "replica_suspicion",
          "replica_divergence_rate")


@pytest.fixture
def config(raw):
    raw.update(mode="active", voting="on", suspicion_half_life="5",
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    return build_config(raw)


def cluster_with(config, ports=(1, 2, 3)):
    cluster = ClusterState(config.replicas, 0.0)
    cluster.set_ports(1, {port: True for port in ports}, 0.0)
    return cluster


def exposition(health):
    body, _ = metrics.exposition(metrics.make_registry(lambda: (health, {})))
    return body.decode()


def families_of(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def per_replica(family):
    return {sample.labels["replica"]: sample.value for sample in family.samples}


@pytest.fixture
def health(config):
    """lb3 diverged (judged, decaying), lied on the wire once, reported and forged; lb1 and lb2
    counted the ranges they compared; lb2's heartbeats failed authentication twice; lb2's
    port is down, so with lb3 byzantine fewer than f + 1 members are up (unvoted)."""
    cluster = cluster_with(config, ports=(1, 3))
    cluster.heartbeat("lb1", 1, True, {"claims": 120, "votes_cast": 3}, NOW)
    cluster.heartbeat("lb2", 1, True, {"votes_cast": 250}, NOW)
    cluster.heartbeat("lb3", 1, True, {"claims": 1, "votes_cast": 9.0}, NOW)
    referee = Referee(config)
    judge = referee.judge
    stats = judge.stats["lb3"]
    stats.divergences, stats.wire_divergences = 4, 1
    stats.reported, stats.rejected = 5, 2
    stats.suspicion, stats.suspicion_at = 3.0, NOW - 5.0  # one half-life ago: 1.5 now
    for name, total in (("lb1", 300), ("lb2", 100)):
        judge.compared(name, 0, NOW)
        judge.compared(name, total, NOW)  # lb3's compared mass: the largest other, 300
    referee.auth_failures["lb2"] = 2
    cluster.mark_byzantine("lb3", NOW, "test")
    return views.health_view(config, cluster, {}, NOW, referee)


def test_the_voting_families_and_their_types(health):
    families = families_of(exposition(health))
    for key in COUNTERS:
        assert families[f"sbft_replica_{key}"].type == "counter"
    for key in GAUGES:
        assert families[f"sbft_{key}"].type == "gauge"


def test_replies_voted_follows_the_voting_view(config, health):
    assert families_of(exposition(health))["sbft_replies_voted"].samples[0].value == 0.0
    # lb3 is byzantine and lb2 down: 1 of 3 up, below f + 1; with all three up, voted
    fresh = views.health_view(config, cluster_with(config), {}, NOW, Referee(config))
    assert fresh["voting"]["voted"] is True
    [sample] = families_of(exposition(fresh))["sbft_replies_voted"].samples
    assert (sample.name, sample.labels, sample.value) == ("sbft_replies_voted", {}, 1.0)


def test_byzantine_is_one_per_replica(health):
    assert per_replica(families_of(exposition(health))["sbft_replica_byzantine"]) == {
        "lb1": 0.0, "lb2": 0.0, "lb3": 1.0}


def test_counter_values_come_from_the_votes_view(health):
    families = families_of(exposition(health))
    expected = {
        "segments_compared": {"lb1": 123.0, "lb2": 250.0, "lb3": 10.0},
        "divergences": {"lb1": 0.0, "lb2": 0.0, "lb3": 4.0},
        "wire_divergences": {"lb1": 0.0, "lb2": 0.0, "lb3": 1.0},
        "reports_verified": {"lb1": 0.0, "lb2": 0.0, "lb3": 5.0},
        "reports_rejected": {"lb1": 0.0, "lb2": 0.0, "lb3": 2.0},
        "unauthenticated_heartbeats": {"lb1": 0.0, "lb2": 2.0, "lb3": 0.0},
    }
    for key, values in expected.items():
        family = families[f"sbft_replica_{key}"]
        assert per_replica(family) == values, key
        assert {s.name for s in family.samples} == {f"sbft_replica_{key}_total"}
        assert values == {r["name"]: float(r["votes"][key]) for r in health["replicas"]}


def test_suspicion_and_divergence_rate(health):
    families = families_of(exposition(health))
    assert per_replica(families["sbft_replica_suspicion"]) == {
        "lb1": 0.0, "lb2": 0.0, "lb3": pytest.approx(1.5)}
    assert per_replica(families["sbft_replica_divergence_rate"]) == {
        "lb1": 0.0, "lb2": 0.0, "lb3": pytest.approx(0.005)}
    for r in health["replicas"]:
        assert per_replica(families["sbft_replica_suspicion"])[r["name"]] == \
            r["votes"]["suspicion"]
        assert per_replica(families["sbft_replica_divergence_rate"])[r["name"]] == \
            r["votes"]["divergence_rate"]


def test_the_exposition_text_has_the_labelled_samples(health):
    text = exposition(health)
    for line in ('sbft_replies_voted 0.0',
                 'sbft_replica_byzantine{replica="lb3"} 1.0',
                 'sbft_replica_divergences_total{replica="lb3"} 4.0',
                 'sbft_replica_wire_divergences_total{replica="lb3"} 1.0',
                 'sbft_replica_segments_compared_total{replica="lb2"} 250.0',
                 'sbft_replica_unauthenticated_heartbeats_total{replica="lb2"} 2.0',
                 'sbft_replica_suspicion{replica="lb3"} 1.5',
                 'sbft_replica_divergence_rate{replica="lb3"} 0.005',
                 '# TYPE sbft_replica_reports_rejected_total counter',
                 '# TYPE sbft_replica_divergence_rate gauge'):
        assert line in text.splitlines(), line


def test_voting_off_gives_zeros_for_every_replica(default_config):
    cluster = cluster_with(default_config)
    cluster.heartbeat("lb1", 1, True, {"claims": 7}, NOW)  # (an agent's count is still shown)
    health = views.health_view(default_config, cluster, {}, NOW)
    assert health["voting"]["enabled"] is False
    families = families_of(exposition(health))
    assert families["sbft_replies_voted"].samples[0].value == 0.0
    assert per_replica(families["sbft_replica_byzantine"]) == dict.fromkeys(
        ("lb1", "lb2", "lb3"), 0.0)
    for key in COUNTERS:
        expected = {"lb1": 7.0 if key == "segments_compared" else 0.0, "lb2": 0.0, "lb3": 0.0}
        assert per_replica(families[f"sbft_replica_{key}"]) == expected, key
    for key in ("sbft_replica_suspicion", "sbft_replica_divergence_rate"):
        assert per_replica(families[key]) == dict.fromkeys(("lb1", "lb2", "lb3"), 0.0)


def test_voting_off_with_a_referee_gives_zeros_too(default_config):
    cluster = cluster_with(default_config)
    referee = Referee(default_config)
    assert referee.judge is None
    health = views.health_view(default_config, cluster, {}, NOW, referee)
    families = families_of(exposition(health))
    for key in COUNTERS:
        assert set(per_replica(families[f"sbft_replica_{key}"]).values()) == {0.0}


def test_values_are_read_at_scrape_time(config):
    """Suspicion decays between scrapes: the collector asks the source every time."""
    cluster = cluster_with(config)
    referee = Referee(config)
    stats = referee.judge.stats["lb2"]
    stats.suspicion, stats.suspicion_at = 2.0, NOW
    now = [NOW]
    registry = metrics.make_registry(
        lambda: (views.health_view(config, cluster, {}, now[0], referee), {}))

    def suspicion():
        text = metrics.exposition(registry)[0].decode()
        return per_replica(families_of(text)["sbft_replica_suspicion"])["lb2"]

    assert suspicion() == 2.0
    now[0] = NOW + 5.0
    assert suspicion() == pytest.approx(1.0)
