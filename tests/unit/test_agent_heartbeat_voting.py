"""Tests for the voting parts of sbft_ryu.agent.heartbeat.Heartbeats: heartbeats signed with the
nonce of the controller's last answer (one retry with the nonce of a 401), evidence and wire
reports carried to the controller, on_answer. The "controller" is the real rest.parse_heartbeat
and Referee behind a fake client."""

import dataclasses
import json
import socket
from types import SimpleNamespace

import pytest

from sbft_ryu import protocol, rest
from sbft_ryu.agent import heartbeat, vote
from sbft_ryu.agent.heartbeat import (ControllerRejected, ControllerUnreachable, Heartbeats,
                                      RoleState)
from sbft_ryu.config import build_config
from sbft_ryu.referee import AuthError, Referee

KEY = bytes(range(16))
CLIENT = socket.inet_aton("10.0.0.31")


def answer(role="backup", **extra):
    return {"role": role, "epoch": 1, "primary": "lb1", "state": "up",
            "heartbeat_interval_s": 0.05, "mode": "passive", **extra}


class ScriptedClient:
    """Returns (or raises) the scripted items in order, the last one for ever; records bodies
    (copies: the agent reuses nothing, but a test must see what was sent)."""

    def __init__(self, *script):
        self.script = list(script)
        self.bodies = []

    def heartbeat(self, body):
        self.bodies.append(json.loads(json.dumps(body)))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


class Controller:
    """The controller's side of a heartbeat: parse, authenticate, answer with the next nonce
    (or 401 carrying the current one), as SbftApp.api_heartbeat does."""

    def __init__(self, referee, name="lb2"):
        self.referee, self.name = referee, name
        self.beats = []

    def heartbeat(self, body):
        beat = rest.parse_heartbeat(json.dumps(body).encode())
        try:
            nonce = self.referee.authenticate(self.name, beat)
        except AuthError as exc:
            raise ControllerRejected(401, str(exc), {"nonce": exc.nonce}) from None
        self.beats.append(beat)
        return answer(nonce=nonce)


def make(client, reports=None, key=KEY, on_answer=None):
    probe = SimpleNamespace(ok=lambda now: True)
    return Heartbeats(client, RoleState(), probe, lambda: {"claims": 2}, None,
                      clock=lambda: 100.0, key=key, name="lb2", reports=reports,
                      on_answer=on_answer)


# --- signing ------------------------------------------------------------------------------------

def test_without_a_key_nothing_is_signed():
    client = ScriptedClient(answer(nonce="n1"))
    make(client, key=None).beat(0)
    make(client, key=None).beat(1)
    assert all(set(body) == {"seq", "service_ok", "counters"} for body in client.bodies)


def test_every_heartbeat_is_signed_with_the_nonce_of_the_last_answer():
    client = ScriptedClient(answer(nonce="n1"), answer(nonce="n2"))
    beats = make(client)
    beats.beat(0)
    beats.beat(1)
    first, second = client.bodies
    assert "nonce" not in first  # none known yet
    assert second["nonce"] == "n1" and beats.nonce == "n2"
    for body in client.bodies:
        assert protocol.body_signed(KEY, "lb2", body)
        assert not protocol.body_signed(KEY, "lb1", body)


def test_a_401_with_a_nonce_is_retried_at_once_with_that_nonce():
    rejected = ControllerRejected(401, "no nonce", {"nonce": "n7", "error": {}})
    client = ScriptedClient(rejected, answer("primary", nonce="n8"))
    beats = make(client)
    beats.beat(0)
    assert [body.get("nonce") for body in client.bodies] == [None, "n7"]
    assert protocol.body_signed(KEY, "lb2", client.bodies[1])
    assert (beats.failures, beats.state.role, beats.nonce) == (0, "primary", "n8")


@pytest.mark.parametrize("rejection", [
    ControllerRejected(401, "stale", {"nonce": "n7"}),  # rejected again: no third try
    ControllerRejected(401, "no nonce given back", {}),
    ControllerRejected(403, "forbidden", {"nonce": "n7"}),  # only a 401 asks for the nonce
], ids=["twice", "401-without-nonce", "403"])
def test_other_rejections_count_as_one_failure_and_keep_the_role(rejection):
    client = ScriptedClient(rejection)
    beats = make(client)
    beats.beat(0)
    expected = 2 if rejection.status == 401 and rejection.answer else 1
    assert len(client.bodies) == expected
    assert beats.failures == 1 and beats.state.role == heartbeat.NO_ROLE


def test_the_agent_and_the_controller_agree_on_signatures(raw):
    raw["replica_key"] = [f"lb2 {KEY.hex()}"]
    controller = Controller(Referee(build_config(raw)))
    beats = make(controller)
    for seq in range(3):
        beats.beat(seq)
    assert [beat.seq for beat in controller.beats] == [0, 1, 2]
    assert beats.failures == 0
    assert controller.referee.auth_failures["lb2"] == 1  # the first beat learnt the nonce


def test_a_wrong_key_never_gets_through(raw):
    raw["replica_key"] = [f"lb2 {KEY.hex()}"]
    controller = Controller(Referee(build_config(raw)))
    beats = make(controller, key=b"\xff" * 16)
    beats.beat(0)
    beats.beat(1)
    assert controller.beats == [] and beats.failures == 2


# --- reports ------------------------------------------------------------------------------------

EVIDENCE = ("evidence", [b"\x01\x02", b"\x03"])
WIRE = ("wire", (CLIENT, 40000, 3, 10, 20, 2))  # ..., the agent's generation


def test_reports_travel_in_the_signed_body_and_parse_at_the_controller():
    client = ScriptedClient(answer(nonce="n1"))
    make(client, reports=lambda: [EVIDENCE, WIRE]).beat(0)
    [body] = client.bodies
    assert body["evidence"] == [["0102", "03"]]
    assert body["wire"] == [{"client": "10.0.0.31", "port": 40000, "epoch": 3, "start": 10,
                             "end": 20, "generation": 2}]
    assert protocol.body_signed(KEY, "lb2", body)
    beat = rest.parse_heartbeat(json.dumps(body).encode())
    assert beat.evidence == ((b"\x01\x02", b"\x03"),)
    assert beat.wire == ((CLIENT, 40000, 3, 10, 20, 2),)


def test_reports_are_sent_once():
    pending = [[EVIDENCE], [], []]
    client = ScriptedClient(answer())
    beats = make(client, reports=lambda: pending.pop(0))
    for seq in range(3):
        beats.beat(seq)
    assert ["evidence" in body for body in client.bodies] == [True, False, False]


def test_reports_wait_while_the_controller_is_unreachable():
    pending = [[EVIDENCE], [WIRE], []]
    client = ScriptedClient(ControllerUnreachable("timed out"), answer())
    beats = make(client, reports=lambda: pending.pop(0))
    beats.beat(0)
    beats.beat(1)
    assert "evidence" in client.bodies[1] and "wire" in client.bodies[1]
    assert beats.failures == 1


def test_only_the_newest_reports_are_kept_while_waiting():
    client = ScriptedClient(ControllerUnreachable("down"))
    batches = [[("wire", (CLIENT, port, 1, 0, 1))] for port in range(1, 101)]
    beats = make(client, reports=lambda: batches.pop(0))
    for seq in range(100):
        beats.beat(seq)
    ports = [report["port"] for report in client.bodies[-1]["wire"]]
    assert ports == list(range(100 - heartbeat.REPORTS_KEPT + 1, 101))


def test_a_heartbeat_carries_at_most_what_the_controller_accepts():
    many = [EVIDENCE] * 20 + [WIRE] * (heartbeat.REPORTS_KEPT - 20)
    client = ScriptedClient(answer())
    make(client, reports=lambda: many).beat(0)
    body = client.bodies[0]
    assert len(body["evidence"]) == rest.MAX_EVIDENCE and len(body["wire"]) <= rest.MAX_WIRE
    rest.parse_heartbeat(json.dumps(body).encode())  # accepted


def test_evidence_beyond_one_heartbeats_share_goes_with_the_next():
    items = [("evidence", [bytes([n])]) for n in range(20)]
    pending = [items, []]
    client = ScriptedClient(answer())
    beats = make(client, reports=lambda: pending.pop(0))
    beats.beat(0)
    beats.beat(1)
    sent = [raws for body in client.bodies for raws in body.get("evidence", [])]
    assert sent == [[f"{n:02x}"] for n in range(20)]


# --- on_answer ------------------------------------------------------------------------------------

def test_on_answer_sees_every_answer_before_the_role_is_applied():
    seen = []
    client = ScriptedClient(answer("primary", voting={"required": True}))
    beats = make(client, on_answer=lambda a: seen.append((a.voting, beats.state.role)))
    beats.beat(0)
    beats.beat(1)
    required = vote.VoteConfig.of(required=True, primary="lb1", epoch=1)
    assert seen == [(required, heartbeat.NO_ROLE), (required, "primary")]


# --- the answer, parsed once ----------------------------------------------------------------------

def test_an_answer_is_parsed_once_into_a_frozen_value_with_every_default():
    parsed = heartbeat.Answer.parse(answer("primary", mode="active", voting={},
                                           active={"secret": "ab" * 16}))
    assert (parsed.role, parsed.epoch, parsed.primary, parsed.interval) == ("primary", 1, "lb1",
                                                                            0.05)
    assert parsed.active == heartbeat.ActiveParams(b"\xab" * 16, 7, False)
    assert parsed.voting == vote.VoteConfig(primary="lb1", epoch=1)
    assert parsed.vote_port == protocol.VOTE_PORT == 5557 and parsed.reset == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.role = "backup"
    bare = heartbeat.Answer.parse(answer())
    assert (bare.active, bare.voting, bare.vote_port) == (None, None, protocol.VOTE_PORT)


def test_an_answer_with_a_malformed_reset_list_is_refused_whole():
    with pytest.raises(ValueError, match="reset list"):
        heartbeat.Answer.parse(answer(voting={"reset": [["not an address", 1]]}))


def test_the_vote_configuration_is_swapped_as_one_frozen_object():
    engine = vote.VoteEngine("lb2", KEY, None, None)
    assert engine.config == vote.VoteConfig()
    config = vote.VoteConfig.of(required=True, f=1, hold_s=0.3, port=6000,
                                peers={"lb1": "10.0.0.1", "lb2": "10.0.0.2"}, primary="lb1",
                                epoch=4)
    engine.configure(config)
    assert engine.config == dataclasses.replace(config, peers={"lb1": "10.0.0.1"})
    with pytest.raises(TypeError):
        engine.config.peers["lb3"] = "10.0.0.3"  # read-only: replaced whole, never changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        engine.config.f = 2


def test_the_report_limits_of_agent_and_controller_are_one():
    assert heartbeat._share.__defaults__ == (protocol.MAX_EVIDENCE, protocol.MAX_WIRE)
    assert (rest.MAX_EVIDENCE, rest.MAX_WIRE, rest.MAX_BATCHES) == (
        protocol.MAX_EVIDENCE, protocol.MAX_WIRE, protocol.MAX_BATCHES)
