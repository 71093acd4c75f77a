"""The app among several controllers, without etcd (its one endpoint refuses: a follower with
no leader) and with fake datapaths: role requests, the send gate, OpenFlow 1.0 refused,
stale role errors, the controller block in answers."""

import logging
import time
from types import SimpleNamespace

import pytest
from ryu.app.wsgi import WSGIApplication
from ryu.ofproto import ofproto_v1_0 as ofp10
from ryu.ofproto import ofproto_v1_0_parser as parser10
from ryu.ofproto import ofproto_v1_3 as ofp13
from ryu.ofproto import ofproto_v1_3_parser as parser13

from sbft_ryu import app as app_module
from sbft_ryu import election
from sbft_ryu.model import FlowSpec, Match, Output

CONFLICTS = {"coordination": "etcd://127.0.0.1:1", "leader_lease": "2",
             "advertise_url": "http://127.0.0.1:8080", "heartbeat_timeout": "0",
             "startup_grace": "0"}


class Datapath:
    def __init__(self, ofp, parser, dpid=1):
        self.ofproto, self.ofproto_parser, self.id = ofp, parser, dpid
        self.sent = []

    def send_msg(self, msg):
        self.sent.append(msg)


@pytest.fixture
def app(caplog):
    conf = app_module.CONF
    conf(args=[], default_config_files=[], default_config_dirs=[])
    for name, value in CONFLICTS.items():
        conf.set_override(name, value, group="sbft")
    try:
        with caplog.at_level(logging.INFO):
            yield app_module.SbftApp(wsgi=WSGIApplication())
    finally:
        for name in CONFLICTS:
            conf.clear_override(name, group="sbft")


def features(datapath):
    return SimpleNamespace(msg=SimpleNamespace(datapath=datapath, ports={}))


def roles(datapath):
    return [(m.role, m.generation_id) for m in datapath.sent
            if isinstance(m, parser13.OFPRoleRequest)]


def lead(app, term=7):
    app.coordinator.election.elected(time.monotonic(), term, "http://127.0.0.1:8080")
    app.coordinator.ready = True


def test_an_unreachable_etcd_at_start_is_one_line_and_a_follower_without_leader(app, caplog):
    assert any(r.getMessage().startswith("sbft: etcd unreachable: 127.0.0.1:1: ")
               for r in caplog.get_records("setup"))  # (the app was built in the fixture)
    health = app.api_health()["controller"]
    assert health["role"] == "follower" and health["leader"] is None
    assert health["coordination"] == "etcd://127.0.0.1:1"
    assert health["reason"].startswith("etcd unreachable: ")


def test_a_follower_reads_the_switch_and_claims_no_role_before_it_knows_a_leader(app):
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    assert roles(datapath) == []
    kinds = {type(m).__name__ for m in datapath.sent}
    assert kinds == {"OFPSetConfig", "OFPPortDescStatsRequest", "OFPFlowStatsRequest",
                     "OFPGroupDescStatsRequest"}
    app.coordinator.election.following("http://127.0.0.1:8081", 5)
    app.coordinator.hooks.follow(5)
    assert roles(datapath) == [(ofp13.OFPCR_ROLE_SLAVE, 5)]


def test_a_follower_sends_nothing_that_changes_the_switch(app):
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    before = len(datapath.sent)
    flow = FlowSpec(Match(in_port=1), (Output(2),))
    assert app._send(1, [flow]) is False
    assert len(datapath.sent) == before
    assert app.counters["fenced_messages"] == 1


def test_the_leader_claims_master_with_its_term_before_anything_else(app):
    lead(app, term=7)
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    assert isinstance(datapath.sent[0], parser13.OFPRoleRequest)
    assert roles(datapath) == [(ofp13.OFPCR_ROLE_MASTER, 7)]
    assert app._send(1, [FlowSpec(Match(in_port=1), (Output(2),))]) is True


def test_a_fenced_leader_sends_nothing(app):
    lead(app)
    app.coordinator.election.kept_at -= 10  # no keepalive answered for 10 s
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    assert roles(datapath) == []  # its term ended: no claim of any role
    assert app._send(1, [FlowSpec(Match(in_port=1), (Output(2),))]) is False
    assert app.api_health()["controller"]["role"] == "follower"


def test_an_openflow_10_switch_is_refused_with_one_line(app, caplog):
    datapath = Datapath(ofp10, parser10)
    with caplog.at_level(logging.INFO):
        app._switch_features(features(datapath))
    assert datapath.sent == [] and app.switches == {}
    assert app.counters["switch_refused"] == 1
    assert any("refused: OpenFlow 1.0 has no role request with a generation id; several "
               "controllers (coordination) need OpenFlow 1.3" in r.getMessage()
               for r in caplog.records)


def test_a_stale_role_request_is_a_warning_not_an_openflow_error(app, caplog):
    datapath = Datapath(ofp13, parser13)
    with caplog.at_level(logging.INFO):
        app._of_error(SimpleNamespace(msg=SimpleNamespace(
            datapath=datapath, type=ofp13.OFPET_ROLE_REQUEST_FAILED,
            code=ofp13.OFPRRFC_STALE, data=b"")))
    assert app.counters["role_stale"] == 1 and app.counters["of_error"] == 0
    assert not any("OFPErrorMsg" in r.getMessage() for r in caplog.records)


def test_heartbeat_answers_carry_the_role_and_term(app):
    answer = app.api_heartbeat("lb1", _beat())
    assert answer["controller"] == {"role": "follower", "term": 0}
    lead(app, term=9)
    assert app.api_heartbeat("lb1", _beat(2))["controller"] == {"role": "leader", "term": 9}


def test_the_leaders_flows_carry_its_terms_cookie(app):
    lead(app, term=9)
    app.coordinator.hooks.restore(None, 9)
    assert app.core.cookie == election.service_cookie(9) == 0x5BF8_0000_0000_0009


def _beat(seq=1):
    from sbft_ryu.rest import Heartbeat

    return Heartbeat(seq=seq, service_ok=True, counters={}, body={})



def test_a_followers_health_says_it_has_not_decided(app, monkeypatch):
    """Its replica states are what it heard, not the tier's view (a deposed leader's last
    view included): the leader decides."""
    monkeypatch.setattr(app.core, "decided", lambda: True)  # a view it decided as leader
    lead(app)
    assert app.api_health()["decided"] is True
    app.coordinator.election.kept_at -= 10  # deposed: no keepalive answered for 10 s
    health = app.api_health()
    assert health["controller"]["role"] == "follower" and health["decided"] is False
