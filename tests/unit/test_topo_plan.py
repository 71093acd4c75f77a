"""Tests for the pure parts of mininet/sbft_topo.py (no root, no Mininet network): the plan,
the HAProxy configurations, the agents' command lines, and the file as ``mn --custom`` loads it.

The module imports Mininet at module level; importing it needs no root, only the package.
"""

import ast
import importlib.util
import os
import sys

import pytest

pytest.importorskip("mininet.net")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_topo():
    spec = importlib.util.spec_from_file_location(
        "sbft_topo_under_test", os.path.join(REPO, "mininet", "sbft_topo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


topo = _load_topo()


# --- plan -----------------------------------------------------------------------------------


def test_replica_addressing():
    assert topo.plan(3, 2, 1)["replicas"] == [
        {"name": f"lb{i}", "ip": f"10.0.0.1{i}", "mac": f"00:00:00:00:01:0{i}", "port": i,
         "mgmt_ip": f"10.254.0.1{i}"}
        for i in (1, 2, 3)
    ]


def test_backend_and_client_addressing():
    layout = topo.plan(1, 2, 3)
    assert layout["backends"] == [
        {"name": f"b{j}", "ip": f"10.0.0.2{j}", "mac": f"00:00:00:00:02:0{j}", "port": 10 + j}
        for j in (1, 2)
    ]
    assert layout["clients"] == [
        {"name": f"c{k}", "ip": f"10.0.0.3{k}", "mac": f"00:00:00:00:03:0{k}", "port": 20 + k}
        for k in (1, 2, 3)
    ]


def test_largest_plan_keeps_ports_and_addresses_distinct():
    layout = topo.plan(9, 9, 9)
    hosts = layout["replicas"] + layout["backends"] + layout["clients"]
    assert len(hosts) == 27
    for key in ("name", "ip", "mac", "port"):
        assert len({host[key] for host in hosts}) == 27, key
    assert layout["replicas"][-1]["ip"] == "10.0.0.19"
    assert topo.VIP not in {host["ip"] for host in hosts}


@pytest.mark.parametrize("counts, message", [
    ((0, 2, 1), "lbs must be 1..9, got 0"),
    ((10, 2, 1), "lbs must be 1..9, got 10"),
    ((3, 0, 1), "backends must be 1..9, got 0"),
    ((3, 2, 10), "clients must be 1..9, got 10"),
])
def test_plan_bounds(counts, message):
    with pytest.raises(ValueError) as info:
        topo.plan(*counts)
    assert str(info.value) == message


# --- HAProxy configurations -----------------------------------------------------------------


REPLICA_HAPROXY_CFG_2_BACKENDS = """global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend sbft
    bind 10.0.0.100:5555
    monitor-uri /sbft-probe
    use_backend streams if { path_beg /stream/ /upload/ }
    default_backend backends
backend backends
    # deterministic: every replica sends the same request to the same backend
    balance uri
    server b1 10.0.0.21:8080
    server b2 10.0.0.22:8080
backend streams
    balance uri
    server b1 10.0.0.21:8081
    server b2 10.0.0.22:8081
"""


def test_replica_haproxy_cfg():
    text = topo.replica_haproxy_cfg(topo.plan(3, 2, 1)["backends"])
    assert text == REPLICA_HAPROXY_CFG_2_BACKENDS
    lines = [line.strip() for line in text.splitlines()]
    assert lines.count("balance uri") == 2  # both backends: the same server on every replica
    assert "bind 10.0.0.100:5555" in lines
    assert "monitor-uri /sbft-probe" in lines
    assert [line for line in lines if line.startswith("server ")] == [
        "server b1 10.0.0.21:8080", "server b2 10.0.0.22:8080",
        "server b1 10.0.0.21:8081", "server b2 10.0.0.22:8081"]
    # the streams rule comes before the default, and each backend's servers follow its balance
    assert lines.index("use_backend streams if { path_beg /stream/ /upload/ }") < \
        lines.index("default_backend backends")
    assert lines.index("backend backends") < lines.index("balance uri") < \
        lines.index("server b1 10.0.0.21:8080") < lines.index("backend streams") < \
        lines.index("server b1 10.0.0.21:8081")


@pytest.mark.parametrize("count", [1, 3])
def test_replica_haproxy_cfg_has_one_stream_server_per_backend(count):
    backends = topo.plan(1, count, 1)["backends"]
    lines = [line.strip() for line in topo.replica_haproxy_cfg(backends).splitlines()]
    streams = lines[lines.index("backend streams") + 2:]
    assert streams == [f"server b{j} 10.0.0.2{j}:{topo.STREAM_PORT}" for j in
                       range(1, count + 1)]
    assert topo.STREAM_PORT == 8081 != topo.BACKEND_PORT


# --- emulated stack skews -------------------------------------------------------------------


def test_skews_are_valid_emulate_skew_arguments_and_distinct(test_faults_allowed):
    from sbft_ryu.agent import cli, faults
    names = [f"lb{i}" for i in range(1, topo.MAX_HOSTS_PER_ROLE + 1)]
    assert topo.MAX_HOSTS_PER_ROLE == 9
    assert sorted(topo.SKEWS) == names  # one per replica the topology can have
    assert (topo.SKEWS["lb1"], topo.SKEWS["lb2"]) == ("0:-50000", "1000000007:37000")
    parsed = {name: faults.parse_skew(value) for name, value in topo.SKEWS.items()}
    assert parsed["lb1"] == (0, 2 ** 32 - 50000)  # a negative offset, modulo 2**32
    assert len({isn for isn, _ in parsed.values()}) == len(names)
    assert len({ts for _, ts in parsed.values()}) == len(names)
    assert len(set(parsed.values())) == len(names)
    for name, value in topo.SKEWS.items():
        isn, _, ts = value.partition(":")
        assert isn.isdigit() and 0 <= int(isn) < 2 ** 32  # plain decimal ISN offsets
        assert int(ts) == float(ts)  # milliseconds, decimal, maybe negative
        # none starts with '-': the plain "--emulate-skew VALUE" form works (a leading '-'
        # would need "--emulate-skew=VALUE", as argparse takes it for an option)
        assert not value.startswith("-")
        argv = ["--name", name, "--controller", "http://x:1", "--emulate-skew", value]
        assert cli.parse_args(argv)[0].emulate_skew == value
        assert cli.parse_args(argv[:-2] + [f"--emulate-skew={value}"])[0].emulate_skew == value


def test_topo_passes_the_skews_to_the_agents_only_when_asked():
    with_skew = topo.SbftTopo(lbs=3, agents=True, skew=True, agent_args=("--interval", "0.1"))
    without = topo.SbftTopo(lbs=3, agents=True)
    for name in ("lb1", "lb2", "lb3"):
        expected = topo.agent_command(name, "http://10.254.0.254:8080")
        assert without.nodeInfo(name)["agent_argv"] == expected
        assert with_skew.nodeInfo(name)["agent_argv"] == expected + [
            "--interval", "0.1", "--emulate-skew", topo.SKEWS[name]]
    assert topo.SbftTopo(lbs=2, agents=False, skew=True).nodeInfo("lb2")["agent_argv"] is None


def test_agent_command_is_unchanged():
    assert topo.agent_command("lb2", "http://10.254.0.254:8080", ("--x",)) == [
        os.path.join(topo.VENV_BIN, "sbft-agent"), "--name", "lb2", "--controller",
        "http://10.254.0.254:8080", "--service-port", "5555", "--queue-num", "1",
        "--probe-path", "/sbft-probe", "--x"]


def test_backend_haproxy_cfg():
    backend = topo.plan(3, 2, 1)["backends"][1]
    text = topo.backend_haproxy_cfg(backend)
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 10.0.0.22:8080" in lines
    assert 'lf-string "b2 %[path]\\n"' in text


# --- the file as ``mn --custom`` loads it ---------------------------------------------------

TOPO_PATH = os.path.join(REPO, "mininet", "sbft_topo.py")
README_TOPO = "sbft,lbs=3,backends=2,clients=1"
README_CONTROLLER = "sbft,ip=127.0.0.1,port=6653"


def load_as_mn_does():
    """What /usr/bin/mn does with --custom FILE: exec() in a fresh namespace (no __file__)."""
    customs = {}
    with open(TOPO_PATH, encoding="utf-8") as handle:
        exec(compile(handle.read(), TOPO_PATH, "exec"), customs, customs)  # noqa: S102
    return customs


def test_mn_finds_the_topology_and_the_controller():
    from mininet.node import RemoteController
    from mininet.util import customClass

    customs = load_as_mn_does()
    assert "__file__" not in customs
    assert customs["VENV_BIN"] == os.path.join(REPO, ".venv", "bin")
    assert customs["topos"] == {"sbft": customs["SbftTopo"]}
    assert customs["controllers"] == {"sbft": customs["SbftController"]}
    controller = customClass(customs["controllers"], README_CONTROLLER)
    assert issubclass(controller, RemoteController)
    # the telnet check of the port is skipped (it can raise, and mn's cleanup would follow)
    assert customs["SbftController"].checkListening is not RemoteController.checkListening
    assert customs["SbftController"].checkListening(None) is None


def test_the_mn_topology_is_what_the_embedded_defaults_describe(default_config):
    from mininet.util import buildTopo

    customs = load_as_mn_does()
    built = buildTopo(customs["topos"], README_TOPO)
    assert [r.name for r in default_config.replicas] == ["lb1", "lb2", "lb3"]
    for replica in default_config.replicas:
        info = built.nodeInfo(replica.name)
        assert (info["ip"], info["mac"]) == (f"{replica.ip}/24", replica.mac)
        assert built.port(replica.name, "s1") == (0, replica.port)  # eth0 on the data switch
        assert info["agent_argv"] == customs["agent_command"](replica.name,
                                                              "http://10.254.0.254:8080")
        assert info["agent_env"] == {}  # no test-only agent options
    assert (topo.VIP, topo.VMAC, topo.SERVICE_PORT) == (
        default_config.vip, default_config.vmac, default_config.service_port)
    assert built.nodeInfo("s1")["dpid"] == "0000000000000001"
    assert default_config.dpid is None  # the default drives every switch, s1 included
    assert built.nodeInfo("mgmt0")["ip"] == "10.254.0.254/24"


def test_topo_parameters_move_the_agents_rest_url():
    from mininet.util import buildTopo

    built = buildTopo(topo.topos, "sbft,lbs=2,mgmt_ip=10.254.0.200,wsapi_port=8181")
    assert built.nodeInfo("mgmt0")["ip"] == "10.254.0.200/24"
    assert built.nodeInfo("lb2")["agent_argv"] == topo.agent_command(
        "lb2", "http://10.254.0.200:8181")
    assert buildTopo(topo.topos, "sbft,agents=0").nodeInfo("lb1")["agent_argv"] is None


@pytest.mark.parametrize("params, message", [
    (dict(mgmt_ip="10.0.0.5"), "mgmt_ip must be a free host address in 10.254.0.0/24 (the "
                               "replicas use 10.254.0.11, 10.254.0.12, 10.254.0.13), got 10.0.0.5"),
    (dict(mgmt_ip="10.254.0.12"), "mgmt_ip must be a free host address in 10.254.0.0/24 (the "
                                  "replicas use 10.254.0.11, 10.254.0.12, 10.254.0.13), got "
                                  "10.254.0.12"),
    (dict(mgmt_ip="10.254.0.255"), "got 10.254.0.255"),
    (dict(mgmt_ip="here"), "mgmt_ip must be an IPv4 address in 10.254.0.0/24, got 'here'"),
    (dict(wsapi_port=0), "wsapi_port must be a TCP port 1..65535, got 0"),
    (dict(wsapi_port="http"), "wsapi_port must be a TCP port 1..65535, got 'http'"),
])
def test_bad_rest_parameters_are_refused(params, message):
    with pytest.raises(ValueError) as info:
        topo.SbftTopo(**params)
    assert message in str(info.value)


@pytest.mark.parametrize("params", [dict(skew=True), dict(faults={"lb2": "x"}),
                                    dict(test_faults=True)])
def test_agents_get_the_test_faults_environment_only_for_test_options(params):
    assert topo.TEST_FAULTS_ENV == {"SBFT_TEST_FAULTS": "1"}
    assert topo.SbftTopo(lbs=2, **params).nodeInfo("lb2")["agent_env"] == topo.TEST_FAULTS_ENV
    assert topo.SbftTopo(lbs=2).nodeInfo("lb2")["agent_env"] == {}


def test_the_topology_file_needs_only_the_standard_library_and_mininet():
    """``mn`` runs the file under the system interpreter, which sees no virtual environment."""
    with open(TOPO_PATH, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is not in a package"
            imported.add(node.module.split(".")[0])
    assert "mininet" in imported
    assert imported - {"mininet"} <= sys.stdlib_module_names, imported
    assert not os.path.exists(os.path.join(REPO, "mininet", "__init__.py"))  # would shadow it
