"""Tests for the Ryu plumbing of sbft_ryu.app: the OpenFlow handlers on a real SbftApp (built
through Ryu's own CONF, no ryu-manager) with fake datapaths that record what is sent, for both
OpenFlow versions; every handler's error is logged with its switch and counted."""

import dataclasses
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
from ryu.app.wsgi import WSGIApplication
from ryu.ofproto import ofproto_v1_0 as ofp10
from ryu.ofproto import ofproto_v1_0_parser as parser10
from ryu.ofproto import ofproto_v1_3 as ofp13
from ryu.ofproto import ofproto_v1_3_parser as parser13

from sbft_ryu import app as app_module
from sbft_ryu.ofp import SUPPORTED_VERSIONS

HANDLERS = ("_switch_features", "_port_desc", "_port_status", "_packet_in", "_switch_gone",
            "_barrier_reply",
            "_of_error", "_flow_stats", "_group_desc")


class Datapath:
    """What the handlers and _send use of a Ryu datapath; records every message sent."""

    def __init__(self, ofp, parser, dpid=1):
        self.ofproto, self.ofproto_parser, self.id = ofp, parser, dpid
        self.sent = []

    before_send = None  # called with each message before it is sent (a yield inside send_msg)

    def send_msg(self, msg):
        if msg.xid is None:  # as Ryu's Datapath.send_msg does
            msg.set_xid(len(self.sent) + 1)
        if self.before_send is not None:
            self.before_send(msg)
        self.sent.append(msg)


class Exploding:
    """Raises at every method call (keeps a real ``counters``)."""

    def __init__(self):
        self.counters = Counter()

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} failed")
        return fail


def port(number, ofp=ofp13, down=False):
    return SimpleNamespace(port_no=number, config=ofp.OFPPC_PORT_DOWN if down else 0, state=0)


@pytest.fixture
def app():
    """A real SbftApp on the embedded defaults, liveness by port state only."""
    conf = app_module.CONF
    conf(args=[], default_config_files=[], default_config_dirs=[])
    conf.set_override("heartbeat_timeout", "0", group="sbft")
    conf.set_override("startup_grace", "0", group="sbft")
    try:
        yield app_module.SbftApp(wsgi=WSGIApplication())
    finally:
        conf.clear_override("heartbeat_timeout", group="sbft")
        conf.clear_override("startup_grace", group="sbft")


def features(datapath, ports=()):
    return SimpleNamespace(msg=SimpleNamespace(datapath=datapath,
                                               ports={p.port_no: p for p in ports}))


def tables(app, datapath, flows=(), groups=()):
    """The switch answers the table read (empty tables: a fresh switch)."""
    app._flow_stats(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, body=list(flows),
                                                        flags=0)))
    if datapath.ofproto is ofp13:
        app._group_desc(SimpleNamespace(msg=SimpleNamespace(datapath=datapath,
                                                            body=list(groups), flags=0)))


def test_the_app_speaks_the_versions_the_translators_know():
    assert app_module.SbftApp.OFP_VERSIONS == list(SUPPORTED_VERSIONS)
    assert not hasattr(app_module, "OFP_NAMES")


def test_an_openflow_13_switch_is_asked_for_its_ports_and_serves_once_they_are_up(app):
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    assert app.core.seen == {1: (True, "1.3")}
    assert any(isinstance(m, parser13.OFPPortDescStatsRequest) for m in datapath.sent)
    assert app.cluster.view.primary is None  # the features reply lists no ports in 1.3
    app._port_desc(SimpleNamespace(msg=SimpleNamespace(datapath=datapath,
                                                       body=[port(1), port(2), port(3)])))
    assert app.cluster.view.primary is None  # nor do they count before the table read
    assert any(isinstance(m, parser13.OFPFlowStatsRequest) for m in datapath.sent)
    tables(app, datapath)
    assert app.cluster.view.primary == "lb1"
    assert app.counters["converge_changes"] > 0
    assert all(m.datapath is datapath for m in datapath.sent)
    assert app.counters["of_messages_sent"] == len(datapath.sent)


def test_an_openflow_10_switch_lists_its_ports_in_the_features_reply(app):
    datapath = Datapath(ofp10, parser10)
    app._switch_features(features(datapath, [port(1, ofp10), port(2, ofp10),
                                             port(3, ofp10, down=True)]))
    tables(app, datapath)
    assert app.core.seen == {1: (True, "1.0")}
    assert app.cluster.view.members == ("lb1", "lb2") and app.cluster.view.primary == "lb1"
    assert not any(isinstance(m, parser13.OFPPortDescStatsRequest) for m in datapath.sent)


def _serving_switch(app, ofp, parser):
    """A switch that connected, was read, and has lb1..lb3's ports up (in 1.3 they come in
    the port description, in 1.0 in the features reply)."""
    datapath = Datapath(ofp, parser)
    app._switch_features(features(datapath, [port(n, ofp) for n in (1, 2, 3)]))
    tables(app, datapath)
    if ofp is ofp13:
        app._port_desc(SimpleNamespace(msg=SimpleNamespace(
            datapath=datapath, body=[port(n) for n in (1, 2, 3)])))
    return datapath


@pytest.mark.parametrize("ofp, parser", [(ofp10, parser10), (ofp13, parser13)])
def test_port_status_is_read_by_the_switchs_translator(app, ofp, parser):
    datapath = _serving_switch(app, ofp, parser)
    app._port_status(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, reason=ofp.OFPPR_DELETE, desc=port(1, ofp))))
    assert app.cluster.view.primary == "lb2"
    app._port_status(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, reason=ofp.OFPPR_MODIFY, desc=port(1, ofp))))
    assert app.cluster.view.members == ("lb1", "lb2", "lb3")
    assert app.counters["port_status"] == 2


def test_a_disconnect_of_an_older_connection_is_ignored(app):
    old, new = Datapath(ofp13, parser13), Datapath(ofp13, parser13)
    app._switch_features(features(old))
    app._switch_features(features(new))
    app._switch_gone(SimpleNamespace(datapath=old))
    assert app.core.seen == {1: (True, "1.3")} and 1 in app.switches
    app._switch_gone(SimpleNamespace(datapath=new))
    assert app.core.seen == {1: (False, "1.3")} and app.switches == {}


def test_an_openflow_error_is_logged_with_its_switch_and_counted(app, caplog):
    datapath = Datapath(ofp13, parser13, dpid=7)
    app._of_error(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, type=1, code=2,
                                                      data=b"\x04\x0e")))
    assert app.counters["of_error"] == 1
    assert "dpid=0000000000000007: OFPErrorMsg type=0x01 code=0x02 data=040e" in caplog.text


@pytest.mark.parametrize("handler", HANDLERS)
def test_every_openflow_handler_logs_its_error_with_the_switch_and_counts_it(app, caplog,
                                                                             handler):
    broken = SimpleNamespace(id=0x2a)  # a datapath with nothing a handler needs
    event = SimpleNamespace(datapath=broken, msg=SimpleNamespace(datapath=broken))
    # a known switch whose translator, like the core, fails at whatever it is asked
    app.switches[0x2a] = SimpleNamespace(datapath=broken, translator=Exploding(),
                                         log=app.logger)
    app.core = Exploding()
    assert getattr(app, handler)(event) is None  # swallowed: Ryu goes on with the next event
    assert app.counters["handler_error"] == 1
    record, = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage().startswith(f"dpid=000000000000002a: {handler} failed on ")
    assert record.exc_info is not None


def test_a_handler_error_of_an_event_without_a_switch_is_logged_with_a_question_mark(app,
                                                                                   caplog):
    assert app._switch_gone(SimpleNamespace()) is None
    assert app.counters["handler_error"] == 1
    assert "dpid=?: _switch_gone failed on SimpleNamespace" in caplog.text


@pytest.mark.parametrize("handler", HANDLERS)
def test_every_openflow_handler_is_still_registered_with_ryu(handler):
    assert getattr(app_module.SbftApp, handler).callers  # set_ev_cls's mark, on the wrapper


def test_a_batch_that_cannot_be_translated_sends_nothing(app, caplog):
    datapath = Datapath(ofp13, parser13)
    app._switch_features(features(datapath))
    sent = len(datapath.sent)
    assert app._send(1, [object()]) is False
    assert len(datapath.sent) == sent and app.counters["translation_error"] == 1
    assert "dpid=0000000000000001: cannot express for this switch, nothing sent" in caplog.text
    assert app._send(1, []) is True and len(datapath.sent) == sent


def test_rest_bodies_come_from_the_cores_state(app):
    datapath = Datapath(ofp10, parser10)
    app._switch_features(features(datapath, [port(1, ofp10)]))
    tables(app, datapath)
    health = app.api_health()
    assert health["switches"] == [{"dpid": "0000000000000001", "connected": True,
                                   "ofp_version": "1.0"}]
    assert (health["primary"], [r["name"] for r in app.api_replicas()]) == (
        "lb1", ["lb1", "lb2", "lb3"])
    assert app.api_events()["events"][0]["change"] == "primary"
    body, _ = app.api_metrics_text()
    assert b'sbft_controller_total{event="of_messages_sent"}' in body


def test_agents_are_nudged_on_loopback_and_a_failed_nudge_is_counted(app):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent:
        agent.bind(("127.0.0.1", 0))
        agent.settimeout(2.0)
        app.config = dataclasses.replace(app.config, agent_notify_port=agent.getsockname()[1])
        app._nudge_agents(["127.0.0.1"])
        assert agent.recvfrom(64)[0] == b"sbft-nudge"
    app._nudge_agents(["255.255.255.255"])  # refused locally: no SO_BROADCAST
    assert app.counters["nudge_error"] == 1
    app.config = dataclasses.replace(app.config, agent_notify_port=0)
    app._nudge_agents(["127.0.0.1"])  # 0: agents are not nudged
    assert app.counters["nudge_error"] == 1


def _barrier_reply(app, datapath, xid):
    app._barrier_reply(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, xid=xid)))


@pytest.mark.parametrize("ofp, parser", [(ofp10, parser10), (ofp13, parser13)])
def test_a_new_primary_gets_its_role_when_the_switch_answers_the_last_barrier(app, ofp,
                                                                             parser):
    datapath = _serving_switch(app, ofp, parser)
    _barrier_reply(app, datapath, datapath.sent[-1].xid)
    assert app._heartbeat_reply("lb1", None, ())["decided"] is True
    app._port_status(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, reason=ofp.OFPPR_DELETE, desc=port(1, ofp))))
    barriers = [m.xid for m in datapath.sent if isinstance(m, parser.OFPBarrierRequest)]
    assert app.cluster.view.primary == "lb2" and datapath.sent[-1].xid == barriers[-1]
    assert app._heartbeat_reply("lb2", None, ())["decided"] is False  # lb2 stays a backup
    _barrier_reply(app, datapath, barriers[-2])  # an earlier barrier: not yet
    _barrier_reply(app, Datapath(ofp, parser), barriers[-1])  # another connection's
    assert app._heartbeat_reply("lb2", None, ())["decided"] is False
    _barrier_reply(app, datapath, barriers[-1])
    reply = app._heartbeat_reply("lb2", None, ())
    assert (reply["decided"], reply["role"]) == (True, "primary")
    assert app.api_health()["decided"] is True  # health never waited: the view is decided



def test_a_barrier_answered_while_the_batch_is_half_sent_releases_nothing(app):
    """Ryu's send_msg may yield when its queue is full, and the switch's reply to a barrier
    sent earlier (the one between deletes and adds, or the last batch's) is then handled in
    the middle of the batch: the adds have not gone out yet."""
    datapath = _serving_switch(app, ofp13, parser13)
    _barrier_reply(app, datapath, datapath.sent[-1].xid)
    answered = set()

    def answer_earlier_barriers(msg):  # at each send, the replies to every barrier before it
        for earlier in datapath.sent:
            if isinstance(earlier, parser13.OFPBarrierRequest) and earlier.xid not in answered:
                answered.add(earlier.xid)
                _barrier_reply(app, datapath, earlier.xid)
        if not isinstance(msg, parser13.OFPBarrierRequest):
            assert app._heartbeat_reply("lb2", None, ())["decided"] is False

    datapath.before_send = answer_earlier_barriers
    sent = len(datapath.sent)
    app._port_status(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, reason=ofp13.OFPPR_DELETE, desc=port(1))))
    batch = [type(m).__name__ for m in datapath.sent[sent:]]
    assert batch.count("OFPBarrierRequest") == 2, batch  # between deletes and adds, and last
    assert datapath.sent[sent:][batch.index("OFPBarrierRequest")].xid in answered
    assert app._heartbeat_reply("lb2", None, ())["decided"] is False
    _barrier_reply(app, datapath, datapath.sent[-1].xid)
    assert app._heartbeat_reply("lb2", None, ())["role"] == "primary"
