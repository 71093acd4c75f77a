"""The Core among several controllers: a follower writes and sends nothing that changes the
switch, a takeover restores the stored state, writes it back and converges with the term's
cookie; heartbeats recorded while following stay (the takeover starts warm)."""

import dataclasses
import logging

import pytest

from sbft_ryu import decide, election
from sbft_ryu.core import Core
from sbft_ryu.ofp.tables import Tables
from sbft_ryu.rest import Heartbeat
from sbft_ryu.store import NotWritten

LOG = logging.getLogger("test.sbft.core_takeover")
ALL_UP = {1: True, 2: True, 3: True}


class GatedStore:
    """Writes only while ``leading``; a journal of what was written."""

    path = "etcd key /sbft/10.0.0.100/state"

    def __init__(self):
        self.leading = False
        self.saved = []

    def save(self, state):
        if not self.leading:
            raise NotWritten("not the leader")
        self.saved.append(state)


class GatedSend:
    """Like the app's _send: while not leading only reads go out, and False is returned."""

    def __init__(self, store):
        self.store = store
        self.sent = []

    def __call__(self, dpid, messages):
        names = tuple(type(m).__name__ for m in messages)
        if not self.store.leading:
            reads = tuple(n for n in names if n in ("EnablePacketIn", "RequestPorts",
                                                    "ReadTables"))
            self.sent.append((dpid, reads))
            return reads == names
        self.sent.append((dpid, names))
        return True


@pytest.fixture
def config(default_config):
    return dataclasses.replace(default_config, startup_grace=0.0)


def beat(seq):
    return Heartbeat(seq=seq, service_ok=True, counters={}, body={})


def follower(config):
    store = GatedStore()
    send = GatedSend(store)
    core = Core(config, send, logger=LOG, store=store)
    core.restore(None, 0.0)
    return core, store, send


def test_a_follower_reads_the_switch_but_writes_and_changes_nothing(config):
    core, store, send = follower(config)
    core.switch_connected(1, "1.3", LOG, 0.0)
    assert not core.tables_read(1, Tables(), 0.1)
    core.set_ports(1, ALL_UP, 0.1)
    for seq, name in enumerate(("lb1", "lb2", "lb3"), 1):
        core.heartbeat(name, beat(seq), None, 0.2)
    core.tick(0.3)
    assert store.saved == []
    assert send.sent == [(1, ("EnablePacketIn", "RequestPorts", "ReadTables"))]
    assert core.counters["state_not_written"] >= 1


def test_a_takeover_restores_writes_back_and_converges_with_the_terms_cookie(config):
    core, store, send = follower(config)
    core.switch_connected(1, "1.3", LOG, 0.0)
    core.tables_read(1, Tables(), 0.0)
    for name in ("lb1", "lb2", "lb3"):
        core.heartbeat(name, beat(1), None, 0.5)  # recorded while following
    stored = {"cluster": {**core.cluster.snapshot(), "epoch": 6, "primary": "lb2",
                          "members": ["lb1", "lb2", "lb3"],
                          "voters": ["lb1", "lb2", "lb3"]},
              "byzantine_at": {}, "readmissions": [], "tainted": [], "version": 1}
    store.leading = True
    cookie = election.service_cookie(42)
    core.take_over(stored, 1.0, cookie)
    assert store.saved[-1]["cluster"]["epoch"] == 6
    assert core.cluster.view.primary == "lb2" and not core.cluster.decided
    # the new leader re-reads the switch and converges it, as after a restart
    core.switch_connected(1, "1.3", LOG, 1.0)
    assert core.tables_read(1, Tables(), 1.0)
    converge = [m for m in send.sent if m[1] == ("Converge",)]
    assert converge
    assert core.switches[1].installed == decide.service_flows(config, core.cluster.view, cookie)
    assert {f.cookie for f in core.switches[1].installed} == {0x5BF8_0000_0000_002A}
    core.set_ports(1, ALL_UP, 1.0)
    for name in ("lb1", "lb2", "lb3"):
        core.heartbeat(name, beat(2), None, 1.02)
    assert core.cluster.decided and core.cluster.view.primary == "lb2"
    assert core.decided()


def test_a_takeover_clears_convictions_the_stored_state_does_not_hold(config):
    core, store, _ = follower(config)
    core.cluster.mark_byzantine("lb3", 0.0, "seen by this follower only")
    stored = {"cluster": core.cluster.snapshot(), "byzantine_at": {}, "readmissions": [],
              "tainted": [], "version": 1}
    stored["cluster"]["byzantine"] = {}
    store.leading = True
    core.take_over(stored, 1.0, election.service_cookie(3))
    assert core.cluster.state("lb3") != "byzantine"


def test_a_takeover_with_nothing_stored_writes_the_followers_own_state(config):
    core, store, _ = follower(config)
    store.leading = True
    core.take_over(None, 1.0, election.service_cookie(3))
    assert len(store.saved) == 1
