"""The lab's etcd helper as data (nothing started here)."""

import pytest

from sbft_lab import etcd


def test_free_ports_are_distinct():
    ports = etcd.free_ports(6)
    assert len(set(ports)) == 6 and all(1024 <= p <= 65535 for p in ports)


def test_a_cluster_names_its_endpoints_as_the_coordination_option_wants(tmp_path):
    cluster = etcd.EtcdCluster(str(tmp_path), members=3)
    assert cluster.url == "etcd://" + ",".join(f"127.0.0.1:{p}" for p in cluster.client_ports)
    assert cluster.member_url(1) == f"etcd://127.0.0.1:{cluster.client_ports[1]}"
    assert len(set(cluster.client_ports + cluster.peer_ports)) == 6
    assert cluster.procs == [None, None, None]


def test_a_cluster_has_one_or_three_members(tmp_path):
    with pytest.raises(ValueError):
        etcd.EtcdCluster(str(tmp_path), members=2)
