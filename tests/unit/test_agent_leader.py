"""Tests for sbft_ryu.agent.leader and an agent with several controllers.

The pure decision (which answer is obeyed) is checked on its own; then two or three Heartbeats
loops sharing one Gate, with scripted fake clients (as in test_agent_heartbeat.py): only the
leader's answers change the role, a follower's keep their own session (nonce) alive, a stale
leader is ignored once a higher term was obeyed, no leader means the role is kept. The CLI part
checks ``--controller URL1,URL2`` and the loops ``Agent`` wires (one session, one UDP channel
per controller; one nudge port fanned out to every loop).
"""

import socket
import threading
import time

import pytest

from sbft_ryu.agent import cli, heartbeat, leader
from sbft_ryu.agent.heartbeat import Answer, Heartbeats, RoleState
from sbft_ryu.protocol import sign_body


def answer(role, epoch=1, primary="lb1", controller=None, nonce=None, **extra):
    body = {"role": role, "epoch": epoch, "primary": primary, "state": "up",
            "heartbeat_interval_s": 0.05, "mode": "passive", "vip": "10.0.0.100",
            "service_port": 5555, **extra}
    if controller is not None:
        body["controller"] = controller
    if nonce is not None:
        body["nonce"] = nonce
    return body


def lead(term):
    return {"role": "leader", "term": term}


def follow(term):
    return {"role": "follower", "term": term}


class Script:
    """A fake ControllerClient: the scripted answers in order, the last forever."""

    def __init__(self, *script):
        self.script = list(script)
        self.bodies = []

    def heartbeat(self, body):
        self.bodies.append(body)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


class Probe:
    def ok(self, now):
        return True


def several(*clients, key=None):
    """Loops for ``clients`` sharing one gate, as Agent wires them (without rules)."""
    state, gate = RoleState(), leader.Gate()
    beats = [Heartbeats(client, state, Probe(), dict, None, 0.05, clock=lambda: 1000.0,
                        key=key, name="lb1", gate=gate, index=index)
             for index, client in enumerate(clients)]
    gate.apply = beats[0].apply_answer
    return beats, state, gate


# --- the pure decision ----------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ({}, ("standalone", None)),  # an older controller: no "controller" block
    ({"controller": {"role": "leader", "term": 7}}, ("leader", 7)),
    ({"controller": {"role": "follower", "term": 7}}, ("follower", 7)),
    ({"controller": {"role": "standalone", "term": 0}}, ("standalone", 0)),
    ({"controller": {"role": "king", "term": 7}}, ("unknown", 7)),
    ({"controller": "leader"}, ("unknown", None)),
    ({"controller": {"role": "leader", "term": True}}, ("leader", None)),
    ({"controller": {"role": "leader", "term": -1}}, ("leader", None)),
    ({"controller": {"role": "leader", "term": "7"}}, ("leader", None)),
    ({"controller": {"role": "leader"}}, ("leader", None)),
])
def test_claim_reads_the_controller_block(body, expected):
    assert leader.claim(body) == expected


@pytest.mark.parametrize("role, term, highest, expected", [
    ("standalone", None, None, (True, None)),
    ("standalone", None, 9, (True, 9)),  # (a standalone controller coordinates with nobody)
    ("leader", 3, None, (True, 3)),
    ("leader", 3, 3, (True, 3)),  # the same leader again
    ("leader", 5, 3, (True, 5)),  # a newer leader
    ("leader", 2, 3, (False, 3)),  # a deposed leader still answering as one
    ("leader", None, None, (False, None)),  # a leader without a term: malformed
    ("follower", 9, None, (False, None)),
    ("follower", 9, 3, (False, 3)),  # a follower's term never raises the bar
    ("unknown", 9, None, (False, None)),
])
def test_obeys(role, term, highest, expected):
    assert leader.obeys(role, term, highest) == expected


def test_answer_parse_carries_the_claim():
    parsed = Answer.parse(answer("backup", controller=lead(4)))
    assert (parsed.controller_role, parsed.term) == ("leader", 4)
    assert (Answer.parse(answer("backup")).controller_role,
            Answer.parse(answer("backup")).term) == ("standalone", None)


# --- one controller: as before ---------------------------------------------------------------

def test_one_controller_without_a_block_is_obeyed_as_before():
    beats = Heartbeats(Script(answer("primary")), RoleState(), Probe(), dict, None, 0.05,
                       clock=lambda: 1000.0)
    beats.beat(0)
    assert beats.state.role == "primary" and beats.ignored == 0
    assert beats.gate.obeyed == 0


def test_one_controller_that_is_a_follower_is_not_obeyed(caplog):
    beats = Heartbeats(Script(answer("primary", controller=follow(2))), RoleState(), Probe(),
                       dict, None, 0.05, clock=lambda: 1000.0)
    with caplog.at_level("INFO", logger="sbft.agent"):
        beats.beat(0)
        beats.beat(1)
    assert beats.state.role == "none" and beats.ignored == 2
    said = [r.getMessage() for r in caplog.records if "follower" in r.getMessage()]
    assert len(said) == 1 and "keep the session only" in said[0]


# --- several controllers -----------------------------------------------------------------------

def test_only_the_leaders_answer_changes_the_role():
    beats, state, gate = several(Script(answer("primary", controller=follow(5))),
                                 Script(answer("backup", controller=lead(5))),
                                 Script(answer("primary", controller=follow(5))))
    for beat in beats:
        beat.beat(0)
    assert state.role == "backup"
    assert gate.obeyed == 1 and gate.highest == 5
    assert [beat.ignored for beat in beats] == [1, 0, 1]
    assert gate.answer.role == "backup"


def test_a_new_leader_with_a_higher_term_takes_over_and_the_old_one_is_ignored():
    old = Script(answer("backup", controller=lead(3)))
    new = Script(answer("primary", epoch=2, controller=lead(8)))
    beats, state, gate = several(old, new)
    beats[0].beat(0)
    assert state.role == "backup"
    beats[1].beat(0)
    assert state.role == "primary" and state.epoch == 2
    beats[0].beat(1)  # the deposed leader, not fenced yet, says backup: ignored
    assert state.role == "primary" and beats[0].ignored == 1 and gate.obeyed == 1


def test_without_a_leader_the_role_is_kept():
    beats, state, gate = several(
        Script(answer("primary", controller=lead(1)),
               answer("backup", controller=follow(1))),  # it lost the lease
        Script(heartbeat.ControllerUnreachable("refused")))
    beats[0].beat(0)
    assert state.role == "primary"
    for seq in range(1, 4):
        for beat in beats:
            beat.beat(seq)
    assert state.role == "primary"  # fail-static: no leader answers
    assert beats[1].failures == 3 and beats[0].ignored == 3


def test_undecided_leader_keeps_the_role():
    beats, state, gate = several(Script(answer("primary", controller=lead(1)),
                                        answer("backup", controller=lead(1), decided=False)))
    beats[0].beat(0)
    beats[0].beat(1)
    assert state.role == "primary" and beats[0].undecided == 1


def test_each_controller_has_its_own_session():
    key = bytes(range(32))
    a = Script(answer("backup", controller=lead(2), nonce="nonce-a"))
    b = Script(answer("backup", controller=follow(2), nonce="nonce-b"))
    beats, state, gate = several(a, b, key=key)
    for seq in range(3):
        for beat in beats:
            beat.beat(seq)
    assert [beat.nonce for beat in beats] == ["nonce-a", "nonce-b"]
    for client, nonce in ((a, "nonce-a"), (b, "nonce-b")):
        assert "nonce" not in client.bodies[0]  # the first beat opens the session
        for body in client.bodies[1:]:
            assert body["nonce"] == nonce  # each signs with its own controller's nonce
            unsigned = {k: v for k, v in body.items() if k != "mac"}
            assert body["mac"] == sign_body(key, "lb1", unsigned)


def test_a_rejected_nonce_is_retried_on_that_session_only():
    key = bytes(range(32))
    a = Script(answer("backup", controller=lead(2), nonce="nonce-a"))
    b = Script(heartbeat.ControllerRejected(401, "new session", {"nonce": "fresh-b"}),
               answer("backup", controller=follow(2), nonce="nonce-b2"))
    beats, state, gate = several(a, b, key=key)
    beats[0].beat(0)
    beats[1].beat(0)
    assert b.bodies[1]["nonce"] == "fresh-b" and beats[1].nonce == "nonce-b2"
    assert beats[0].nonce == "nonce-a" and len(a.bodies) == 1


def test_gate_applies_one_answer_at_a_time():
    overlap = []
    active = [0]

    def apply(answer):
        active[0] += 1
        overlap.append(active[0])
        time.sleep(0.01)
        active[0] -= 1

    state = RoleState()
    gate = leader.Gate(apply)
    beats = [Heartbeats(Script(answer_body), state, Probe(), dict, None, 0.05,
                        clock=lambda: 1000.0, gate=gate, index=i)
             for i, answer_body in enumerate([answer("backup", controller=lead(1))] * 3)]
    threads = [threading.Thread(target=lambda b=b: [b.beat(s) for s in range(5)])
               for b in beats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert overlap and max(overlap) == 1


# --- the nudge fan-out -----------------------------------------------------------------------

def test_one_nudge_wakes_every_loop():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    events = [threading.Event() for _ in range(3)]
    fanout = leader.NudgeFanout(receiver, events, time.monotonic, 0.005, 0.05)
    stop = threading.Event()
    thread = threading.Thread(target=fanout.run, args=(stop,))
    thread.start()
    try:
        sender.sendto(b"x", receiver.getsockname())
        assert all(event.wait(5) for event in events)
    finally:
        stop.set()
        thread.join(5)
        sender.close()
        receiver.close()
    assert fanout.nudges == 1 and not thread.is_alive()


def test_a_loop_waiting_on_an_event_wakes_on_it_and_clears_it():
    event = threading.Event()
    beats = Heartbeats(None, RoleState(), Probe(), dict, wakeup=event)
    stop = threading.Event()
    event.set()
    assert beats._wait(stop, 5.0) is True and not event.is_set()
    started = time.monotonic()
    assert beats._wait(stop, 0.05) is False
    assert time.monotonic() - started < 5.0


# --- the command line and the wiring -----------------------------------------------------------

URLS = "http://10.254.0.21:8080,http://10.254.0.22:8080,http://10.254.0.23:8080"


def test_controller_list_is_parsed():
    config, _ = cli.parse_args(["--name", "lb1", "--controller", URLS])
    assert config.controller == URLS
    assert config.controllers == tuple(URLS.split(","))
    single, _ = cli.parse_args(["--name", "lb1", "--controller", "http://10.254.0.254:8080"])
    assert single.controllers == ("http://10.254.0.254:8080",)


@pytest.mark.parametrize("value, message", [
    ("http://a:1,http://a:1", "listed twice"),
    (",".join(f"http://a:{i}" for i in range(1, 9)), "at most 7 controllers"),
])
def test_bad_controller_lists_are_refused(value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--name", "lb1", "--controller", value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_url_in_the_list_is_fatal_at_start(caplog):
    assert cli.main(["--name", "lb1", "--controller", "http://a:1,https://b:2",
                     "--no-iptables"]) == 1
    assert any("fatal" in r.getMessage() and "https://b:2" in r.getMessage()
               for r in caplog.records)


def test_agent_wires_one_loop_session_and_udp_channel_per_controller(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(bytes(range(32)).hex())
    config, _ = cli.parse_args(["--name", "lb1", "--controller", URLS, "--no-iptables",
                                "--key-file", str(key_file), "--notify-port", "0"])
    agent = cli.Agent(config)
    clients = [heartbeat.ControllerClient(url, "lb1", 0.25) for url in config.controllers]
    threads = agent._heartbeat_threads(clients, None)
    beats = [agent.heartbeats, *agent.others]
    assert len(threads) == 3 and len(beats) == 3
    assert [beat.client for beat in beats] == clients
    assert [beat.udp.host for beat in beats] == ["10.254.0.21", "10.254.0.22", "10.254.0.23"]
    assert len({id(beat.udp) for beat in beats}) == 3
    assert {id(beat.gate) for beat in beats} == {id(agent.gate)}
    assert [beat.index for beat in beats] == [0, 1, 2]
    assert agent.gate.apply == beats[0].apply_answer
    assert all(beat.state is agent.state for beat in beats)


def test_agent_with_several_controllers_fans_nudges_out_and_sums_failures():
    config, _ = cli.parse_args(["--name", "lb1", "--controller", URLS, "--no-iptables"])
    agent = cli.Agent(config)
    clients = [heartbeat.ControllerClient(url, "lb1", 0.25) for url in config.controllers]
    wakeup = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        threads = agent._heartbeat_threads(clients, wakeup)
        assert [t.name for t in threads] == ["heartbeat-0", "heartbeat-1", "heartbeat-2",
                                             "nudges"]
        beats = [agent.heartbeats, *agent.others]
        assert all(isinstance(beat.wakeup, threading.Event) for beat in beats)
        assert len({id(beat.wakeup) for beat in beats}) == 3
        for failures, beat in zip((1, 2, 3), beats):
            beat.failures = failures
        assert agent.counters()["controller_failures"] == 6
    finally:
        wakeup.close()


def test_agent_reports_evidence_only_to_the_obeyed_controller():
    config, _ = cli.parse_args(["--name", "lb1", "--controller", URLS, "--no-iptables"])
    agent = cli.Agent(config)
    clients = [heartbeat.ControllerClient(url, "lb1", 0.25) for url in config.controllers]
    agent.reports = lambda: [("evidence", [b"x"])]
    agent._heartbeat_threads(clients, None)
    beats = [agent.heartbeats, *agent.others]
    assert [beat.reports() for beat in beats] == [[], [], []]  # none obeyed yet
    agent.gate.obeyed = 2
    assert [bool(beat.reports()) for beat in beats] == [False, False, True]


def test_agent_with_one_controller_wires_as_before():
    config, _ = cli.parse_args(["--name", "lb1", "--controller", "http://10.254.0.254:8080",
                                "--no-iptables"])
    agent = cli.Agent(config)
    wakeup = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client = heartbeat.ControllerClient(config.controller, "lb1", 0.25)
        threads = agent._heartbeat_threads([client], wakeup)
        assert [t.name for t in threads] == ["heartbeat-0"]
        assert agent.heartbeats.wakeup is wakeup and agent.others == []
        assert agent.heartbeats.reports == agent.reports
    finally:
        wakeup.close()


def test_the_vip_is_learned_from_any_controller_before_a_leader_is_obeyed():
    # the probe needs the VIP before the leader can decide (it decides on the probe's result)
    config, _ = cli.parse_args(["--name", "lb1", "--controller", URLS, "--no-iptables"])
    agent = cli.Agent(config)
    clients = [heartbeat.ControllerClient(url, "lb1", 0.25) for url in config.controllers]
    agent._heartbeat_threads(clients, None)
    agent.others[1].answer = Answer.parse(answer("backup", controller=follow(2),
                                                 decided=False))
    agent._observe()
    assert agent.probe.host == "10.0.0.100"
