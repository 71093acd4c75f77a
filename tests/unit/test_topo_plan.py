"""Tests for the pure plan functions of mininet/sbft_topo.py (no root, no Mininet network).

The module imports Mininet at module level; importing it needs no root, only the package.
"""

import importlib.util
import os

import pytest
from oslo_config import cfg

from sbft_ryu import config

pytest.importorskip("mininet.net")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_topo():
    spec = importlib.util.spec_from_file_location(
        "sbft_topo_under_test", os.path.join(REPO, "mininet", "sbft_topo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


topo = _load_topo()


def load_text(tmp_path, text):
    path = tmp_path / "sbft.conf"
    path.write_text(text, encoding="utf-8")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    conf(args=["--config-file", str(path)], default_config_files=[], default_config_dirs=[])
    return config.load_config(conf)


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


# --- the [sbft] config text -----------------------------------------------------------------


def test_config_text_for_three_replicas_matches_the_embedded_defaults(tmp_path, default_config):
    loaded = load_text(tmp_path, topo.sbft_config_text(topo.plan(3, 2, 1)))
    assert loaded.replicas == default_config.replicas
    assert (loaded.vip, loaded.vmac, loaded.service_port) == (
        default_config.vip, default_config.vmac, default_config.service_port)
    assert loaded == default_config


def test_config_text_configures_the_last_replicas_as_spares(tmp_path):
    loaded = load_text(tmp_path, topo.sbft_config_text(topo.plan(4, 1, 1), spares=1))
    assert [r.name for r in loaded.replicas] == ["lb1", "lb2", "lb3"]
    assert [r.name for r in loaded.spares] == ["lb4"] and loaded.f == 1


def test_config_text_appends_extra(tmp_path):
    text = topo.sbft_config_text(topo.plan(2, 1, 1), "heartbeat_timeout = 0\n")
    loaded = load_text(tmp_path, text)
    assert [r.name for r in loaded.replicas] == ["lb1", "lb2"]
    assert loaded.heartbeat_timeout == 0.0


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
    use_backend streams if { path_beg /stream/ }
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
    assert lines.index("use_backend streams if { path_beg /stream/ }") < \
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


def test_skews_are_valid_emulate_skew_arguments_and_distinct():
    from sbft_ryu.agent import cli, skew
    names = [f"lb{i}" for i in range(1, topo.MAX_HOSTS_PER_ROLE + 1)]
    assert topo.MAX_HOSTS_PER_ROLE == 9
    assert sorted(topo.SKEWS) == names  # one per replica the topology can have
    assert (topo.SKEWS["lb1"], topo.SKEWS["lb2"]) == ("0:-50000", "1000000007:37000")
    parsed = {name: skew.parse_skew(value) for name, value in topo.SKEWS.items()}
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


# --- Lab: the controller's config file ------------------------------------------------------


class ConfigWritten(Exception):
    pass


def lab_config(tmp_path, monkeypatch, **kwargs):
    """The sbft.conf Lab.start writes (start_ryu is stopped before anything runs)."""
    def start_ryu(rundir, ofp_port, wsapi_port, config_path=None, extra_args=()):
        raise ConfigWritten(config_path)
    monkeypatch.setattr(topo, "start_ryu", start_ryu)
    lab = topo.Lab(rundir=str(tmp_path), **kwargs)
    with pytest.raises(ConfigWritten) as info:
        lab.start()
    assert info.value.args[0] == str(tmp_path / "sbft.conf")
    return (tmp_path / "sbft.conf").read_text(encoding="utf-8")


def test_lab_gives_a_generous_startup_grace_unless_told(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, lbs=2)
    assert text == topo.sbft_config_text(topo.plan(2, 2, 1), "startup_grace = 10\n")
    assert load_text(tmp_path, text).startup_grace == 10.0


def test_lab_keeps_the_extra_options_after_the_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, sbft_extra="mode = active\n")
    assert text.endswith("startup_grace = 10\nmode = active\n")
    loaded = load_text(tmp_path, text)
    assert (loaded.startup_grace, loaded.mode) == (10.0, "active")


def test_lab_takes_a_given_startup_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, sbft_extra="startup_grace = 0.5\n")
    assert text == topo.sbft_config_text(topo.plan(3, 2, 1), "startup_grace = 0.5\n")
    assert text.count("startup_grace") == 1


def test_lab_baseline_config_has_no_replicas_and_no_grace(tmp_path, monkeypatch):
    text = lab_config(tmp_path, monkeypatch, vip_mode="keepalived")
    assert text == "[sbft]\nreplica =\n"


def test_backend_haproxy_cfg():
    backend = topo.plan(3, 2, 1)["backends"][1]
    text = topo.backend_haproxy_cfg(backend)
    lines = [line.strip() for line in text.splitlines()]
    assert "bind 10.0.0.22:8080" in lines
    assert 'lf-string "b2 %[path]\\n"' in text
