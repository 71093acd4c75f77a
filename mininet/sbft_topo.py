"""The sbft_ryu Mininet topology: the file ``mn --custom`` loads.

With the controller running (``ryu-manager sbft_ryu.app``, embedded defaults), as root::

    mn --custom mininet/sbft_topo.py --topo sbft,lbs=3,backends=2,clients=1 \\
       --switch ovs,datapath=user --controller sbft,ip=127.0.0.1,port=6653

builds the tier the embedded defaults describe: three replicas running HAProxy and their
agents, two backends and a client. The agents send their heartbeats to the controller's REST
API over the management network, at ``http://MGMT_IP:WSAPI_PORT`` (topo parameters
``mgmt_ip=`` and ``wsapi_port=``; ``agents=0`` starts none). ``--controller sbft`` is a remote
controller without Mininet's telnet check of the controller port (see :class:`SbftController`).

This file stays one self-contained module of the standard library and Mininet: ``mn`` runs it
under the system interpreter, which sees neither the project's virtual environment nor sibling
files, and ``mininet/`` must not become a package (it would shadow Mininet). The processes it
starts in the hosts (``sbft-agent``) come from the checkout's ``.venv`` (``./run.sh setup``).
The lab around it (a ``ryu-manager`` of its own, demos, traffic tools, the tests' and
benchmarks' helpers) is the package ``sbft_lab`` in ``mininet/lab/``.

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

import ipaddress
import os
import signal
import subprocess
import tempfile

from mininet.log import warn
from mininet.node import Host, OVSSwitch, RemoteController, Switch
from mininet.topo import Topo


def _this_file():
    # ``mn --custom`` runs this file with exec() in a fresh namespace, without ``__file__``;
    # the name compile() was given survives as the code's file name.
    return os.path.abspath(globals().get("__file__") or _this_file.__code__.co_filename)


HERE = os.path.dirname(_this_file())
REPO = os.path.dirname(HERE)
VENV_BIN = os.path.join(REPO, ".venv", "bin")

VIP = "10.0.0.100"
VMAC = "02:00:0a:00:00:64"
SERVICE_PORT = 5555
BACKEND_PORT = 8080
# large, slow, deterministic objects and the upload sink (the lab's sbft_lab.stream_backend)
STREAM_PORT = 8081
MGMT_ROOT_IP = "10.254.0.254"
MGMT_PREFIX = 24
MGMT_NET = ipaddress.ip_network(f"{MGMT_ROOT_IP}/{MGMT_PREFIX}", strict=False)
WSAPI_PORT = 8080  # ryu-manager's default REST port
# the agent refuses its test-only options (--emulate-skew, --fault) without this
TEST_FAULTS_ENV = {"SBFT_TEST_FAULTS": "1"}
PROBE_PATH = "/sbft-probe"
MAX_HOSTS_PER_ROLE = 9
# several controllers (``controllers=2`` or 3): each ryu-manager in a host of its own on the
# management network, beside a 3-member etcd cluster in hosts of their own
MAX_CONTROLLERS = 3
ETCD_MEMBERS = 3
OFP_PORT = 6653
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


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


def controller_plan(n):
    return {"name": f"ctl{n}", "mgmt_ip": f"10.254.0.{20 + n}", "port": 40 + n}


def etcd_plan(n):
    return {"name": f"etcd{n}", "mgmt_ip": f"10.254.0.{30 + n}", "port": 50 + n}


def control_plan(controllers=1):
    """The controllers' and etcd members' hosts: none for one controller (it runs in the root
    namespace, as it always did), else ``controllers`` controller hosts and ETCD_MEMBERS etcd
    hosts, all on the management network (``port``: their port on s0)."""
    if isinstance(controllers, bool) or not 1 <= int(controllers) <= MAX_CONTROLLERS:
        raise ValueError(f"controllers must be 1..{MAX_CONTROLLERS}, got {controllers}")
    if int(controllers) == 1:
        return {"controllers": [], "etcd": []}
    return {"controllers": [controller_plan(n) for n in range(1, int(controllers) + 1)],
            "etcd": [etcd_plan(n) for n in range(1, ETCD_MEMBERS + 1)]}


def controller_urls(control, wsapi_port=WSAPI_PORT):
    """The controllers' REST base URLs, as agents (and the lab) reach them."""
    return [f"http://{c['mgmt_ip']}:{wsapi_port}" for c in control["controllers"]]


def etcd_endpoints(control):
    """``HOST:PORT,...`` of the etcd members' client ports (``coordination = etcd://...``)."""
    return ",".join(f"{e['mgmt_ip']}:{ETCD_CLIENT_PORT}" for e in control["etcd"])


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
    use_backend streams if {{ path_beg /stream/ /upload/ }}
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
        """A crash (any signal but SIGTERM) goes to the whole process group (mnexec -d made
        each spawn a session leader, and keepalived forks a VRRP child): it takes every
        process of that program. SIGTERM, a stop, goes to the program alone, which stops its
        children itself: sent to the group it also killed a command the program was running
        (an agent's iptables-restore), and the program logged that as a failure."""
        proc = self.owned.pop(key, None)
        if proc is not None and proc.poll() is None:
            if sig == signal.SIGTERM:
                _kill(proc.pid, sig)
            else:
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


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class BackendHost(LabHost):
    """A backend: HAProxy answering a fixed body per path on BACKEND_PORT."""

    def config(self, date=False, **params):
        result = super().config(**params)
        backend = {"name": self.name, "ip": params["ip"].split("/")[0]}
        cfg = self.write_file("haproxy.cfg", backend_haproxy_cfg(backend, date))
        self.spawn("haproxy", ["haproxy", "-db", "-f", cfg])
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
               agent_env=None, **params):
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
            self.agent_env = dict(os.environ, **(agent_env or {}))
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
        return self.spawn("agent", self.agent_argv, env=self.agent_env)


class RootNode(LabHost):
    """The root namespace's end of the management network (the controller's REST lives there).

    It owns only its own interface (mgmt0-eth0, 10.254.0.254/24 and that subnet's route)."""

    def __init__(self, name, **params):
        super().__init__(name, inNamespace=False, **params)


class SbftController(RemoteController):
    """A remote controller without Mininet's check that it listens (``--controller sbft``).

    Mininet's check pipes `telnet` to the OpenFlow port and decodes what comes back as UTF-8:
    Ryu answers with a binary OFPT_HELLO whose random xid is invalid UTF-8 now and then, and
    the check dies with UnicodeDecodeError (a flaky CI failure; under ``mn``, an exception that
    runs Mininet's cleanup, which kills every ryu-manager on the machine). The switch connects
    when the controller answers; the lab waits for that connection itself.
    """

    def checkListening(self):
        pass


class SbftTopo(Topo):
    """Replicas, backends and clients on the service switch s1; replicas and the root namespace
    on the management switch s0.

    As ``mn`` builds it (``--topo sbft,lbs=3,...``) it matches the app's embedded defaults and
    starts every replica's agent, reporting to ``http://{mgmt_ip}:{wsapi_port}`` (the root
    namespace's address on the management network; ryu-manager's REST port). The lab passes
    the rest: run directories, test-only agent options (``test_faults``: the agents may use
    them), baselines (``vip_mode``), OpenFlow versions.
    """

    def build(self, lbs=3, backends=2, clients=1, rundir=None, agents=True,
              mgmt_ip=MGMT_ROOT_IP, wsapi_port=WSAPI_PORT, agent_args=(),
              protocols="OpenFlow10,OpenFlow13", vip_mode="sbft", advert_int=1.0,
              vrrp_version=2, skew=False, keys=None, faults=None, backend_date=False,
              test_faults=False, controllers=1):
        layout = plan(lbs, backends, clients)
        control = control_plan(controllers)
        controller_url = rest_url(mgmt_ip, wsapi_port, layout)
        if control["controllers"]:  # the agents report to every controller
            controller_url = ",".join(controller_urls(control, wsapi_port))
        agent_env = TEST_FAULTS_ENV if (test_faults or skew or faults) else {}
        if agents and not os.access(os.path.join(VENV_BIN, "sbft-agent"), os.X_OK):
            # a warning, not an exception: under ``mn`` an exception runs Mininet's cleanup,
            # which kills every ryu-manager on the machine
            warn(f"*** {VENV_BIN}/sbft-agent is missing (./run.sh setup installs it): "
                 "the replicas will send no heartbeats\n")
        s1 = self.addSwitch("s1", cls=ServiceSwitch, dpid="0000000000000001",
                            protocols=protocols)
        s0 = self.addSwitch("s0", cls=MgmtSwitch, inNamespace=False)
        self.addHost("mgmt0", cls=RootNode, ip=f"{mgmt_ip}/{MGMT_PREFIX}")
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
                agent_argv = agent_command(r["name"], controller_url, extra)
            mode = vip_mode
            if vip_mode == "static":  # one bare HAProxy: the first replica only
                mode = "static" if r is layout["replicas"][0] else "none"
            vrrp = {"priority": 250 - 50 * int(r["name"][2:]), "advert_int": advert_int,
                    "version": vrrp_version}
            self.addHost(r["name"], cls=ReplicaHost, ip=f"{r['ip']}/24", mac=r["mac"],
                         backends=layout["backends"], agent_argv=agent_argv, vip_mode=mode,
                         vrrp=vrrp, rundir=_subdir(rundir, r["name"]),
                         agent_key=(keys or {}).get(r["name"]), agent_env=agent_env)
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
        # several controllers: their hosts and etcd's, on the management network only (the
        # switch reaches the controllers from the root namespace, through mgmt0); the lab
        # (sbft_lab) starts ryu-manager and etcd in them
        for node in control["controllers"] + control["etcd"]:
            self.addHost(node["name"], cls=LabHost, ip=f"{node['mgmt_ip']}/{MGMT_PREFIX}",
                         rundir=_subdir(rundir, node["name"]))
            self.addLink(node["name"], s0, port2=node["port"])


def rest_url(mgmt_ip, wsapi_port, layout):
    """The controller's REST API as agents reach it: the root namespace's address on the
    management network (``mgmt_ip``, which mgmt0 takes) and ryu-manager's REST port."""
    try:
        address = ipaddress.ip_address(str(mgmt_ip))
    except ValueError:
        raise ValueError(f"mgmt_ip must be an IPv4 address in {MGMT_NET}, got {mgmt_ip!r}") \
            from None
    taken = {r["mgmt_ip"] for r in layout["replicas"]}
    if address not in MGMT_NET or address in (MGMT_NET.network_address,
                                               MGMT_NET.broadcast_address) \
            or str(address) in taken:
        raise ValueError(f"mgmt_ip must be a free host address in {MGMT_NET} (the replicas "
                         f"use {', '.join(sorted(taken))}), got {mgmt_ip}")
    if not isinstance(wsapi_port, int) or not 1 <= wsapi_port <= 65535:
        raise ValueError(f"wsapi_port must be a TCP port 1..65535, got {wsapi_port!r}")
    return f"http://{address}:{wsapi_port}"


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


# What ``mn --custom`` reads from this file: ``--topo sbft,...`` and ``--controller sbft,...``.
topos = {"sbft": SbftTopo}
controllers = {"sbft": SbftController}
