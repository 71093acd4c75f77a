"""Tests for sbft_ryu.agent.cli: argument parsing, --print-rules, and the Agent's pure parts."""

import json
import logging
import select
import signal
import socket

import pytest

from sbft_ryu.agent import cli, heartbeat, iptables

REQUIRED = ["--name", "lb1", "--controller", "http://10.254.0.254:8080"]


@pytest.fixture
def root_logging():
    """main() may call logging.basicConfig: put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_defaults():
    config, print_rules = cli.parse_args(REQUIRED)
    assert print_rules is False
    assert config == cli.AgentConfig(name="lb1", controller="http://10.254.0.254:8080")
    assert (config.service_port, config.queue_num, config.interval) == (5555, 1, None)
    assert (config.iptables, config.verdict_cache) == (True, "role")
    assert (config.http_timeout, config.vip, config.probe_path) == (0.25, None, "")
    assert (config.probe_interval, config.probe_timeout, config.log_level) == (0.1, 0.1, "INFO")
    assert config.notify_port == 5556


def test_every_option():
    config, print_rules = cli.parse_args(REQUIRED + [
        "--service-port", "8080", "--queue-num", "0", "--interval", "0.1",
        "--http-timeout", "0.5", "--vip", "10.0.0.100", "--probe-path", "/up",
        "--probe-interval", "0.2", "--probe-timeout", "0.3", "--notify-port", "6000",
        "--no-iptables", "--verdict-cache", "none", "--print-rules", "--log-level", "DEBUG"])
    assert print_rules is True
    assert config == cli.AgentConfig(
        name="lb1", controller="http://10.254.0.254:8080", service_port=8080, queue_num=0,
        interval=0.1, http_timeout=0.5, vip="10.0.0.100", probe_path="/up", probe_interval=0.2,
        probe_timeout=0.3, iptables=False, verdict_cache="none", notify_port=6000,
        log_level="DEBUG")


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_notify_port_bounds_are_inclusive_and_zero_disables(port):
    assert cli.parse_args(REQUIRED + ["--notify-port", port])[0].notify_port == int(port)


@pytest.mark.parametrize("port", ["-1", "65536", "udp", "55.5"])
def test_bad_notify_port_is_an_argparse_error(port, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--notify-port", port])
    assert info.value.code == 2
    assert "--notify-port" in capsys.readouterr().err


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_verdict_cache_choices(cache):
    assert cli.parse_args(REQUIRED + ["--verdict-cache", cache])[0].verdict_cache == cache
    assert cli.parse_args(REQUIRED + [f"--verdict-cache={cache}"])[0].verdict_cache == cache


def test_verdict_cache_choices_are_the_caches_of_the_rules():
    assert cli.AgentConfig("lb1", "http://x:1").verdict_cache == "role"
    assert iptables.CACHES == ("role", "connection", "none")


@pytest.mark.parametrize("cache", ["Role", "conn", "off", "", "fast"])
def test_bad_verdict_cache_is_an_argparse_error(cache, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--verdict-cache", cache])
    assert info.value.code == 2
    assert "--verdict-cache" in capsys.readouterr().err


def test_no_fast_path_is_gone(capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--no-fast-path"])
    assert info.value.code == 2
    assert "--no-fast-path" in capsys.readouterr().err
    assert not hasattr(cli.parse_args(REQUIRED)[0], "fast_path")


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_no_iptables_and_verdict_cache_are_independent(cache):
    config = cli.parse_args(REQUIRED + ["--no-iptables", "--verdict-cache", cache])[0]
    assert (config.iptables, config.verdict_cache) == (False, cache)
    config = cli.parse_args(REQUIRED + ["--verdict-cache", cache])[0]
    assert (config.iptables, config.verdict_cache) == (True, cache)
    assert cli.parse_args(REQUIRED + ["--no-iptables"])[0].verdict_cache == "role"


def test_config_is_frozen():
    config, _ = cli.parse_args(REQUIRED)
    with pytest.raises(AttributeError):
        config.queue_num = 2


@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc", "55.5"])
def test_bad_service_port_is_an_argparse_error(port, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--service-port", port])
    assert info.value.code == 2
    assert "--service-port" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["1", "65535"])
def test_port_bounds_are_inclusive(port):
    assert cli.parse_args(REQUIRED + ["--service-port", port])[0].service_port == int(port)


@pytest.mark.parametrize("option", ["--interval", "--http-timeout", "--probe-interval",
                                    "--probe-timeout"])
@pytest.mark.parametrize("value", ["-1", "0", "60.5", "nan", "inf", "soon"])
def test_bad_seconds_are_argparse_errors(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + [option, value])
    assert info.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("queue", ["-1", "65536", "x"])
def test_bad_queue_num_is_an_argparse_error(queue):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--queue-num", queue])
    assert info.value.code == 2


@pytest.mark.parametrize("missing", ["--name", "--controller"])
def test_name_and_controller_are_required(missing):
    argv = list(REQUIRED)
    index = argv.index(missing)
    del argv[index:index + 2]
    with pytest.raises(SystemExit):
        cli.parse_args(argv)


def test_bad_log_level_is_an_argparse_error():
    with pytest.raises(SystemExit):
        cli.parse_args(REQUIRED + ["--log-level", "TRACE"])


def test_print_rules(capsys):
    """--print-rules gives the static rules for --no-iptables operation: nothing switches
    rules on a role change then, so every reply goes to the queue and nothing is dropped at
    the door."""
    assert cli.main(["--name", "lb1", "--controller", "http://x:1", "--print-rules"]) == 0
    out = capsys.readouterr().out
    assert out == ("# static rules for --no-iptables: every reply is verdicted in userspace\n"
                   "iptables -t mangle -A POSTROUTING -p tcp --sport 5555 ! -o lo "
                   "-j NFQUEUE --queue-num 1\n")


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_print_rules_follows_port_and_queue_whatever_the_cache(cache, capsys):
    assert cli.main(["--name", "lb2", "--controller", "http://x:1", "--service-port", "8080",
                     "--queue-num", "4", "--verdict-cache", cache, "--print-rules"]) == 0
    out = capsys.readouterr().out
    assert "--sport 8080" in out and "--queue-num 4" in out
    assert "DROP" not in out and "ACCEPT" not in out and "CONNMARK" not in out


def test_main_with_a_bad_controller_url_fails_cleanly(root_logging, caplog):
    # ControllerClient rejects the URL before any signal handler, rule or queue is touched
    assert cli.main(["--name", "lb1", "--controller", "https://x:1", "--no-iptables"]) == 1
    assert any("fatal" in r.getMessage() and "http://HOST:PORT" in r.getMessage()
               for r in caplog.records)


# --- Agent: the parts that need no root --------------------------------------------------

def make_agent(*extra):
    config, _ = cli.parse_args(REQUIRED + list(extra))
    return cli.Agent(config)


def test_agent_wires_config_into_its_parts():
    agent = make_agent("--service-port", "8080", "--queue-num", "3", "--vip", "10.0.0.100",
                       "--probe-path", "/up")
    assert agent.spec == iptables.RuleSpec(8080, 3)
    assert agent.spec.cache == "role"
    assert agent.queue.queue_num == 3
    assert agent.queue.state is agent.state
    assert (agent.probe.host, agent.probe.port, agent.probe.path) == ("10.0.0.100", 8080, "/up")
    assert agent.state.primary is False


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_agent_spec_carries_the_verdict_cache(cache):
    agent = make_agent("--service-port", "8080", "--queue-num", "3", "--verdict-cache", cache)
    assert agent.spec == iptables.RuleSpec(8080, 3, cache)
    assert agent.rules is None  # installed by run()


def test_agent_counters_before_and_after_heartbeats():
    agent = make_agent()
    # kernel counters are zero until the first read (and stay so with --no-iptables)
    assert agent.kernel == {"ingress_dropped": 0, "kernel_accepted": 0}
    assert agent.counters() == {"accepted": 0, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 0, "ingress_dropped": 0,
                                "kernel_accepted": 0, "probe_failures": 0,
                                "controller_failures": 0}
    agent.heartbeats = heartbeat.Heartbeats(None, agent.state, agent.probe, agent.counters)
    agent.heartbeats.failures = 4
    agent.probe.failures = 2
    agent.queue.counters[0] = 7
    agent.kernel = {"ingress_dropped": 12, "kernel_accepted": 15}
    assert agent.counters() == {"accepted": 7, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 0, "ingress_dropped": 12,
                                "kernel_accepted": 15, "probe_failures": 2,
                                "controller_failures": 4}


def test_agent_counters_are_a_fresh_dict_each_time():
    agent = make_agent()
    agent.kernel = {"ingress_dropped": 1, "kernel_accepted": 2}
    counters = agent.counters()
    counters["ingress_dropped"] = 99
    assert agent.kernel["ingress_dropped"] == 1
    assert agent.counters()["ingress_dropped"] == 1


def test_agent_counters_are_accepted_by_the_controller_parser():
    rest = pytest.importorskip("sbft_ryu.rest")
    agent = make_agent()
    agent.kernel = {"ingress_dropped": 12, "kernel_accepted": 15}
    body = {"seq": 0, "service_ok": True, "counters": agent.counters()}
    assert rest.parse_heartbeat(json.dumps(body).encode())[2] == agent.counters()


def test_agent_observe_learns_the_vip_from_the_controller():
    agent = make_agent()
    agent._observe()  # no heartbeats yet: nothing to learn
    assert agent.probe.host is None
    agent.heartbeats = heartbeat.Heartbeats(None, agent.state, agent.probe, agent.counters)
    agent.heartbeats.answer = {"role": "backup", "vip": "10.0.0.100"}
    agent._observe()
    assert agent.probe.host == "10.0.0.100"
    agent.heartbeats.answer = {"role": "backup", "vip": "10.0.0.200"}
    agent._observe()
    assert agent.probe.host == "10.0.0.100"  # learned once


def test_agent_observe_keeps_a_configured_vip():
    agent = make_agent("--vip", "10.1.1.1")
    agent.heartbeats = heartbeat.Heartbeats(None, agent.state, agent.probe, agent.counters)
    agent.heartbeats.answer = {"vip": "10.0.0.100"}
    agent._observe()
    assert agent.probe.host == "10.1.1.1"


class KernelRules:
    def __init__(self, value):
        self.value = value
        self.reads = 0

    def kernel_counters(self):
        self.reads += 1
        if isinstance(self.value, Exception):
            raise self.value
        return dict(self.value)


def test_agent_observe_reads_kernel_counters_and_survives_errors():
    agent = make_agent()
    agent.rules = KernelRules({"ingress_dropped": 3, "kernel_accepted": 12})
    agent._observe()
    assert agent.kernel == {"ingress_dropped": 3, "kernel_accepted": 12}
    assert agent.counters()["kernel_accepted"] == 12
    agent.rules.value = {"ingress_dropped": 4, "kernel_accepted": 13}
    agent._observe()  # rate-limited: within KERNEL_COUNTERS_EVERY_S of the last read
    assert agent.rules.reads == 1
    assert agent.kernel["kernel_accepted"] == 12
    agent._kernel_read_at -= cli.KERNEL_COUNTERS_EVERY_S
    agent._observe()
    assert agent.rules.reads == 2
    assert agent.kernel == {"ingress_dropped": 4, "kernel_accepted": 13}
    agent.rules = KernelRules(RuntimeError("iptables gone"))
    agent._kernel_read_at = 0.0
    agent._observe()  # must not raise
    assert agent.rules.reads == 1
    assert agent.kernel == {"ingress_dropped": 4, "kernel_accepted": 13}  # the last good read


def test_agent_observe_reads_no_kernel_counters_without_rules():
    agent = make_agent("--no-iptables")
    agent._observe()
    assert agent.kernel == {"ingress_dropped": 0, "kernel_accepted": 0}


# --- the nudge socket --------------------------------------------------------------------

def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_wakeup_socket_is_none_when_disabled():
    assert make_agent("--notify-port", "0")._wakeup_socket() is None


def test_wakeup_socket_is_a_non_blocking_udp_socket_on_every_address():
    port = free_udp_port()
    sock = make_agent("--notify-port", str(port))._wakeup_socket()
    try:
        assert sock.type == socket.SOCK_DGRAM
        assert sock.getsockname() == ("0.0.0.0", port)
        assert sock.getblocking() is False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"sbft-nudge", ("127.0.0.1", port))
        assert select.select([sock], [], [], 1.0)[0] == [sock]
        assert sock.recv(64) == b"sbft-nudge"
        with pytest.raises(BlockingIOError):
            sock.recv(64)
    finally:
        sock.close()


def test_wakeup_socket_on_a_busy_port_raises():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        with pytest.raises(OSError):
            make_agent("--notify-port", str(busy.getsockname()[1]))._wakeup_socket()


def test_run_hands_the_wakeup_socket_and_the_cache_to_the_heartbeats(monkeypatch, caplog):
    """Agent.run with --no-iptables and the queue replaced: no root needed."""
    caplog.set_level(logging.INFO, logger="sbft.agent")
    port = free_udp_port()
    agent = make_agent("--no-iptables", "--verdict-cache", "connection", "--notify-port",
                       str(port), "--controller", "http://127.0.0.1:1", "--interval", "0.01")
    handlers = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.update(
        {signum: handler}))
    seen = {}

    def serve(stop):
        beats = agent.heartbeats
        seen.update(wakeup=beats.wakeup, connection_cache=beats.connection_cache,
                    rules=beats.rules, interval=beats.fixed_interval)
        seen["address"] = beats.wakeup.getsockname()
        stop.set()
    monkeypatch.setattr(agent.queue, "serve", serve)
    assert agent.run() == 0
    assert seen["address"] == ("0.0.0.0", port)
    assert (seen["connection_cache"], seen["rules"], seen["interval"]) == (True, None, 0.01)
    assert seen["wakeup"].fileno() == -1  # closed on the way out
    assert set(handlers) == {signal.SIGTERM, signal.SIGINT}
    [started] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started")]
    # no rules installed: nothing is cached in the kernel whatever was asked for
    assert started == (f"started: queue 1, service port 5555, controller http://127.0.0.1:1, "
                       f"iptables left to the operator, verdict cache none, nudges on udp/{port}")


def test_run_without_a_notify_port_has_no_wakeup_socket(monkeypatch):
    agent = make_agent("--no-iptables", "--notify-port", "0",
                       "--controller", "http://127.0.0.1:1", "--interval", "0.01")
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    seen = {}

    def serve(stop):
        seen["wakeup"] = agent.heartbeats.wakeup
        seen["connection_cache"] = agent.heartbeats.connection_cache
        stop.set()
    monkeypatch.setattr(agent.queue, "serve", serve)
    assert agent.run() == 0
    assert seen == {"wakeup": None, "connection_cache": False}


class FakeRules:
    """Stands in for iptables.Rules in Agent.run: a context manager that records its spec."""

    made = []

    def __init__(self, spec):
        self.spec = spec
        self.entered = self.exited = False
        FakeRules.made.append(self)

    def __enter__(self):
        self.entered = True
        return self

    def __exit__(self, *exc):
        self.exited = True


@pytest.mark.parametrize("cache, connection_cache", [("role", False), ("connection", True),
                                                     ("none", False)])
def test_run_installs_the_rules_of_the_cache_and_tells_the_heartbeats(
        monkeypatch, caplog, cache, connection_cache):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    monkeypatch.setattr(FakeRules, "made", [])
    monkeypatch.setattr(iptables, "Rules", FakeRules)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    agent = make_agent("--verdict-cache", cache, "--notify-port", "0", "--service-port", "8080",
                       "--queue-num", "2", "--controller", "http://127.0.0.1:1",
                       "--interval", "0.01")
    seen = {}

    def serve(stop):
        beats = agent.heartbeats
        seen.update(rules=beats.rules, connection_cache=beats.connection_cache,
                    agent_rules=agent.rules)
        stop.set()
    monkeypatch.setattr(agent.queue, "serve", serve)
    assert agent.run() == 0
    [rules] = FakeRules.made
    assert rules.spec == iptables.RuleSpec(8080, 2, cache)
    assert (rules.entered, rules.exited) == (True, True)
    assert seen == {"rules": rules, "connection_cache": connection_cache, "agent_rules": rules}
    [started] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started")]
    assert started == ("started: queue 2, service port 8080, controller http://127.0.0.1:1, "
                       f"iptables installed, verdict cache {cache}, nudges on udp/off")


def test_kernel_counters_stay_monotonic_across_chain_resets():
    """A role change re-creates the chains, which zeroes the kernel's rule counters."""
    agent = make_agent()
    agent._accumulate({"ingress_dropped": 10, "kernel_accepted": 5})
    agent._accumulate({"ingress_dropped": 15, "kernel_accepted": 2})  # re-created: 2 new
    agent._accumulate({"ingress_dropped": 15, "kernel_accepted": 9})
    assert agent.kernel == {"ingress_dropped": 15, "kernel_accepted": 14}
