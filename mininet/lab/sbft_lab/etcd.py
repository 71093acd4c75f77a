"""A throw-away etcd cluster of 1 or 3 members on loopback, for tests, the lab and benchmarks.

Each member gets a temporary data directory under ``rundir``, free loopback ports, and runs
with ``--heartbeat-interval 100 --election-timeout 500`` (etcd's defaults are 100/1000): etcd
raises any lease TTL below 1.5 x its election timeout, so these make a 1 s leader lease
possible. Members are stopped by PID (:meth:`EtcdCluster.kill` for one member, ``stop`` for
all); nothing else on the machine is touched.

    with EtcdCluster(rundir, members=3) as cluster:
        cluster.url            # "etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
        cluster.kill(0)        # SIGKILL member 0
        cluster.start_member(0)  # back, with its data
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from sbft_lab.procs import stop_process

HEARTBEAT_MS = 100
ELECTION_MS = 500
START_TIMEOUT_S = 20


def free_ports(count, host="127.0.0.1"):
    """``count`` distinct TCP ports free on ``host`` now (bound once, then released)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def etcd_binary():
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(path):
        raise FileNotFoundError("etcd is not installed (./run.sh setup installs etcd-server)")
    return path


class EtcdCluster:
    def __init__(self, rundir, members=1, host="127.0.0.1", name="sbft-etcd"):
        if members not in (1, 3):
            raise ValueError("members: 1 or 3")
        self.rundir = rundir
        self.host = host
        ports = free_ports(2 * members, host)
        self.names = [f"{name}{i}" for i in range(members)]
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.procs = [None] * members
        self._initial = ",".join(f"{n}=http://{host}:{p}"
                                 for n, p in zip(self.names, self.peer_ports))

    @property
    def endpoints(self):
        return [f"{self.host}:{port}" for port in self.client_ports]

    @property
    def url(self):
        """The ``[sbft] coordination`` value for this cluster."""
        return "etcd://" + ",".join(self.endpoints)

    def member_url(self, index):
        return f"etcd://{self.endpoints[index]}"

    def start(self):
        for index in range(len(self.names)):
            self.start_member(index, wait=False)
        self.wait_healthy()
        return self

    def start_member(self, index, wait=True):
        """Start (or restart, keeping its data directory) member ``index``."""
        name, client, peer = self.names[index], self.client_ports[index], self.peer_ports[index]
        datadir = os.path.join(self.rundir, f"{name}.data")
        state = "existing" if os.path.exists(datadir) else "new"
        argv = [etcd_binary(), "--name", name, "--data-dir", datadir,
                "--listen-client-urls", f"http://{self.host}:{client}",
                "--advertise-client-urls", f"http://{self.host}:{client}",
                "--listen-peer-urls", f"http://{self.host}:{peer}",
                "--initial-advertise-peer-urls", f"http://{self.host}:{peer}",
                "--initial-cluster", self._initial, "--initial-cluster-state", state,
                "--initial-cluster-token", f"sbft-{os.getpid()}-{self.peer_ports[0]}",
                "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_MS)]
        log = open(os.path.join(self.rundir, f"{name}.log"), "ab")
        self.procs[index] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_member(index)

    def _healthy(self, index, timeout=1.0):
        url = f"http://{self.endpoints[index]}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.loads(response.read().decode()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_member(self, index, timeout=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[index]
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"etcd member {self.names[index]} exited "
                                   f"({proc.returncode}); see {self.rundir}")
            if self._healthy(index):
                return
            time.sleep(0.1)
        raise TimeoutError(f"etcd member {self.names[index]} not healthy after {timeout}s")

    def wait_healthy(self, timeout=START_TIMEOUT_S):
        for index in range(len(self.names)):
            if self.procs[index] is not None:
                self.wait_member(index, timeout)

    def raft_leader(self, timeout=1.0):
        """The index of the member etcd's own raft elected leader, or None (no answer)."""
        for index in range(len(self.names)):
            if self.procs[index] is None:
                continue
            request = urllib.request.Request(
                f"http://{self.endpoints[index]}/v3/maintenance/status", data=b"{}",
                method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    status = json.loads(response.read().decode())
            except (OSError, ValueError):
                continue
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return index
        return None

    def kill(self, index):
        """SIGKILL member ``index`` (by PID) and reap it."""
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.procs[index] = None

    def stop(self):
        for index, proc in enumerate(self.procs):
            stop_process(proc)
            self.procs[index] = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
