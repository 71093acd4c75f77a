"""Tests for sbft_ryu.agent.cli: argument parsing, --print-rules, and the Agent's pure parts."""

import logging

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
    assert (config.iptables, config.fast_path) == (True, True)
    assert (config.http_timeout, config.vip, config.probe_path) == (0.25, None, "")
    assert (config.probe_interval, config.probe_timeout, config.log_level) == (0.05, 0.1, "INFO")


def test_every_option():
    config, print_rules = cli.parse_args(REQUIRED + [
        "--service-port", "8080", "--queue-num", "0", "--interval", "0.1",
        "--http-timeout", "0.5", "--vip", "10.0.0.100", "--probe-path", "/up",
        "--probe-interval", "0.2", "--probe-timeout", "0.3", "--no-iptables", "--no-fast-path",
        "--print-rules", "--log-level", "DEBUG"])
    assert print_rules is True
    assert config == cli.AgentConfig(
        name="lb1", controller="http://10.254.0.254:8080", service_port=8080, queue_num=0,
        interval=0.1, http_timeout=0.5, vip="10.0.0.100", probe_path="/up", probe_interval=0.2,
        probe_timeout=0.3, iptables=False, fast_path=False, log_level="DEBUG")


def test_no_iptables_and_no_fast_path_are_independent():
    assert cli.parse_args(REQUIRED + ["--no-iptables"])[0].iptables is False
    assert cli.parse_args(REQUIRED + ["--no-iptables"])[0].fast_path is True
    assert cli.parse_args(REQUIRED + ["--no-fast-path"])[0].fast_path is False
    assert cli.parse_args(REQUIRED + ["--no-fast-path"])[0].iptables is True


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
    assert cli.main(["--name", "lb1", "--controller", "http://x:1", "--print-rules"]) == 0
    out = capsys.readouterr().out
    # the chain first: the jump rule needs it to exist
    assert out == ("iptables-restore --noflush <<'EOF'\n"
                   "*mangle\n"
                   ":sbft-out - [0:0]\n"
                   "-A sbft-out -j NFQUEUE --queue-num 1\n"
                   "COMMIT\n"
                   "EOF\n"
                   "iptables -t mangle -A POSTROUTING -p tcp --sport 5555 ! -o lo "
                   "-m comment --comment sbft-agent -j sbft-out\n")


def test_print_rules_follows_port_and_queue(capsys):
    assert cli.main(["--name", "lb2", "--controller", "http://x:1", "--service-port", "8080",
                     "--queue-num", "4", "--print-rules"]) == 0
    spec = iptables.RuleSpec(8080, 4)
    out = capsys.readouterr().out
    assert out == ("iptables-restore --noflush <<'EOF'\n" + iptables.restore_input(spec)
                   + "EOF\niptables -t mangle -A " + " ".join(iptables.jump_rule(spec)) + "\n")


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
    assert agent.queue.queue_num == 3
    assert agent.queue.state is agent.state
    assert (agent.probe.host, agent.probe.port, agent.probe.path) == ("10.0.0.100", 8080, "/up")
    assert agent.state.primary is False


def test_agent_counters_before_and_after_heartbeats():
    agent = make_agent()
    assert agent.counters() == {"accepted": 0, "dropped": 0, "rst_dropped": 0, "malformed": 0,
                                "callback_errors": 0, "fast_path_packets": 0,
                                "probe_failures": 0, "controller_failures": 0}
    agent.heartbeats = heartbeat.Heartbeats(None, agent.state, agent.probe, agent.counters)
    agent.heartbeats.failures = 4
    agent.probe.failures = 2
    agent.kernel_fast_path = 9
    counters = agent.counters()
    assert (counters["controller_failures"], counters["probe_failures"],
            counters["fast_path_packets"]) == (4, 2, 9)


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


def test_agent_observe_reads_kernel_counters_and_survives_errors():
    class Rules:
        def __init__(self, value):
            self.value = value
            self.reads = 0

        def fast_path_packets(self):
            self.reads += 1
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    agent = make_agent()
    agent.rules = Rules(12)
    agent._observe()
    assert agent.kernel_fast_path == 12
    agent._observe()  # rate-limited: within KERNEL_COUNTERS_EVERY_S of the last read
    assert agent.rules.reads == 1
    agent.rules = Rules(RuntimeError("iptables gone"))
    agent._kernel_read_at = 0.0
    agent._observe()  # must not raise
    assert agent.kernel_fast_path == 12
