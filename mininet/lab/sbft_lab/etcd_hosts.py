"""etcd for the lab: the command line of one member of a cluster, in a Mininet host of its own
(``controllers=2`` or 3) or on loopback (the benchmark's single controller with etcd).

The lab runs etcd with a short raft heartbeat and election timeout (100 ms / 600 ms instead of
100 ms / 1000 ms): etcd raises any lease TTL below 1.5 election timeouts (so 2 s with its
defaults), and a 1 s ``leader_lease`` needs 0.9 s. A shorter election timeout makes etcd
elect a new raft leader sooner after a member dies, and on a loaded machine more often for
nothing (its members then log "leader changed"; clients retry).
"""

import os
import subprocess

HEARTBEAT_MS = 100
ELECTION_MS = 600
CLUSTER_TOKEN = "sbft-lab"


def initial_cluster(members):
    """``name=http://IP:PEER,...`` from [(name, ip, peer_port)]."""
    return ",".join(f"{name}=http://{ip}:{peer}" for name, ip, peer in members)


def member_argv(name, ip, client_port, peer_port, members, data_dir,
                heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS):
    """The argv of one member (``members``: every member as (name, ip, peer_port))."""
    return ["etcd", "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", f"http://{ip}:{client_port}",
            "--advertise-client-urls", f"http://{ip}:{client_port}",
            "--listen-peer-urls", f"http://{ip}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{ip}:{peer_port}",
            "--initial-cluster", initial_cluster(members),
            "--initial-cluster-state", "new", "--initial-cluster-token", CLUSTER_TOKEN,
            "--heartbeat-interval", str(heartbeat_ms), "--election-timeout", str(election_ms)]


def require_etcd():
    """The etcd binary's path; a clear error when it is missing (tests fail, never skip)."""
    for directory in os.environ.get("PATH", "/usr/bin").split(os.pathsep) + ["/usr/bin"]:
        path = os.path.join(directory, "etcd")
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError("etcd is not installed (./run.sh setup installs Debian's etcd-server)")


class LoopbackEtcd:
    """A one-member etcd on 127.0.0.1 (free ports, a temporary data directory), stopped by
    PID: what the benchmark's single controller coordinates through."""

    def __init__(self, rundir, client_port, peer_port, name="bench"):
        self.rundir = rundir
        self.client_port = client_port
        self.peer_port = peer_port
        self.name = name
        self.proc = None

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.client_port}"

    def start(self):
        require_etcd()
        data_dir = os.path.join(self.rundir, f"etcd-{self.name}.data")
        argv = member_argv(self.name, "127.0.0.1", self.client_port, self.peer_port,
                           [(self.name, "127.0.0.1", self.peer_port)], data_dir)
        log = open(os.path.join(self.rundir, f"etcd-{self.name}.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.proc

    def stop(self, timeout=5):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
