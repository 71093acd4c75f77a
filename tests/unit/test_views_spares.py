"""Tests for spares, promotions and generations in sbft_ryu.views and sbft_ryu.metrics: the
health view lists spares and every promotion, each replica says whether it is a spare and its
generation, heartbeat answers carry generations, and the metrics follow."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sbft_ryu import metrics, views
from sbft_ryu.cluster import ClusterState
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee

NAMES = ("lb1", "lb2", "lb3", "lb4")
ADDRESSES = {name: f"10.254.0.1{i}" for i, name in enumerate(NAMES, 1)}


@pytest.fixture
def config(raw):
    raw.update(mode="active", voting="on", spare=["lb4 10.0.0.14 00:00:00:00:01:04 4"],
               replica_key=[f"{n} {(bytes([i]) * 16).hex()}" for i, n in enumerate(NAMES, 1)])
    return build_config(raw)


@pytest.fixture
def cluster(config):
    cluster = ClusterState(config.replicas, 0, spares=config.spares)
    cluster.set_ports(1, {1: True, 2: True, 3: True, 4: True}, 0.0)
    return cluster


def test_health_lists_an_up_spare_outside_the_members(config, cluster):
    health = views.health_view(config, cluster, {}, 1.0, Referee(config))
    assert health["members"] == ["lb1", "lb2", "lb3"] and health["spares"] == ["lb4"]
    assert health["promotions"] == [] and health["status"] == "ok"
    lb4 = health["replicas"][3]
    assert (lb4["name"], lb4["state"], lb4["role"], lb4["spare"], lb4["generation"],
            lb4["promotions"]) == ("lb4", "up", "none", True, 0, 0)
    assert health["voting"]["up"] == 3 and health["voting"]["convicts"] is True


def test_health_shows_every_promotion_with_its_reason(config, cluster):
    cluster.mark_byzantine("lb2", 1.0, "its output disagreed with the majority")
    health = views.health_view(config, cluster, {}, 3.5, Referee(config))
    assert health["members"] == ["lb1", "lb3", "lb4"] and health["spares"] == []
    assert health["promotions"] == [{"age_s": 2.5, "replica": "lb4", "replacing": "lb2",
                                     "reason": "replacing lb2 (convicted)", "epoch": 1}]
    assert health["replicas"][3]["generation"] == 1 and health["replicas"][3]["role"] == "backup"
    assert health["voting"]["convicts"] is True  # the spare restored 2f + 1


def test_a_spares_heartbeat_answer_has_no_role_and_the_members_as_peers(config, cluster):
    reply = views.heartbeat_reply(config, cluster, "lb4", None, ADDRESSES)
    assert reply["role"] == "none"
    assert list(reply["voting"]["peers"]) == ["lb1", "lb2", "lb3"]
    assert reply["voting"]["generation"] == 0
    cluster.mark_byzantine("lb1", 1.0, "test")
    reply = views.heartbeat_reply(config, cluster, "lb4", None, ADDRESSES)
    assert reply["role"] == "backup" and reply["voting"]["generation"] == 1
    assert reply["voting"]["peers"] == {n: ADDRESSES[n] for n in ("lb2", "lb3", "lb4")}
    assert reply["voting"]["generations"] == {"lb2": 1, "lb3": 1, "lb4": 1}


def test_metrics_show_spares_generations_and_promotions(config, cluster):
    cluster.mark_byzantine("lb3", 1.0, "test")
    health = views.health_view(config, cluster, {}, 2.0, Referee(config))
    body, _ = metrics.exposition(metrics.make_registry(lambda: (health, {})))
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def per_replica(name):
        return {s.labels["replica"]: s.value for s in families[name].samples}
    assert per_replica("sbft_replica_spare") == {"lb1": 0, "lb2": 0, "lb3": 0, "lb4": 0}
    assert per_replica("sbft_replica_generation") == {"lb1": 1, "lb2": 1, "lb3": 1, "lb4": 1}
    assert per_replica("sbft_replica_promotions") == {"lb1": 0, "lb2": 0, "lb3": 0, "lb4": 1}
    assert families["sbft_replica_promotions"].type == "counter"
    fresh = ClusterState(config.replicas, 0, spares=config.spares)
    fresh.set_ports(1, {4: True}, 0.0)
    health = views.health_view(config, fresh, {}, 0.0, Referee(config))
    body, _ = metrics.exposition(metrics.make_registry(lambda: (health, {})))
    assert 'sbft_replica_spare{replica="lb4"} 1.0' in body.decode().splitlines()
