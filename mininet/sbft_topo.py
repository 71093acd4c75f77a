#!/usr/bin/python3
"""The sbft_ryu Mininet topology, usable three ways.

* ``mn --custom mininet/sbft_topo.py --topo sbft,lbs=3,backends=2,clients=1
  --switch ovs,datapath=user --controller remote,ip=127.0.0.1,port=6653``
* ``mininet/sbft_topo.py [--lbs N] [--backends M] [--clients K] [--controller HOST:PORT] [--cli]``
  (run with the project's virtual environment; starts its own ``ryu-manager`` unless
  ``--controller`` names one, and ``--demo`` runs the scripted demo)
* ``import``-ed by path from tests and benchmarks, which use :class:`Lab`.

Addressing (one /24 for data, one for management)::

    s1 (dpid 1, the service switch)          s0 (management: a Linux bridge, no controller)
      port i     lb{i}  10.0.0.1{i}  00:00:00:00:01:0{i}   10.254.0.1{i}
      port 10+j  b{j}   10.0.0.2{j}  00:00:00:00:02:0{j}
      port 20+k  c{k}   10.0.0.3{k}  00:00:00:00:03:0{k}
      VIP 10.0.0.100:5555, virtual MAC 02:00:0a:00:00:64 (answered by the controller)
                                                root namespace: mgmt0-eth0 10.254.0.254/24

Every replica holds the VIP on ``lo`` without answering ARP for it (arp_ignore=1,
arp_announce=2) and runs HAProxy bound to VIP:5555 with ``balance uri`` (every replica picks
the same backend for the same request) in front of the backends, which are HAProxy instances
answering a fixed body per path (``b1 /path``). Checksum offload is off on every host
interface: the OVS userspace datapath does not complete offloaded checksums.
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Host, OVSSwitch, RemoteController, Switch
from mininet.topo import Topo

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV_BIN = os.path.join(REPO, ".venv", "bin")

VIP = "10.0.0.100"
VMAC = "02:00:0a:00:00:64"
SERVICE_PORT = 5555
BACKEND_PORT = 8080
STREAM_PORT = 8081  # large, slow, deterministic objects (sbft_ryu.tools.stream_backend)
MGMT_ROOT_IP = "10.254.0.254"
MGMT_PREFIX = 24
PROBE_PATH = "/sbft-probe"
MAX_HOSTS_PER_ROLE = 9


# ---- the plan: plain data, tested without Mininet ------------------------------------------

def replica_plan(i):
    return {"name": f"lb{i}", "ip": f"10.0.0.{10 + i}", "mac": f"00:00:00:00:01:{i:02x}",
            "port": i, "mgmt_ip": f"10.254.0.{10 + i}"}


def backend_plan(j):
    return {"name": f"b{j}", "ip": f"10.0.0.{20 + j}", "mac": f"00:00:00:00:02:{j:02x}",
            "port": 10 + j}


def client_plan(k):
    return {"name": f"c{k}", "ip": f"10.0.0.{30 + k}", "mac": f"00:00:00:00:03:{k:02x}",
            "port": 20 + k}


def plan(lbs=3, backends=2, clients=1):
    for role, count in (("lbs", lbs), ("backends", backends), ("clients", clients)):
        if not 1 <= int(count) <= MAX_HOSTS_PER_ROLE:
            raise ValueError(f"{role} must be 1..{MAX_HOSTS_PER_ROLE}, got {count}")
    return {
        "replicas": [replica_plan(i) for i in range(1, int(lbs) + 1)],
        "backends": [backend_plan(j) for j in range(1, int(backends) + 1)],
        "clients": [client_plan(k) for k in range(1, int(clients) + 1)],
    }


def sbft_config_text(topo_plan, extra="", spares=0):
    """An [sbft] config file describing this topology (what the embedded defaults say for 3);
    the last ``spares`` replicas are configured as spares."""
    lines = ["[sbft]", f"vip = {VIP}", f"vmac = {VMAC}", f"service_port = {SERVICE_PORT}"]
    replicas = topo_plan["replicas"]
    lines += [f"{'spare' if i >= len(replicas) - spares else 'replica'} = "
              f"{r['name']} {r['ip']} {r['mac']} {r['port']}" for i, r in enumerate(replicas)]
    return "\n".join(lines) + "\n" + extra


HAPROXY_HEAD = """global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
"""


def replica_haproxy_cfg(backends, tamper=None):
    """``tamper`` (tests only): a proxy configured to alter its responses (an added header
    naming it), i.e. a replica that answers wrongly."""
    servers = "\n".join(f"    server {b['name']} {b['ip']}:{BACKEND_PORT}" for b in backends)
    altered = f"    http-response set-header X-Tampered-By {tamper}\n" if tamper else ""
    streams = "\n".join(f"    server {b['name']} {b['ip']}:{STREAM_PORT}" for b in backends)
    return HAPROXY_HEAD + f"""frontend sbft
    bind {VIP}:{SERVICE_PORT}
    monitor-uri {PROBE_PATH}
    use_backend streams if {{ path_beg /stream/ }}
    default_backend backends
{altered}backend backends
    # deterministic: every replica sends the same request to the same backend
    balance uri
{servers}
backend streams
    balance uri
{streams}
"""


def keepalived_cfg(name, priority, advert_int=1.0, version=2):
    """A VRRP instance for the baseline: every replica starts BACKUP with nopreempt, so the
    master role is sticky as sbft's primary is."""
    return f"""global_defs {{
    router_id {name}
    vrrp_version {version}
    vrrp_garp_master_repeat 2
}}
vrrp_instance sbft {{
    state BACKUP
    nopreempt
    interface {name}-eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert_int:g}
    virtual_ipaddress {{
        {VIP}/24 dev {name}-eth0
    }}
}}
"""


def backend_haproxy_cfg(backend, date=False):
    """``date``: add an HTTP Date header (second resolution): replicas asking within the same
    millisecond get different bytes when a second boundary falls between them, the honest
    nondeterminism the voting threshold must tolerate."""
    dated = "    http-after-response set-header Date %[date,http_date]\n" if date else ""
    return HAPROXY_HEAD + f"""frontend static
    bind {backend['ip']}:{BACKEND_PORT}
    http-request return status 200 content-type text/plain lf-string "{backend['name']} %[path]\\n"
{dated}"""


# ---- Mininet nodes -----------------------------------------------------------------------

def has_ovs_kernel_module():
    return os.path.isdir("/sys/module/openvswitch")


class ServiceSwitch(OVSSwitch):
    """The OpenFlow switch the controller drives; userspace datapath without the kernel module."""

    def __init__(self, name, **params):
        params.setdefault("datapath", "kernel" if has_ovs_kernel_module() else "user")
        params.setdefault("protocols", "OpenFlow10,OpenFlow13")
        super().__init__(name, **params)


class MgmtSwitch(Switch):
    """The management network: a Linux bridge in the root namespace, never an OpenFlow switch.

    Agents' heartbeats travel here, as on a separate management network; a second OVS bridge
    would make the emulated data switch's process carry the control traffic too."""

    def connected(self):
        return True

    def start(self, controllers):
        self.cmd(f"ip link del {self.name} 2>/dev/null; ip link add name {self.name} "
                 "type bridge forward_delay 0")
        for intf in self.intfList():
            if self.name in intf.name:
                self.cmd(f"ip link set {intf} master {self.name}")
        self.cmd(f"ip link set {self.name} up")

    def stop(self, deleteIntfs=True):
        self.cmd(f"ip link del {self.name} 2>/dev/null")
        super().stop(deleteIntfs)


class LabHost(Host):
    """A host with checksum offload off and processes it owns (stopped by PID)."""

    def config(self, **params):
        result = super().config(**params)
        for intf in self.intfList():
            if intf.name != "lo":
                self.cmd(f"ethtool -K {intf.name} tx off rx off >/dev/null 2>&1")
        self.owned = {}
        self.rundir = params.get("rundir") or tempfile.mkdtemp(prefix=f"sbft-{self.name}-")
        os.makedirs(self.rundir, exist_ok=True)
        return result

    def spawn(self, key, argv, **kwargs):
        """Start ``argv`` in this host, logging to rundir/key.log; remembered under ``key``."""
        log = open(os.path.join(self.rundir, f"{key}.log"), "ab")
        proc = self.popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        log.close()
        self.owned[key] = proc
        return proc

    def kill(self, key, sig=signal.SIGKILL):
        """Signal the whole process group (mnexec -d made each spawn a session leader, and
        keepalived forks a VRRP child): a crash takes every process of that program."""
        proc = self.owned.pop(key, None)
        if proc is not None and proc.poll() is None:
            _killpg(proc.pid, sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        return proc

    def terminate(self):
        for key in list(getattr(self, "owned", {})):
            self.kill(key, signal.SIGTERM)
        super().terminate()

    def write_file(self, name, text):
        path = os.path.join(self.rundir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class BackendHost(LabHost):
    def config(self, date=False, **params):
        result = super().config(**params)
        backend = {"name": self.name, "ip": params["ip"].split("/")[0]}
        cfg = self.write_file("haproxy.cfg", backend_haproxy_cfg(backend, date))
        self.spawn("haproxy", ["haproxy", "-db", "-f", cfg])
        self.spawn("streams", [os.path.join(VENV_BIN, "python"), "-m",
                               "sbft_ryu.tools.stream_backend", "--bind", backend["ip"],
                               "--port", str(STREAM_PORT), "--name", self.name], cwd=REPO)
        return result


class ReplicaHost(LabHost):
    """An LB replica running HAProxy on VIP:5555. How it holds the VIP (``vip_mode``):

    * ``sbft``: on ``lo``, never answering ARP for it (the controller does); optionally its
      agent;
    * ``keepalived``: keepalived (VRRP) moves it between replicas' ``eth0`` by ARP (baseline);
    * ``static``: plainly on ``eth0`` (the one bare HAProxy of the baseline);
    * ``none``: not at all (a replica that stands by in the bare baseline).
    """

    def config(self, backends=(), agent_argv=None, vip_mode="sbft", vrrp=None, agent_key=None,
               **params):
        result = super().config(**params)
        for key, value in (("all.arp_ignore", 1), ("all.arp_announce", 2),
                           ("default.arp_ignore", 1), ("default.arp_announce", 2)):
            self.cmd(f"sysctl -q -w net.ipv4.conf.{key}={value}")
        for intf in self.intfList():
            self.cmd(f"sysctl -q -w net.ipv4.conf.{intf.name}.arp_ignore=1 "
                     f"net.ipv4.conf.{intf.name}.arp_announce=2")
        self.vip_mode = vip_mode
        self.vrrp = vrrp
        self.tamper = None
        self.retired = 0  # HAProxy processes replaced by a reload
        if agent_key is not None:  # this replica's key, for --key-file
            self.key_file = self.write_file("agent.key", agent_key + "\n")
        if vip_mode == "sbft":
            self.cmd(f"ip addr add {VIP}/32 dev lo")
        elif vip_mode == "static":
            self.cmd(f"ip addr add {VIP}/24 dev {self.name}-eth0")
        elif vip_mode == "keepalived":
            self.cmd("sysctl -q -w net.ipv4.ip_nonlocal_bind=1")  # HAProxy binds before VRRP
        self.backends = list(backends)
        if vip_mode != "none":
            self.start_haproxy()
        if vip_mode == "keepalived":
            self.start_keepalived()
        if agent_argv:
            self.agent_argv = list(agent_argv)
            self.start_agent()
        return result

    def start_keepalived(self):
        cfg = self.write_file("keepalived.conf", keepalived_cfg(self.name, **self.vrrp))
        # Fresh pid files for every start: a SIGKILLed instance's VRRP child can linger as a
        # zombie (reparented to a PID 1 that does not reap), and keepalived refuses to start
        # ("daemon is already running") while its old pid file names a process that exists.
        self.keepalived_starts = getattr(self, "keepalived_starts", 0) + 1
        tag = self.keepalived_starts
        pids = [f"--pid={self.rundir}/keepalived-{tag}.pid",
                f"--vrrp_pid={self.rundir}/vrrp-{tag}.pid",
                f"--checkers_pid={self.rundir}/checkers-{tag}.pid"]
        return self.spawn("keepalived", ["keepalived", "--dont-fork", "--log-console",
                                         "--vrrp", f"--use-file={cfg}", *pids])

    def holds_vip(self):
        return f"{VIP}/" in self.cmd(f"ip -4 addr show dev {self.name}-eth0")

    def start_haproxy(self):
        cfg = self.write_file("haproxy.cfg", replica_haproxy_cfg(self.backends, self.tamper))
        return self.spawn("haproxy", ["haproxy", "-db", "-f", cfg])

    def set_tamper(self, on):
        """Tests only: reload HAProxy configured to alter its responses (or not). A seamless
        reload (``-sf``): the new process binds beside the old one, which then stops accepting
        and finishes its connections, so the replica's probe never fails and a lying primary
        is caught by the vote, not failed over for a restart."""
        self.tamper = self.name if on else None
        old = self.owned.pop("haproxy", None)
        if old is None or old.poll() is not None:
            return self.start_haproxy()
        cfg = self.write_file("haproxy.cfg", replica_haproxy_cfg(self.backends, self.tamper))
        new = self.spawn("haproxy", ["haproxy", "-db", "-f", cfg, "-sf", str(old.pid)])
        try:  # the old process leaves once its (short) connections are done
            old.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.retired += 1
            self.owned[f"haproxy-retired-{self.retired}"] = old  # reaped with the host
        return new

    def start_agent(self):
        return self.spawn("agent", self.agent_argv)


class RootNode(LabHost):
    """The root namespace's end of the management network (the controller's REST lives there).

    It owns only its own interface (mgmt0-eth0, 10.254.0.254/24 and that subnet's route)."""

    def __init__(self, name, **params):
        super().__init__(name, inNamespace=False, **params)


class ReadyController(RemoteController):
    """A controller the lab has already seen answer (its REST API, before Mininet starts).

    Mininet's own check pipes `telnet` to the OpenFlow port and decodes what comes back as
    UTF-8: Ryu answers with a binary OFPT_HELLO whose random xid is invalid UTF-8 now and
    then, and the check dies with UnicodeDecodeError (a flaky CI failure). The lab waits for
    the switch's connection itself, so the check adds nothing.
    """

    def checkListening(self):
        pass


class SbftTopo(Topo):
    """Replicas, backends and clients on the service switch s1; replicas and the root namespace
    on the management switch s0."""

    def build(self, lbs=3, backends=2, clients=1, rundir=None, agents=False, wsapi_port=8080,
              agent_args=(), protocols="OpenFlow10,OpenFlow13", vip_mode="sbft",
              advert_int=1.0, vrrp_version=2, skew=False, keys=None, faults=None,
              backend_date=False):
        layout = plan(lbs, backends, clients)
        s1 = self.addSwitch("s1", cls=ServiceSwitch, dpid="0000000000000001",
                            protocols=protocols)
        s0 = self.addSwitch("s0", cls=MgmtSwitch, inNamespace=False)
        self.addHost("mgmt0", cls=RootNode, ip=f"{MGMT_ROOT_IP}/{MGMT_PREFIX}")
        self.addLink("mgmt0", s0, port2=254)
        for r in layout["replicas"]:
            agent_argv = None
            if agents:
                extra = tuple(agent_args)
                if skew and r["name"] in SKEWS:
                    extra += ("--emulate-skew", SKEWS[r["name"]])
                if keys:
                    extra += ("--key-file", os.path.join(_subdir(rundir, r["name"]) or ".",
                                                         "agent.key"))
                if faults and r["name"] in faults:
                    extra += ("--fault", faults[r["name"]])
                agent_argv = agent_command(r["name"], f"http://{MGMT_ROOT_IP}:{wsapi_port}",
                                           extra)
            mode = vip_mode
            if vip_mode == "static":  # one bare HAProxy: the first replica only
                mode = "static" if r is layout["replicas"][0] else "none"
            vrrp = {"priority": 250 - 50 * int(r["name"][2:]), "advert_int": advert_int,
                    "version": vrrp_version}
            self.addHost(r["name"], cls=ReplicaHost, ip=f"{r['ip']}/24", mac=r["mac"],
                         backends=layout["backends"], agent_argv=agent_argv, vip_mode=mode,
                         vrrp=vrrp, rundir=_subdir(rundir, r["name"]),
                         agent_key=(keys or {}).get(r["name"]))
            self.addLink(r["name"], s1, port2=r["port"])
        for b in layout["backends"]:
            self.addHost(b["name"], cls=BackendHost, ip=f"{b['ip']}/24", mac=b["mac"],
                         rundir=_subdir(rundir, b["name"]), date=backend_date)
            self.addLink(b["name"], s1, port2=b["port"])
        for c in layout["clients"]:
            self.addHost(c["name"], cls=LabHost, ip=f"{c['ip']}/24", mac=c["mac"],
                         rundir=_subdir(rundir, c["name"]))
            self.addLink(c["name"], s1, port2=c["port"])
        # management links last, so each replica's data interface stays eth0
        for i, r in enumerate(layout["replicas"], 1):
            self.addLink(r["name"], s0, port2=i,
                         params1={"ip": f"{r['mgmt_ip']}/{MGMT_PREFIX}"})


def _subdir(rundir, name):
    return os.path.join(rundir, name) if rundir else None


# Emulated per-replica stacks (ISN offset, timestamp offset in ms), as on separate machines:
# Mininet hosts share one kernel and so nearly the same ISNs and identical timestamp clocks.
SKEWS = {f"lb{i}": f"{(i - 1) * 1_000_000_007 % 2 ** 32}:{(i - 1) * 37_000 - 50_000 * (i % 2)}"
         for i in range(1, MAX_HOSTS_PER_ROLE + 1)}


def agent_command(name, controller_url, extra=()):
    return [os.path.join(VENV_BIN, "sbft-agent"), "--name", name, "--controller",
            controller_url, "--service-port", str(SERVICE_PORT), "--queue-num", "1",
            "--probe-path", PROBE_PATH, *extra]


topos = {"sbft": SbftTopo}


# ---- the controller process ----------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ryu(rundir, ofp_port, wsapi_port, config_path=None, extra_args=()):
    """Start ``ryu-manager sbft_ryu.app`` in the root namespace; returns the Popen."""
    argv = [os.path.join(VENV_BIN, "ryu-manager"), "--ofp-tcp-listen-port", str(ofp_port),
            "--wsapi-port", str(wsapi_port)]
    if config_path:
        argv += ["--config-file", config_path]
    argv += [*extra_args, "sbft_ryu.app"]
    log = open(os.path.join(rundir, "ryu-manager.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    log.close()
    return proc


def stop_process(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def http_json(url, timeout=2.0, data=None):
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


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
                 skew=False, voting=False, faults=None, backend_date=False, spares=0):
        """``vip_mode`` other than "sbft" runs a baseline: the controller then drives the
        switch as a plain learning switch (no replicas configured: flows file only).
        ``voting``: active mode with Byzantine output voting (keys generated per lab);
        ``faults``: replica -> an agent ``--fault`` (tests only); ``spares``: the last
        replicas are configured as spares (they run like the others)."""
        if voting:
            keys = {r["name"]: os.urandom(32).hex() for r in plan(lbs, backends,
                                                                   clients)["replicas"]}
            sbft_extra = ("mode = active\nvoting = on\n"
                          + "".join(f"replica_key = {name} {key}\n"
                                    for name, key in keys.items()) + sbft_extra)
        else:
            keys = None
        self.layout = plan(lbs, backends, clients)
        self.vip_mode = vip_mode
        self.topo_args = dict(lbs=lbs, backends=backends, clients=clients, agents=agents,
                              agent_args=tuple(agent_args), protocols=protocols,
                              vip_mode=vip_mode, advert_int=advert_int,
                              vrrp_version=vrrp_version, skew=skew, keys=keys,
                              faults=faults, backend_date=backend_date)
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
        return f"http://127.0.0.1:{self.wsapi_port}"

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Take the lab lock, start ryu-manager and the network, wait until they are ready.
        On any failure everything started so far is stopped and the lock released: a lock
        left held would stall every other lab on the machine (this process's next one too)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        if self.controller:
            host, port = self.controller.rsplit(":", 1)
            ctrl_ip, self.ofp_port, self.wsapi_port = host, int(port), 8080
        else:
            ctrl_ip, self.ofp_port, self.wsapi_port = "127.0.0.1", free_port(), free_port()
            self.config_path = os.path.join(self.rundir, "sbft.conf")
            with open(self.config_path, "w", encoding="utf-8") as handle:
                if self.vip_mode == "sbft":
                    # a generous grace: on 2 busy cores agents can start seconds apart, and
                    # tests and benchmarks want the configured order (lb1 first) to decide
                    grace = "" if "startup_grace" in self.sbft_extra else "startup_grace = 10\n"
                    handle.write(sbft_config_text(self.layout, grace + self.sbft_extra,
                                                  self.spares))
                else:  # baseline: a plain learning switch
                    handle.write("[sbft]\nreplica =\n" + self.sbft_extra)
            ryu_args = self.ryu_args
            if self.passive_listener:
                # the switch listens (like the thesis's HP switch) and Ryu connects to it
                self.listen_port = free_port()
                ryu_args += ("--ofp-switch-address-list", f"127.0.0.1:{self.listen_port}",
                             "--ofp-switch-connect-interval", "1")
            self.ryu = start_ryu(self.rundir, self.ofp_port, self.wsapi_port, self.config_path,
                                 ryu_args)
            wait_until(lambda: http_json(self.api + "/sbft/health"), 20, 0.1,
                       "ryu-manager's REST API")
        if self._lock is None:  # (taken only now: ryu-manager's ports are free ports)
            self._lock = take_lab_lock()
        topo = SbftTopo(rundir=self.rundir, wsapi_port=self.wsapi_port, **self.topo_args)
        self.net = Mininet(topo=topo, controller=None, autoSetMacs=False, waitConnected=False)
        if not self.passive_listener:
            self.net.addController("c0", controller=ReadyController, ip=ctrl_ip,
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
        if self._lock is not None:
            self._lock.close()  # releases the lab lock
            self._lock = None

    # ---- helpers for tests, demo and benchmarks -------------------------------------------

    def host(self, name):
        return self.net.get(name)

    def health(self):
        return http_json(self.api + "/sbft/health")

    def switch_connected(self):
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
        argv = [os.path.join(VENV_BIN, "python"), "-m", "sbft_ryu.tools.pacer",
                "--url", f"http://{VIP}:{SERVICE_PORT}/p", "--paths",
                "--interval", str(interval), "--timeout", str(timeout),
                "--duration", str(duration), "--count", str(count), "--out", out,
                *(["--heads"] if heads else [])]
        return host.spawn(name, argv, cwd=REPO), out

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

    def count_replies(self, client):
        """Count SYN-ACKs from the VIP arriving at ``client`` (an iptables counter); returns a
        function reading it."""
        host = self.host(client)
        host.cmd(f"iptables -I INPUT -p tcp -s {VIP} --sport {SERVICE_PORT} "
                 "--tcp-flags SYN,ACK SYN,ACK")
        return lambda: int(host.cmd("iptables -L INPUT 1 -v -x -n").split()[0])

    def fetch(self, client, name, path, count=1, timeout=60.0):
        """Start concurrent downloads of VIP:5555``path`` in ``client`` (background); returns
        (Popen, path of the JSON result)."""
        host = self.host(client)
        out = os.path.join(host.rundir, name)
        argv = [os.path.join(VENV_BIN, "python"), "-m", "sbft_ryu.tools.fetch",
                "--url", f"http://{VIP}:{SERVICE_PORT}{path}", "--count", str(count),
                "--timeout", str(timeout), "--out", out]
        return host.spawn(name, argv, cwd=REPO), out

    def start_capture(self, host_name, expression, name="capture.txt"):
        """tcpdump on the host's data interface in the background; ``stop_capture`` returns its
        lines. Stopped with the host at the latest."""
        host = self.host(host_name)
        path = os.path.join(host.rundir, name)
        out = open(path, "wb")
        proc = host.popen(["tcpdump", "-l", "-n", "-i", f"{host_name}-eth0", expression],
                          stdout=out, stderr=subprocess.DEVNULL)
        out.close()
        host.owned[f"tcpdump-{name}"] = proc
        time.sleep(0.3)  # tcpdump needs a moment before it sees packets
        return path

    def stop_capture(self, host_name, path):
        time.sleep(0.2)
        self.host(host_name).kill(f"tcpdump-{os.path.basename(path)}", signal.SIGTERM)
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line for line in handle.read().splitlines() if line.strip()]

    def replicas_answering(self, synack_lines):
        """Client port → distinct SYN-ACK sequence numbers seen (one replica answers each
        connection: more than one number means a second replica's SYN-ACK got through)."""
        answers = {}
        for line in synack_lines:
            if "Flags [S.]" not in line:
                continue
            words = line.replace(",", "").split()
            port = words[words.index(">") + 1].rsplit(".", 1)[1].rstrip(":")
            answers.setdefault(port, set()).add(words[words.index("seq") + 1])
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


# ---- the runnable script ---------------------------------------------------------------------

def demo(lab, out=print):
    """The scripted demo: steady requests, a primary crash, recovery, a primary link cut.

    A paced client (one GET every 20 ms, each on a new connection, 100 ms deadline) runs
    through every step; the demo prints its request log around each fault and the health JSON
    before and after."""
    sys.path.insert(0, REPO)
    from sbft_ryu.tools import timeline

    def show_health(title):
        health = lab.health()
        out(f"\n--- {title}: GET /sbft/health")
        brief = {key: health[key] for key in ("status", "primary", "epoch")}
        brief["replicas"] = [
            {key: r[key] for key in ("name", "state", "role", "last_heartbeat_age_s",
                                     "service_ok", "down_reason")}
            for r in health["replicas"]]
        out(json.dumps(brief, indent=1))

    def request_log(path, fault_at, title):
        records, _ = timeline.load(path)
        outage = timeline.outage(records, fault_at)
        out(f"\n--- client request log around the {title} (t relative to the fault)")
        shown = [r for r in records if fault_at - 0.08 <= r["t"] <= fault_at + 0.5]
        failed_run = 0
        for record in shown:
            if not record["ok"]:
                failed_run += 1
                if failed_run > 3:
                    continue
            elif failed_run > 3:
                out(f"      ... {failed_run - 3} more failed")
            if record["ok"]:
                failed_run = 0
            result = (record.get("body", "").strip() if record["ok"]
                      else f"FAILED ({record.get('error', record['status'])})")
            out(f"    {record['t'] - fault_at:+7.3f}s  GET /p/{record['seq']:<4} "
                f"{record['latency'] * 1000:6.1f} ms  {result}")
        ok = sum(r["ok"] for r in records)
        out(f"    {len(records)} requests, {ok} ok; outage {outage.seconds or 0:.3f} s, "
            f"{outage.failed} failed requests")

    def fault(title, action, primary):
        proc, path = lab.pacer("c1", f"demo-{title.replace(' ', '-')}.jsonl",
                               interval=0.02, timeout=0.1, duration=2.5)
        time.sleep(1.0)
        fault_at = time.monotonic()
        out(f"\n=== {title}: {primary}")
        action()
        wait_until(lambda: lab.health()["primary"] not in (None, primary), 10, 0.02,
                   "a new primary")
        proc.wait(timeout=30)
        request_log(path, fault_at, title)

    show_health("health at start")
    first = lab.health()["primary"]
    fault("primary crash (agent and HAProxy SIGKILLed)", lambda: lab.crash(first), first)
    show_health("health after the crash")
    out(f"\n=== restarting {first}'s HAProxy and agent")
    lab.restart(first)
    wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "all replicas up")
    show_health(f"health after recovery ({first} rejoins as backup: the primary is sticky)")
    second = lab.health()["primary"]
    fault("primary link cut", lambda: lab.set_link(second, False), second)
    show_health("health after the link cut")
    lab.set_link(second, True)
    wait_until(lambda: lab.health()["status"] == "ok", 10, 0.05, "all replicas up")
    show_health("health after the link is restored")


def demo_active(lab, out=print):
    """Active mode: a download in flight survives the primary's crash, byte for byte."""
    sys.path.insert(0, REPO)
    import hashlib

    from sbft_ryu.tools import stream_backend

    size, rate = 3 * 1024 * 1024, 1024 * 1024
    path = f"/stream/{size}?rate={rate}"
    expected = hashlib.sha256(stream_backend.content(path.split("?")[0], size)).hexdigest()
    primary = lab.health()["primary"]
    out(f"\n=== active mode: downloading {size} bytes at {rate} bytes/s through the VIP; "
        f"the primary {primary} is SIGKILLed 1.2 s in")
    proc, result = lab.fetch("c1", "demo-download.json", path)
    time.sleep(1.2)
    lab.crash(primary)
    wait_until(lambda: lab.health()["primary"] not in (None, primary), 10, 0.02, "failover")
    out(f"    failover: primary {lab.health()['primary']}, epoch {lab.health()['epoch']}")
    proc.wait(timeout=60)
    with open(result, encoding="utf-8") as handle:
        fetched = json.load(handle)["results"][0]
    out(f"    download: status {fetched['status']}, {fetched['bytes']} bytes, sha256 "
        f"{'matches the object' if fetched['sha256'] == expected else 'DIFFERS'}, "
        f"longest stall {fetched['max_stall_s']} s")
    counters = {r["name"]: r["counters"] for r in lab.health()["replicas"]}
    for name, c in counters.items():
        out(f"    {name}: connections {c.get('connections')}, translated in/out "
            f"{c.get('translated_in')}/{c.get('translated_out')}, backup drops "
            f"{c.get('dropped_backup')}, ACKs clamped {c.get('ack_clamped')}")


def demo_voting(lab, out=print):
    """Voting: a backup's proxy, then the primary's, starts altering its responses; each is
    marked byzantine and cut off, and the client never sees an altered byte."""
    sys.path.insert(0, REPO)
    from sbft_ryu.tools import timeline

    def state(name):
        return next(r for r in lab.health()["replicas"] if r["name"] == name)

    out("\n=== voting: one GET every 20 ms; replicas' proxies start to lie (an added header)")
    proc, log = lab.pacer("c1", "demo-voting.jsonl", interval=0.02, timeout=1.0,
                          duration=12.0, heads=True)
    time.sleep(1.0)
    for liar in ("lb2", lab.health()["primary"]):
        role = state(liar)["role"]
        out(f"    {liar} ({role}) now alters its responses")
        lab.host(liar).set_tamper(True)
        started = time.monotonic()
        wait_until(lambda: state(liar)["state"] == "byzantine", 10, 0.01, f"{liar} byzantine")
        votes = state(liar)["votes"]
        out(f"    {liar} byzantine after {time.monotonic() - started:.3f} s (divergences "
            f"{votes['divergences']}, divergence rate {votes['divergence_rate']}); primary "
            f"{lab.health()['primary']}, members {lab.health()['members']}")
        time.sleep(1.0)
        lab.host(liar).set_tamper(False)
        answer = http_json(f"{lab.api}/sbft/replicas/{liar}/readmit", data=b"{}")
        out(f"    operator repaired and readmitted {liar}: state {answer['state']}")
        wait_until(lambda: lab.health()["voting"]["voted"], 10, 0.05, "voted again")
        time.sleep(1.0)
    proc.terminate()
    proc.wait(timeout=10)
    records, _ = timeline.load(log)
    altered = [r for r in records if "X-Tampered" in r.get("head", "")]
    out(f"    client: {len(records)} requests, {sum(r['ok'] for r in records)} answered, "
        f"{len(altered)} with an altered byte")
    out(f"    voting: {lab.health()['voting']['reason']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lbs", type=int, default=3)
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--controller", metavar="HOST:PORT",
                        help="use this running controller instead of starting ryu-manager")
    parser.add_argument("--no-agents", dest="agents", action="store_false",
                        help="run no sbft-agent (liveness from switch port state only)")
    parser.add_argument("--cli", action="store_true", help="open the Mininet CLI")
    parser.add_argument("--demo", action="store_true", help="run the scripted demo")
    parser.add_argument("--mode", choices=("passive", "active", "voting"), default="passive",
                        help="active: replicas share one TCP sequence space (their stacks "
                        "skewed as on separate machines); voting: active with Byzantine "
                        "output voting")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("Mininet needs root")
    setLogLevel("warning")
    extra = "" if args.agents else "heartbeat_timeout = 0\n"
    active = args.mode in ("active", "voting")
    if active and not args.agents:
        parser.error("active mode needs the agents")
    extra += "mode = active\n" if args.mode == "active" else ""
    with Lab(lbs=args.lbs, backends=args.backends, clients=args.clients, agents=args.agents,
             controller=args.controller, sbft_extra=extra, skew=active,
             voting=args.mode == "voting") as lab:
        print(f"controller REST: {lab.api}/sbft/health   run directory: {lab.rundir}")
        if args.demo:
            {"passive": demo, "active": demo_active, "voting": demo_voting}[args.mode](lab)
        if args.cli:
            from mininet.cli import CLI
            CLI(lab.net)
    return 0


if __name__ == "__main__":
    sys.exit(main())
