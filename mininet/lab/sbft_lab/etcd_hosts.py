"""etcd in the lab's Mininet hosts (``controllers=2`` or 3): the command line of one member of
the 3-member cluster in hosts etcd1..3. (Clusters on loopback: :mod:`sbft_lab.etcd`.)

The lab runs etcd with a short raft heartbeat and election timeout (100 ms / 500 ms instead of
100 ms / 1000 ms, the same as :mod:`sbft_lab.etcd`'s loopback clusters): etcd raises any lease
TTL below 1.5 election timeouts (so 2 s with its defaults), and a 1 s ``leader_lease`` needs
at most 0.67 s. A shorter election timeout makes etcd elect a new raft leader sooner after a
member dies, and on a loaded machine more often for nothing (its members then log "leader
changed"; clients retry).
"""

HEARTBEAT_MS = 100
ELECTION_MS = 500
CLUSTER_TOKEN = "sbft-lab"


def initial_cluster(members):
    """``name=http://IP:PEER,...`` from [(name, ip, peer_port)]."""
    return ",".join(f"{name}=http://{ip}:{peer}" for name, ip, peer in members)


def member_argv(binary, name, ip, client_port, peer_port, members, data_dir,
                heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS):
    """The argv of one member (``members``: every member as (name, ip, peer_port)). Its data
    directory is kept across restarts (the cluster flags are ignored once it exists)."""
    return [binary, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", f"http://{ip}:{client_port}",
            "--advertise-client-urls", f"http://{ip}:{client_port}",
            "--listen-peer-urls", f"http://{ip}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{ip}:{peer_port}",
            "--initial-cluster", initial_cluster(members),
            "--initial-cluster-state", "new", "--initial-cluster-token", CLUSTER_TOKEN,
            "--heartbeat-interval", str(heartbeat_ms), "--election-timeout", str(election_ms)]
