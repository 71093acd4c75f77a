"""Tests for sbft_ryu.agent.heartbeat: the role loop with fakes, the client against loopback HTTP.

Heartbeats gets a scripted fake client, a fake probe, fake rules and a fake clock; the order of
role changes is checked by recording the RoleState from inside the fake rules (and, per verdict
cache, from inside the ``run`` of a real iptables.Rules). Nudges go
through a real UDP socket pair on 127.0.0.1 (the wait is real time, bounded). ControllerClient
talks to a real http.server on 127.0.0.1 (ephemeral port), which answers like the controller's
views.heartbeat_reply / views.error_body.
"""

import json
import logging
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from sbft_ryu.agent import heartbeat, iptables
from sbft_ryu.agent.heartbeat import (ControllerClient, ControllerRejected, ControllerUnreachable,
                                      Heartbeats, RoleState)
from sbft_ryu.agent.iptables import fast_mark


def answer(role, epoch=1, primary="lb1", interval=0.05, **extra):
    """A controller answer, shaped like views.heartbeat_reply."""
    return {"role": role, "epoch": epoch, "primary": primary, "state": "up",
            "heartbeat_interval_s": interval, "mode": "passive", "vip": "10.0.0.100",
            "service_port": 5555, **extra}


# --- fakes -------------------------------------------------------------------------------

class FakeClient:
    """Returns (or raises) the scripted items in order, the last one forever; records bodies."""

    def __init__(self, *script, on_call=None):
        self.script = list(script)
        self.bodies = []
        self.on_call = on_call

    def heartbeat(self, body):
        self.bodies.append(body)
        if self.on_call is not None:
            self.on_call(len(self.bodies))
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


class FakeProbe:
    def __init__(self, value=True):
        self.value = value
        self.asked = []

    def ok(self, now):
        self.asked.append(now)
        return self.value


class FakeRules:
    """Like iptables.Rules.set_role: records each call (``set``: its arguments) with the
    RoleState as it was at that moment (``primary``, ``fast_mark``, ``role``)."""

    def __init__(self, state, fail=None):
        self.state = state
        self.primary = False
        self.mark = None
        self.calls = []
        self.fail = fail  # an exception to raise from set_role (once)

    def set_role(self, primary, mark=None):
        self.calls.append({"set": (primary, mark), "mark": mark,
                           "primary": self.state.primary, "fast_mark": self.state.fast_mark,
                           "role": self.state.role})
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.primary, self.mark = primary, (mark if primary else None)


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def make(*script, rules=True, interval=None, counters=None, probe_ok=True,
         connection_cache=False):
    state = RoleState()
    client = FakeClient(*script)
    fake_rules = FakeRules(state) if rules else None
    beats = Heartbeats(client, state, FakeProbe(probe_ok),
                       counters or (lambda: {"accepted": 0}), fake_rules, interval,
                       clock=Clock(), connection_cache=connection_cache)
    return beats, state, client, fake_rules


# --- roles -------------------------------------------------------------------------------

def test_initial_state():
    state = RoleState()
    assert (state.role, state.epoch, state.primary, state.fast_mark, state.primary_name) == \
           (heartbeat.NO_ROLE, None, False, None, None)


def test_connection_cache_is_off_by_default():
    beats = Heartbeats(None, RoleState(), FakeProbe(), dict)
    assert beats.connection_cache is False
    assert not hasattr(beats, "fast_path")
    with pytest.raises(TypeError):
        Heartbeats(None, RoleState(), FakeProbe(), dict, fast_path=True)


def test_promotion_to_primary_sets_primary_before_the_kernel_rules():
    # the role cache (and none): the kernel rules need no mark
    beats, state, _, rules = make(answer("primary", epoch=1))
    beats.beat(0)
    assert (state.role, state.epoch, state.primary, state.primary_name) == \
           ("primary", 1, True, "lb1")
    # userspace accepts before the kernel opens the door
    assert rules.calls == [{"set": (True, None), "mark": None, "primary": True,
                            "fast_mark": None, "role": "none"}]
    assert (state.fast_mark, rules.primary, rules.mark) == (None, True, None)


def test_promotion_with_the_connection_cache_sets_primary_before_the_mark():
    beats, state, _, rules = make(answer("primary", epoch=1), connection_cache=True)
    beats.beat(0)
    assert state.primary is True
    assert (state.role, state.epoch, state.primary_name) == ("primary", 1, "lb1")
    # userspace accepts before the kernel opens the door; no cached-verdict mark until the
    # kernel rule for it exists
    assert rules.calls == [{"set": (True, fast_mark(1)), "mark": fast_mark(1), "primary": True,
                            "fast_mark": None, "role": "none"}]
    assert state.fast_mark == fast_mark(1) == rules.mark
    assert rules.primary is True


@pytest.mark.parametrize("connection_cache", [False, True])
def test_promotion_from_backup_follows_the_same_order(connection_cache):
    mark = fast_mark(2) if connection_cache else None
    beats, state, _, rules = make(answer("backup", epoch=1), answer("primary", epoch=2),
                                  connection_cache=connection_cache)
    beats.beat(0)
    assert rules.calls == []
    beats.beat(1)
    assert rules.calls == [{"set": (True, mark), "mark": mark, "primary": True,
                            "fast_mark": None, "role": "backup"}]
    assert (state.role, state.epoch, state.primary, state.fast_mark) == \
           ("primary", 2, True, mark)


def test_promotion_without_an_epoch_uses_generation_zero():
    beats, state, _, rules = make(answer("primary", epoch=None), connection_cache=True)
    beats.beat(0)
    assert rules.calls[0]["set"] == (True, fast_mark(0))
    assert state.fast_mark == fast_mark(0)


@pytest.mark.parametrize("epoch", [1, 7, 0x100001])
def test_promotion_without_the_connection_cache_never_passes_a_mark(epoch):
    beats, state, _, rules = make(answer("primary", epoch=epoch), answer("backup", epoch=epoch + 1))
    beats.beat(0)
    assert rules.calls == [{"set": (True, None), "mark": None, "primary": True,
                            "fast_mark": None, "role": "none"}]
    assert (state.primary, state.fast_mark, rules.primary, rules.mark) == (True, None, True, None)
    beats.beat(1)  # the door must close again although no mark was ever installed
    assert rules.calls[-1] == {"set": (False, None), "mark": None, "primary": False,
                               "fast_mark": None, "role": "primary"}
    assert (state.primary, state.fast_mark, rules.primary) == (False, None, False)


@pytest.mark.parametrize("connection_cache", [False, True])
def test_repeated_primary_answers_do_not_touch_the_rules(connection_cache):
    beats, state, _, rules = make(answer("primary", epoch=1), connection_cache=connection_cache)
    for seq in range(5):
        beats.beat(seq)
    assert len(rules.calls) == 1
    assert state.fast_mark == (fast_mark(1) if connection_cache else None)


def test_new_primary_epoch_moves_the_connection_cache_to_the_new_mark():
    beats, state, _, rules = make(answer("primary", epoch=1), answer("primary", epoch=2),
                                  connection_cache=True)
    beats.beat(0)
    beats.beat(1)
    assert [call["set"] for call in rules.calls] == [(True, fast_mark(1)), (True, fast_mark(2))]
    # while the kernel moves to the new mark: still primary, plain accepts (no stale mark)
    assert rules.calls[1] == {"set": (True, fast_mark(2)), "mark": fast_mark(2), "primary": True,
                              "fast_mark": None, "role": "primary"}
    assert (state.epoch, state.fast_mark, state.primary) == (2, fast_mark(2), True)


def test_new_primary_epoch_without_the_connection_cache_reapplies_the_primary_rules():
    beats, state, _, rules = make(answer("primary", epoch=1), answer("primary", epoch=2))
    beats.beat(0)
    beats.beat(1)
    assert [call["set"] for call in rules.calls] == [(True, None), (True, None)]
    assert (state.epoch, state.fast_mark, state.primary) == (2, None, True)


def test_demotion_clears_primary_before_the_kernel_rules():
    beats, state, _, rules = make(answer("primary", epoch=1),
                                  answer("backup", epoch=2, primary="lb2"))
    beats.beat(0)
    beats.beat(1)
    # userspace drops before the kernel closes the door and stops accepting
    assert rules.calls[-1] == {"set": (False, None), "mark": None, "primary": False,
                               "fast_mark": None, "role": "primary"}
    assert len(rules.calls) == 2
    assert (state.fast_mark, rules.primary, rules.mark) == (None, False, None)
    assert (state.role, state.epoch, state.primary, state.primary_name) == \
           ("backup", 2, False, "lb2")


def test_demotion_with_the_connection_cache_clears_primary_before_the_mark():
    beats, state, _, rules = make(answer("primary", epoch=1),
                                  answer("backup", epoch=2, primary="lb2"),
                                  connection_cache=True)
    beats.beat(0)
    beats.beat(1)
    # userspace drops before the kernel closes the door and stops honouring cached verdicts
    assert rules.calls[-1] == {"set": (False, None), "mark": None, "primary": False,
                               "fast_mark": fast_mark(1), "role": "primary"}
    assert len(rules.calls) == 2
    assert state.fast_mark is None
    assert (rules.primary, rules.mark) == (False, None)
    assert (state.role, state.epoch, state.primary, state.primary_name) == \
           ("backup", 2, False, "lb2")


@pytest.mark.parametrize("connection_cache", [False, True])
@pytest.mark.parametrize("role", ["backup", "none"])
def test_demotion_to_any_non_primary_role(role, connection_cache):
    beats, state, _, rules = make(answer("primary", epoch=3), answer(role, epoch=4),
                                  connection_cache=connection_cache)
    beats.beat(0)
    beats.beat(1)
    assert state.primary is False
    assert state.fast_mark is None
    assert rules.calls[-1]["set"] == (False, None)
    assert rules.primary is False
    assert state.role == role


def test_backup_following_epochs_never_touches_the_rules():
    beats, state, _, rules = make(answer("backup", epoch=1), answer("backup", epoch=2),
                                  answer("backup", epoch=3, primary="lb3"),
                                  answer("backup", epoch=5))
    for seq in range(4):
        beats.beat(seq)
    assert rules.calls == []
    assert (state.role, state.epoch, state.primary, state.fast_mark) == \
           ("backup", 5, False, None)


def test_demotion_without_installed_primary_rules_skips_the_rules():
    beats, state, _, rules = make(answer("primary", epoch=1), answer("backup", epoch=2))
    beats.beat(0)
    rules.primary = False  # e.g. the kernel rules were never switched to primary
    beats.beat(1)
    assert len(rules.calls) == 1
    assert (state.primary, state.fast_mark, state.role) == (False, None, "backup")


def test_first_backup_answer_does_not_touch_the_rules():
    # Rules.__enter__ already installed the backup rules
    beats, state, _, rules = make(answer("backup", epoch=1))
    beats.beat(0)
    assert rules.calls == []
    assert (state.role, state.primary) == ("backup", False)


def test_without_rules_the_role_is_applied_in_userspace_only():
    beats, state, _, _ = make(answer("primary", epoch=1), answer("backup", epoch=2), rules=False)
    beats.beat(0)
    assert (state.primary, state.fast_mark) == (True, None)
    beats.beat(1)
    assert (state.primary, state.fast_mark) == (False, None)


def test_role_change_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    beats, _, _, _ = make(answer("primary", epoch=1), answer("backup", epoch=2, primary="lb2"))
    beats.beat(0)
    beats.beat(1)
    messages = [r.getMessage() for r in caplog.records if "role" in r.getMessage()]
    assert messages == ["role none -> primary (epoch 1, primary lb1)",
                        "role primary -> backup (epoch 2, primary lb2)"]


# --- with the real iptables.Rules (a recording ``run``), per verdict cache --------------------

class RecordingRun:
    """Stands in for subprocess.run under iptables.Rules: records each restore's input and the
    RoleState at that moment."""

    def __init__(self, state):
        self.state = state
        self.restores = []

    def __call__(self, argv, input=None, **kwargs):
        assert argv == ["iptables-restore", "--noflush"]
        self.restores.append((input, self.state.primary, self.state.fast_mark))
        return SimpleNamespace(returncode=0, stdout="", stderr="")


def mangle_rules(restore):
    return [line for line in restore.splitlines() if line.startswith("-A sbft-out")]


def raw_rules(restore):
    return [line for line in restore.splitlines() if line.startswith("-A sbft-in")]


QUEUE = "-A sbft-out -j NFQUEUE --queue-num 1"


def connection_rules(generation):
    mark = hex(fast_mark(generation))
    return [f"-A sbft-out -m mark --mark {mark} -j CONNMARK --save-mark",
            f"-A sbft-out -m mark --mark {mark} -j ACCEPT",
            f"-A sbft-out -m connmark --mark {mark} -j ACCEPT", QUEUE]


@pytest.mark.parametrize("cache, primary_out, marks", [
    ("role", lambda epoch: ["-A sbft-out -j ACCEPT"], lambda epoch: None),
    ("connection", connection_rules, fast_mark),
    ("none", lambda epoch: [QUEUE], lambda epoch: None),
])
def test_role_transitions_install_the_rules_of_the_cache(cache, primary_out, marks):
    """backup, primary (epoch 2), primary again, backup (3), primary (5), primary (6), none:
    one restore per change, the rules of the cache, userspace first on the way up and down."""
    state = RoleState()
    run = RecordingRun(state)
    rules = iptables.Rules(iptables.RuleSpec(5555, 1, cache), run=run)
    client = FakeClient(answer("backup", epoch=1), answer("primary", epoch=2),
                        answer("primary", epoch=2), answer("backup", epoch=3, primary="lb2"),
                        answer("primary", epoch=5), answer("primary", epoch=6),
                        answer("none", epoch=7, primary="lb2"))
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, clock=Clock(),
                       connection_cache=cache == "connection")
    seen = []
    for seq in range(7):
        beats.beat(seq)
        seen.append((state.role, state.primary, state.fast_mark, rules.primary, rules.mark))
    assert seen == [
        ("backup", False, None, False, None),
        ("primary", True, marks(2), True, marks(2)),
        ("primary", True, marks(2), True, marks(2)),
        ("backup", False, None, False, None),
        ("primary", True, marks(5), True, marks(5)),
        ("primary", True, marks(6), True, marks(6)),
        ("none", False, None, False, None),
    ]
    up, down = [], ["-A sbft-in -j DROP"]
    assert [(raw_rules(text), mangle_rules(text), primary, mark)
            for text, primary, mark in run.restores] == [
        (up, primary_out(2), True, None),  # userspace accepts before the kernel does
        # userspace drops before the kernel stops accepting (it ignores the mark when dropping)
        (down, [QUEUE], False, marks(2)),
        (up, primary_out(5), True, None),
        (up, primary_out(6), True, None),  # a new primary epoch: new rules, no stale mark
        (down, [QUEUE], False, marks(6)),
    ]


# --- the controller's mode: on_mode before the role ----------------------------------------

ACTIVE_PARAMS = {"secret": "00" * 16, "wscale": 7}


def active_answer(role, epoch=1, **extra):
    return answer(role, epoch, mode="active", active=dict(ACTIVE_PARAMS), **extra)


# Heartbeats.mode: the mode and the active parameters (canonical JSON) of the last answer taken
PASSIVE_MODE = ("passive", "null")
ACTIVE_MODE = ("active", '{"secret": "00000000000000000000000000000000", "wscale": 7}')


class ModeRecorder:
    """An on_mode callback: records (mode, RoleState role/primary, rules calls so far) at each
    call; raises the scripted exceptions (one per call) first."""

    def __init__(self, state, rules=None, fail=()):
        self.state = state
        self.rules = rules
        self.fail = list(fail)
        self.calls = []

    def __call__(self, answer):
        self.calls.append({"mode": answer.mode, "answer": answer,
                           "role": self.state.role, "primary": self.state.primary,
                           "rules_calls": len(self.rules.calls) if self.rules else None})
        if self.fail:
            exc = self.fail.pop(0)
            if exc is not None:
                raise exc


def make_with_mode(*script, fail=(), connection_cache=False):
    beats, state, client, rules = make(*script, connection_cache=connection_cache)
    beats.on_mode = ModeRecorder(state, rules, fail)
    return beats, state, client, rules, beats.on_mode


def test_on_mode_is_off_by_default_and_no_mode_is_known_at_start():
    beats = Heartbeats(None, RoleState(), FakeProbe(), dict)
    assert (beats.on_mode, beats.mode) == (None, None)
    recorder = object()
    assert Heartbeats(None, RoleState(), FakeProbe(), dict, on_mode=recorder).on_mode is recorder


def test_without_on_mode_the_mode_is_still_followed():
    beats, state, _, rules = make(answer("backup"), active_answer("primary", epoch=2))
    beats.beat(0)
    assert beats.mode == PASSIVE_MODE
    beats.beat(1)
    assert beats.mode == ACTIVE_MODE
    assert state.role == "primary" and rules.calls[0]["set"] == (True, None)


def test_the_first_answer_tells_its_mode():
    beats, _, _, _, on_mode = make_with_mode(answer("backup"))
    beats.beat(0)
    assert [call["mode"] for call in on_mode.calls] == ["passive"]
    assert on_mode.calls[0]["answer"] is beats.answer
    assert beats.mode == PASSIVE_MODE


def test_on_mode_only_when_the_mode_changes():
    beats, state, _, _, on_mode = make_with_mode(
        answer("backup", epoch=1), answer("backup", epoch=2), active_answer("backup", epoch=3),
        active_answer("backup", epoch=4), active_answer("backup", epoch=5),
        answer("backup", epoch=6), answer("backup", epoch=7))
    for seq in range(7):
        beats.beat(seq)
    assert [(call["mode"], call["answer"].epoch) for call in on_mode.calls] == [
        ("passive", 1), ("active", 3), ("passive", 6)]
    assert on_mode.calls[1]["answer"].mode_key[1] == json.dumps(ACTIVE_PARAMS, sort_keys=True)
    assert on_mode.calls[1]["answer"].active == heartbeat.ActiveParams(bytes(16), 7, False)
    assert (beats.mode, state.epoch) == (PASSIVE_MODE, 7)


def test_an_answer_without_a_mode_never_calls_on_mode():
    # an older controller: no "mode" key at all
    old = {key: value for key, value in answer("primary").items() if key != "mode"}
    beats, state, _, rules, on_mode = make_with_mode(old, old)
    beats.beat(0)
    beats.beat(1)
    assert on_mode.calls == []
    assert state.role == "primary" and len(rules.calls) == 1


def test_an_answer_without_a_mode_is_tracked_as_no_mode_without_on_mode():
    old = {key: value for key, value in answer("primary").items() if key != "mode"}
    beats, state, _, rules = make(old)
    beats.beat(0)
    assert beats.mode == (None, "null")
    assert state.role == "primary" and len(rules.calls) == 1


@pytest.mark.parametrize("connection_cache", [False, True])
def test_on_mode_runs_before_a_promotion(connection_cache):
    """A promotion must find the rules of the new mode: on_mode first, then set_role."""
    beats, state, _, rules, on_mode = make_with_mode(answer("backup", epoch=1),
                                                     active_answer("primary", epoch=2),
                                                     connection_cache=connection_cache)
    beats.beat(0)
    beats.beat(1)
    assert on_mode.calls[1] == {"mode": "active", "answer": beats.answer, "role": "backup",
                                "primary": False, "rules_calls": 0}
    assert len(rules.calls) == 1 and rules.calls[0]["primary"] is True
    assert (state.role, state.epoch, state.primary) == ("primary", 2, True)


def test_on_mode_runs_before_a_demotion():
    beats, state, _, rules, on_mode = make_with_mode(answer("primary", epoch=1),
                                                     active_answer("backup", epoch=2))
    beats.beat(0)
    beats.beat(1)
    assert on_mode.calls[1] == {"mode": "active", "answer": beats.answer, "role": "primary",
                                "primary": True, "rules_calls": 1}
    assert rules.calls[-1]["set"] == (False, None)
    assert (state.role, state.primary) == ("backup", False)


def test_a_failing_on_mode_fails_the_beat_before_the_role_and_is_retried():
    error = RuntimeError("iptables-restore: exit status 4")
    beats, state, client, rules, on_mode = make_with_mode(
        answer("backup", epoch=1), active_answer("primary", epoch=2),
        fail=[None, error, None])
    beats.beat(0)
    with pytest.raises(RuntimeError):
        beats.beat(1)
    # the role of the failed answer is not applied and the mode is not taken
    assert (state.role, state.epoch, state.primary) == ("backup", 1, False)
    assert rules.calls == []
    assert beats.mode is None  # no mode is known: whatever comes next is passed on
    assert beats.answer.mode == "active"  # the answer itself is kept
    beats.beat(2)  # the same answer again: on_mode is retried, then the promotion
    assert [call["mode"] for call in on_mode.calls] == ["passive", "active", "active"]
    assert beats.mode == ACTIVE_MODE
    assert (state.role, state.primary) == ("primary", True)
    assert len(rules.calls) == 1
    assert len(client.bodies) == 3


def test_run_logs_a_failing_on_mode_and_retries_it_at_the_next_beat(caplog):
    stop = threading.Event()
    state = RoleState()
    rules = FakeRules(state)
    client = FakeClient(active_answer("primary", epoch=1),
                        on_call=lambda n: n == 3 and stop.set())
    on_mode = ModeRecorder(state, rules, fail=[ValueError("no secret")])
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, interval=0.001,
                       on_mode=on_mode)
    assert run_in_thread(beats, stop) == []
    assert len(client.bodies) == 3
    assert [call["mode"] for call in on_mode.calls] == ["active", "active"]  # once more only
    assert [call["primary"] for call in on_mode.calls] == [False, False]
    assert beats.failures == 1
    assert beats.mode == ACTIVE_MODE
    assert (state.role, state.primary) == ("primary", True)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "heartbeat round failed" in record.getMessage()
    assert "no secret" in str(record.exc_info[1])


def test_after_a_failed_on_mode_the_next_answer_is_applied_whatever_its_mode():
    beats, _, _, _, on_mode = make_with_mode(
        answer("backup", epoch=1), active_answer("backup", epoch=2), answer("backup", epoch=3),
        fail=[None, RuntimeError("restore failed"), None])
    beats.beat(0)
    with pytest.raises(RuntimeError):
        beats.beat(1)
    beats.beat(2)  # back to passive: the agent must be told, it may be half way to active
    assert [call["mode"] for call in on_mode.calls] == ["passive", "active", "passive"]
    assert beats.mode == PASSIVE_MODE


def test_on_mode_again_when_only_the_active_parameters_change():
    """A new secret or window scale is a new shared sequence space: on_mode again, although
    the mode is still active; the same parameters in another key order are no change."""
    new_secret = {"secret": "11" * 16, "wscale": 7}
    new_wscale = {"secret": "11" * 16, "wscale": 9}
    reordered = {"wscale": 9, "secret": "11" * 16}
    beats, state, _, _, on_mode = make_with_mode(
        active_answer("backup", epoch=1), active_answer("backup", epoch=2),
        answer("backup", epoch=3, mode="active", active=new_secret),
        answer("backup", epoch=4, mode="active", active=new_wscale),
        answer("backup", epoch=5, mode="active", active=reordered))
    for seq in range(5):
        beats.beat(seq)
    assert [(call["mode"], call["answer"].epoch, call["answer"].mode_key[1])
            for call in on_mode.calls] == [
        ("active", 1, json.dumps(ACTIVE_PARAMS, sort_keys=True)),
        ("active", 3, json.dumps(new_secret, sort_keys=True)),
        ("active", 4, json.dumps(new_wscale, sort_keys=True))]
    assert beats.mode == ("active", '{"secret": "' + "11" * 16 + '", "wscale": 9}')
    assert state.epoch == 5


def test_a_failed_on_mode_for_new_active_parameters_is_retried():
    new_secret = {"secret": "11" * 16, "wscale": 7}
    beats, _, _, _, on_mode = make_with_mode(
        active_answer("backup", epoch=1),
        answer("backup", epoch=2, mode="active", active=new_secret),
        fail=[None, RuntimeError("restore failed"), None])
    beats.beat(0)
    with pytest.raises(RuntimeError):
        beats.beat(1)
    assert beats.mode is None
    beats.beat(2)
    assert [call["answer"].epoch for call in on_mode.calls] == [1, 2, 2]
    assert beats.mode == ("active", '{"secret": "' + "11" * 16 + '", "wscale": 7}')


def test_active_parameters_alone_are_followed_without_on_mode():
    beats, _, _, _ = make(active_answer("backup"),
                          answer("backup", mode="active", active={"secret": "22" * 16}))
    beats.beat(0)
    assert beats.mode == ACTIVE_MODE
    beats.beat(1)
    assert beats.mode == ("active", '{"secret": "' + "22" * 16 + '"}')


def test_a_primary_takes_the_mark_of_the_rules_after_each_mode_change():
    """A passive primary with the connection cache keeps no mark in active mode (nothing is
    cached there) and gets its generation's mark back in passive mode: RoleState.fast_mark
    follows Rules.mark after every on_mode, so a ReplyQueue never marks packets for rules that
    are not installed."""
    state = RoleState()
    run = RecordingRun(state)
    rules = iptables.Rules(iptables.RuleSpec(5555, 1, "connection"), run=run)
    seen = []

    def on_mode(reply):
        seen.append(state.fast_mark)  # before the rules change
        rules.set_mode(reply.mode)
    client = FakeClient(answer("primary", epoch=1), active_answer("primary", epoch=1),
                        answer("primary", epoch=1))
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, clock=Clock(),
                       connection_cache=True, on_mode=on_mode)
    beats.beat(0)
    assert (state.primary, state.fast_mark, rules.mark) == (True, fast_mark(1), fast_mark(1))
    beats.beat(1)
    assert (state.primary, state.fast_mark, rules.mark) == (True, None, None)
    beats.beat(2)
    assert (state.primary, state.fast_mark, rules.mark) == (True, fast_mark(1), fast_mark(1))
    assert seen == [None, fast_mark(1), None]
    assert mangle_rules(run.restores[-1][0]) == connection_rules(1)


def test_a_backup_keeps_no_mark_across_mode_changes():
    state = RoleState()
    rules = iptables.Rules(iptables.RuleSpec(5555, 1, "connection"), run=RecordingRun(state))
    beats = Heartbeats(FakeClient(answer("backup", epoch=1), active_answer("backup", epoch=1),
                                  answer("backup", epoch=1)),
                       state, FakeProbe(), dict, rules, clock=Clock(), connection_cache=True,
                       on_mode=lambda reply: rules.set_mode(reply.mode))
    for seq in range(3):
        beats.beat(seq)
        assert (state.primary, state.fast_mark, rules.mark) == (False, None, None)


def test_a_failing_on_mode_leaves_the_mark_of_a_primary():
    state = RoleState()
    rules = FakeRules(state)
    beats = Heartbeats(FakeClient(answer("primary", epoch=1), active_answer("primary", epoch=1)),
                       state, FakeProbe(), dict, rules, clock=Clock(), connection_cache=True,
                       on_mode=ModeRecorder(state, rules, fail=[None, RuntimeError("no")]))
    beats.beat(0)
    assert state.fast_mark == fast_mark(1)
    with pytest.raises(RuntimeError):
        beats.beat(1)
    assert (state.primary, state.fast_mark) == (True, fast_mark(1))


def test_without_rules_the_mark_is_left_alone_after_on_mode():
    beats, state, _, _ = make(answer("primary", epoch=1), active_answer("primary", epoch=1),
                              rules=False, connection_cache=True)
    beats.on_mode = ModeRecorder(state)
    beats.beat(0)
    state.fast_mark = 12345  # whatever it was
    beats.beat(1)
    assert len(beats.on_mode.calls) == 2
    assert state.fast_mark == 12345


def test_mode_changes_with_the_real_rules():
    """backup (passive), then promoted in active mode: the mode's chains are restored while
    still a backup, then the primary's; back in passive mode the primary keeps its role."""
    state = RoleState()
    run = RecordingRun(state)
    rules = iptables.Rules(iptables.RuleSpec(5555, 1), run=run)
    client = FakeClient(answer("backup", epoch=1), active_answer("primary", epoch=2),
                        answer("primary", epoch=2))
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, clock=Clock(),
                       on_mode=lambda a: rules.set_mode(a.mode))
    active_in = ["-A sbft-in -j NFQUEUE --queue-num 1"]
    active_out = [f"-A sbft-out -m mark --mark {hex(iptables.REPLAY_MARK)} -j ACCEPT", QUEUE]
    for seq in range(3):
        beats.beat(seq)
    assert [(raw_rules(text), mangle_rules(text), primary) for text, primary, _ in
            run.restores] == [
        (["-A sbft-in -j DROP"], [QUEUE], False),  # the first answer's mode: passive
        (active_in, active_out, False),  # the mode first, as a backup
        (active_in, active_out, True),  # then the promotion
        ([], ["-A sbft-out -j ACCEPT"], True),  # back to passive: still the primary
    ]
    assert (rules.spec.mode, rules.primary, state.primary) == ("passive", True, True)


# --- controller failures -----------------------------------------------------------------

def test_unreachable_controller_keeps_the_role_and_warns_once(caplog):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    beats, state, _, rules = make(answer("primary", epoch=1),
                                  *[ControllerUnreachable("timed out")] * 10,
                                  answer("primary", epoch=1), connection_cache=True)
    for seq in range(12):
        beats.beat(seq)
        if 1 <= seq <= 10:
            assert (state.role, state.primary, state.fast_mark) == \
                   ("primary", True, fast_mark(1))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fail-static" in warnings[0].getMessage()
    assert "keeping role primary" in warnings[0].getMessage()
    assert "timed out" in warnings[0].getMessage()
    reachable = [r.getMessage() for r in caplog.records if r.getMessage() == "controller reachable"]
    assert len(reachable) == 2  # first contact and recovery
    assert caplog.records[-1].getMessage() == "controller reachable"
    assert len(rules.calls) == 1
    assert beats.failures == 10
    assert beats.sent == 2


def test_unreachable_backup_stays_backup():
    beats, state, _, _ = make(answer("backup", epoch=1), ControllerUnreachable("refused"))
    for seq in range(5):
        beats.beat(seq)
    assert (state.role, state.primary) == ("backup", False)


def test_rejected_heartbeat_keeps_the_role(caplog):
    caplog.set_level(logging.INFO, logger="sbft.agent")
    beats, state, _, rules = make(answer("primary", epoch=1),
                                  ControllerRejected(404, "no replica named 'lbx'"),
                                  connection_cache=True)
    for seq in range(4):
        beats.beat(seq)
    assert (state.role, state.primary, state.fast_mark) == ("primary", True, fast_mark(1))
    assert len(rules.calls) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rejected" in warnings[0] and "HTTP 404" in warnings[0]
    assert beats.failures == 3


def test_failure_before_first_contact_warns_with_role_none(caplog):
    beats, state, _, _ = make(ControllerUnreachable("refused"))
    beats.beat(0)
    beats.beat(1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "keeping role none" in warnings[0]
    assert state.primary is False


# --- the body and the interval -----------------------------------------------------------

def test_body_has_seq_service_ok_and_counters():
    counter_values = iter(range(100))
    beats, _, client, _ = make(answer("backup"), probe_ok=False,
                               counters=lambda: {"accepted": next(counter_values)})
    for seq in range(3):
        beats.beat(seq)
    assert client.bodies == [
        {"seq": 0, "service_ok": False, "counters": {"accepted": 0}},
        {"seq": 1, "service_ok": False, "counters": {"accepted": 1}},
        {"seq": 2, "service_ok": False, "counters": {"accepted": 2}},
    ]
    assert beats.probe.asked == [1000.0] * 3  # asked with the loop's clock


def test_body_is_accepted_by_the_controller_parser():
    rest = pytest.importorskip("sbft_ryu.rest")
    beats, _, client, _ = make(answer("backup"), counters=lambda: {"accepted": 3, "dropped": 1})
    beats.beat(7)
    assert rest.parse_heartbeat(json.dumps(client.bodies[0]).encode())[:3] == \
           (7, True, {"accepted": 3, "dropped": 1})
    assert set(client.bodies[0]) == {"seq", "service_ok", "counters"}  # no key: no nonce/mac


def test_run_sends_incrementing_seq_from_zero():
    stop = threading.Event()
    beats, _, client, _ = make(answer("backup"), interval=0.001)
    client.on_call = lambda n: n == 5 and stop.set()
    beats.run(stop)
    assert [body["seq"] for body in client.bodies] == [0, 1, 2, 3, 4]


def test_answer_is_kept_for_the_agent():
    beats, _, _, _ = make(answer("backup", vip="10.9.9.9"))
    assert beats.answer is None
    beats.beat(0)
    assert beats.answer.vip == "10.9.9.9"


@pytest.mark.parametrize("given, adopted", [
    (0.05, 0.05), (1, 1.0), (0.001, 0.005), (0, 0.005), (-3, 0.005), (99, 10.0),
])
def test_interval_adopted_from_the_answer_and_clamped(given, adopted):
    beats, _, _, _ = make(answer("backup", interval=given))
    assert beats.interval == 0.05  # before any answer
    beats.beat(0)
    assert beats.interval == adopted


@pytest.mark.parametrize("given", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_interval_is_not_adopted(given):
    beats, state, _, _ = make(answer("backup", interval=0.5), answer("primary", interval=given))
    beats.beat(0)
    assert beats.interval == 0.5
    beats.beat(1)
    assert beats.interval == 0.5  # the last finite one stays
    assert state.role == "primary"  # and the answer is applied all the same


def test_non_finite_interval_from_json_is_not_adopted():
    # Python's json accepts NaN / Infinity, so a controller bug could send them
    reply = json.loads('{"role": "backup", "epoch": 1, "heartbeat_interval_s": Infinity}')
    beats, _, _, _ = make(reply)
    beats.beat(0)
    assert beats.interval == 0.05


def test_huge_integer_interval_does_not_break_the_beat():
    beats, state, _, _ = make(answer("primary", interval=10 ** 400))
    beats.beat(0)
    assert state.role == "primary"
    assert 0.005 <= beats.interval <= 10.0


@pytest.mark.parametrize("given", [None, "0.2", [1]])
def test_interval_ignored_when_missing_or_not_a_number(given):
    reply = answer("backup")
    if given is None:
        del reply["heartbeat_interval_s"]
    else:
        reply["heartbeat_interval_s"] = given
    beats, _, _, _ = make(reply)
    beats.beat(0)
    assert beats.interval == 0.05


def test_fixed_interval_is_never_replaced():
    beats, _, _, _ = make(answer("backup", interval=2.0), interval=0.3)
    beats.beat(0)
    assert beats.interval == 0.3


def test_interval_unchanged_by_a_failed_beat():
    beats, _, _, _ = make(answer("backup", interval=0.5), ControllerUnreachable("x"))
    beats.beat(0)
    beats.beat(1)
    assert beats.interval == 0.5


# --- run ---------------------------------------------------------------------------------

class FakeStop:
    """A stop event on a fake clock: wait() advances the clock; set after ``waits`` waits."""

    def __init__(self, clock, waits):
        self.clock = clock
        self.waits = waits
        self.delays = []

    def is_set(self):
        return len(self.delays) >= self.waits

    def wait(self, delay):
        self.delays.append(delay)
        self.clock.now += delay
        return self.is_set()


def test_run_paces_beats_on_the_interval_and_never_bursts():
    clock = Clock(0.0)
    durations = iter([0.25, 0.25, 5.0, 0.25, 0.25])

    class SlowClient(FakeClient):
        def heartbeat(self, body):
            clock.now += next(durations)
            return super().heartbeat(body)

    state = RoleState()
    beats = Heartbeats(SlowClient(answer("backup")), state, FakeProbe(), dict, None,
                       interval=1.0, clock=clock)
    stop = FakeStop(clock, waits=5)
    beats.run(stop)
    assert stop.delays == [0.75, 0.75, 0, 0.75, 0.75]


def test_run_terminates_after_the_stop_event_is_set():
    stop = threading.Event()
    client = FakeClient(answer("primary", epoch=1), on_call=lambda n: n == 20 and stop.set())
    state = RoleState()
    beats = Heartbeats(client, state, FakeProbe(), dict, FakeRules(state), interval=0.001)
    thread = threading.Thread(target=beats.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive()
    assert len(client.bodies) == 20
    assert beats.sent == 20
    assert state.primary is True


def test_run_returns_at_once_when_stopped_before_starting():
    stop = threading.Event()
    stop.set()
    beats, _, client, _ = make(answer("backup"))
    beats.run(stop)
    assert client.bodies == []


def test_run_stops_while_waiting_a_long_interval():
    stop = threading.Event()
    beats, _, client, _ = make(answer("backup"), interval=10.0)
    beats.clock = time.monotonic
    thread = threading.Thread(target=beats.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 2
    while not client.bodies and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    thread.join(1.0)
    assert not thread.is_alive()
    assert len(client.bodies) == 1


def run_in_thread(beats, stop):
    """Run ``beats.run(stop)`` in a thread (bounded); returns exceptions that escaped it."""
    errors = []
    thread = threading.Thread(target=beats.run, args=(stop,), daemon=True)
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        thread.start()
        thread.join(2.0)
    finally:
        threading.excepthook = previous_hook
    assert not thread.is_alive()
    return errors


def test_run_survives_a_failing_promotion_and_retries():
    stop = threading.Event()
    state = RoleState()
    rules = FakeRules(state, fail=RuntimeError("iptables-restore: exit status 4"))
    client = FakeClient(answer("primary", epoch=1), on_call=lambda n: n == 3 and stop.set())
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, interval=0.001,
                       connection_cache=True)
    assert run_in_thread(beats, stop) == []
    assert len(client.bodies) == 3  # the loop kept beating
    assert [call["set"] for call in rules.calls] == [(True, fast_mark(1))] * 2  # retried
    assert (state.role, state.primary) == ("primary", True)
    assert state.fast_mark == rules.mark  # never a mark the kernel has no rule for
    assert beats.failures == 1


def test_run_survives_a_failing_demotion_and_retries_it():
    stop = threading.Event()
    state = RoleState()
    rules = FakeRules(state)
    client = FakeClient(answer("primary", epoch=1), answer("backup", epoch=2),
                        on_call=lambda n: n == 4 and stop.set())
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, interval=0.001,
                       connection_cache=True)
    beats.beat(0)
    rules.fail = RuntimeError("iptables-restore: exit status 4")
    assert run_in_thread(beats, stop) == []
    assert state.primary is False
    assert [call["set"] for call in rules.calls] == [(True, fast_mark(1)), (False, None),
                                                     (False, None)]  # retried
    # the failed attempt already ran with userspace dropping
    assert (rules.calls[1]["primary"], rules.calls[1]["role"]) == (False, "primary")
    assert (rules.primary, rules.mark) == (False, None)  # no cached verdicts any more
    assert (state.role, state.fast_mark) == ("backup", None)
    assert beats.failures == 1


def test_run_survives_an_unexpected_client_error():
    stop = threading.Event()
    state = RoleState()
    client = FakeClient(answer("primary", epoch=1), AttributeError("'str' object has no "
                        "attribute 'get'"), answer("backup", epoch=2),
                        on_call=lambda n: n == 3 and stop.set())
    beats = Heartbeats(client, state, FakeProbe(), dict, FakeRules(state), interval=0.001)
    assert run_in_thread(beats, stop) == []
    assert len(client.bodies) == 3
    assert state.primary is False


def test_run_survives_failing_counters_and_probe():
    stop = threading.Event()
    state = RoleState()
    client = FakeClient(answer("backup", epoch=1), on_call=lambda n: n == 2 and stop.set())
    calls = iter([RuntimeError("queue gone"), {"accepted": 1}, {"accepted": 2}, {}])

    def counters():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    class FlakyProbe(FakeProbe):
        def ok(self, now):
            if len(self.asked) == 1:
                self.asked.append(now)
                raise OSError("probe exploded")
            return super().ok(now)

    beats = Heartbeats(client, state, FlakyProbe(), counters, FakeRules(state), interval=0.001)
    assert run_in_thread(beats, stop) == []
    # round 0: counters failed (no body); round 1: the probe failed; then two heartbeats
    assert client.bodies == [{"seq": 2, "service_ok": True, "counters": {"accepted": 1}},
                             {"seq": 3, "service_ok": True, "counters": {"accepted": 2}}]
    assert beats.failures == 2
    assert state.role == "backup"


def test_run_logs_a_failed_round(caplog):
    stop = threading.Event()
    state = RoleState()
    rules = FakeRules(state, fail=RuntimeError("iptables-restore: exit status 4"))
    client = FakeClient(answer("primary", epoch=1), on_call=lambda n: n == 2 and stop.set())
    beats = Heartbeats(client, state, FakeProbe(), dict, rules, interval=0.001)
    run_in_thread(beats, stop)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "heartbeat round failed" in record.getMessage()
    assert record.exc_info is not None and "exit status 4" in str(record.exc_info[1])


# --- nudges: the wakeup socket -----------------------------------------------------------

@pytest.fixture
def udp_pair():
    """(receiver, send): a non-blocking UDP socket on 127.0.0.1 like Agent._wakeup_socket,
    and a function sending it ``count`` datagrams like the controller's nudge."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(count=1):
        for _ in range(count):
            sender.sendto(b"sbft-nudge", receiver.getsockname())
    yield receiver, send
    sender.close()
    receiver.close()


def nudged(beats, udp_pair, interval=5.0):
    receiver, _ = udp_pair
    beats.wakeup = receiver
    beats.clock = time.monotonic
    beats.interval = beats.fixed_interval = interval
    return beats


def pending(sock):
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def test_wait_without_a_wakeup_socket_waits_on_the_stop_event():
    beats, _, _, _ = make(answer("backup"))
    stop = FakeStop(Clock(0.0), waits=10)
    assert beats._wait(stop, 0.25) is False
    assert stop.delays == [0.25]


def test_wait_returns_false_after_the_delay_without_a_nudge(udp_pair):
    beats = nudged(make(answer("backup"))[0], udp_pair)
    start = time.monotonic()
    assert beats._wait(threading.Event(), 0.05) is False
    assert 0.045 <= time.monotonic() - start < 1.0


def test_wait_without_a_nudge_returns_after_the_delay(udp_pair):
    beats = nudged(make(answer("backup"))[0], udp_pair)
    start = time.monotonic()
    assert beats._wait(threading.Event(), 0) is False
    assert beats._wait(threading.Event(), 0.05) is False
    assert 0.04 <= time.monotonic() - start < 1.0


def test_a_nudge_ends_the_wait_at_once(udp_pair):
    receiver, send = udp_pair
    beats = nudged(make(answer("backup"))[0], udp_pair)
    send()
    start = time.monotonic()
    assert beats._wait(threading.Event(), 5.0) is True
    assert time.monotonic() - start < 1.0
    assert not pending(receiver)  # consumed


def test_a_nudge_during_the_wait_ends_it(udp_pair):
    _, send = udp_pair
    beats = nudged(make(answer("backup"))[0], udp_pair)
    timer = threading.Timer(0.05, send)
    timer.start()
    start = time.monotonic()
    try:
        assert beats._wait(threading.Event(), 5.0) is True
    finally:
        timer.join()
    assert 0.04 <= time.monotonic() - start < 1.0


def test_queued_nudges_are_drained_into_one_wakeup(udp_pair):
    receiver, send = udp_pair
    beats = nudged(make(answer("backup"))[0], udp_pair)
    send(10)
    assert beats._wait(threading.Event(), 5.0) is True
    assert not pending(receiver)
    assert beats._wait(threading.Event(), 0.02) is False  # nothing left to wake it


def test_draining_is_bounded_to_64_datagrams(udp_pair):
    receiver, send = udp_pair
    beats = nudged(make(answer("backup"))[0], udp_pair)
    send(70)
    assert beats._wait(threading.Event(), 5.0) is True
    assert pending(receiver)  # six left for the next round
    assert beats._wait(threading.Event(), 5.0) is True
    assert not pending(receiver)


class BeatTimes(FakeClient):
    """A fake controller that records when each heartbeat came (monotonic)."""

    def __init__(self, *script):
        super().__init__(*script)
        self.times = []
        self.arrived = threading.Condition()

    def heartbeat(self, body):
        with self.arrived:
            self.times.append(time.monotonic())
            self.arrived.notify_all()
        return super().heartbeat(body)

    def wait_for(self, count, timeout):
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.times) >= count, timeout)


def start_run(beats, stop):
    thread = threading.Thread(target=beats.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def stop_run(thread, stop, send):
    stop.set()
    send()
    thread.join(2.0)
    assert not thread.is_alive()


def test_run_beats_at_once_when_nudged(udp_pair):
    _, send = udp_pair
    state = RoleState()
    client = BeatTimes(answer("backup", epoch=1), answer("primary", epoch=2))
    beats = Heartbeats(client, state, FakeProbe(), dict, FakeRules(state), interval=5.0,
                       wakeup=udp_pair[0])
    stop = threading.Event()
    thread = start_run(beats, stop)
    try:
        assert client.wait_for(1, 2.0)
        time.sleep(0.1)
        assert len(client.times) == 1  # the 5 s interval is running
        assert state.role == "backup"
        nudge_at = time.monotonic()
        send()
        assert client.wait_for(2, 1.0)
        assert client.times[1] - nudge_at < 1.0  # well before the 5 s interval
        assert [body["seq"] for body in client.bodies] == [0, 1]
        deadline = time.monotonic() + 1.0
        while state.role != "primary" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert (state.role, state.epoch, state.primary) == ("primary", 2, True)
        time.sleep(0.1)
        assert len(client.times) == 2  # one nudge, one extra beat; then the rhythm resumes
    finally:
        stop_run(thread, stop, send)


def test_run_without_nudges_keeps_the_interval(udp_pair):
    _, send = udp_pair
    client = BeatTimes(answer("backup"))
    beats = Heartbeats(client, RoleState(), FakeProbe(), dict, None, interval=5.0,
                       wakeup=udp_pair[0])
    stop = threading.Event()
    thread = start_run(beats, stop)
    try:
        assert client.wait_for(1, 2.0)
        assert not client.wait_for(2, 0.3)
    finally:
        stop_run(thread, stop, send)


def test_a_burst_of_nudges_brings_one_extra_beat(udp_pair):
    _, send = udp_pair
    client = BeatTimes(answer("backup"))
    client.on_call = lambda n: n == 1 and send(20)  # all queued before the loop waits
    beats = Heartbeats(client, RoleState(), FakeProbe(), dict, None, interval=5.0,
                       wakeup=udp_pair[0])
    stop = threading.Event()
    thread = start_run(beats, stop)
    try:
        assert client.wait_for(2, 1.0)
        assert not client.wait_for(3, 0.2)
        assert client.times[1] - client.times[0] < 1.0
    finally:
        stop_run(thread, stop, send)


def test_run_with_a_wakeup_socket_stops_while_waiting_a_long_interval(udp_pair):
    _, send = udp_pair
    client = BeatTimes(answer("backup"))
    beats = Heartbeats(client, RoleState(), FakeProbe(), dict, None, interval=5.0,
                       wakeup=udp_pair[0])
    stop = threading.Event()
    thread = start_run(beats, stop)
    try:
        assert client.wait_for(1, 2.0)
        stop.set()
        thread.join(1.0)
        assert not thread.is_alive()
    finally:
        stop_run(thread, stop, send)


def test_a_nudge_flood_is_limited_to_one_beat_per_gap(udp_pair):
    _, send = udp_pair
    stop = threading.Event()
    rounds = 40

    class Flooded(FakeClient):
        def heartbeat(self, body):
            send()  # another nudge is always waiting when the round ends
            if len(self.bodies) + 1 == rounds:
                stop.set()
            return super().heartbeat(body)

    beats = Heartbeats(Flooded(answer("backup")), RoleState(), FakeProbe(), dict, None,
                       interval=5.0, wakeup=udp_pair[0])
    start = time.monotonic()
    beats.run(stop)
    # rounds beats need at least (rounds - 1) gaps
    assert time.monotonic() - start >= (rounds - 1) * heartbeat.MIN_NUDGE_GAP_S * 0.9


# --- ControllerClient against a loopback HTTP server -------------------------------------

class ControllerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are two writes

    def do_POST(self):
        server = self.server
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        server.requests.append({"path": self.path, "client": self.client_address,
                                "content_type": self.headers.get("Content-Type"),
                                "body": json.loads(body)})
        status, payload = server.reply
        if server.delay:
            server.release.wait(server.delay)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left


@pytest.fixture
def controller():
    server = QuietServer(("127.0.0.1", 0), ControllerHandler)
    server.requests = []
    server.reply = (200, json.dumps(answer("backup")).encode())
    server.delay = 0
    server.release = threading.Event()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(2.0)
    assert not thread.is_alive()


@pytest.fixture
def clients():
    made = []

    def make_client(url, name="lb1", timeout=1.0):
        client = ControllerClient(url, name, timeout)
        made.append(client)
        return client
    yield make_client
    for client in made:
        client.close()


def set_reply(server, status, body):
    server.reply = (status, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_client_posts_json_and_returns_the_answer(controller, clients):
    client = clients(controller.url)
    body = {"seq": 0, "service_ok": True, "counters": {"accepted": 1}}
    assert client.heartbeat(body) == answer("backup")
    [request] = controller.requests
    assert request["path"] == "/sbft/replicas/lb1/heartbeat"
    assert request["content_type"] == "application/json"
    assert request["body"] == body


def test_client_keeps_the_connection_alive(controller, clients):
    client = clients(controller.url)
    for seq in range(4):
        client.heartbeat({"seq": seq, "service_ok": True, "counters": {}})
    assert [r["body"]["seq"] for r in controller.requests] == [0, 1, 2, 3]
    assert len({r["client"] for r in controller.requests}) == 1


def test_client_quotes_the_replica_name(controller, clients):
    clients(controller.url, name="lb 1").heartbeat({"seq": 0})
    assert controller.requests[0]["path"] == "/sbft/replicas/lb%201/heartbeat"


@pytest.mark.parametrize("status, message", [
    (404, "no replica named 'lbx'; configured: ['lb1', 'lb2', 'lb3']"),
    (400, "seq must be a non-negative integer, got -1"),
    (413, "body larger than 65536 bytes"),
])
def test_client_rejected_with_the_json_error_message(controller, clients, status, message):
    set_reply(controller, status, {"error": {"code": status, "message": message}})
    client = clients(controller.url)
    with pytest.raises(ControllerRejected) as info:
        client.heartbeat({"seq": 0})
    assert info.value.status == status
    assert str(info.value) == f"HTTP {status}: {message}"
    # a rejection is an answer: the connection stays usable
    set_reply(controller, 200, answer("primary"))
    assert client.heartbeat({"seq": 1})["role"] == "primary"


def test_client_rejected_for_a_non_json_error(controller, clients):
    set_reply(controller, 502, b"<html>Bad Gateway</html>")
    with pytest.raises(ControllerRejected) as info:
        clients(controller.url).heartbeat({"seq": 0})
    assert info.value.status == 502
    assert "Bad Gateway" in str(info.value)


@pytest.mark.parametrize("body, shown", [
    ({"error": "Not Found"}, "Not Found"),
    (["not", "found"], "found"),
    ("not found", "not found"),
    ({"error": None}, "null"),
    ({"error": {"code": 404}}, "404"),
    ({"error": {"message": ""}}, "message"),
    ({"detail": "Not Found"}, "Not Found"),
    (None, "null"),
    (42, "42"),
], ids=["error-string", "list", "string", "error-null", "error-no-message", "empty-message",
        "detail", "null", "number"])
def test_client_rejected_for_a_foreign_json_error(controller, clients, body, shown):
    set_reply(controller, 404, json.dumps(body).encode())
    client = clients(controller.url)
    with pytest.raises(ControllerRejected) as info:
        client.heartbeat({"seq": 0})
    assert info.value.status == 404
    assert str(info.value).startswith("HTTP 404: ")
    assert shown in str(info.value)  # the raw body, since it carries no usable message
    set_reply(controller, 200, answer("backup"))
    assert client.heartbeat({"seq": 1})["role"] == "backup"  # the connection stays usable


def test_client_rejected_message_of_a_long_foreign_body_is_bounded(controller, clients):
    set_reply(controller, 500, {"error": "x" * 5000})
    with pytest.raises(ControllerRejected) as info:
        clients(controller.url).heartbeat({"seq": 0})
    assert info.value.status == 500
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("body", [
    b"OK",
    b"\xff\xfe not utf-8",
    json.dumps({"role": "leader", "epoch": 1}).encode(),
    json.dumps({"epoch": 1}).encode(),
    json.dumps(["primary"]).encode(),
    json.dumps("primary").encode(),
    b"",
], ids=["text", "not-utf8", "unknown-role", "no-role", "list", "string", "empty"])
def test_client_rejects_a_200_it_cannot_use(controller, clients, body):
    set_reply(controller, 200, body)
    with pytest.raises(ControllerRejected) as info:
        clients(controller.url).heartbeat({"seq": 0})
    assert info.value.status == 200
    assert "unexpected answer" in str(info.value)


@pytest.mark.parametrize("role", heartbeat.ROLES)
def test_client_accepts_every_known_role(controller, clients, role):
    set_reply(controller, 200, answer(role))
    assert clients(controller.url).heartbeat({"seq": 0})["role"] == role


def test_client_unreachable_on_a_closed_port(clients):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    client = clients(f"http://127.0.0.1:{port}")
    with pytest.raises(ControllerUnreachable):
        client.heartbeat({"seq": 0})
    assert client._conn is None


def test_client_unreachable_when_the_controller_is_too_slow(controller, clients):
    controller.delay = 2.0
    client = clients(controller.url, timeout=0.15)
    start = time.monotonic()
    with pytest.raises(ControllerUnreachable):
        client.heartbeat({"seq": 0})
    assert time.monotonic() - start < 1.0


def test_client_reconnects_after_a_failure(controller, clients):
    client = clients(controller.url, timeout=0.15)
    client.heartbeat({"seq": 0})
    controller.delay = 2.0
    with pytest.raises(ControllerUnreachable):
        client.heartbeat({"seq": 1})
    controller.delay = 0
    assert client.heartbeat({"seq": 2}) == answer("backup")
    clients_seen = [r["client"] for r in controller.requests]
    assert clients_seen[0] == clients_seen[1] != clients_seen[2]


def test_client_close_is_idempotent(controller, clients):
    client = clients(controller.url)
    client.close()
    client.heartbeat({"seq": 0})
    client.close()
    client.close()
    assert client._conn is None


@pytest.mark.parametrize("url", ["https://127.0.0.1:8080", "127.0.0.1:8080", "http://",
                                 "ftp://host:21", ""])
def test_client_rejects_non_http_urls(url):
    with pytest.raises(ValueError):
        ControllerClient(url, "lb1", 0.25)


def test_client_default_port():
    client = ControllerClient("http://10.254.0.254", "lb1", 0.25)
    assert (client.host, client.port, client.path) == \
           ("10.254.0.254", 8080, "/sbft/replicas/lb1/heartbeat")
