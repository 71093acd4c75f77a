"""Several ryu-managers on one switch, one leader through etcd, without Mininet.

:class:`ControllerSet` starts a bare Open vSwitch bridge in the root namespace (userspace
datapath, OpenFlow 1.3, ``fail_mode=secure`` so it keeps its flows while no controller
answers), ``ports`` internal ports numbered 1..N (up, no addresses) standing for the replicas'
switch ports, and N ``ryu-manager sbft_ryu.app`` processes on loopback, each with its own
OpenFlow and REST port and ``[sbft] coordination`` pointing at an etcd cluster
(:mod:`sbft_lab.etcd`). Everything it starts is stopped by PID, the bridge deleted by its
(unique) name. For controller-level tests of the election, roles and fencing; the Mininet lab
(``sbft_topo.py --controllers N``) is the place for agents and clients.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request

from sbft_lab.etcd import free_ports
from sbft_lab.procs import stop_process

# installed editable from <repo>/mininet/lab (./run.sh setup): this file's checkout
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")


def _run(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=20)


class ControllerSet:
    def __init__(self, rundir, etcd_url, count=2, leader_lease=1, ports=3, sbft_extra="",
                 protocols="OpenFlow13", bridge=None):
        self.rundir = rundir
        self.etcd_url = etcd_url
        self.count = count
        self.leader_lease = leader_lease
        self.ports = ports
        self.sbft_extra = sbft_extra
        self.protocols = protocols
        self.bridge = bridge or f"sbftc{os.getpid() % 100000}"
        numbers = free_ports(2 * count)
        self.ofp_ports = numbers[:count]
        self.rest_ports = numbers[count:]
        self.procs = [None] * count

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, wait_leader=True, timeout=30):
        try:
            self._start_bridge()
            for index in range(self.count):
                self.start_controller(index)
            _run("ovs-vsctl", "set-controller", self.bridge,
                 *[f"tcp:127.0.0.1:{port}" for port in self.ofp_ports])
            # reconnect at once rather than after OVS's backoff (up to 8 s) when one is down
            for uuid in self._controller_uuids():
                _run("ovs-vsctl", "set", "controller", uuid, "max_backoff=1000")
            if wait_leader:
                self.wait_leader(timeout=timeout)
                self.wait_connected(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_bridge(self):
        _run("ovs-vsctl", "--if-exists", "del-br", self.bridge)
        _run("ovs-vsctl", "add-br", self.bridge, "--", "set", "bridge", self.bridge,
             "datapath_type=netdev", f"protocols={self.protocols}", "fail_mode=secure",
             "other-config:datapath-id=00000000000000c1")
        for number in range(1, self.ports + 1):
            name = f"{self.bridge}p{number}"
            _run("ovs-vsctl", "add-port", self.bridge, name, "--", "set", "interface", name,
                 "type=internal", f"ofport_request={number}")
            _run("ip", "link", "set", "dev", name, "up")

    def config_path(self, index):
        return os.path.join(self.rundir, f"controller{index}.conf")

    def log_path(self, index):
        return os.path.join(self.rundir, f"controller{index}.log")

    def start_controller(self, index, etcd_url=None):
        with open(self.config_path(index), "w", encoding="utf-8") as handle:
            handle.write(f"[sbft]\ncoordination = {etcd_url or self.etcd_url}\n"
                         f"leader_lease = {self.leader_lease}\nheartbeat_timeout = 0\n"
                         f"startup_grace = 0\n{self.sbft_extra}")
        argv = [os.path.join(VENV_BIN, "ryu-manager"),
                "--ofp-tcp-listen-port", str(self.ofp_ports[index]),
                "--wsapi-host", "127.0.0.1", "--wsapi-port", str(self.rest_ports[index]),
                "--config-file", self.config_path(index), "sbft_ryu.app"]
        log = open(self.log_path(index), "ab")
        self.procs[index] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=REPO)
        log.close()
        return self.procs[index]

    def kill(self, index, sig=signal.SIGKILL):
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=10)

    def stop(self):
        for index, proc in enumerate(self.procs):
            stop_process(proc, frozen=True)  # (a test may have frozen one)
        _run("ovs-vsctl", "--if-exists", "del-br", self.bridge, check=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- what they say -------------------------------------------------------------------

    def health(self, index, timeout=1.0):
        url = f"http://127.0.0.1:{self.rest_ports[index]}/sbft/health"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read().decode())

    def url(self, index):
        return f"http://127.0.0.1:{self.rest_ports[index]}"

    def controller(self, index):
        """The "controller" block of /sbft/health, or None when it does not answer."""
        try:
            return self.health(index)["controller"]
        except (OSError, ValueError, KeyError):
            return None

    def alive(self):
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def leaders(self, among=None):
        """Indexes of the controllers that say they lead."""
        found = []
        for index in among if among is not None else self.alive():
            block = self.controller(index)
            if block is not None and block["role"] == "leader":
                found.append(index)
        return found

    def wait_leader(self, among=None, timeout=30, interval=0.05):
        """The one controller that leads (waits, bounded); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leaders(among)
            if len(found) == 1:
                return found[0]
            time.sleep(interval)
        raise TimeoutError(f"no single leader among {among or self.alive()} after {timeout}s")

    def log(self, index):
        with open(self.log_path(index), encoding="utf-8", errors="replace") as handle:
            return handle.read()

    # ---- the switch ------------------------------------------------------------------------

    def _controller_uuids(self):
        text = _run("ovs-vsctl", "get", "bridge", self.bridge, "controller").stdout
        return [u.strip() for u in text.strip().strip("[]").split(",") if u.strip()]

    def switch_roles(self):
        """{controller index: (role as OVS reports it, connected)} (OVS updates these
        columns a moment after a change: poll)."""
        roles = {}
        for uuid in self._controller_uuids():
            fields = _run("ovs-vsctl", "--format=json", "--columns=target,role,is_connected",
                          "list", "controller", uuid).stdout
            target, role, connected = json.loads(fields)["data"][0]
            port = int(str(target).rsplit(":", 1)[1])
            role = role if isinstance(role, str) else None  # ["set", []]: not reported yet
            roles[self.ofp_ports.index(port)] = (role, connected)
        return roles

    def wait_connected(self, indexes=None, timeout=30):
        indexes = self.alive() if indexes is None else indexes
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = self.switch_roles()
            if all(roles.get(i, (None, False))[1] for i in indexes):
                return roles
            time.sleep(0.1)
        raise TimeoutError(f"controllers {indexes} not all connected after {timeout}s: "
                           f"{self.switch_roles()}")

    def wait_roles(self, master, timeout=20):
        """Until OVS reports ``master`` as master and every other connected one as slave."""
        deadline = time.monotonic() + timeout
        roles = None
        while time.monotonic() < deadline:
            roles = self.switch_roles()
            others = [i for i in self.alive() if i != master and roles.get(i, (0, 0))[1]]
            if roles.get(master, (None,))[0] == "master" and \
                    all(roles[i][0] == "slave" for i in others):
                return roles
            time.sleep(0.1)
        raise TimeoutError(f"switch roles not master={master} after {timeout}s: {roles}")

    def flows(self):
        """[(cookie, priority, the rest)] of every flow on the bridge."""
        text = _run("ovs-ofctl", "-O", self._ofctl_version, "dump-flows", self.bridge).stdout
        found = []
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("cookie="):
                continue
            fields = dict(part.split("=", 1) for part in line.split(", ") if "=" in part)
            priority = int(next((p.split("=")[1] for p in line.replace(" ", ",").split(",")
                                 if p.startswith("priority=")), "32768"))
            found.append((int(fields["cookie"], 16), priority, line))
        return found

    def dump_flows(self):
        return _run("ovs-ofctl", "-O", self._ofctl_version, "dump-flows", self.bridge,
                    check=False).stdout

    @property
    def _ofctl_version(self):
        return self.protocols.split(",")[-1]
