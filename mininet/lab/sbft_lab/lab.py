"""A whole lab run: a ``ryu-manager sbft_ryu.app`` process and the Mininet network of
``mininet/sbft_topo.py``, started together and stopped together (processes by PID, the network
with ``net.stop()``, which deletes only its own bridges).

Used by the integration tests, the demos and the benchmarks as ``with Lab(lbs=3) as lab: ...``.
Only one lab runs on a machine at a time (:func:`take_lab_lock`).
"""

import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mininet.net import Mininet

from sbft_lab import etcd, etcd_hosts, topology
from sbft_lab.procs import stop_process

topo = topology.load()
VIP, SERVICE_PORT = topo.VIP, topo.SERVICE_PORT
IFB = "ifb-shape"  # the shaping device Lab.shape adds in a replica's namespace
UPLOAD_LOG = "uploads.jsonl"  # each backend's log of the upload bodies it got
REPAIR_WAIT_S = 10.0  # how long a repair waits for the tampering HAProxy to finish its work


def sbft_config_text(topo_plan, extra="", spares=0):
    """An [sbft] config file describing this topology (what the embedded defaults say for 3);
    the last ``spares`` replicas are configured as spares."""
    lines = ["[sbft]", f"vip = {topo.VIP}", f"vmac = {topo.VMAC}",
             f"service_port = {topo.SERVICE_PORT}"]
    replicas = topo_plan["replicas"]
    lines += [f"{'spare' if i >= len(replicas) - spares else 'replica'} = "
              f"{r['name']} {r['ip']} {r['mac']} {r['port']}" for i, r in enumerate(replicas)]
    return "\n".join(lines) + "\n" + extra


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_TRIES = 200


def free_port():
    """A free TCP port on loopback below the kernel's ephemeral range. A controller restarted
    on the same ports must find them free, and while it is down an ephemeral port can be
    taken by any connect() or bind(0) on the machine (seen here: a restart's REST port "already
    in use" with other labs running); ports below the range are only ever taken on purpose."""
    try:
        with open(EPHEMERAL_RANGE, encoding="ascii") as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(PORT_TRIES):
        port = random.randint(max(1025, low - 12000), max(1025, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # (a crowded machine: any free port)
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


STATE_CONF = "state.conf"


def start_ryu(rundir, ofp_port, wsapi_port, config_path=None, extra_args=()):
    """Start ``ryu-manager sbft_ryu.app`` in the root namespace; returns the Popen.

    Its state file is ``state.json`` in ``rundir`` (a first config file says so; the given one
    comes later and may say otherwise), so no run inherits another's convictions or epochs."""
    state_conf = os.path.join(rundir, STATE_CONF)
    with open(state_conf, "w", encoding="utf-8") as handle:
        handle.write("[sbft]\nstate_file = state.json\n")
    argv = [os.path.join(topo.VENV_BIN, "ryu-manager"), "--ofp-tcp-listen-port", str(ofp_port),
            "--wsapi-port", str(wsapi_port), "--config-file", state_conf]
    if config_path:
        argv += ["--config-file", config_path]
    argv += [*extra_args, "sbft_ryu.app"]
    log = open(os.path.join(rundir, "ryu-manager.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=topo.REPO)
    log.close()
    return proc


def http_json(url, timeout=2.0, data=None):
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def parse_ss(text):
    """Sockets in ``ss -tinH`` output: [{"peer", "bytes_acked", "bytes_received"}] (a
    socket's line, then its indented details)."""
    sockets = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if not line[0].isspace():
            sockets.append({"peer": words[-1] if len(words) >= 4 else None,
                            "bytes_acked": 0, "bytes_received": 0})
            continue
        for word in words:
            name, _, value = word.partition(":")
            if sockets and name in ("bytes_acked", "bytes_received") and value.isdigit():
                sockets[-1][name] = int(value)
    return sockets


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may not answer yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


LAB_LOCK = "/tmp/sbft-lab.lock"
LAB_LOCK_WAIT_S = 1800


def take_lab_lock(path=LAB_LOCK, timeout=LAB_LOCK_WAIT_S):
    """One lab per machine at a time: two would collide on Mininet's host and interface names
    (h1-eth0, s1) and share two cores. Waits (bounded) for another lab to finish; the lock goes
    with the returned file, and with the process should it die."""
    handle = open(path, "a")
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise TimeoutError(f"another sbft lab held {path} for {timeout}s") from None
            if not told:
                print(f"waiting for another sbft lab to finish (lock {path})", file=sys.stderr)
                told = True
            time.sleep(0.5)


class Lab:
    """A whole run: rundir, ryu-manager, the Mininet network; stops all of it on exit.

    Used as ``with Lab(lbs=3) as lab: ...``. Everything it starts is stopped by PID or by
    Mininet's own ``net.stop()`` (which deletes only this network's bridges).
    """

    def __init__(self, lbs=3, backends=2, clients=1, agents=False, agent_args=(),
                 sbft_extra="", ryu_args=(), controller=None, rundir=None,
                 wait_for_primary=True, protocols="OpenFlow10,OpenFlow13",
                 passive_listener=False, vip_mode="sbft", advert_int=1.0, vrrp_version=2,
                 skew=False, voting=False, faults=None, backend_date=False, spares=0,
                 keys=False, pin_sources=True, controllers=1, leader_lease=1,
                 loopback_etcd=False):
        """``vip_mode`` other than "sbft" runs a baseline: the controller then drives the
        switch as a plain learning switch (no replicas configured: flows file only).
        ``voting``: active mode with Byzantine output voting (keys generated per lab);
        ``faults``: replica -> an agent ``--fault`` (tests only); ``spares``: the last
        replicas are configured as spares (they run like the others); ``keys``: a key per
        replica (implied by voting: heartbeats over UDP); ``pin_sources``: keyless replicas are
        pinned to their management address (``replica_source``), as a deployment should.
        ``controllers`` 2 or 3: each ryu-manager in a Mininet host of its own (ctl1..), one
        leader elected through a 3-member etcd cluster in hosts etcd1..3, OpenFlow 1.3 only,
        ``leader_lease`` seconds; ``loopback_etcd``: one controller (in the root namespace, as
        usual) coordinating through a one-member etcd on loopback."""
        layout = topo.plan(lbs, backends, clients)
        if voting or keys:
            keys = {r["name"]: os.urandom(32).hex() for r in layout["replicas"]}
            sbft_extra = (("mode = active\nvoting = on\n" if voting else "")
                          + "".join(f"replica_key = {name} {key}\n"
                                    for name, key in keys.items()) + sbft_extra)
        else:
            keys = None
            if pin_sources and vip_mode == "sbft" and "replica_source" not in sbft_extra:
                sbft_extra = "".join(f"replica_source = {r['name']} {r['mgmt_ip']}\n"
                                     for r in layout["replicas"]) + sbft_extra
        self.keys = keys
        self.control = topo.control_plan(controllers)
        self.controllers = int(controllers)
        self.leader_lease = leader_lease
        self.loopback_etcd = loopback_etcd
        self.etcd = None  # the loopback etcd (sbft_lab.etcd.EtcdCluster)
        self.ryu_argvs = {}  # controller host -> its ryu-manager argv (several controllers)
        if self.controllers > 1:
            protocols = "OpenFlow13"  # several controllers need role requests with generations
        self.layout = topo.plan(lbs, backends, clients)
        self.vip_mode = vip_mode
        self.topo_args = dict(lbs=lbs, backends=backends, clients=clients, agents=agents,
                              agent_args=tuple(agent_args), protocols=protocols,
                              vip_mode=vip_mode, advert_int=advert_int,
                              vrrp_version=vrrp_version, skew=skew, keys=keys,
                              faults=faults, backend_date=backend_date,
                              controllers=self.controllers)
        self.passive_listener = passive_listener
        self.listen_port = None
        self.sbft_extra = sbft_extra
        self.spares = spares
        self.ryu_args = tuple(ryu_args)
        self.controller = controller
        self.own_rundir = rundir is None
        self.rundir = rundir or tempfile.mkdtemp(prefix="sbft-lab-")
        os.makedirs(self.rundir, exist_ok=True)
        self.wait_for_primary = wait_for_primary
        self.ryu = None
        self.net = None
        self.ofp_port = None
        self.wsapi_port = None
        self._lock = None

    @property
    def api(self):
        if self.controllers > 1:
            return self.controller_urls[0]
        return f"http://127.0.0.1:{self.wsapi_port}"

    @property
    def controller_urls(self):
        return topo.controller_urls(self.control, topo.WSAPI_PORT)

    @property
    def controller_names(self):
        return [c["name"] for c in self.control["controllers"]]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Take the lab lock, start ryu-manager and the network, wait until they are ready.
        On any failure everything started so far is stopped and the lock released: a lock
        left held would stall every other lab on the machine for the lock's whole wait."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _sbft_conf_text(self, extra=""):
        """The [sbft] config the lab's controller(s) share."""
        if self.vip_mode != "sbft":  # baseline: a plain learning switch
            return "[sbft]\nreplica =\n" + self.sbft_extra
        # a generous grace: on 2 busy cores agents can start seconds apart, and
        # tests and benchmarks want the configured order (lb1 first) to decide
        grace = "" if "startup_grace" in self.sbft_extra else "startup_grace = 10\n"
        if "heartbeat_port" not in self.sbft_extra:  # (two labs may overlap)
            grace += f"heartbeat_port = {free_udp_port()}\n"
        return sbft_config_text(self.layout, grace + extra + self.sbft_extra, self.spares)

    def _coordination_text(self, endpoints):
        return (f"coordination = etcd://{endpoints}\n"
                + ("" if "leader_lease" in self.sbft_extra
                   else f"leader_lease = {self.leader_lease}\n"))

    def _start(self):
        if self.controllers > 1:
            return self._start_several()
        if self.controller:
            host, port = self.controller.rsplit(":", 1)
            ctrl_ip, self.ofp_port, self.wsapi_port = host, int(port), 8080
        else:
            ctrl_ip, self.ofp_port, self.wsapi_port = "127.0.0.1", free_port(), free_port()
            self.config_path = os.path.join(self.rundir, "sbft.conf")
            extra = ""
            if self.loopback_etcd:  # (sbft_lab.etcd: part of the controller-level tests)
                self.etcd = etcd.EtcdCluster(self.rundir, members=1)
                self.etcd.start()
                extra = self._coordination_text(",".join(self.etcd.endpoints))
            with open(self.config_path, "w", encoding="utf-8") as handle:
                handle.write(self._sbft_conf_text(extra))
            ryu_args = self.ryu_args
            if self.passive_listener:
                # the switch listens (like the thesis's HP switch) and Ryu connects to it
                self.listen_port = free_port()
                ryu_args += ("--ofp-switch-address-list", f"127.0.0.1:{self.listen_port}",
                             "--ofp-switch-connect-interval", "1")
            self._ryu_argv = ryu_args  # (a restart uses the same)
            self.ryu = start_ryu(self.rundir, self.ofp_port, self.wsapi_port, self.config_path,
                                 ryu_args)
            wait_until(lambda: http_json(self.api + "/sbft/health"), 20, 0.1,
                       "ryu-manager's REST API")
        if self._lock is None:  # (only now: ryu-manager's ports are free ports)
            self._lock = take_lab_lock()
        network = topo.SbftTopo(rundir=self.rundir, wsapi_port=self.wsapi_port,
                                test_faults=True, **self.topo_args)
        self.net = Mininet(topo=network, controller=None, autoSetMacs=False,
                           waitConnected=False)
        self._start_stream_backends()
        if not self.passive_listener:
            self.net.addController("c0", controller=topo.SbftController, ip=ctrl_ip,
                                   port=self.ofp_port)
        self.net.start()
        if self.passive_listener:
            subprocess.run(["ovs-vsctl", "set-controller", "s1",
                            f"ptcp:{self.listen_port}:127.0.0.1"], check=True, timeout=10)
        wait_until(lambda: self.switch_connected(), 20, 0.1, "s1 to connect to the controller")
        if self.wait_for_primary and not self.controller and self.vip_mode == "sbft":
            wait_until(lambda: self.health()["status"] == "ok", 20, 0.1,
                       "every replica up with a primary")
        if self.wait_for_primary and self.vip_mode == "keepalived":
            wait_until(lambda: len(self.vip_holders()) == 1, 30, 0.1, "a VRRP master")

    # ---- several controllers (controllers=2 or 3) ------------------------------------------

    def _start_several(self):
        """The network first (the controllers and etcd run in its hosts), then etcd, then every
        ryu-manager, then the switch's controller list; waits for a leader."""
        etcd.etcd_binary()  # fails (FileNotFoundError) with how to install it
        self._lock = take_lab_lock()
        self.ofp_port, self.wsapi_port = topo.OFP_PORT, topo.WSAPI_PORT
        self.config_path = os.path.join(self.rundir, "sbft.conf")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(self._sbft_conf_text(
                self._coordination_text(topo.etcd_endpoints(self.control))))
        network = topo.SbftTopo(rundir=self.rundir, wsapi_port=topo.WSAPI_PORT,
                                test_faults=True, **self.topo_args)
        self.net = Mininet(topo=network, controller=None, autoSetMacs=False,
                           waitConnected=False)
        self._start_stream_backends()
        self.net.start()
        for member in self.control["etcd"]:
            self.start_etcd(member["name"])
        for member in self.control["etcd"]:
            endpoint = f"{member['mgmt_ip']}:{topo.ETCD_CLIENT_PORT}"
            wait_until(lambda: self._etcd_healthy(endpoint), 30, 0.1,
                       f"etcd member {member['name']}")
        for name in self.controller_names:
            self.start_controller(name, wait=False)
        for name, url in zip(self.controller_names, self.controller_urls):
            wait_until(lambda: http_json(url + "/sbft/health", timeout=0.5), 30, 0.1,
                       f"{name}'s REST API")
        targets = [f"tcp:{c['mgmt_ip']}:{topo.OFP_PORT}" for c in self.control["controllers"]]
        subprocess.run(["ovs-vsctl", "set-controller", "s1", *targets], check=True, timeout=10)
        # OVS backs off up to 8 s between connection attempts by default: a restarted
        # controller would wait that long for the switch
        uuids = subprocess.run(["ovs-vsctl", "get", "bridge", "s1", "controller"],
                               capture_output=True, text=True, check=True, timeout=10).stdout
        for uuid in uuids.strip("[]\n ").split(","):
            subprocess.run(["ovs-vsctl", "set", "controller", uuid.strip(), "max_backoff=1000"],
                           check=True, timeout=10)
        wait_until(lambda: all(self.switch_connected(url) for url in self.controller_urls),
                   30, 0.1, "s1 to connect to every controller")
        leader = wait_until(self.leader, 30, 0.1, "a leader among the controllers")
        if self.wait_for_primary and self.vip_mode == "sbft":
            wait_until(lambda: self.health(self.url_of(self.leader() or leader))["status"]
                       == "ok", 30, 0.1, "every replica up with a primary (leader's view)")

    def start_etcd(self, name):
        """Start (or restart, with its data) the etcd member in host ``name``."""
        members = [(e["name"], e["mgmt_ip"], topo.ETCD_PEER_PORT) for e in self.control["etcd"]]
        member = next(e for e in self.control["etcd"] if e["name"] == name)
        host = self.host(name)
        argv = etcd_hosts.member_argv(etcd.etcd_binary(), name, member["mgmt_ip"], topo.ETCD_CLIENT_PORT,
                                      topo.ETCD_PEER_PORT, members,
                                      os.path.join(host.rundir, "data"))
        return host.spawn("etcd", argv)

    def kill_etcd(self, name):
        """SIGKILL an etcd member."""
        return self.host(name).kill("etcd", signal.SIGKILL)

    @staticmethod
    def _etcd_healthy(endpoint):
        return http_json(f"http://{endpoint}/health", timeout=1.0).get("health") == "true"

    def _controller_conf(self, name):
        """The controller's own config file (its state file, its advertised URL), read after
        the shared one."""
        host = self.host(name)
        ip = next(c["mgmt_ip"] for c in self.control["controllers"] if c["name"] == name)
        return host.write_file("controller.conf", "[sbft]\nstate_file = "
                               f"{os.path.join(host.rundir, 'state.json')}\n"
                               f"advertise_url = http://{ip}:{topo.WSAPI_PORT}\n")

    def start_controller(self, name=None, wait=True, timeout=20):
        """Start ryu-manager again with the same config and ports (``name``: the controller
        host, with several controllers); with ``wait``, until its REST API answers and the
        switch has connected to it. Returns the Popen."""
        if self.controllers == 1:
            return self._restart_root_controller(wait, timeout)
        host = self.host(name)
        argv = [os.path.join(topo.VENV_BIN, "ryu-manager"),
                "--ofp-tcp-listen-port", str(topo.OFP_PORT),
                "--wsapi-port", str(topo.WSAPI_PORT),
                "--config-file", self.config_path, "--config-file", self._controller_conf(name),
                *self.ryu_args, "sbft_ryu.app"]
        self.ryu_argvs[name] = argv
        proc = host.spawn("ryu", argv, cwd=topo.REPO)
        if wait:
            url = self.url_of(name)
            wait_until(lambda: http_json(url + "/sbft/health", timeout=0.5), timeout, 0.02,
                       f"{name}'s REST API after the restart")
            wait_until(lambda: self.switch_connected(url), timeout, 0.02,
                       f"s1 to connect to {name}")
        return proc

    def kill_controller(self, name=None):
        """SIGKILL ryu-manager (a crash: no cleanup of any kind); returns its exit status."""
        if self.controllers == 1:
            self.ryu.kill()
            return self.ryu.wait(timeout=10)
        proc = self.host(name).kill("ryu", signal.SIGKILL)
        return proc.returncode if proc is not None else None

    def url_of(self, name):
        return dict(zip(self.controller_names, self.controller_urls))[name]

    def controller_health(self, name, timeout=0.5):
        """/sbft/health of controller ``name``; None when it does not answer."""
        try:
            return http_json(self.url_of(name) + "/sbft/health", timeout=timeout)
        except Exception:
            return None

    def leader(self):
        """The controller that says it leads (a standalone one counts), the highest term if
        two say so; None when none does."""
        best = None
        for name in self.controller_names:
            health = self.controller_health(name)
            block = (health or {}).get("controller") or {"role": "standalone", "term": -1}
            if health is not None and block.get("role") in ("leader", "standalone"):
                term = block.get("term") if isinstance(block.get("term"), int) else -1
                if best is None or term > best[0]:
                    best = (term, name)
        return best[1] if best else None

    def cut_from_etcd(self, name, cut=True):
        """Partition controller ``name`` from every etcd member only (iptables in its host):
        the switch and the agents still reach it."""
        host = self.host(name)
        flag = "-I" if cut else "-D"
        for member in self.control["etcd"]:
            for rule in (f"OUTPUT -d {member['mgmt_ip']} -j DROP",
                         f"INPUT -s {member['mgmt_ip']} -j DROP"):
                out = host.cmd(f"iptables {flag} {rule} && echo done")
                if "done" not in out:
                    raise RuntimeError(f"iptables {flag} {rule} in {name}: {out.strip()}")

    def isolate(self, name, cut=True):
        """Cut controller ``name`` off from everything (its only link down)."""
        host = self.host(name)
        host.cmd(f"ip link set {name}-eth0 {'down' if cut else 'up'}")

    def controller_log_of(self, name):
        with open(os.path.join(self.host(name).rundir, "ryu.log"), encoding="utf-8",
                  errors="replace") as handle:
            return handle.read()

    @property
    def state_path(self):
        """The controller's state file (see start_ryu; unless sbft_extra names another)."""
        return os.path.join(self.rundir, "state.json")

    def _restart_root_controller(self, wait=True, timeout=20):
        self.ryu = start_ryu(self.rundir, self.ofp_port, self.wsapi_port, self.config_path,
                             self._ryu_argv)
        if wait:
            wait_until(lambda: http_json(self.api + "/sbft/health", timeout=0.5), timeout,
                       0.02, "ryu-manager's REST API after the restart")
            wait_until(self.switch_connected, timeout, 0.02, "s1 to reconnect")
        return self.ryu

    def _start_stream_backends(self):
        """Beside each backend's HAProxy, the large slow objects of /stream/ (the replicas'
        HAProxy sends /stream/ paths there): what active-mode downloads fetch."""
        for backend in self.layout["backends"]:
            host = self.host(backend["name"])
            host.spawn("streams", [
                sys.executable, "-m", "sbft_lab.stream_backend", "--bind", backend["ip"],
                "--port", str(topo.STREAM_PORT), "--name", backend["name"],
                "--upload-log", os.path.join(host.rundir, UPLOAD_LOG)])

    def vip_holders(self):
        """Replicas with the VIP on eth0 in a keepalived baseline. A SIGKILLed keepalived
        leaves its VIP behind, so after a crash two may hold it for a while."""
        return [r["name"] for r in self.layout["replicas"] if self.host(r["name"]).holds_vip()]

    def stop(self):
        if self.net is not None:
            # our processes first: agents and proxies must not outlive their interfaces
            for host in self.net.hosts:
                for key in list(getattr(host, "owned", {})):
                    host.kill(key, signal.SIGTERM)
            self.net.stop()
            self.net = None
        stop_process(self.ryu)
        self.ryu = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self._lock is not None:
            self._lock.close()  # releases the lab lock
            self._lock = None

    # ---- helpers for tests, demo and benchmarks -------------------------------------------

    def host(self, name):
        return self.net.get(name)

    def health(self, url=None):
        return http_json((url or self.api) + "/sbft/health")

    def switch_connected(self, url=None):
        if url is not None:
            return any(s["dpid"] == "0000000000000001" and s["connected"]
                       for s in self.health(url)["switches"])
        switches = self.health()["switches"] if self.ryu else []
        return any(s["dpid"] == "0000000000000001" and s["connected"] for s in switches) \
            or (not self.ryu and self.net.get("s1").connected())

    def controller_log(self):
        with open(os.path.join(self.rundir, "ryu-manager.log"), encoding="utf-8",
                  errors="replace") as handle:
            return handle.read()

    def dump_flows(self, switch="s1"):
        return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch],
                              capture_output=True, text=True, timeout=10).stdout

    def set_link(self, replica, up):
        """Cut or restore a replica's data link (both ends go down, as a pulled cable)."""
        self.net.configLinkStatus(replica, "s1", "up" if up else "down")

    def curl(self, client, path="/", timeout=2.0):
        """One GET to VIP:5555 from ``client``; returns (http_code, body) or (0, error)."""
        out = self.host(client).cmd(
            f"curl -s -m {timeout} -o - -w '\\n%{{http_code}}' "
            f"http://{VIP}:{SERVICE_PORT}{path}").replace("\r", "")
        body, _, code = out.rstrip("\n").rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def pacer(self, client, name, interval=0.02, timeout=0.1, duration=5.0, count=100000,
              heads=False):
        """Start the paced client in ``client`` (background); its log is ``name`` in its rundir.

        Returns (Popen, log path)."""
        host = self.host(client)
        out = os.path.join(host.rundir, name)
        argv = [sys.executable, "-m", "sbft_lab.pacer",
                "--url", f"http://{VIP}:{SERVICE_PORT}/p", "--paths",
                "--interval", str(interval), "--timeout", str(timeout),
                "--duration", str(duration), "--count", str(count), "--out", out,
                *(["--heads"] if heads else [])]
        return host.spawn(name, argv), out

    def crash(self, replica, parts=("agent", "haproxy")):
        """SIGKILL the replica's processes, agent first (as the issue's crash is defined)."""
        host = self.host(replica)
        for part in parts:
            host.kill(part, signal.SIGKILL)

    def restart(self, replica):
        """Start the replica's HAProxy and agent (or keepalived) again: a recovered replica."""
        host = self.host(replica)
        if "haproxy" not in host.owned:
            host.start_haproxy()
        if host.vip_mode == "keepalived" and "keepalived" not in host.owned:
            host.start_keepalived()
        if getattr(host, "agent_argv", None) and "agent" not in host.owned:
            host.start_agent()

    def set_tamper(self, replica, on):
        """Tests and demos only: reload the replica's HAProxy configured to alter its responses
        (an added header), or not; returns the process that served before the reload."""
        host = self.host(replica)
        before = host.owned.get("haproxy")
        host.set_tamper(on)
        return before

    def repair(self, replica, timeout=REPAIR_WAIT_S):
        """The operator's repair of a replica whose proxy lied: HAProxy reloaded honest, and
        only once the tampering process is gone (waited for by its PID; SIGKILLed after
        ``timeout``, as an operator would) does this return: no altered byte can come from
        the replica after it. Returns the seconds waited for the old process."""
        started = time.monotonic()
        tampering = self.set_tamper(replica, False)
        if tampering is not None and tampering.poll() is None:
            try:
                tampering.wait(timeout=max(0.0, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(tampering.pid, signal.SIGKILL)  # (mnexec -d: its own group)
                except ProcessLookupError:
                    pass
                tampering.wait(timeout=5)
        host = self.host(replica)
        for key in [k for k, proc in host.owned.items() if proc is tampering]:
            del host.owned[key]  # (a reload may have kept it as a retired process)
        return time.monotonic() - started

    def count_replies(self, client, syn_ack_only=True):
        """Count packets from the VIP's service port arriving at ``client`` (an iptables
        counter): SYN-ACKs only, or every reply packet; returns a function reading it."""
        host = self.host(client)
        match = " --tcp-flags SYN,ACK SYN,ACK" if syn_ack_only else ""
        host.cmd(f"iptables -A INPUT -p tcp -s {VIP} --sport {SERVICE_PORT}{match}")
        rule = len(host.cmd("iptables -S INPUT").splitlines()) - 1  # (line 1 is the policy)
        return lambda: int(host.cmd(f"iptables -L INPUT {rule} -v -x -n").split()[0])

    def fetch(self, client, name, path, count=1, timeout=60.0):
        """Start concurrent downloads of VIP:5555``path`` in ``client`` (background); returns
        (Popen, path of the JSON result)."""
        host = self.host(client)
        out = os.path.join(host.rundir, name)
        argv = [sys.executable, "-m", "sbft_lab.fetch",
                "--url", f"http://{VIP}:{SERVICE_PORT}{path}", "--count", str(count),
                "--timeout", str(timeout), "--out", out]
        return host.spawn(name, argv), out

    def upload(self, client, name, tag, size, count=1, chunked=False, mark_at=None,
               stall=15.0, timeout=120.0):
        """Start ``count`` pipelined uploads of ``size`` bytes each to VIP:5555/upload/``tag``
        in ``client`` (background, :mod:`sbft_lab.upload`); returns (Popen, path of the JSON
        result, path of the file that appears once ``mark_at`` bytes were acknowledged)."""
        host = self.host(client)
        out = os.path.join(host.rundir, name)
        mark = out + ".mark"
        argv = [sys.executable, "-m", "sbft_lab.upload",
                "--url", f"http://{VIP}:{SERVICE_PORT}/upload/{tag}", "--size", str(size),
                "--count", str(count), "--stall", str(stall), "--timeout", str(timeout),
                "--out", out, *(["--chunked"] if chunked else [])]
        if mark_at is not None:
            argv += ["--mark", mark, "--mark-at", str(mark_at)]
        return host.spawn(name, argv), out, mark

    def tcp_bytes(self, host_name, port=SERVICE_PORT):
        """The kernel's byte counters (``ss -ti``) of the host's connections to or from
        ``port``: a list of {"peer", "bytes_acked", "bytes_received"}."""
        out = self.host(host_name).cmd(
            f"ss -tinH state established '( sport = :{port} or dport = :{port} )'")
        return parse_ss(out.replace("\r", ""))

    def shape(self, replica, rate="50mbit", burst="16kb", latency="1ms"):
        """Slow what reaches ``replica`` from the switch with a token bucket (this kernel has
        no netem): its interface's ingress is redirected to an ifb device in its namespace
        that runs ``tbf``; what does not fit is dropped there, before its agent. The queue is
        kept short (``latency``): with 50 ms of queue, on this side or on the switch's side
        of the link, every upload through the userspace switch crawled (about 1.2 MB/s
        instead of 25, the shaped replica keeping up), while with 1 ms the others run at full
        speed and the shaped replica loses what it cannot take."""
        host = self.host(replica)
        intf = f"{replica}-eth0"
        commands = [f"ip link add {IFB} type ifb", f"ip link set {IFB} up",
                    f"tc qdisc replace dev {IFB} root tbf rate {rate} burst {burst} "
                    f"latency {latency}",
                    f"tc qdisc replace dev {intf} handle ffff: ingress",
                    f"tc filter replace dev {intf} parent ffff: protocol ip u32 match u32 0 0 "
                    f"action mirred egress redirect dev {IFB}"]
        for command in commands:
            out = host.cmd(command + " 2>&1; echo rc=$?").strip()
            if not out.endswith("rc=0"):
                raise RuntimeError(f"{replica}: {command}: {out}")
        return IFB

    def tc_drops(self, replica):
        """Packets the shaping of ``replica`` dropped (0 when it is not shaped)."""
        out = self.host(replica).cmd(f"tc -s qdisc show dev {IFB} 2>/dev/null")
        found = re.search(r"dropped (\d+)", out)
        return int(found.group(1)) if found else 0

    def body_log(self):
        """Every upload body the backends got (their JSON lines), with the backend's name."""
        records = []
        for backend in self.layout["backends"]:
            path = os.path.join(self.host(backend["name"]).rundir, UPLOAD_LOG)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    records += [dict(json.loads(line), backend=backend["name"])
                                for line in handle if line.strip()]
        return records

    def start_capture(self, host_name, expression, name="capture.txt"):
        """tcpdump on the host's data interface in the background; ``stop_capture`` returns its
        lines. Stopped with the host at the latest."""
        host = self.host(host_name)
        path = os.path.join(host.rundir, name)
        out = open(path, "wb")
        err_path = path + ".stderr"
        err = open(err_path, "wb")
        proc = host.popen(["tcpdump", "-l", "-n", "-i", f"{host_name}-eth0", expression],
                          stdout=out, stderr=err)
        out.close()
        err.close()
        host.owned[f"tcpdump-{name}"] = proc
        # it sees packets only once it says it listens: on two loaded cores that took longer
        # than a fixed 0.3 s, and the first SYN-ACKs of a test went uncounted
        wait_until(lambda: b"listening on" in _read_bytes(err_path), 10, 0.02,
                   f"tcpdump to listen in {host_name}")
        return path

    def stop_capture(self, host_name, path):
        time.sleep(0.2)
        self.host(host_name).kill(f"tcpdump-{os.path.basename(path)}", signal.SIGTERM)
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line for line in handle.read().splitlines() if line.strip()]

    def connections_answering(self, synack_lines):
        """(client port, ack) → distinct SYN-ACK sequence numbers seen. The ack names the
        client's SYN, so a client port reused by a later connection (seen in runs of several
        seconds) is another key; two numbers under one key: two replicas answered one SYN."""
        answers = {}
        for line in synack_lines:
            if "Flags [S.]" not in line:
                continue
            words = line.replace(",", "").split()
            port = words[words.index(">") + 1].rsplit(".", 1)[1].rstrip(":")
            ack = words[words.index("ack") + 1] if "ack" in words else "?"
            answers.setdefault((port, ack), set()).add(words[words.index("seq") + 1])
        return answers

    def capture(self, host_name, expression, seconds):
        """Packets matching a tcpdump ``expression`` on the host's data interface over
        ``seconds`` (tcpdump inside the host's namespace, bounded by timeout)."""
        host = self.host(host_name)
        out = host.cmd(f"timeout {seconds} tcpdump -l -n -i {host_name}-eth0 "
                       f"'{expression}' 2>/dev/null")
        return [line for line in out.replace("\r", "").splitlines() if line.strip()]

    def cleanup_rundir(self):
        if self.own_rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
