"""The app's wiring of generations and the voting set (Core._changed tells the referee), on
the real entry points with a fixed clock and no switch: evidence from before a readmission
scores nothing after it, so a repaired replica is not convicted again for its old lies; a
spare's reports count for nothing until it is promoted."""

import itertools
import logging
from types import SimpleNamespace

import pytest

from sbft_ryu import app as app_module
from sbft_ryu import protocol
from sbft_ryu.cluster import ClusterState
from sbft_ryu.core import Core
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee
from sbft_ryu.rest import Heartbeat

NAMES = ("lb1", "lb2", "lb3", "lb4")
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(NAMES, 1)}
CLIENT = bytes([10, 0, 0, 31])


@pytest.fixture
def app(raw, monkeypatch):
    """lb1..lb3 members (lb1 primary), lb4 a spare; heartbeats taken as authenticated,
    evidence still verified with the keys; no nudges; a clock the test moves."""
    raw.update(mode="active", voting="on", heartbeat_timeout="0", agent_notify_port="0",
               spare=["lb4 10.0.0.14 00:00:00:00:01:04 4"],
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    config = build_config(raw)
    clock = SimpleNamespace(now=50.0)
    monkeypatch.setattr(app_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    sbft = object.__new__(app_module.SbftApp)  # the entry points without Ryu's machinery
    sbft.config, sbft.clock = config, clock
    sbft.switches, sbft._nudge_socket = {}, None
    sbft.logger = logging.getLogger("test.sbft.generations")
    sbft.core = Core(config, send=sbft._send, nudge=sbft._nudge_agents, logger=sbft.logger)
    sbft.core.cluster = ClusterState(config.replicas, 0.0, spares=config.spares)
    counter = itertools.count(1)
    sbft.core.referee = Referee(config, new_nonce=lambda: f"n{next(counter)}")
    # the rest tests cover the MACs
    sbft.referee.authenticate = lambda name, beat, address=None: None
    sbft._changed = lambda view: sbft.core._changed(view, clock.now)
    sbft._changed(sbft.cluster.set_ports(1, {1: True, 2: True, 3: True}, clock.now))
    return sbft


def signed(kind, name, start, text, port=40000, generation=1):
    """A batch signed in ``generation`` (every member's first is 1)."""
    statement = protocol.Statement(CLIENT, port, start, start + 5, protocol.digest(text))
    return protocol.encode(kind, name, [statement], KEYS[name], generation)


def beat(app, name, evidence=(), wire=()):
    app.api_heartbeat(name, Heartbeat(seq=1, service_ok=True, counters={}, nonce=None,
                                      body={}, evidence=list(evidence), wire=list(wire)))


def lies(starts, liar="lb3", port=40000):
    return [[signed(protocol.CLAIM, "lb1", s, b"right", port),
             signed(protocol.VOTE, liar, s, b"wrong", port)] for s in starts]


def test_evidence_from_before_a_readmission_does_not_convict_again(app):
    beat(app, "lb1", evidence=[[*item, signed(protocol.VOTE, "lb2", s, b"right")]
                               for item, s in zip(lies((1000, 2000, 3000)),
                                                  (1000, 2000, 3000))])
    assert app.cluster.state("lb3") == "byzantine"
    beat(app, "lb1", evidence=lies((4000, 5000, 6000)))  # undecided: lb2 has not voted yet
    app.clock.now += 1.0
    app.api_readmit("lb3")
    assert app.cluster.state("lb3") == "up" and app.cluster.generation["lb3"] == 2
    # lb2's late votes on those ranges, and lb3's old lies forwarded late on the same connection
    late = [[signed(protocol.CLAIM, "lb1", s, b"right"), signed(protocol.VOTE, "lb2", s, b"right")]
            for s in (4000, 5000, 6000)]
    beat(app, "lb1", evidence=late + lies((7000, 8000, 9000)))
    beat(app, "lb2", evidence=[[signed(protocol.VOTE, "lb2", s, b"right"), *item]
                               for item, s in zip(lies((7000, 8000, 9000)),
                                                  (7000, 8000, 9000))])
    assert app.cluster.state("lb3") == "up"
    assert app.referee.judge.stats["lb3"].divergences == 3  # the three before the conviction


def test_a_spares_reports_count_only_after_its_promotion(app):
    app._changed(app.cluster.port_status(1, 4, True, app.clock.now))
    assert app.cluster.is_spare("lb4")
    wire = [(CLIENT, 40000, 1, 10, 20)]
    beat(app, "lb4", wire=wire)
    beat(app, "lb2", wire=wire)
    assert app.cluster.state("lb1") == "up"  # lb4's word counted for nothing
    app._changed(app.cluster.mark_byzantine("lb3", app.clock.now, "test"))
    assert "lb4" in app.cluster.view.members
    beat(app, "lb4", wire=[(CLIENT, 40001, 1, 10, 20)])
    beat(app, "lb2", wire=[(CLIENT, 40001, 1, 10, 20)])
    assert app.cluster.state("lb1") == "byzantine"
