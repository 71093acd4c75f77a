"""Tests for the voting parts of sbft_ryu.agent.cli: --key-file and --fault, the key file, the
test-only wire tamperer, the vote engine set up by set_mode, and what every heartbeat answer
(on_answer) and the next heartbeat (reports) exchange with the packet thread. No root: the vote
socket and the rules are fakes."""

import socket

import pytest
from scapy.all import IP, TCP, Raw

from sbft_ryu.agent import cli, faults, heartbeat, nfq, vote

REQUIRED = ["--name", "lb2", "--controller", "http://10.254.0.254:8080"]
# the lab's environment: --fault is allowed (test_agent_faults.py: the refusal)
pytestmark = pytest.mark.usefixtures("test_faults_allowed")
KEY = bytes(range(32))
SECRET = bytes(range(16))


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "lb2.key"
    path.write_text(f"  {KEY.hex()}\n", encoding="ascii")
    return str(path)


def make_agent(*extra):
    config, _ = cli.parse_args(REQUIRED + list(extra))
    return cli.Agent(config)


# --- options and the key file ------------------------------------------------------------------

def test_key_file_and_fault_default_to_none():
    config, _ = cli.parse_args(REQUIRED)
    assert (config.key_file, config.fault) == (None, None)
    assert make_agent().key is None and make_agent().faults is None


@pytest.mark.parametrize("fault", faults.FAULTS)
def test_every_fault_is_an_option(fault, key_file):
    config, _ = cli.parse_args(REQUIRED + ["--key-file", key_file, "--fault", fault])
    assert (config.key_file, config.fault) == (key_file, fault)


def test_an_unknown_fault_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(REQUIRED + ["--fault", "crash"])
    assert "--fault" in capsys.readouterr().err


def test_the_key_file_is_read_as_hex(key_file):
    assert cli._read_key(key_file) == KEY
    assert make_agent("--key-file", key_file).key == KEY


@pytest.mark.parametrize("text", ["ab" * 15, "ab" * 65, "not hex at all"])
def test_a_bad_key_file_is_refused(tmp_path, text):
    path = tmp_path / "bad.key"
    path.write_text(text, encoding="ascii")
    with pytest.raises(ValueError):
        cli._read_key(str(path))


def test_a_short_key_names_the_file(tmp_path):
    path = tmp_path / "short.key"
    path.write_text("ab" * 15, encoding="ascii")
    with pytest.raises(ValueError, match="short.key: a key must be 16 to 64 bytes"):
        cli._read_key(str(path))


# --- the tamperer (tests only: a host sending altered replies past its agent) -------------------

def reply(cport, data=b"HTTP/1.0 200 OK\r\n"):
    return bytes(IP(src="10.0.0.100", dst="10.0.0.31", flags="DF") /
                 TCP(sport=5555, dport=cport, flags="PA", seq=1, ack=1) / Raw(data))


def checksums_valid(raw):
    packet = IP(raw)
    rebuilt = packet.copy()
    del rebuilt.chksum
    del rebuilt[TCP].chksum
    rebuilt = IP(bytes(rebuilt))
    return (packet.chksum, packet[TCP].chksum) == (rebuilt.chksum, rebuilt[TCP].chksum)


def test_tamper_alters_the_first_two_data_bytes_and_fixes_the_checksum():
    altered = faults.tamper(reply(40000))
    assert IP(altered)[Raw].load == b"XXTP/1.0 200 OK\r\n"
    assert checksums_valid(altered)


@pytest.mark.parametrize("data", [b"", b"H"])
def test_tamper_leaves_packets_without_two_data_bytes(data):
    packet = bytes(IP(src="10.0.0.100", dst="10.0.0.31") / TCP(sport=5555, dport=1) /
                   Raw(data)) if data else reply(1, b"")[:40]
    assert faults.tamper(packet) == packet


def test_the_tamperer_alters_only_connections_that_begin_after_it_is_armed():
    tamperer = faults.Tamper()
    honest = reply(40001)
    assert tamperer(honest) == honest  # not armed: seen, kept honest
    tamperer.arm()  # (SIGUSR1)
    assert tamperer(honest) == honest
    assert IP(tamperer(reply(40002)))[Raw].load.startswith(b"XX")


def test_only_the_tamper_wire_fault_makes_a_tamperer(key_file):
    assert isinstance(make_agent("--fault", "tamper-wire").faults.tamper, faults.Tamper)
    assert make_agent("--key-file", key_file, "--fault", "false-accuse").faults.tamper is None


# --- set_mode with voting ------------------------------------------------------------------------

class FakeSocket:
    def __init__(self):
        self.sent = []

    def sendto(self, data, address):
        self.sent.append((data, address))


class Rules:
    def __init__(self):
        self.modes = []

    def set_mode(self, mode, voting=False):
        self.modes.append((mode, voting))


ACTIVE = {"role": "backup", "mode": "active", "voting": {"port": 6000},
          "active": {"secret": SECRET.hex(), "wscale": 7, "voting": True}}


def voting_agent(*extra, key_file=None):
    agent = make_agent(*(["--key-file", key_file] if key_file else []), *extra)
    agent.rules = Rules()
    agent.sockets_asked = []
    sock = FakeSocket()
    agent._vote_socket = lambda port: agent.sockets_asked.append(port) or sock
    agent.woken = []
    agent.runner.wake = lambda: agent.woken.append(True)
    return agent, sock


def test_voting_needs_a_key_and_changes_nothing_without_one():
    agent, _ = voting_agent()
    before = agent.queue
    with pytest.raises(ValueError, match="needs --key-file"):
        agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert agent.queue is before and agent.rules.modes == []


def test_set_mode_with_voting_builds_a_vote_engine_and_queues_the_wire_copies(key_file):
    agent, sock = voting_agent(key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    queue = agent.queue
    assert isinstance(queue, nfq.ActiveQueue) and agent.runner.handler is queue
    engine = queue.vote
    assert isinstance(engine, vote.VoteEngine)
    assert (engine.name, engine.key, type(engine)) == ("lb2", KEY, vote.VoteEngine)  # honest
    assert engine.own_output is queue.translator.own_output
    assert queue.vote_socket is sock and agent.sockets_asked == [6000]
    assert agent.rules.modes == [("active", True)]
    assert queue.adapter is nfq.IDENTITY and queue.adapter.reply is None


def test_set_mode_without_voting_has_no_engine(key_file):
    agent, _ = voting_agent(key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse({**ACTIVE,
                                           "active": {"secret": SECRET.hex(), "wscale": 7}}))
    assert agent.queue.vote is None and agent.queue.vote_socket is None
    assert agent.rules.modes == [("active", False)] and agent.sockets_asked == []


@pytest.mark.parametrize("fault, engine_fault", [("false-accuse", "false-accuse"),
                                                 ("forge-reports", "forge-reports"),
                                                 ("tamper-wire", None)])
def test_the_faults_reach_the_engine_or_the_queue(key_file, fault, engine_fault):
    agent, _ = voting_agent("--fault", fault, key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert getattr(agent.queue.vote, "fault", None) == engine_fault
    assert agent.queue.adapter.reply is agent.faults.tamper


# --- on_answer and reports ----------------------------------------------------------------------

VOTING = {"required": True, "f": 1, "hold_s": 0.3, "port": 6000,
          "peers": {"lb1": "10.254.0.11", "lb2": "10.254.0.12", "lb3": "10.254.0.13"},
          "reset": []}


def answer(**voting):
    return {**ACTIVE, "role": "backup", "primary": "lb1", "epoch": 4,
            "voting": {**VOTING, **voting}}


def test_on_answer_configures_the_engine(key_file):
    agent, _ = voting_agent(key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    agent.on_answer(heartbeat.Answer.parse(answer()))
    engine = agent.queue.vote
    config = engine.config
    assert (config.required, config.f, config.hold_s, config.port) == (True, 1, 0.3, 6000)
    assert (engine.config.primary, engine.config.epoch) == ("lb1", 4)
    assert engine.config.peers == {"lb1": "10.254.0.11", "lb3": "10.254.0.13"}


def test_on_answer_gives_the_generation_to_the_engine_and_to_new_connections(key_file):
    agent, _ = voting_agent(key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    assert agent.queue.translator.generation == 0
    agent.on_answer(heartbeat.Answer.parse(answer(generation=3, unvoted="stop")))
    assert agent.queue.vote.config.generation == 3 == agent.queue.translator.generation
    assert agent.queue.vote.config.unvoted == "stop"


def test_on_answer_hands_new_resets_to_the_packet_thread_and_wakes_it(key_file):
    agent, _ = voting_agent(key_file=key_file)
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    agent.on_answer(heartbeat.Answer.parse(answer()))
    assert agent.queue.reset == frozenset() and agent.woken == []
    agent.on_answer(heartbeat.Answer.parse(answer(reset=[["10.0.0.31", 40000]])))
    assert agent.queue.reset == frozenset({(socket.inet_aton("10.0.0.31"), 40000)})
    assert agent.woken == [True]
    agent.on_answer(heartbeat.Answer.parse(answer(reset=[["10.0.0.31", 40000]])))
    assert agent.woken == [True]  # unchanged: no wake


def test_on_answer_without_voting_or_an_engine_does_nothing(key_file):
    agent, _ = voting_agent(key_file=key_file)
    agent.on_answer(heartbeat.Answer.parse(answer()))  # passive: no engine
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    required = agent.queue.vote.config.required
    agent.on_answer(heartbeat.Answer.parse({**ACTIVE, "voting": None}))
    assert agent.queue.vote.config.required == required and agent.woken == []


def test_reports_come_from_the_engine(key_file):
    agent, _ = voting_agent(key_file=key_file)
    assert agent.reports() == []  # passive
    agent.set_mode(heartbeat.Answer.parse(ACTIVE))
    agent.queue.vote.reports.extend([("wire", n) for n in range(70)])
    assert len(agent.reports()) == 64 and len(agent.reports()) == 6
