"""Tests for the Core's durable state: written before anything acts on it, taken up by a
restarted Core, and the answers "not decided" until a restarted Core has decided."""

import dataclasses
import logging

import pytest

from sbft_ryu import decide
from sbft_ryu.config import build_config
from sbft_ryu.cluster import ClusterView
from sbft_ryu.core import Core, with_stored_secret
from sbft_ryu.model import Converge
from sbft_ryu.ofp.tables import Tables
from sbft_ryu.rest import Heartbeat
from sbft_ryu.store import StateError

LOG = logging.getLogger("test.sbft.core_durable")
ALL_UP = {1: True, 2: True, 3: True}


class Journal:
    """A store and a send function writing into one list, so their order shows."""

    path = "/state/test.json"

    def __init__(self):
        self.events = []
        self.saved = None

    def load(self):
        return self.saved

    def save(self, state):
        self.saved = state
        self.events.append(("save", state["cluster"]["epoch"]))

    def send(self, dpid, messages):
        self.events.append(("send", dpid, tuple(type(m).__name__ for m in messages)))
        return True


@pytest.fixture
def config(default_config):
    return dataclasses.replace(default_config, startup_grace=0.0)


def beat(seq=1):
    return Heartbeat(seq=seq, service_ok=True, counters={}, body={})


def start(config, journal, now=0.0, wall=lambda: 1234.5):
    core = Core(config, journal.send, logger=LOG, store=journal, wall=wall)
    core.restore(journal.load(), now)
    return core


def serve(core, now=1.0):
    core.switch_connected(1, "1.3", LOG, now)
    core.tables_read(1, Tables(), now)
    core.set_ports(1, ALL_UP, now)
    for name in ("lb1", "lb2", "lb3"):
        core.heartbeat(name, beat(), None, now)


def test_every_change_is_written_before_flows_go_out(config):
    journal = Journal()
    core = start(config, journal)
    assert journal.events == [("save", 0)]  # a first start writes the file at once
    serve(core)
    assert core.cluster.view.epoch == 1 and core.decided()
    first_epoch_1 = journal.events.index(("save", 1))
    updates = [i for i, e in enumerate(journal.events) if e[0] == "send" and i > 2]
    assert updates and first_epoch_1 < min(updates)
    writes = core.counters["state_writes"]
    core.heartbeat("lb1", beat(2), None, 1.01)  # nothing changed: nothing written
    assert core.counters["state_writes"] == writes


def test_a_restarted_core_takes_up_the_view_undecided_and_leaves_the_switch_alone(config):
    journal = Journal()
    serve(start(config, journal))
    stored = journal.saved
    restarted = start(config, journal, now=500.0)
    assert restarted.cluster.view == stored_view(stored) and not restarted.decided()
    restarted.switch_connected(1, "1.3", LOG, 500.0)
    restarted.tables_read(1, Tables(), 500.0)
    converge = [e for e in journal.events if e[0] == "send"][-1]
    assert converge == ("send", 1, ("Converge",))
    assert restarted.switches[1].installed == decide.service_flows(config,
                                                                   stored_view(stored))
    restarted.set_ports(1, ALL_UP, 500.01)
    assert not restarted.decided()  # the members have not reported yet
    for name in ("lb1", "lb2", "lb3"):
        restarted.heartbeat(name, beat(), None, 500.02)
    assert restarted.decided() and restarted.cluster.view == stored_view(stored)
    assert [e for e in journal.events if e[0] == "send"][-1] == converge  # nothing more sent


def stored_view(state):
    cluster = state["cluster"]
    return ClusterView(tuple(cluster["members"]), cluster["primary"], cluster["epoch"])


def test_convictions_and_readmissions_are_dated_and_kept(config):
    journal = Journal()
    clock = iter([100.0, 200.0, 300.0])
    core = start(config, journal, wall=lambda: next(clock))
    serve(core)
    core.cluster.mark_byzantine("lb3", 2.0, "test")
    core.tick(2.0)
    assert journal.saved["byzantine_at"] == {"lb3": 100.0}
    assert "lb3" in journal.saved["cluster"]["byzantine"]
    restarted = start(config, journal, now=10.0, wall=lambda: next(clock))
    assert restarted.cluster.state("lb3") == "byzantine"
    restarted.readmit("lb3", 11.0)
    assert journal.saved["readmissions"] == [{"replica": "lb3", "at": 200.0}]
    assert journal.saved["byzantine_at"] == {}


def test_tainted_connections_survive_a_restart_until_the_judge_would_forget_them(config):
    journal = Journal()
    start(config, journal)
    journal.saved = {**journal.saved, "tainted": [["10.0.0.31", 40000]]}
    restarted = start(config, journal, now=5.0)
    assert restarted.referee.restored_tainted == [["10.0.0.31", 40000]]
    restarted.tick(5.0 + 61.0)
    assert restarted.referee.restored_tainted == []


@pytest.mark.parametrize("damage", [lambda s: s.pop("cluster"),
                                    lambda s: s.update(byzantine_at=[1]),
                                    lambda s: s["cluster"].update(epoch="two")])
def test_a_malformed_state_is_one_state_error(config, damage):
    journal = Journal()
    start(config, journal)
    damage(journal.saved)
    with pytest.raises(StateError, match=r"^state file /state/test.json: corrupt \("):
        start(config, journal)


def test_the_active_secret_is_kept_unless_one_is_configured(raw, caplog):
    raw.update(mode="active")
    random = build_config(raw)
    stored = {"active_secret": "11" * 16}
    assert with_stored_secret(random, stored, "p").active_secret == b"\x11" * 16
    assert with_stored_secret(random, None, "p").active_secret == random.active_secret
    configured = dataclasses.replace(random, active_secret=b"\x22" * 16,
                                     active_secret_configured=True)
    with caplog.at_level(logging.WARNING):
        assert with_stored_secret(configured, stored, "p", LOG).active_secret == \
            b"\x22" * 16
    assert "differs from the one in the state file" in caplog.text
    with pytest.raises(StateError, match="active_secret is not hex"):
        with_stored_secret(random, {"active_secret": "zz"}, "p")


def test_the_secret_is_stored_only_when_not_configured(config):
    journal = Journal()
    start(config, journal)
    assert journal.saved["active_secret"] == config.active_secret.hex()
    configured = dataclasses.replace(config, active_secret_configured=True)
    start(configured, journal)
    assert "active_secret" not in journal.saved


def test_a_view_not_yet_on_disk_is_not_decided(config):
    journal = Journal()
    core = start(config, journal)
    serve(core)
    assert core.decided()
    core._durable_view = None  # as while another green thread's write is in flight
    assert not core.decided()


def test_converge_carries_what_was_found(config):
    journal = Journal()
    core = start(config, journal)
    found = Tables()
    core.switch_connected(1, "1.3", LOG, 0.0)
    sent = []
    core._send = lambda dpid, messages: sent.extend(messages) or True
    core.tables_read(1, found, 0.0)
    assert isinstance(sent[0], Converge) and sent[0].found is found
