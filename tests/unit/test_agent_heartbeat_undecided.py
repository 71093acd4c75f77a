"""A restarted controller answers "not decided yet" until it has seen the members: the agent
keeps its role (as when the controller is unreachable), says so once, and takes the next
decided answer as usual."""

import logging

from test_agent_heartbeat import answer, make

from sbft_ryu.agent.heartbeat import Answer, ControllerUnreachable
from sbft_ryu.agent.iptables import fast_mark


def test_an_undecided_answer_keeps_the_role_and_is_said_once(caplog):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    undecided = answer("none", epoch=0, primary=None, decided=False, nonce="n2")
    beats, state, _, rules = make(answer("primary", epoch=4), ControllerUnreachable("refused"),
                                  *[undecided] * 5, answer("primary", epoch=4),
                                  connection_cache=True)
    for seq in range(8):
        beats.beat(seq)
        assert (state.role, state.epoch, state.primary, state.fast_mark) == \
               ("primary", 4, True, fast_mark(4))
    assert len(rules.calls) == 1  # the role was never re-applied
    assert beats.undecided == 5 and beats.nonce is None  # (the last answer carried none)
    said = [r.getMessage() for r in caplog.records if "not decided" in r.getMessage()]
    assert said == ["controller not decided yet (restarted, or a switch applying a "
                    "change): keeping role primary"]
    assert caplog.records[-1].getMessage() == "controller reachable"


def test_an_undecided_answer_still_brings_the_nonce_to_sign_with():
    beats, state, _, _ = make(answer("backup", epoch=2),
                              answer("none", epoch=0, decided=False, nonce="abc"))
    beats.beat(0)
    beats.beat(1)
    assert (state.role, beats.nonce) == ("backup", "abc")


def test_answers_without_the_field_are_decided():
    assert Answer.parse(answer("backup")).decided
    assert not Answer.parse(answer("backup", decided=False)).decided
    assert Answer.parse(answer("backup", decided=None)).decided
