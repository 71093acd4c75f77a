"""Tests for sbft_ryu.agent.cli: argument parsing, --print-rules, and the Agent's pure parts."""

import json
import logging
import os
import select
import signal
import socket
import threading
import time

import pytest

from scapy.all import IP, TCP

from sbft_ryu.agent import active, cli, faults, heartbeat, iptables, nfq

REQUIRED = ["--name", "lb1", "--controller", "http://10.254.0.254:8080"]
# as in the lab, tests and benchmarks: --emulate-skew is allowed (test_agent_faults.py: refusal)
pytestmark = pytest.mark.usefixtures("test_faults_allowed")


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
    assert config.emulate_skew is None


def test_every_option():
    config, print_rules = cli.parse_args(REQUIRED + [
        "--service-port", "8080", "--queue-num", "0", "--interval", "0.1",
        "--http-timeout", "0.5", "--vip", "10.0.0.100", "--probe-path", "/up",
        "--probe-interval", "0.2", "--probe-timeout", "0.3", "--notify-port", "6000",
        "--no-iptables", "--verdict-cache", "none", "--emulate-skew", "1000000000:37000",
        "--print-rules", "--log-level", "DEBUG"])
    assert print_rules is True
    assert config == cli.AgentConfig(
        name="lb1", controller="http://10.254.0.254:8080", service_port=8080, queue_num=0,
        interval=0.1, http_timeout=0.5, vip="10.0.0.100", probe_path="/up", probe_interval=0.2,
        probe_timeout=0.3, iptables=False, verdict_cache="none", notify_port=6000,
        emulate_skew="1000000000:37000", log_level="DEBUG")


@pytest.mark.parametrize("value", ["0:0", "1000000000:37000", "3000000000:-12000", "0x10:5"])
def test_emulate_skew_is_kept_as_given(value):
    assert cli.parse_args(REQUIRED + ["--emulate-skew", value])[0].emulate_skew == value
    assert cli.parse_args(REQUIRED + [f"--emulate-skew={value}"])[0].emulate_skew == value


def test_a_negative_isn_skew_needs_the_equals_form():
    # argparse takes "-5:0" for an option; "--emulate-skew=-5:0" is the way to give it
    assert cli.parse_args(REQUIRED + ["--emulate-skew=-5:0"])[0].emulate_skew == "-5:0"
    with pytest.raises(SystemExit):
        cli.parse_args(REQUIRED + ["--emulate-skew", "-5:0"])


@pytest.mark.parametrize("value", ["", "abc", "1:x", "1:2:3", "1.5:0", ":"])
def test_bad_emulate_skew_is_an_argparse_error(value, capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(REQUIRED + ["--emulate-skew", value])
    assert info.value.code == 2
    assert (f"argument --emulate-skew: expected ISN:TS_MS integers, got {value}"
            in capsys.readouterr().err)


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
    """--print-rules gives the static rules for --no-iptables operation, per mode: nothing
    switches rules on a role change then, so every reply goes to the queue and nothing is
    dropped at the door; in active mode the client's packets go to the queue too (first)."""
    assert cli.main(["--name", "lb1", "--controller", "http://x:1", "--print-rules"]) == 0
    out = capsys.readouterr().out
    assert out == (
        "# static rules for --no-iptables, passive mode: every reply is verdicted in userspace\n"
        "iptables -t mangle -A POSTROUTING -p tcp --sport 5555 ! -o lo -j NFQUEUE --queue-num 1\n"
        "# static rules for --no-iptables, active mode: every reply is verdicted in userspace\n"
        "iptables -t raw -A PREROUTING -p tcp --dport 5555 ! -i lo -j NFQUEUE --queue-num 1\n"
        "iptables -t mangle -A POSTROUTING -p tcp --sport 5555 ! -o lo -j NFQUEUE --queue-num 1\n")


@pytest.mark.parametrize("cache", ["role", "connection", "none"])
def test_print_rules_prints_the_operator_rules_of_every_mode(cache, capsys):
    assert cli.main(["--name", "lb1", "--controller", "http://x:1", "--service-port", "8080",
                     "--queue-num", "3", "--verdict-cache", cache, "--print-rules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = []
    for mode in iptables.MODES:
        expected.append(f"# static rules for --no-iptables, {mode} mode: every reply is "
                        "verdicted in userspace")
        expected += [f"iptables -t {table} -A " + " ".join(rule) for table, rule in
                     iptables.operator_rules(iptables.RuleSpec(8080, 3, cache, mode))]
    assert lines == expected
    assert [line for line in lines if line.startswith("#")] == [
        f"# static rules for --no-iptables, {mode} mode: every reply is verdicted in userspace"
        for mode in ("passive", "active")]


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
    assert (agent.spec.cache, agent.spec.mode) == ("role", "passive")
    assert agent.runner.queue_num == 3
    assert isinstance(agent.runner, nfq.QueueRunner)
    assert isinstance(agent.queue, nfq.ReplyQueue)  # passive until the controller says
    assert agent.runner.handler is agent.queue
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
    agent.heartbeats.answer = heartbeat.Answer.parse({"role": "backup", "vip": "10.0.0.100"})
    agent._observe()
    assert agent.probe.host == "10.0.0.100"
    agent.heartbeats.answer = heartbeat.Answer.parse({"role": "backup", "vip": "10.0.0.200"})
    agent._observe()
    assert agent.probe.host == "10.0.0.100"  # learned once


def test_agent_observe_keeps_a_configured_vip():
    agent = make_agent("--vip", "10.1.1.1")
    agent.heartbeats = heartbeat.Heartbeats(None, agent.state, agent.probe, agent.counters)
    agent.heartbeats.answer = heartbeat.Answer.parse({"vip": "10.0.0.100"})
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
                    rules=beats.rules, interval=beats.fixed_interval, on_mode=beats.on_mode)
        seen["address"] = beats.wakeup.getsockname()
        stop.set()
    monkeypatch.setattr(agent.runner, "serve", serve)
    assert agent.run() == 0
    assert seen["address"] == ("0.0.0.0", port)
    assert (seen["connection_cache"], seen["rules"], seen["interval"]) == (True, None, 0.01)
    assert seen["on_mode"] == agent.set_mode  # the controller's mode reaches the agent
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
    monkeypatch.setattr(agent.runner, "serve", serve)
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
    monkeypatch.setattr(agent.runner, "serve", serve)
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


# --- set_mode: the controller's mode swaps the packet handler, then the rules ---------------

SECRET = bytes(range(16))
ACTIVE = {"role": "backup", "mode": "active", "active": {"secret": SECRET.hex(), "wscale": 9}}
PASSIVE = {"role": "backup", "mode": "passive"}


class RecordingRunner(nfq.QueueRunner):
    """A QueueRunner that records every handler swap in a shared ``events`` list."""

    def __init__(self, queue_num, handler, events):
        self.events = events
        super().__init__(queue_num, handler)

    @property
    def handler(self):
        return self._handler

    @handler.setter
    def handler(self, value):
        self.events.append(("handler", type(value).__name__))
        self._handler = value


class ModeRules:
    """Stands in for iptables.Rules under set_mode (and set_role, for the heartbeat tests):
    records each call in ``events`` with the packet handler the runner had at that moment."""

    def __init__(self, agent, events, fail=None):
        self.agent = agent
        self.events = events
        self.fail = dict(fail or {})  # mode -> exception raised once
        self.primary = False
        self.mark = None
        self.mode = "passive"
        self.voting = False

    def set_mode(self, mode, voting=False):
        self.events.append(("rules", mode, type(self.agent.runner.handler).__name__))
        exc = self.fail.pop(mode, None)
        if exc is not None:
            raise exc
        self.mode, self.voting = mode, voting

    def set_role(self, primary, mark=None):
        self.events.append(("role", primary, type(self.agent.runner.handler).__name__))
        self.primary, self.mark = primary, None


def mode_agent(*extra, fail=None):
    agent = make_agent(*extra)
    events = []
    agent.runner = RecordingRunner(agent.config.queue_num, agent.queue, events)
    events.clear()
    agent.rules = ModeRules(agent, events, fail)
    return agent, events


def test_set_mode_active_swaps_the_handler_before_the_rules():
    agent, events = mode_agent("--service-port", "8080")
    passive = agent.queue
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert events == [("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue")]
    assert isinstance(agent.queue, nfq.ActiveQueue)
    assert agent.runner.handler is agent.queue is not passive
    assert agent.queue.state is agent.state
    translator = agent.queue.translator
    assert isinstance(translator, active.Translator)
    assert (translator.secret, translator.port, translator.shared_ws) == (SECRET, 8080, 9)
    assert agent.queue.adapter is nfq.IDENTITY  # no --emulate-skew


def test_set_mode_passive_swaps_back_before_the_rules():
    agent, events = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    assert events == [("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue"),
                      ("handler", "ReplyQueue"), ("rules", "passive", "ReplyQueue")]
    assert isinstance(agent.queue, nfq.ReplyQueue)
    assert agent.runner.handler is agent.queue
    assert agent.queue.state is agent.state


def test_set_mode_active_twice_builds_a_fresh_translator():
    agent, _ = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    first = agent.queue
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert agent.queue is not first and agent.queue.translator is not first.translator


def test_set_mode_active_without_a_wscale_uses_7():
    agent, _ = mode_agent()
    agent.set_mode(heartbeat.Answer.parse({"mode": "active", "active": {"secret": "ab" * 32}}))
    assert (agent.queue.translator.secret, agent.queue.translator.shared_ws) == (b"\xab" * 32, 7)


@pytest.mark.parametrize("value, isn, ts", [
    ("1000000000:37000", 1000000000, 37000),
    ("3000000000:-12000", 3000000000, 2 ** 32 - 12000),
    ("0:0", 0, 0),
])
def test_set_mode_active_with_an_emulated_skew(value, isn, ts, caplog):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    agent, _ = mode_agent("--emulate-skew", value, "--service-port", "8080")
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    emulated = agent.queue.adapter.skew
    assert isinstance(emulated, faults.Skew)
    assert (emulated.isn, emulated.ts, emulated.port) == (isn, ts, 8080)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("mode")] == [
        f"mode active (emulating skew {value})"]
    agent.set_mode(heartbeat.Answer.parse(PASSIVE))  # the skew only matters in active mode
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("mode")][-1] \
        == "mode passive"


@pytest.mark.parametrize("answer", [
    {"mode": "active"},
    {"mode": "active", "active": None},
    {"mode": "active", "active": {}},
    {"mode": "active", "active": {"wscale": 7}},
    {"mode": "active", "active": {"secret": "", "wscale": 7}},
    {"mode": "active", "active": {"secret": "not hex", "wscale": 7}},
    {"mode": "turbo"},
    {"mode": None},
    {"role": "backup"},
], ids=["no-block", "null-block", "empty-block", "no-secret", "empty-secret", "bad-hex",
        "unknown-mode", "null-mode", "no-mode"])
def test_set_mode_rejects_a_bad_answer_and_changes_nothing(answer):
    agent, events = mode_agent()
    before = agent.queue
    with pytest.raises(ValueError):
        agent.set_mode(heartbeat.Answer.parse(answer))
    assert events == []  # neither the handler nor the rules
    assert agent.queue is before and agent.runner.handler is before


def test_set_mode_error_messages():
    agent, _ = mode_agent()
    with pytest.raises(ValueError, match="no active-mode secret"):
        agent.set_mode(heartbeat.Answer.parse({"mode": "active", "active": {"wscale": 7}}))
    with pytest.raises(ValueError, match="unknown mode 'turbo' from the controller"):
        agent.set_mode(heartbeat.Answer.parse({"mode": "turbo"}))


def test_set_mode_without_rules_only_swaps_the_handler():
    agent = make_agent("--no-iptables")
    assert agent.rules is None
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert isinstance(agent.runner.handler, nfq.ActiveQueue)
    assert agent.runner.handler is agent.queue


def test_set_mode_propagates_a_failure_of_the_rules():
    """The rules refused the new mode: the previous handler is swapped back (the kernel still
    has the old mode's chains), then the error propagates."""
    agent, events = mode_agent(fail={"active": RuntimeError("iptables-restore: exit 4")})
    before = agent.queue
    with pytest.raises(RuntimeError, match="exit 4"):
        agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert events == [("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue"),
                      ("handler", "ReplyQueue")]
    assert agent.queue is before and agent.runner.handler is before


def test_a_failed_switch_back_to_passive_keeps_the_active_handler():
    agent, events = mode_agent(fail={"passive": RuntimeError("iptables-restore: exit 4")})
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    current = agent.queue
    with pytest.raises(RuntimeError):
        agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    assert events[2:] == [("handler", "ReplyQueue"), ("rules", "passive", "ReplyQueue"),
                          ("handler", "ActiveQueue")]
    assert agent.queue is current and agent.runner.handler is current
    assert agent.rules.mode == "active"


def test_set_mode_retires_the_previous_handler_through_the_runner():
    agent, _ = mode_agent()
    swaps = []
    swap = agent.runner.swap
    agent.runner.swap = lambda handler: swaps.append(handler) or swap(handler)
    passive = agent.queue
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert swaps == [agent.queue]
    agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    assert len(swaps) == 2 and swaps[1] is agent.queue is not passive


def test_set_mode_swaps_the_handler_back_through_the_runner_on_failure():
    agent, _ = mode_agent(fail={"active": RuntimeError("iptables-restore: exit 4")})
    swaps = []
    swap = agent.runner.swap
    agent.runner.swap = lambda handler: swaps.append(handler) or swap(handler)
    passive = agent.queue
    with pytest.raises(RuntimeError):
        agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert [type(h).__name__ for h in swaps] == ["ActiveQueue", "ReplyQueue"]
    assert swaps[1] is passive


def test_set_mode_with_the_real_rules_restores_the_active_chains():
    agent = make_agent("--service-port", "8080", "--queue-num", "2")
    restores = []
    agent.rules = iptables.Rules(agent.spec, run=lambda argv, input=None, **kw: restores.append(
        (argv, input, type(agent.runner.handler).__name__)))
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert restores == [(["iptables-restore", "--noflush"], iptables.restore_input(
        iptables.RuleSpec(8080, 2, "role", "active")), "ActiveQueue")]
    assert agent.rules.spec.mode == "active"
    assert agent.spec.mode == "passive"  # the agent's own spec is the one it started with


def test_counters_follow_the_current_handler():
    agent, _ = mode_agent()
    agent.kernel = {"ingress_dropped": 1, "kernel_accepted": 2}
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    counters = agent.counters()
    assert counters == {**{name: 0 for name in active.COUNTER_NAMES + active.GAUGE_NAMES},
                        "connections": 0,
                        "callback_errors": 0, "ingress_dropped": 1, "kernel_accepted": 2,
                        "probe_failures": 0, "controller_failures": 0}
    agent.queue.translator.counters[0] = 5
    agent.queue.errors = 3
    assert (agent.counters()["translated_in"], agent.counters()["callback_errors"]) == (5, 3)
    agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    assert set(agent.counters()) == {"accepted", "dropped", "rst_dropped", "malformed",
                                     "callback_errors", "ingress_dropped", "kernel_accepted",
                                     "probe_failures", "controller_failures"}


def test_active_counters_are_accepted_by_the_controller_parser():
    rest = pytest.importorskip("sbft_ryu.rest")
    agent, _ = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    body = {"seq": 0, "service_ok": True, "counters": agent.counters()}
    assert rest.parse_heartbeat(json.dumps(body).encode())[2] == agent.counters()


class ScriptedClient:
    def __init__(self, *answers):
        self.answers = list(answers)

    def heartbeat(self, body):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def agent_beats(agent, *answers):
    return heartbeat.Heartbeats(ScriptedClient(*answers), agent.state, agent.probe,
                                agent.counters, agent.rules, on_mode=agent.set_mode)


def test_heartbeats_switch_the_agent_to_active_before_a_promotion():
    agent, events = mode_agent()
    beats = agent_beats(agent, {**PASSIVE, "epoch": 1},
                        {**ACTIVE, "role": "primary", "epoch": 2})
    beats.beat(0)
    beats.beat(1)
    assert events == [("handler", "ReplyQueue"), ("rules", "passive", "ReplyQueue"),
                      ("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue"),
                      ("role", True, "ActiveQueue")]
    assert agent.state.primary is True


def test_heartbeats_retry_a_failed_mode_switch():
    agent, events = mode_agent(fail={"active": RuntimeError("iptables-restore: exit 4")})
    beats = agent_beats(agent, {**ACTIVE, "epoch": 1})
    with pytest.raises(RuntimeError):
        beats.beat(0)
    assert isinstance(agent.runner.handler, nfq.ReplyQueue)  # swapped back
    beats.beat(1)
    assert events == [("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue"),
                      ("handler", "ReplyQueue"),
                      ("handler", "ActiveQueue"), ("rules", "active", "ActiveQueue")]
    assert beats.mode == ("active", json.dumps(ACTIVE["active"], sort_keys=True))
    assert agent.rules.mode == "active"
    assert isinstance(agent.runner.handler, nfq.ActiveQueue)


def test_a_failed_switch_to_active_then_back_to_passive_leaves_a_passive_agent():
    agent, _ = mode_agent(fail={"active": RuntimeError("iptables-restore: exit 4")})
    beats = agent_beats(agent, {**PASSIVE, "epoch": 1}, {**ACTIVE, "epoch": 2},
                        {**PASSIVE, "epoch": 3})
    beats.beat(0)
    with pytest.raises(RuntimeError):
        beats.beat(1)
    beats.beat(2)
    assert isinstance(agent.runner.handler, nfq.ReplyQueue)
    assert agent.rules.mode == "passive"


class HeldPacket:
    """A client packet as the queue sees it (arrived: the PREROUTING hook)."""

    hook = 0

    def __init__(self, payload):
        self.payload = payload
        self.calls = []

    def get_payload(self):
        return self.payload

    def accept(self):
        self.calls.append("accept")

    def drop(self):
        self.calls.append("drop")

    def set_payload(self, payload):
        self.calls.append("set_payload")


class IdleNetfilterQueue:
    """netfilterqueue.NetfilterQueue as QueueRunner.serve uses it, with no packet ever: the
    runner only ticks."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()

    def bind(self, queue_num, callback, max_len=None, mode=None, range=None, sock_len=None):
        pass

    def get_fd(self):
        return self.read_fd

    def run(self, block=True):
        pass

    def unbind(self):
        os.close(self.read_fd)
        os.close(self.write_fd)


@pytest.fixture
def serving(monkeypatch):
    """Runs an agent's QueueRunner.serve (with IdleNetfilterQueue) in a thread: the packet
    thread's ticks, as in Agent.run."""
    import netfilterqueue
    monkeypatch.setattr(netfilterqueue, "NetfilterQueue", IdleNetfilterQueue)
    started = []

    def start(agent, poll_s=0.01):
        stop = threading.Event()
        errors = []

        def target():
            try:
                agent.runner.serve(stop, poll_s=poll_s)
            except BaseException as exc:  # reported to the test
                errors.append(exc)
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        started.append((stop, thread))
        return errors
    yield start
    for stop, thread in started:
        stop.set()
        thread.join(2.0)
        assert not thread.is_alive()


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


CLIENT = IP(src="10.0.0.31", dst="10.0.0.100")


def hold_a_packet(queue):
    """A SYN (accepted) and the client's ACK, held while our SYN-ACK has not gone out."""
    syn = HeldPacket(bytes(CLIENT / TCP(sport=40000, dport=5555, flags="S", seq=1000)))
    ack = HeldPacket(bytes(CLIENT / TCP(sport=40000, dport=5555, flags="A", seq=1001, ack=1)))
    queue.callback(syn)
    queue.callback(ack)
    assert (syn.calls, ack.calls) == (["accept"], [])
    return ack


def test_switching_away_from_active_gives_held_packets_a_verdict(serving):
    """The retired ActiveQueue is closed by the packet thread at its next tick: what it held
    is dropped (the client retransmits) instead of staying in the kernel queue."""
    agent, _ = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    ack = hold_a_packet(agent.runner.handler)
    errors = serving(agent)
    agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    wait_for(lambda: ack.calls)
    assert ack.calls == ["drop"]
    assert errors == []


def test_switching_to_a_new_secret_gives_held_packets_a_verdict(serving):
    agent, _ = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    old = agent.runner.handler
    ack = hold_a_packet(old)
    errors = serving(agent)
    agent.set_mode(heartbeat.Answer.parse({**ACTIVE, "active": {"secret": "ff" * 16, "wscale": 9}}))
    assert agent.runner.handler is not old
    wait_for(lambda: ack.calls)
    assert ack.calls == ["drop"]
    assert errors == []


def test_a_failed_switch_away_from_active_keeps_the_held_packets_of_the_current_handler(
        serving):
    """The switch fails before the packet thread ticks: the ActiveQueue is current again and
    is not closed; its held packet waits for the SYN-ACK (or HOLD_S) as before."""
    agent, _ = mode_agent(fail={"passive": RuntimeError("iptables-restore: exit 4")})
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    current = agent.runner.handler
    ack = hold_a_packet(current)
    with pytest.raises(RuntimeError):
        agent.set_mode(heartbeat.Answer.parse(PASSIVE))  # swapped out and back before any tick
    assert agent.runner.handler is current
    closed = []
    current.close = lambda: closed.append(current)
    errors = serving(agent)
    time.sleep(0.1)  # ten ticks
    assert closed == [] and ack.calls == []
    assert errors == []


class ClosedThenFailingRules(ModeRules):
    """set_mode for ``mode`` fails, but only after the packet thread closed the handler that
    was swapped out (iptables-restore takes a while; the runner ticks every poll_s)."""

    def __init__(self, agent, events, mode, closed):
        super().__init__(agent, events)
        self.failing_mode = mode
        self.closed = closed

    def set_mode(self, mode, voting=False):
        if mode == self.failing_mode:
            self.closed.wait(0.5)  # (a runner that never closes it passes the test)
            raise RuntimeError("iptables-restore: exit 4")
        super().set_mode(mode)


def test_a_failed_switch_away_from_active_after_a_tick_keeps_the_connections(serving):
    agent, events = mode_agent()
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    current = agent.runner.handler
    closed = threading.Event()
    close = current.close
    current.close = lambda: (close(), closed.set())
    syn = HeldPacket(bytes(CLIENT / TCP(sport=40000, dport=5555, flags="S", seq=1000)))
    current.callback(syn)
    assert len(current.translator.connections) == 1
    agent.rules = ClosedThenFailingRules(agent, events, "passive", closed)
    serving(agent)
    with pytest.raises(RuntimeError):
        agent.set_mode(heartbeat.Answer.parse(PASSIVE))
    assert agent.runner.handler is current  # swapped back
    assert len(current.translator.connections) == 1


def test_connection_cache_primary_promoted_in_active_mode_can_go_back_to_passive_and_demote():
    agent = make_agent("--verdict-cache", "connection")
    restores = []
    agent.rules = iptables.Rules(agent.spec, run=lambda argv, input=None, **kwargs:
                                 restores.append(input))
    beats = heartbeat.Heartbeats(
        ScriptedClient({**ACTIVE, "role": "primary", "epoch": 1},
                       {**PASSIVE, "role": "primary", "epoch": 1},
                       {**PASSIVE, "role": "backup", "epoch": 2}),
        agent.state, agent.probe, agent.counters, agent.rules, connection_cache=True,
        on_mode=agent.set_mode)
    beats.beat(0)  # active, then promoted: no mark in effect
    assert (agent.state.primary, agent.state.fast_mark, agent.rules.mark) == (True, None, None)
    assert isinstance(agent.runner.handler, nfq.ActiveQueue)
    beats.beat(1)  # passive again: the mark of the promotion's epoch, rules and userspace
    assert (agent.state.primary, agent.state.fast_mark, agent.rules.mark) == (
        True, iptables.fast_mark(1), iptables.fast_mark(1))
    assert isinstance(agent.runner.handler, nfq.ReplyQueue)
    assert restores[-1] == iptables.restore_input(agent.spec, True, iptables.fast_mark(1))
    beats.beat(2)
    assert (agent.state.role, agent.state.primary, agent.rules.primary) == (
        "backup", False, False)
    assert (agent.state.fast_mark, agent.rules.mark) == (None, None)
    assert restores[-1] == iptables.restore_input(agent.spec, False)
    assert beats.failures == 0


def test_an_agent_follows_the_role_of_a_controller_that_sends_no_mode():
    agent, _ = mode_agent()
    old = {"role": "primary", "epoch": 1, "primary": "lb1", "state": "up"}
    beats = agent_beats(agent, old)
    for seq in range(3):
        try:
            beats.beat(seq)
        except Exception:  # what Heartbeats.run does: count, log, go on
            pass
    assert (agent.state.role, agent.state.primary) == ("primary", True)
