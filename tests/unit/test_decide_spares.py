"""Tests for spares in sbft_ryu.decide: a spare is in neither the mirror group nor the wire-copy
group until the cluster promotes it into the members; then it is in both, like any member."""

import pytest

from sbft_ryu import decide
from sbft_ryu.cluster import ClusterState
from sbft_ryu.config import build_config
from sbft_ryu.model import Mirror, MirrorBucket

P = 40000
LB4 = "lb4 10.0.0.14 00:00:00:00:01:04 4"


@pytest.fixture
def config(raw):
    raw.update(mode="active", voting="on", spare=[LB4],
               replica_key=[f"{n} {(bytes([i]) * 16).hex()}"
                            for i, n in enumerate(("lb1", "lb2", "lb3", "lb4"), 1)])
    return build_config(raw)


def groups(config, view):
    """(mirror group ports, wire-copy group ports) of the service flows for ``view``."""
    flows = {f.priority - P: f for f in decide.service_flows(config, view)}
    mirror = [b.port for b in flows[15].actions[0].buckets]
    wire = [a for a in flows[20].actions if isinstance(a, Mirror)]
    return mirror, [b.port for b in wire[0].buckets] if wire else []


def test_an_up_spare_gets_no_mirrored_traffic_and_no_wire_copies(config):
    cluster = ClusterState(config.replicas, 0, spares=config.spares)
    cluster.set_ports(1, {1: True, 2: True, 3: True, 4: True}, 0.0)
    assert groups(config, cluster.view) == ([1, 2, 3], [2, 3])


def test_a_promoted_spare_is_mirrored_to_and_gets_wire_copies(config):
    cluster = ClusterState(config.replicas, 0, spares=config.spares)
    cluster.set_ports(1, {1: True, 2: True, 3: True, 4: True}, 0.0)
    view = cluster.mark_byzantine("lb1", 1.0, "test")
    assert view.primary == "lb2" and groups(config, view) == ([2, 3, 4], [3, 4])
    flows = {f.priority - P: f for f in decide.service_flows(config, view)}
    assert MirrorBucket(4, "00:00:00:00:01:04") in flows[15].actions[0].buckets
