"""Tests for sbft_ryu.metrics: the exposition derived from the health view at scrape time."""

import dataclasses

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sbft_ryu import metrics, views
from sbft_ryu.cluster import ClusterState

DPID = 1
NOW = 5.0


@pytest.fixture
def cluster(default_config):
    """Every port up; heartbeats from lb1 (with counters) and lb2, none from lb3."""
    state = ClusterState(default_config.replicas, default_config.heartbeat_timeout)
    state.set_ports(DPID, {1: True, 2: True, 3: True}, 0.0)
    state.heartbeat("lb1", 1, True, {"mirrored": 7, "dropped": 0.5}, 4.9)
    state.heartbeat("lb2", 1, False, {}, 4.75)
    return state


def scrape(config, cluster, switches=None, counters=None):
    switches = {DPID: (True, "1.3"), 2: (False, "1.0")} if switches is None else switches
    health = views.health_view(config, cluster, switches, NOW)
    registry = metrics.make_registry(lambda: (health, counters or {}))
    body, content_type = metrics.exposition(registry)
    assert content_type == CONTENT_TYPE_LATEST
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def samples(family):
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in family.samples}


def test_epoch_and_status(default_config, cluster):
    families = scrape(default_config, cluster)
    assert samples(families["sbft_epoch"]) == {("sbft_epoch", ()): 1.0}
    assert families["sbft_epoch"].type == "gauge"
    assert samples(families["sbft_status"]) == {
        ("sbft_status", (("status", "ok"),)): 0.0,
        ("sbft_status", (("status", "degraded"),)): 1.0,
        ("sbft_status", (("status", "down"),)): 0.0,
    }


def test_status_down_without_any_replica_up(default_config):
    state = ClusterState(default_config.replicas, default_config.heartbeat_timeout)
    values = samples(scrape(default_config, state)["sbft_status"])
    assert values[("sbft_status", (("status", "down"),))] == 1.0
    assert sum(values.values()) == 1.0


def test_switches(default_config, cluster):
    assert samples(scrape(default_config, cluster)["sbft_switch_connected"]) == {
        ("sbft_switch_connected", (("dpid", "0000000000000001"),)): 1.0,
        ("sbft_switch_connected", (("dpid", "0000000000000002"),)): 0.0,
    }


def test_replica_up_link_and_service(default_config, cluster):
    families = scrape(default_config, cluster)

    def per_replica(name):
        return {labels[0][1]: value for (_, labels), value in samples(families[name]).items()}

    assert per_replica("sbft_replica_up") == {"lb1": 1.0, "lb2": 0.0, "lb3": 0.0}
    assert per_replica("sbft_replica_link_up") == {"lb1": 1.0, "lb2": 1.0, "lb3": 1.0}
    assert per_replica("sbft_replica_service_ok") == {"lb1": 1.0, "lb2": 0.0, "lb3": 0.0}
    assert per_replica("sbft_replica_heartbeats") == {"lb1": 1.0, "lb2": 1.0, "lb3": 0.0}
    assert families["sbft_replica_heartbeats"].type == "counter"


def test_replica_role_is_one_hot(default_config, cluster):
    values = samples(scrape(default_config, cluster)["sbft_replica_role"])
    assert len(values) == 9
    ones = sorted(dict(labels)["replica"] + "=" + dict(labels)["role"]
                  for (_, labels), value in values.items() if value == 1.0)
    assert ones == ["lb1=primary", "lb2=none", "lb3=none"]


def test_heartbeat_age_only_when_known(default_config, cluster):
    assert samples(scrape(default_config, cluster)["sbft_replica_heartbeat_age_seconds"]) == {
        ("sbft_replica_heartbeat_age_seconds", (("replica", "lb1"),)): pytest.approx(0.1),
        ("sbft_replica_heartbeat_age_seconds", (("replica", "lb2"),)): pytest.approx(0.25),
    }


def test_agent_counters_are_labelled(default_config, cluster):
    family = scrape(default_config, cluster)["sbft_agent_counter"]
    assert family.type == "counter"
    assert samples(family) == {
        ("sbft_agent_counter_total", (("counter", "dropped"), ("replica", "lb1"))): 0.5,
        ("sbft_agent_counter_total", (("counter", "mirrored"), ("replica", "lb1"))): 7.0,
    }


def test_controller_counters(default_config, cluster):
    family = scrape(default_config, cluster, counters={"heartbeat": 3, "packet_in": 1})
    assert samples(family["sbft_controller"]) == {
        ("sbft_controller_total", (("event", "heartbeat"),)): 3.0,
        ("sbft_controller_total", (("event", "packet_in"),)): 1.0,
    }


def test_values_are_read_at_scrape_time(default_config, cluster):
    def source():
        return views.health_view(default_config, cluster, {}, NOW), {}

    registry = metrics.make_registry(source)

    def epoch():
        body = metrics.exposition(registry)[0].decode()
        (family,) = [f for f in text_string_to_metric_families(body) if f.name == "sbft_epoch"]
        return family.samples[0].value

    assert epoch() == 1.0
    cluster.heartbeat("lb2", 2, True, {}, NOW)
    cluster.port_status(DPID, 1, False, NOW)
    assert epoch() == 2.0


def test_no_replicas_gives_empty_replica_families(default_config):
    config = dataclasses.replace(default_config, replicas=())
    families = scrape(config, ClusterState((), 0.15), switches={})
    assert samples(families["sbft_replica_up"]) == {}
    assert samples(families["sbft_epoch"]) == {("sbft_epoch", ()): 0.0}


def test_active_mode_agent_counters_are_labelled_and_the_secret_is_not_exported(default_config):
    from sbft_ryu.agent import active
    config = dataclasses.replace(default_config, mode="active", active_secret=b"\xa5" * 16)
    state = ClusterState(config.replicas, config.heartbeat_timeout)
    state.set_ports(DPID, {1: True, 2: True, 3: True}, 0.0)
    counters = {**{name: i for i, name in enumerate(active.COUNTER_NAMES)}, "connections": 3,
                "callback_errors": 0}
    state.heartbeat("lb1", 1, True, counters, 4.9)
    family = scrape(config, state)["sbft_agent_counter"]
    assert samples(family) == {
        ("sbft_agent_counter_total", (("counter", name), ("replica", "lb1"))): float(value)
        for name, value in counters.items()}
    health = views.health_view(config, state, {}, NOW)
    body = metrics.exposition(metrics.make_registry(lambda: (health, {})))[0]
    assert b"a5a5a5a5" not in body


def test_an_agents_client_input_gauges_are_gauges_not_counters(default_config):
    from sbft_ryu.agent import active
    state = ClusterState(default_config.replicas, default_config.heartbeat_timeout)
    state.set_ports(DPID, {1: True, 2: True, 3: True}, 0.0)
    gauges = {"connections_behind": 2, "bytes_missing": 123456, "parked_bytes": 789}
    assert set(gauges) == set(active.GAUGE_NAMES) == set(metrics.AGENT_GAUGES)
    state.heartbeat("lb2", 1, True, {"client_gap_bytes": 5, **gauges}, 4.9)
    scraped = scrape(default_config, state)
    assert samples(scraped["sbft_agent_client_input"]) == {
        ("sbft_agent_client_input", (("measure", name), ("replica", "lb2"))): float(value)
        for name, value in gauges.items()}
    assert samples(scraped["sbft_agent_counter"]) == {
        ("sbft_agent_counter_total", (("counter", "client_gap_bytes"), ("replica", "lb2"))): 5.0}
