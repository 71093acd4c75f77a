"""Tests for sbft_ryu.cluster: liveness, the sticky primary and the epoch, on a fake clock."""

import pytest

from sbft_ryu import cluster
from sbft_ryu.cluster import ClusterState, ClusterView
from sbft_ryu.model import Replica

REPLICAS = (
    Replica("lb1", "10.0.0.11", "00:00:00:00:01:01", 1),
    Replica("lb2", "10.0.0.12", "00:00:00:00:01:02", 2),
    Replica("lb3", "10.0.0.13", "00:00:00:00:01:03", 3),
)
DPID = 1
ALL_UP = {1: True, 2: True, 3: True}
TIMEOUT = 0.15


def ports_only():
    """heartbeat_timeout=0: a replica is up while its switch port is."""
    return ClusterState(REPLICAS, heartbeat_timeout=0)


def all_up():
    state = ports_only()
    state.set_ports(DPID, ALL_UP, 0.0)
    return state


def with_heartbeats(now=1.0, names=("lb1", "lb2", "lb3")):
    """heartbeat_timeout=0.15, every port up and a heartbeat from ``names`` at ``now``."""
    state = ClusterState(REPLICAS, heartbeat_timeout=TIMEOUT)
    state.set_ports(DPID, ALL_UP, 0.0)
    for seq, name in enumerate(names):
        state.heartbeat(name, seq, True, {}, now)
    return state


def changes(state):
    return [(t.replica, t.change, t.epoch) for t in state.history]


# --- port state only (heartbeat_timeout=0) -------------------------------------------------


def test_nothing_is_up_before_any_port_status():
    state = ports_only()
    assert state.view == ClusterView(members=(), primary=None, epoch=0)
    assert [state.state(r.name) for r in REPLICAS] == ["down"] * 3
    assert state.health["lb1"].down_reason == "no switch port seen"
    assert state.evaluate(5.0) is None
    assert state.status() == "down"


def test_set_ports_brings_replicas_up_and_elects_the_first_with_epoch_1():
    state = ports_only()
    view = state.set_ports(DPID, ALL_UP, 0.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)
    assert state.view == view
    assert all(state.state(r.name) == "up" for r in REPLICAS)
    assert changes(state) == [("lb1", "up", 0), ("lb2", "up", 0), ("lb3", "up", 0),
                              ("lb1", "primary", 1)]


def test_election_follows_configured_order_not_port_order():
    state = ports_only()
    view = state.set_ports(DPID, {2: True, 3: True}, 0.0)
    assert view == ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=1)


def test_primary_port_down_fails_over_to_next_replica():
    state = all_up()
    view = state.port_status(DPID, 1, False, 1.0)
    assert view == ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=2)
    assert state.health["lb1"].down_reason == "switch port down"
    assert changes(state)[-2:] == [("lb1", "down: switch port down", 1), ("lb2", "primary", 2)]


def test_old_primary_rejoins_as_backup_and_epoch_is_unchanged():
    state = all_up()
    state.port_status(DPID, 1, False, 1.0)
    view = state.port_status(DPID, 1, True, 2.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb2", epoch=2)
    assert state.role("lb1") == "backup"


def test_backup_port_down_changes_members_only():
    state = all_up()
    view = state.port_status(DPID, 3, False, 1.0)
    assert view == ClusterView(members=("lb1", "lb2"), primary="lb1", epoch=1)


def test_unrelated_port_changes_nothing():
    state = all_up()
    assert state.port_status(DPID, 7, False, 1.0) is None
    assert state.port_status(DPID, 7, True, 1.0) is None


def test_all_down_leaves_no_primary_and_bumps_epoch():
    state = all_up()
    view = state.set_ports(DPID, {1: False, 2: False, 3: False}, 1.0)
    assert view == ClusterView(members=(), primary=None, epoch=2)
    assert state.status() == "down"
    assert changes(state)[-1] == (None, "no primary", 2)


def test_recovery_after_all_down_elects_again_with_new_epoch():
    state = all_up()
    state.set_ports(DPID, {}, 1.0)
    view = state.port_status(DPID, 3, True, 2.0)
    assert view == ClusterView(members=("lb3",), primary="lb3", epoch=3)


def test_status_ok_degraded_down():
    state = all_up()
    assert state.status() == "ok"
    state.port_status(DPID, 2, False, 1.0)
    assert state.status() == "degraded"
    state.port_status(DPID, 1, False, 2.0)
    assert state.status() == "degraded"  # lb3 is primary
    state.port_status(DPID, 3, False, 3.0)
    assert state.status() == "down"


def test_switch_gone_marks_links_down():
    state = all_up()
    view = state.switch_gone(DPID, 1.0)
    assert view == ClusterView(members=(), primary=None, epoch=2)
    assert not any(state.health[r.name].link_up for r in REPLICAS)


def test_switch_gone_for_unknown_switch_changes_nothing():
    state = all_up()
    assert state.switch_gone(99, 1.0) is None


def test_a_port_up_on_any_of_two_switches_counts():
    state = ports_only()
    state.set_ports(1, {1: True, 2: False}, 0.0)
    state.set_ports(2, {1: False, 2: True}, 0.0)
    assert state.view.members == ("lb1", "lb2")
    state.switch_gone(1, 1.0)
    assert state.view.members == ("lb2",)
    assert state.view.primary == "lb2"


def test_set_ports_replaces_what_the_switch_reported():
    state = all_up()
    view = state.set_ports(DPID, {2: True}, 1.0)
    assert view.members == ("lb2",)


# --- heartbeats (heartbeat_timeout=0.15) ----------------------------------------------------


def test_no_heartbeat_yet_means_down():
    state = ClusterState(REPLICAS, heartbeat_timeout=TIMEOUT)
    assert state.set_ports(DPID, ALL_UP, 0.0) is None
    assert state.view.primary is None
    assert state.health["lb1"].link_up
    assert state.health["lb1"].down_reason == "no heartbeat yet"


def test_heartbeat_brings_replica_up():
    state = ClusterState(REPLICAS, heartbeat_timeout=TIMEOUT)
    state.set_ports(DPID, ALL_UP, 0.0)
    view = state.heartbeat("lb2", 0, True, {"rx": 1}, 1.0)
    assert view == ClusterView(members=("lb2",), primary="lb2", epoch=1)
    health = state.health["lb2"]
    assert (health.seq, health.service_ok, health.counters, health.heartbeats) == (
        0, True, {"rx": 1}, 1)
    assert health.acked_epoch == 1
    assert health.down_reason is None


def test_heartbeat_without_link_is_not_enough():
    state = ClusterState(REPLICAS, heartbeat_timeout=TIMEOUT)
    assert state.heartbeat("lb1", 0, True, {}, 1.0) is None
    assert state.health["lb1"].down_reason == "switch port down"


def test_heartbeat_silence_brings_replica_down_and_fails_over():
    state = with_heartbeats(now=1.0)
    state.heartbeat("lb2", 10, True, {}, 1.1)
    state.heartbeat("lb3", 10, True, {}, 1.1)
    assert state.evaluate(1.15) is None  # exactly the timeout: still up
    view = state.evaluate(1.16)
    assert view == ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=2)
    assert state.health["lb1"].down_reason == "heartbeat silence"
    assert ("lb1", "down: heartbeat silence", 1) in changes(state)


def test_heartbeat_after_silence_rejoins_as_backup():
    state = with_heartbeats(now=1.0, names=("lb1", "lb2"))
    state.heartbeat("lb2", 5, True, {}, 1.1)
    state.evaluate(1.16)
    view = state.heartbeat("lb1", 6, True, {}, 1.2)
    assert view == ClusterView(members=("lb1", "lb2"), primary="lb2", epoch=2)


def test_failed_service_probe_means_down():
    state = with_heartbeats(now=1.0)
    view = state.heartbeat("lb1", 5, False, {}, 1.05)
    assert view.primary == "lb2"
    assert state.state("lb1") == "down"
    assert state.health["lb1"].down_reason == "service probe failed"


def test_decreasing_seq_counts_an_agent_restart():
    state = with_heartbeats(now=1.0)
    state.heartbeat("lb1", 5, True, {}, 1.01)
    state.heartbeat("lb1", 5, True, {}, 1.02)
    assert state.health["lb1"].agent_restarts == 0
    state.heartbeat("lb1", 0, True, {}, 1.03)
    assert state.health["lb1"].agent_restarts == 1
    assert state.health["lb1"].seq == 0


def test_heartbeat_age():
    state = with_heartbeats(now=1.0, names=("lb1",))
    assert state.heartbeat_age("lb1", 1.25) == pytest.approx(0.25)
    assert state.heartbeat_age("lb1", 0.5) == 0.0  # never negative
    assert state.heartbeat_age("lb2", 1.25) is None


def test_heartbeat_counters_are_copied():
    state = with_heartbeats(now=1.0, names=())
    counters = {"rx": 1}
    state.heartbeat("lb1", 0, True, counters, 1.0)
    counters["rx"] = 2
    assert state.health["lb1"].counters == {"rx": 1}


# --- history --------------------------------------------------------------------------------


def test_transitions_since_returns_only_newer():
    state = all_up()
    seen = state.recorded
    assert seen == 4
    assert state.transitions_since(seen) == []
    state.port_status(DPID, 1, False, 5.0)
    newer = state.transitions_since(seen)
    assert [(t.at, t.replica, t.change, t.epoch) for t in newer] == [
        (5.0, "lb1", "down: switch port down", 1), (5.0, "lb2", "primary", 2)]
    assert state.transitions_since(0) == list(state.history)


def test_transitions_since_after_history_wraps():
    state = all_up()
    for step in range(100):  # one transition per flap of lb3 (a backup)
        state.port_status(DPID, 3, step % 2 == 1, float(step))
    assert state.recorded == 104
    assert len(state.history) == cluster._HISTORY
    seen = state.recorded
    state.port_status(DPID, 2, False, 200.0)
    assert [(t.replica, t.change) for t in state.transitions_since(seen)] == [
        ("lb2", "down: switch port down")]
    assert [t.at for t in state.transitions_since(seen - 2)] == [98.0, 99.0, 200.0]
    # older than history holds: everything still held
    assert state.transitions_since(0) == list(state.history)


# --- byzantine replicas ---------------------------------------------------------------------


def test_mark_byzantine_excludes_the_primary():
    state = all_up()
    view = state.mark_byzantine("lb1", 1.0, "forged reply")
    assert view == ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=2)
    assert (state.state("lb1"), state.role("lb1")) == ("byzantine", "none")
    assert ("lb1", "byzantine: forged reply", 1) in changes(state)
    assert state.mark_byzantine("lb1", 2.0, "again") is None


def test_byzantine_replica_stays_out_while_its_port_is_up():
    state = all_up()
    state.mark_byzantine("lb3", 1.0, "x")
    assert state.port_status(DPID, 3, True, 2.0) is None
    assert state.evaluate(3.0) is None
    assert state.view.members == ("lb1", "lb2")


def test_readmit_brings_replica_back_as_backup():
    state = all_up()
    state.mark_byzantine("lb1", 1.0, "x")
    view = state.readmit("lb1", 2.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb2", epoch=2)
    assert (state.state("lb1"), state.role("lb1")) == ("up", "backup")
    assert ("lb1", "readmitted by operator", 2) in changes(state)
    assert state.readmit("lb1", 3.0) is None


def test_readmit_with_port_down_keeps_it_down():
    state = all_up()
    state.mark_byzantine("lb3", 1.0, "x")
    state.port_status(DPID, 3, False, 1.5)
    assert state.readmit("lb3", 2.0) is None
    assert state.state("lb3") == "down"


def test_mark_byzantine_of_a_backup_keeps_the_primary_and_the_epoch():
    state = all_up()
    view = state.mark_byzantine("lb3", 1.0, "its output disagreed with the majority")
    assert view == ClusterView(members=("lb1", "lb2"), primary="lb1", epoch=1)
    assert state.health["lb3"].down_reason.startswith("byzantine")
    assert state.status() == "degraded"


def test_readmit_of_a_replica_that_is_not_byzantine_changes_nothing():
    state = all_up()
    recorded = state.recorded
    assert state.readmit("lb2", 1.0) is None
    assert state.recorded == recorded


def test_readmit_with_a_silent_agent_keeps_it_down_until_it_beats():
    state = with_heartbeats(now=1.0)
    state.mark_byzantine("lb3", 1.0, "x")
    state.heartbeat("lb1", 5, True, {}, 2.0)
    state.heartbeat("lb2", 5, True, {}, 2.0)
    assert state.readmit("lb3", 2.0) is None  # its last heartbeat is long ago
    assert state.state("lb3") == "down" and not state.health["lb3"].byzantine
    assert state.health["lb3"].down_reason == "heartbeat silence"
    state.heartbeat("lb3", 5, True, {}, 2.05)
    assert state.view.members == ("lb1", "lb2", "lb3")


# --- serve_below: no primary with too few replicas (voting, unvoted = stop) -------------------


def test_serve_below_elects_no_primary_with_too_few_members():
    state = ClusterState(REPLICAS, heartbeat_timeout=0, serve_below=3)
    view = state.set_ports(DPID, {1: True, 2: True}, 0.0)
    assert view == ClusterView(members=("lb1", "lb2"), primary=None, epoch=0)  # nobody serves
    view = state.port_status(DPID, 3, True, 1.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)
    view = state.port_status(DPID, 2, False, 2.0)
    assert view == ClusterView(members=("lb1", "lb3"), primary=None, epoch=2)
    assert ("lb2", "down: switch port down", 1) in changes(state)
    assert (None, "no primary", 2) in changes(state)
    assert state.status() == "down"
    assert state.port_status(DPID, 2, True, 3.0) == ClusterView(
        members=("lb1", "lb2", "lb3"), primary="lb1", epoch=3)


def test_serve_below_counts_a_byzantine_replica_out():
    state = ClusterState(REPLICAS, heartbeat_timeout=0, serve_below=3)
    state.set_ports(DPID, ALL_UP, 0.0)
    assert state.mark_byzantine("lb2", 1.0, "x").primary is None
    assert state.readmit("lb2", 2.0).primary == "lb1"


def test_without_serve_below_a_single_replica_serves():
    state = ports_only()
    assert state.set_ports(DPID, {3: True}, 0.0).primary == "lb3"


# --- epoch_primary: the primary of each epoch (wire reports name an epoch) ----------------------


def test_epoch_primary_records_every_epochs_primary():
    state = all_up()
    state.mark_byzantine("lb1", 1.0, "x")
    state.port_status(DPID, 2, False, 2.0)
    state.port_status(DPID, 3, False, 3.0)
    assert state.epoch_primary == {1: "lb1", 2: "lb2", 3: "lb3", 4: None}


def test_epoch_primary_keeps_a_bounded_history():
    state = ports_only()
    state.set_ports(DPID, {1: True}, 0.0)
    for n in range(1, 200):
        state.port_status(DPID, 1, n % 2 == 0, float(n))
    epochs = sorted(state.epoch_primary)
    assert epochs[-1] == state.view.epoch == 200
    assert len(epochs) == cluster._HISTORY + 1 and epochs[0] == 200 - cluster._HISTORY


# --- queries --------------------------------------------------------------------------------


def test_roles():
    state = all_up()
    state.port_status(DPID, 3, False, 1.0)
    assert [state.role(r.name) for r in REPLICAS] == ["primary", "backup", "none"]
    assert [state.state(r.name) for r in REPLICAS] == ["up", "up", "down"]


# --- startup grace: the first election waits for the configured order ----------------------


GRACE = 1.0


def with_grace(grace=GRACE, timeout=0):
    return ClusterState(REPLICAS, heartbeat_timeout=timeout, startup_grace=grace)


def test_grace_defaults_to_zero():
    assert ClusterState(REPLICAS, heartbeat_timeout=0).startup_grace == 0.0


def test_grace_holds_the_first_election_while_replicas_are_missing():
    state = with_grace()
    view = state.set_ports(DPID, {3: True}, 0.0)
    assert view == ClusterView(members=("lb3",), primary=None, epoch=0)  # lb3 gets traffic
    assert state.view == view
    assert state.evaluate(0.5) is None
    assert (state.view.primary, state.view.epoch) == (None, 0)
    assert (state.role("lb3"), state.status()) == ("backup", "down")
    assert changes(state) == [("lb3", "up", 0)]  # no "no primary" transition


def test_grace_ends_when_every_replica_is_up_and_the_configured_order_decides():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    assert state.evaluate(0.5) is None
    view = state.set_ports(DPID, ALL_UP, 0.6)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)
    assert changes(state) == [("lb3", "up", 0), ("lb1", "up", 0), ("lb2", "up", 0),
                              ("lb1", "primary", 1)]
    assert [t.at for t in state.history][-1] == 0.6


def test_grace_expiry_elects_without_any_other_change():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    assert state.evaluate(0.99) is None
    view = state.evaluate(1.01)
    assert view == ClusterView(members=("lb3",), primary="lb3", epoch=1)
    assert changes(state)[-1] == ("lb3", "primary", 1)
    assert state.evaluate(1.02) is None  # elected once


def test_grace_expires_exactly_after_the_grace():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    assert state.evaluate(0.999) is None
    assert state.evaluate(1.0).primary == "lb3"


def test_grace_counts_from_the_first_replica_up():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    view = state.port_status(DPID, 2, True, 0.8)
    assert view == ClusterView(members=("lb2", "lb3"), primary=None, epoch=0)
    assert state.evaluate(0.9) is None
    assert state.evaluate(1.0) == ClusterView(members=("lb2", "lb3"), primary="lb2", epoch=1)


def test_a_primary_elected_after_the_grace_is_sticky():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    state.evaluate(1.01)
    view = state.set_ports(DPID, ALL_UP, 2.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb3", epoch=1)


def test_zero_grace_elects_the_first_replica_up_at_once():
    state = with_grace(grace=0.0)
    view = state.set_ports(DPID, {3: True}, 0.0)
    assert view == ClusterView(members=("lb3",), primary="lb3", epoch=1)
    view = state.set_ports(DPID, ALL_UP, 0.6)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb3", epoch=1)


def test_grace_does_not_delay_when_every_replica_comes_up_together():
    state = with_grace()
    view = state.set_ports(DPID, ALL_UP, 0.0)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)


def test_grace_does_nothing_before_any_replica_is_up():
    state = with_grace()
    assert state.evaluate(0.0) is None
    assert state.evaluate(100.0) is None
    view = state.set_ports(DPID, {2: True}, 100.0)  # the grace starts now, not at 0
    assert view == ClusterView(members=("lb2",), primary=None, epoch=0)
    assert state.evaluate(100.5) is None
    assert state.evaluate(101.0).primary == "lb2"


def test_grace_applies_to_the_first_election_only():
    state = with_grace()
    state.set_ports(DPID, ALL_UP, 0.0)
    view = state.set_ports(DPID, {}, 5.0)
    assert view == ClusterView(members=(), primary=None, epoch=2)
    view = state.port_status(DPID, 3, True, 6.0)
    assert view == ClusterView(members=("lb3",), primary="lb3", epoch=3)


def test_a_replica_that_left_during_the_grace_still_started_it():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    view = state.port_status(DPID, 3, False, 0.5)
    assert view == ClusterView(members=(), primary=None, epoch=0)
    assert state.evaluate(1.5) is None  # nobody up: nobody to elect
    view = state.port_status(DPID, 2, True, 1.6)
    assert view == ClusterView(members=("lb2",), primary="lb2", epoch=1)


def test_grace_with_heartbeats():
    state = with_grace(timeout=TIMEOUT)
    state.set_ports(DPID, ALL_UP, 0.0)
    assert state.heartbeat("lb3", 0, True, {}, 0.0) == \
        ClusterView(members=("lb3",), primary=None, epoch=0)
    assert state.health["lb3"].acked_epoch == 0
    state.heartbeat("lb3", 1, True, {}, 0.05)
    state.heartbeat("lb2", 0, True, {}, 0.05)
    assert state.view.primary is None
    state.heartbeat("lb3", 2, True, {}, 0.1)
    state.heartbeat("lb2", 1, True, {}, 0.1)
    view = state.heartbeat("lb1", 0, True, {}, 0.1)
    assert view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1", epoch=1)
    assert state.health["lb1"].acked_epoch == 1


# --- next_deadline: when liveness can next change without a new input ------------------------


def test_next_deadline_is_none_without_a_heartbeat_timeout():
    state = ports_only()
    assert state.next_deadline(0.0) is None  # nothing up yet
    state.set_ports(DPID, ALL_UP, 0.0)
    assert state.next_deadline(5.0) is None  # only a port status can change liveness
    state.heartbeat("lb1", 0, True, {}, 6.0)  # heartbeats never expire without a timeout
    assert state.next_deadline(6.0) is None


def test_next_deadline_is_none_before_any_heartbeat():
    state = ClusterState(REPLICAS, heartbeat_timeout=TIMEOUT)
    assert state.next_deadline(0.0) is None
    state.set_ports(DPID, ALL_UP, 0.0)  # links up, no heartbeat: down until one comes
    assert state.next_deadline(1.0) is None


def test_next_deadline_is_the_earliest_heartbeat_expiry():
    state = with_heartbeats(now=1.0, names=())
    state.heartbeat("lb2", 0, True, {}, 1.05)
    state.heartbeat("lb1", 0, True, {}, 1.0)
    state.heartbeat("lb3", 0, True, {}, 1.1)
    assert state.next_deadline(1.1) == 1.0 + TIMEOUT
    state.heartbeat("lb1", 1, True, {}, 1.12)  # lb1 renewed: lb2 is now the first to expire
    assert state.next_deadline(1.12) == 1.05 + TIMEOUT
    state.heartbeat("lb2", 1, True, {}, 1.13)
    assert state.next_deadline(1.13) == 1.1 + TIMEOUT


def test_next_deadline_of_one_replica():
    state = with_heartbeats(now=2.0, names=("lb3",))
    assert state.next_deadline(2.0) == 2.0 + TIMEOUT


def test_next_deadline_returns_a_passed_deadline_until_it_is_evaluated():
    state = with_heartbeats(now=1.0)
    assert state.next_deadline(5.0) == 1.0 + TIMEOUT  # still up: evaluate has not run
    state.evaluate(5.0)
    assert state.next_deadline(5.0) is None  # all down by silence: nothing left to expire


def test_next_deadline_ignores_down_replicas():
    state = with_heartbeats(now=1.0)
    state.heartbeat("lb2", 1, True, {}, 1.1)
    state.heartbeat("lb3", 1, True, {}, 1.12)
    state.evaluate(1.16)  # lb1 silent: down
    assert state.state("lb1") == "down"
    assert state.next_deadline(1.16) == 1.1 + TIMEOUT
    state.heartbeat("lb2", 2, False, {}, 1.2)  # lb2's service probe failed: down
    assert state.state("lb2") == "down"
    assert state.next_deadline(1.2) == 1.12 + TIMEOUT


def test_next_deadline_ignores_byzantine_and_port_down_replicas_with_heartbeats():
    state = with_heartbeats(now=1.0, names=())
    state.heartbeat("lb1", 0, True, {}, 1.0)
    state.heartbeat("lb2", 0, True, {}, 1.05)
    state.heartbeat("lb3", 0, True, {}, 1.1)
    state.mark_byzantine("lb1", 1.1, "forged reply")
    assert state.next_deadline(1.1) == 1.05 + TIMEOUT
    state.port_status(DPID, 2, False, 1.11)
    assert state.next_deadline(1.11) == 1.1 + TIMEOUT
    state.port_status(DPID, 3, False, 1.12)
    assert state.next_deadline(1.12) is None


def test_next_deadline_is_the_grace_end_while_starting():
    state = with_grace()  # no heartbeat timeout
    assert state.next_deadline(0.0) is None  # the grace has not started
    state.set_ports(DPID, {3: True}, 0.25)
    assert state.next_deadline(0.25) == 0.25 + GRACE
    assert state.next_deadline(1.0) == 0.25 + GRACE
    assert state.evaluate(1.0) is None
    assert state.next_deadline(1.25) is None  # the grace is over (whether evaluated or not)
    assert state.evaluate(1.25).primary == "lb3"
    assert state.next_deadline(1.25) is None


def test_next_deadline_has_no_grace_end_once_every_replica_is_up():
    state = with_grace()
    state.set_ports(DPID, {3: True}, 0.0)
    assert state.next_deadline(0.5) == GRACE
    state.set_ports(DPID, ALL_UP, 0.6)  # the first election happened at once
    assert state.next_deadline(0.6) is None


def test_next_deadline_has_no_grace_end_after_the_first_election():
    state = with_grace()
    state.set_ports(DPID, ALL_UP, 0.0)
    state.port_status(DPID, 3, False, 0.1)  # a replica is missing again within the grace
    assert state.view.epoch == 1
    assert state.next_deadline(0.1) is None


def test_next_deadline_is_the_earlier_of_grace_end_and_heartbeat_expiry():
    state = with_grace(timeout=TIMEOUT)
    state.set_ports(DPID, ALL_UP, 0.0)
    state.heartbeat("lb3", 0, True, {}, 0.0)
    assert state.next_deadline(0.0) == 0.0 + TIMEOUT  # lb3's heartbeat expires first
    state.heartbeat("lb3", 1, True, {}, 0.9)
    assert state.next_deadline(0.9) == GRACE  # now the grace ends first
    state.heartbeat("lb2", 0, True, {}, 0.95)
    assert state.next_deadline(0.95) == GRACE


@pytest.mark.parametrize("setup", ["heartbeats", "grace"])
def test_nothing_changes_before_the_deadline_and_something_does_at_it(setup):
    if setup == "heartbeats":
        state = with_heartbeats(now=1.0, names=("lb1", "lb2"))
        state.heartbeat("lb2", 1, True, {}, 1.05)
        expected = ClusterView(members=("lb2",), primary="lb2", epoch=2)
        after = 1e-9  # silence is longer than the timeout
    else:
        state = with_grace()
        state.set_ports(DPID, {2: True}, 0.0)
        expected = ClusterView(members=("lb2",), primary="lb2", epoch=1)
        after = 0.0  # the grace ends at its deadline
    deadline = state.next_deadline(0.0)
    assert state.evaluate(deadline - 0.001) is None
    assert state.next_deadline(deadline - 0.001) == deadline  # evaluate moved nothing
    assert state.evaluate(deadline + after) == expected


def test_next_deadline_changes_nothing():
    state = with_grace(timeout=TIMEOUT)
    state.set_ports(DPID, ALL_UP, 0.0)
    state.heartbeat("lb3", 0, True, {}, 0.0)
    view, recorded = state.view, state.recorded
    for now in (0.0, 0.5, 2.0, 100.0):
        state.next_deadline(now)
    assert (state.view, state.recorded, state.state("lb3")) == (view, recorded, "up")


# --- succession by seniority (active mode) ---------------------------------------------------


def seniority(startup_grace=0.0):
    state = ClusterState(REPLICAS, heartbeat_timeout=0, startup_grace=startup_grace,
                         by_seniority=True)
    state.set_ports(DPID, ALL_UP, 0.0)
    return state


def test_seniority_first_election_follows_the_configured_order():
    assert seniority().view == ClusterView(members=("lb1", "lb2", "lb3"), primary="lb1",
                                           epoch=1)


def test_seniority_ties_among_the_first_members_go_by_configured_order():
    state = seniority()
    assert state.port_status(DPID, 1, False, 5.0).primary == "lb2"


def test_seniority_passes_over_a_backup_that_rejoined_after_the_others():
    # lb1 was cut off and came back (it misses the connections opened meanwhile); then the
    # primary lb2 fails: lb3, up since the start, takes over, not lb1 (first in order).
    state = seniority()
    state.port_status(DPID, 1, False, 5.0)
    state.port_status(DPID, 1, True, 6.0)
    view = state.port_status(DPID, 2, False, 9.0)
    assert view == ClusterView(members=("lb1", "lb3"), primary="lb3", epoch=3)


def test_seniority_a_flapping_backup_starts_over():
    state = seniority()
    state.port_status(DPID, 2, False, 1.0)
    state.port_status(DPID, 2, True, 2.0)  # lb2 up since 2.0
    state.port_status(DPID, 3, False, 3.0)
    state.port_status(DPID, 3, True, 4.0)  # lb3 up since 4.0
    assert state.port_status(DPID, 1, False, 9.0).primary == "lb2"


def test_seniority_the_only_member_left_is_promoted_even_if_new():
    state = seniority()
    state.port_status(DPID, 2, False, 1.0)
    state.port_status(DPID, 3, False, 1.0)
    state.port_status(DPID, 2, True, 2.0)
    assert state.port_status(DPID, 1, False, 3.0).primary == "lb2"


def test_without_seniority_the_configured_order_decides():
    state = all_up()
    state.port_status(DPID, 1, False, 5.0)
    state.port_status(DPID, 1, True, 6.0)
    assert state.port_status(DPID, 2, False, 9.0).primary == "lb1"


def test_seniority_counts_from_the_first_election_after_a_startup_grace():
    # lb3 boots 1 s after lb1 and lb2 but within the grace: at the first election all tie
    state = ClusterState(REPLICAS, heartbeat_timeout=0, startup_grace=5.0, by_seniority=True)
    state.set_ports(DPID, {1: True, 2: True, 3: False}, 0.0)
    state.port_status(DPID, 3, True, 1.0)
    assert state.view.primary == "lb1"
    state.port_status(DPID, 2, False, 2.0)
    state.port_status(DPID, 2, True, 3.0)
    assert state.port_status(DPID, 1, False, 4.0).primary == "lb3"


# --- succession by the client bytes a backup lacks (active mode, issue 10) ------------------


def lagging(missing):
    """Seniority state with heartbeats on: lb1 primary; each backup's last heartbeat reports
    ``missing[name]`` bytes missing."""
    state = ClusterState(REPLICAS, heartbeat_timeout=0, by_seniority=True)
    state.set_ports(DPID, ALL_UP, 0.0)
    for name in ("lb1", "lb2", "lb3"):
        state.heartbeat(name, 0, True, {"bytes_missing": missing.get(name, 0)}, 1.0)
    return state


def test_succession_passes_over_the_backup_missing_acknowledged_client_bytes():
    # lb2 is next by seniority and order, but lacks 20 MiB the client was acknowledged
    state = lagging({"lb2": 20 << 20, "lb3": 4096})
    assert state.port_status(DPID, 1, False, 2.0).primary == "lb3"


def test_succession_within_the_in_sync_tolerance_goes_by_seniority_and_order():
    # in-flight bytes of a level backup are not a lag: lb2 goes first as before
    state = lagging({"lb2": cluster.IN_SYNC_BYTES, "lb3": 0})
    assert state.port_status(DPID, 1, False, 2.0).primary == "lb2"


def test_succession_when_every_backup_lags_picks_the_one_missing_the_fewest():
    state = lagging({"lb2": 30 << 20, "lb3": 5 << 20})
    assert state.port_status(DPID, 1, False, 2.0).primary == "lb3"


@pytest.mark.parametrize("bad", ["many", -5, True, None, 1.5e9])
def test_succession_ignores_a_malformed_missing_count(bad):
    state = lagging({})
    state.heartbeat("lb2", 1, True, {"bytes_missing": bad}, 1.5)
    assert state.port_status(DPID, 1, False, 2.0).primary == "lb2"


def test_succession_by_missing_bytes_only_with_seniority():
    # passive mode: connections die with the primary anyway; the configured order decides
    state = all_up()
    state.heartbeat("lb2", 0, True, {"bytes_missing": 50 << 20}, 1.0)
    assert state.port_status(DPID, 1, False, 2.0).primary == "lb2"
