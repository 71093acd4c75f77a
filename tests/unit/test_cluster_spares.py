"""Tests for the voting set of sbft_ryu.cluster on a fake clock: spares stay outside it with no
role, are promoted at once for a convicted member and after ``spare_after`` for a down one; a
promoted spare's seniority starts at its promotion; a member coming back to a full set is a
spare; every entry into the members starts a new generation."""

from sbft_ryu.cluster import ClusterState
from sbft_ryu.model import Replica

REPLICAS = tuple(Replica(f"lb{i}", f"10.0.0.1{i}", f"00:00:00:00:01:0{i}", i) for i in (1, 2, 3))
SPARES = (Replica("lb4", "10.0.0.14", "00:00:00:00:01:04", 4),
          Replica("lb5", "10.0.0.15", "00:00:00:00:01:05", 5))
DPID = 1


def tier(spares=SPARES[:1], up=(1, 2, 3, 4), spare_after=5.0, by_seniority=True, now=0.0):
    """Port-state liveness; ``up`` the ports up at ``now``."""
    state = ClusterState(REPLICAS, heartbeat_timeout=0, spares=spares,
                         spare_after=spare_after, by_seniority=by_seniority)
    state.set_ports(DPID, {port: True for port in up}, now)
    return state


def set_port(state, port, up, now):
    return state.port_status(DPID, port, up, now)


def test_an_up_spare_is_outside_the_voting_set_with_no_role():
    state = tier()
    assert state.view.members == ("lb1", "lb2", "lb3") and state.view.primary == "lb1"
    assert state.state("lb4") == "up" and state.role("lb4") == "none"
    assert state.is_spare("lb4") and not state.is_spare("lb1")
    assert state.spare_names() == ["lb4"]
    assert state.status() == "ok"
    assert state.generation == {"lb1": 1, "lb2": 1, "lb3": 1, "lb4": 0}


def test_a_convicted_member_is_replaced_by_an_up_spare_at_once():
    state = tier()
    view = state.mark_byzantine("lb2", 1.0, "its output disagreed with the majority")
    assert view.members == ("lb1", "lb3", "lb4") and view.primary == "lb1"
    assert state.role("lb4") == "backup" and not state.is_spare("lb4")
    assert state.spare_names() == [] and state.state("lb2") == "byzantine"
    assert state.generation["lb4"] == 1 and state.promoted["lb4"] == 1
    [promotion] = state.promotions
    assert (promotion.replica, promotion.replacing, promotion.reason, promotion.at) == (
        "lb4", "lb2", "replacing lb2 (convicted)", 1.0)
    assert ("lb4", "promoted: replacing lb2 (convicted)") in [
        (t.replica, t.change) for t in state.history]


def test_a_convicted_primary_is_replaced_and_an_older_member_succeeds_it():
    state = tier()
    view = state.mark_byzantine("lb1", 1.0, "test")
    assert view.primary == "lb2" and view.members == ("lb2", "lb3", "lb4")


def test_with_no_spare_up_the_place_waits_and_a_spare_coming_up_takes_it():
    state = tier(up=(1, 2, 3))
    view = state.mark_byzantine("lb2", 1.0, "test")
    assert view.members == ("lb1", "lb3") and state.promotions == type(state.promotions)()
    view = set_port(state, 4, True, 2.0)
    assert view.members == ("lb1", "lb3", "lb4")
    assert state.promotions[-1].replacing == "lb2"


def test_a_down_member_is_replaced_only_after_spare_after():
    state = tier()
    set_port(state, 3, False, 10.0)
    assert state.view.members == ("lb1", "lb2") and state.is_spare("lb4")
    assert state.next_deadline(10.0) == 15.0
    assert state.evaluate(14.9) is None
    view = state.evaluate(15.0)
    assert view.members == ("lb1", "lb2", "lb4")
    assert state.is_spare("lb3") and state.role("lb3") == "none"
    promotion = state.promotions[-1]
    assert (promotion.replica, promotion.replacing, promotion.reason) == (
        "lb4", "lb3", "replacing lb3 (down for 5 s)")
    assert ("lb3", "spare: down for 5 s, its place goes to lb4") in [
        (t.replica, t.change) for t in state.history]


def test_a_down_member_stays_in_the_set_while_no_spare_is_up():
    state = tier(up=(1, 2, 3))
    set_port(state, 3, False, 10.0)
    assert state.next_deadline(10.0) is None  # nothing to promote
    assert state.evaluate(100.0) is None and not state.is_spare("lb3")
    view = set_port(state, 3, True, 101.0)
    assert view.members == ("lb1", "lb2", "lb3") and state.generation["lb3"] == 2


def test_a_member_coming_back_to_a_full_set_is_a_spare():
    state = tier()
    set_port(state, 3, False, 10.0)
    state.evaluate(15.0)
    view = set_port(state, 3, True, 20.0)
    assert view is None or view.members == ("lb1", "lb2", "lb4")
    assert state.view.members == ("lb1", "lb2", "lb4")
    assert state.is_spare("lb3") and state.role("lb3") == "none" and state.state("lb3") == "up"
    assert state.generation["lb3"] == 1  # it did not enter the members again


def test_a_readmitted_member_takes_its_free_place_back_or_becomes_a_spare():
    state = tier(up=(1, 2, 3))
    state.mark_byzantine("lb2", 1.0, "test")
    state.readmit("lb2", 2.0)
    assert state.view.members == ("lb1", "lb2", "lb3") and state.generation["lb2"] == 2
    assert state.promotions == type(state.promotions)()  # its own place: no promotion
    full = tier()
    full.mark_byzantine("lb2", 1.0, "test")  # lb4 takes the place
    full.readmit("lb2", 2.0)
    assert full.view.members == ("lb1", "lb3", "lb4") and full.is_spare("lb2")
    assert full.state("lb2") == "up" and full.role("lb2") == "none"


def test_a_promoted_spares_seniority_starts_at_its_promotion():
    """lb4 was up (as a spare) before everyone; promoted at 10, it is younger than lb3 and
    succeeds the primary only once no older member is up."""
    state = ClusterState(REPLICAS, heartbeat_timeout=0, spares=SPARES[:1], by_seniority=True)
    set_port(state, 4, True, 0.0)
    state.set_ports(DPID, {1: True, 2: True, 3: True, 4: True}, 1.0)
    state.mark_byzantine("lb2", 10.0, "test")
    assert state.view.members == ("lb1", "lb3", "lb4")
    view = state.mark_byzantine("lb1", 11.0, "test")
    assert view.primary == "lb3"  # older than the promoted lb4
    view = set_port(state, 3, False, 12.0)
    assert view.primary == "lb4"


def test_generations_count_every_entry_into_the_members():
    state = tier(spares=())
    assert state.generation == {"lb1": 1, "lb2": 1, "lb3": 1}
    set_port(state, 2, False, 1.0)
    set_port(state, 2, True, 2.0)  # a link flap
    state.mark_byzantine("lb3", 3.0, "test")
    state.readmit("lb3", 4.0)
    assert state.generation == {"lb1": 1, "lb2": 2, "lb3": 2}
    assert state.generation_epoch == {"lb1": 1, "lb2": 1, "lb3": 1}
    state.mark_byzantine("lb1", 5.0, "test")  # epoch 2: lb2 primary
    state.readmit("lb1", 6.0)
    assert state.generation["lb1"] == 2 and state.generation_epoch["lb1"] == 2


def test_n_stays_the_configured_members_and_status_counts_them():
    state = tier(spares=SPARES, up=(1, 2, 3, 4, 5))
    assert state.n == 3 and len(state.view.members) == 3 and state.status() == "ok"
    state.mark_byzantine("lb1", 1.0, "test")
    state.mark_byzantine("lb2", 1.0, "test")
    assert state.view.members == ("lb3", "lb4", "lb5") and state.status() == "ok"
    state.mark_byzantine("lb3", 1.0, "test")
    assert state.view.members == ("lb4", "lb5") and state.status() == "degraded"


def test_spares_coming_up_first_neither_start_the_grace_nor_win_the_first_election():
    state = ClusterState(REPLICAS, heartbeat_timeout=0, startup_grace=5.0, spares=SPARES[:1])
    assert set_port(state, 4, True, 0.0) is None
    assert state.next_deadline(0.0) is None and state.view.primary is None
    state.set_ports(DPID, {1: True, 2: True, 3: True, 4: True}, 1.0)
    assert state.view.primary == "lb1" and state.view.members == ("lb1", "lb2", "lb3")


def test_no_replacement_during_the_startup_grace():
    state = ClusterState(REPLICAS, heartbeat_timeout=0, startup_grace=20.0,
                         spares=SPARES[:1], spare_after=5.0)
    state.set_ports(DPID, {1: True, 2: True, 4: True}, 0.0)
    assert state.evaluate(10.0) is None and state.is_spare("lb4")
    view = state.evaluate(20.0)  # the grace ends: lb3 has been down since 0
    assert view.members == ("lb1", "lb2", "lb4") and view.primary == "lb1"
