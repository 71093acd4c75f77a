"""Tests for ClusterState.snapshot/restore: what a restarted controller takes up, and how it
decides (the stored primary keeps its role if it shows up within heartbeat_timeout of the
switch's port report; else the succession goes on at once, never after startup_grace)."""

import json

import pytest

from sbft_ryu.cluster import ClusterState, ClusterView
from sbft_ryu.model import Replica

REPLICAS = tuple(Replica(f"lb{n}", f"10.0.0.1{n}", f"00:00:00:00:01:0{n}", n)
                 for n in (1, 2, 3))
SPARE = Replica("lb4", "10.0.0.14", "00:00:00:00:01:04", 4)
ALL_UP = {1: True, 2: True, 3: True, 4: True}
TIMEOUT = 0.15
GRACE = 10.0


def new(by_seniority=False, spares=()):
    return ClusterState(REPLICAS, TIMEOUT, startup_grace=GRACE, by_seniority=by_seniority,
                        spares=spares)


def beat(state, now, names=("lb1", "lb2", "lb3")):
    for name in names:
        state.heartbeat(name, 1, True, {}, now)


def running(by_seniority=False):
    """A tier that elected lb1, lost lb1 (lb2 primary, epoch 2), got lb1 back, and convicted
    lb3; then its state as a restarted process would read it (through JSON)."""
    state = new(by_seniority)
    state.set_ports(1, ALL_UP, 0.0)
    beat(state, 1.0)
    assert state.view == ClusterView(("lb1", "lb2", "lb3"), "lb1", 1)
    beat(state, 1.1, ("lb2", "lb3"))
    state.evaluate(1.2)
    assert state.view.primary == "lb2"
    beat(state, 1.25)
    state.mark_byzantine("lb3", 1.3, "its output disagreed with the majority")
    return state, json.loads(json.dumps(state.snapshot()))


def test_a_snapshot_round_trips_through_json():
    old, snapshot = running()
    restored = new()
    assert restored.restore(snapshot, 100.0) == []
    assert restored.snapshot() == old.snapshot()
    assert restored.view == old.view == ClusterView(("lb1", "lb2"), "lb2", 2)
    assert restored.state("lb3") == "byzantine" and "lb3" not in restored.voters
    assert restored.generation == old.generation and restored.epoch_primary == {1: "lb1",
                                                                                2: "lb2"}


def test_the_stored_primary_keeps_its_role_when_the_members_report_in_time():
    _, snapshot = running()
    state = new()
    state.restore(snapshot, 100.0)
    assert state.resuming and not state.decided
    beat(state, 100.1, ("lb1", "lb2"))  # before the switch: nothing decided
    assert state.evaluate(100.1) is None and state.resuming
    state.set_ports(1, ALL_UP, 100.2)  # every stored member up: decided at once
    assert state.decided
    assert state.view == ClusterView(("lb1", "lb2"), "lb2", 2)  # same epoch, same primary
    assert [g for g in (state.generation["lb1"], state.generation["lb2"])] == \
        [snapshot["generation"]["lb1"], snapshot["generation"]["lb2"]]  # no new generation


def test_a_dead_stored_primary_is_succeeded_heartbeat_timeout_after_the_port_report():
    _, snapshot = running()
    state = new()
    state.restore(snapshot, 100.0)
    state.set_ports(1, ALL_UP, 100.0)
    beat(state, 100.05, ("lb1",))
    assert state.evaluate(100.1) is None and state.resuming
    assert state.next_deadline(100.1) == pytest.approx(100.0 + TIMEOUT)
    beat(state, 100.12, ("lb1",))
    view = state.evaluate(100.0 + TIMEOUT)
    assert state.decided and view == ClusterView(("lb1",), "lb1", 3)  # not after GRACE


def test_undecided_evidence_decides_first():
    _, snapshot = running()
    state = new()
    state.restore(snapshot, 100.0)
    state.set_ports(1, ALL_UP, 100.0)
    beat(state, 100.01, ("lb1", "lb2"))
    assert state.decided  # (both stored members up)
    other = new()
    other.restore(snapshot, 100.0)
    other.mark_byzantine("lb1", 100.0, "test")
    assert other.decided and other.state("lb1") == "byzantine"


def test_a_restore_of_a_tier_never_elected_waits_for_the_grace_as_a_first_start():
    state = new()
    snapshot = json.loads(json.dumps(state.snapshot()))
    restored = new()
    restored.restore(snapshot, 0.0)
    assert restored.decided and restored.view.epoch == 0


def test_replicas_no_longer_configured_are_dropped():
    old = ClusterState(REPLICAS, TIMEOUT, spares=(SPARE,))
    old.set_ports(1, ALL_UP, 0.0)
    beat(old, 1.0, ("lb1", "lb2", "lb3", "lb4"))
    old.mark_byzantine("lb2", 1.1, "test")  # lb4 takes its place
    assert "lb4" in old.view.members
    snapshot = json.loads(json.dumps(old.snapshot()))
    restored = new()  # lb4 is gone from the configuration
    assert restored.restore(snapshot, 5.0) == ["lb4"]
    assert restored.view.members == ("lb1", "lb3") and "lb4" not in restored.voters
    assert restored.state("lb2") == "byzantine"


@pytest.mark.parametrize("damage", [
    lambda s: s.pop("epoch"), lambda s: s.update(epoch="x"), lambda s: s.update(epoch=-1),
    lambda s: s.update(generation=None), lambda s: s["seniority"].pop("round")])
def test_a_malformed_snapshot_is_a_value_error_of_some_kind(damage):
    _, snapshot = running()
    damage(snapshot)
    with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
        new().restore(snapshot, 0.0)


def test_seniority_is_a_join_order_that_survives_a_restart():
    """Active mode: lb2 rejoined after lb3 was up, so lb3 is senior; after a restart the
    stored order still makes lb3 the successor of lb1 (monotonic times would not compare)."""
    state = new(by_seniority=True)
    state.set_ports(1, ALL_UP, 0.0)
    beat(state, 1.0)
    beat(state, 1.1, ("lb1", "lb3"))
    state.evaluate(1.2)  # lb2 silent: out
    beat(state, 1.25)  # lb2 back: a later round
    assert state.view.members == ("lb1", "lb2", "lb3")
    snapshot = json.loads(json.dumps(state.snapshot()))
    seniority = snapshot["seniority"]  # rounds; everyone in at the first election ties
    first = seniority["first_elected_round"]
    assert seniority["member_since"]["lb2"] > first >= seniority["member_since"]["lb3"]
    restored = new(by_seniority=True)
    restored.restore(snapshot, 5000.0)  # another process: another monotonic clock
    restored.set_ports(1, ALL_UP, 5000.0)
    beat(restored, 5000.01, ("lb2", "lb3"))
    view = restored.evaluate(5000.0 + TIMEOUT)
    assert view.primary == "lb3"
