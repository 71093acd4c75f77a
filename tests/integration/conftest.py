"""Integration tests: real Open vSwitch, a real ryu-manager process, HAProxy and agents in
Mininet hosts.

Without root, a running Open vSwitch, Mininet or HAProxy these tests FAIL (never skip): CI must
not report a pass for a suite that did not run. Every test gets its own run directory, bounds
every wait, and stops what it started (Mininet's ``net.stop()`` deletes only its own bridges;
processes are stopped by PID). On teardown the controller log must hold no traceback and no
OpenFlow error, and the flow tables are dumped into the run directory for post-mortems.
"""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _environment_problems():
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (Mininet, OVS and iptables need root: "
                        "run ./run.sh test as root)")
    ovs = subprocess.run(["ovs-vsctl", "-t", "5", "show"], capture_output=True, text=True) \
        if shutil.which("ovs-vsctl") else None
    if ovs is None or ovs.returncode != 0:
        problems.append("Open vSwitch is not installed or not running (./run.sh setup starts it)")
    for tool in ("haproxy", "mnexec", "ethtool", "iptables", "curl"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing (./run.sh setup installs it)")
    try:
        import mininet.net  # noqa: F401
    except ImportError as exc:
        problems.append(f"Mininet's Python module is not importable from {sys.executable}: "
                        f"{exc} (use the .venv that run.sh creates)")
    try:
        import sbft_lab  # noqa: F401
    except ImportError as exc:
        problems.append(f"the lab package is not importable from {sys.executable}: {exc} "
                        "(./run.sh setup installs mininet/lab)")
    if not os.path.exists(os.path.join(REPO, ".venv", "bin", "ryu-manager")):
        problems.append("ryu-manager is missing from .venv (./run.sh setup installs it)")
    return problems


@pytest.fixture(scope="session")
def topo_module():
    """The lab module (``sbft_lab.lab``: Lab, wait_until, http_json, start_ryu, ...); the
    topology file it drives is its ``topo``. Fails (never skips) without the environment."""
    problems = _environment_problems()
    if problems:
        pytest.fail("integration environment missing: " + "; ".join(problems), pytrace=False)
    from mininet.log import setLogLevel

    setLogLevel("warning")
    from sbft_lab import lab

    return lab


@pytest.fixture
def lab_factory(topo_module, tmp_path, request):
    """Start Labs with ``lab_factory(**kwargs)``; each is stopped and checked on teardown."""
    labs = []

    def start(**kwargs):
        rundir = tmp_path / f"lab{len(labs)}"
        rundir.mkdir()
        lab = topo_module.Lab(rundir=str(rundir), **kwargs)
        labs.append(lab)
        lab.start()
        return lab

    yield start
    problems = []
    for lab in labs:
        try:
            if lab.net is not None:
                for switch in ("s1", "s0"):
                    with open(os.path.join(lab.rundir, f"flows-{switch}.txt"), "w") as out:
                        out.write(lab.dump_flows(switch))
        finally:
            lab.stop()
        logs = [os.path.join(lab.rundir, "ryu-manager.log")]
        # several controllers: each ryu-manager logs in its own host's run directory
        logs += [os.path.join(lab.rundir, name, "ryu.log")
                 for name in getattr(lab, "controller_names", ())]
        for path in logs:
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    log = handle.read()
                for marker in ("Traceback", "OFPErrorMsg"):
                    if marker in log:
                        problems.append(f"controller log ({path}) contains {marker}")
    if problems and not request.node.get_closest_marker("allow_controller_errors"):
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def lab(lab_factory):
    """The default lab: 3 replicas, 2 backends, 1 client, no agents (port-state liveness)."""
    return lab_factory(sbft_extra="heartbeat_timeout = 0\n")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
