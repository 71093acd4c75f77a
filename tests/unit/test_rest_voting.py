"""The voting parts of the REST API, served by the real SbftApp entry points (api_heartbeat,
api_readmit, ...) on a real ClusterState and Referee: authenticated heartbeats, evidence and
wire reports in heartbeats, and POST /sbft/replicas/<name>/readmit. No switch, no clock (the
app's time is fixed), no network."""

import itertools
import json
import logging
from types import SimpleNamespace

import pytest
import webob
from ryu.app.wsgi import WSGIApplication

from sbft_ryu import app as app_module
from sbft_ryu import protocol, rest
from sbft_ryu.cluster import ClusterState
from sbft_ryu.core import Core
from sbft_ryu.config import build_config
from sbft_ryu.referee import Referee

NOW = 50.0
KEYS = {name: bytes([n]) * 16 for n, name in enumerate(("lb1", "lb2", "lb3"), 1)}
CLIENT = bytes([10, 0, 0, 31])
LOOPBACK = "127.0.0.1"


@pytest.fixture
def app(raw, monkeypatch):
    raw.update(mode="active", voting="on", heartbeat_timeout="0",
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    config = build_config(raw)
    monkeypatch.setattr(app_module, "time", SimpleNamespace(monotonic=lambda: NOW))
    sbft = object.__new__(app_module.SbftApp)  # the entry points without Ryu's machinery
    sbft.config = config
    sbft.logger = logging.getLogger("test.sbft.voting")
    sbft.core = Core(config, send=None, logger=sbft.logger)
    sbft.core.cluster = ClusterState(config.replicas, 0.0)
    sbft.cluster.set_ports(1, {1: True, 2: True, 3: True}, NOW)  # lb1 primary, epoch 1
    counter = itertools.count(1)
    sbft.core.referee = Referee(config, new_nonce=lambda: f"n{next(counter)}")
    sbft.changed = []
    sbft.core._changed = lambda view, now: sbft.changed.append(view)
    return sbft


@pytest.fixture
def client(app):
    wsgi = WSGIApplication()
    rest.register(wsgi, app)

    def request(path, method="GET", body=None, remote="10.254.0.11"):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = webob.Request.blank(path, method=method, body=data, content_type="application/json",
                                  environ={"REMOTE_ADDR": remote})
        return req.get_response(wsgi)

    return request


def heartbeat(client, app, name="lb1", sign=True, **extra):
    """POST a heartbeat of ``name`` signed with its key and its current nonce."""
    body = {"seq": 1, "service_ok": True, "counters": {}, **extra}
    if sign:
        body["nonce"] = app.referee.nonces[name]
        body["mac"] = protocol.sign_body(KEYS[name], name, body)
    return client(f"/sbft/replicas/{name}/heartbeat", "POST", body)


def evidence(start, liar="lb3"):
    """A primary's evidence item, as hex: its claim and both votes (``liar`` disagrees)."""
    def signed(kind, name):
        value = protocol.digest(b"wrong" if name == liar else b"right")
        statement = protocol.Statement(CLIENT, 40000, start, start + 5, value)
        return protocol.encode(kind, name, [statement], KEYS[name]).hex()
    return [signed(protocol.CLAIM, "lb1"), signed(protocol.VOTE, "lb2"),
            signed(protocol.VOTE, "lb3")]


# --- authenticated heartbeats ----------------------------------------------------------------

def test_an_unsigned_heartbeat_is_401_with_the_nonce_to_sign_and_changes_nothing(client, app):
    response = client("/sbft/replicas/lb1/heartbeat", "POST",
                      {"seq": 1, "service_ok": True, "counters": {}})
    assert response.status_int == 401
    body = response.json
    assert body["nonce"] == "n4"  # an offer: signed with it, a heartbeat starts a session
    assert body["error"]["code"] == 401 and "no nonce" in body["error"]["message"]
    assert app.referee.nonces["lb1"] == "n1"
    assert app.cluster.health["lb1"].heartbeats == 0 and app.agent_addresses == {}
    assert app.counters["heartbeat_unauthenticated"] == 1
    assert app.referee.auth_failures["lb1"] == 1


def test_a_signed_heartbeat_is_answered_with_the_next_nonce_and_the_voting_block(client, app):
    response = heartbeat(client, app)
    assert response.status_int == 200
    body = response.json
    assert body["nonce"] == "n1" == app.referee.nonces["lb1"]
    assert body["active"]["voting"] is True
    assert body["voting"] == {"required": True, "f": 1, "hold_s": 0.2, "port": 5557,
                              "unvoted": "serve", "peers": {"lb1": "10.254.0.11"}, "reset": [],
                              "generation": 1, "generations": {"lb1": 1}}
    assert app.cluster.health["lb1"].heartbeats == 1
    assert heartbeat(client, app, seq=2).json["nonce"] == "n1"  # a session keeps its nonce


def test_a_replayed_heartbeat_is_401(client, app):
    body = {"seq": 1, "service_ok": True, "counters": {}, "nonce": "n1"}
    body["mac"] = protocol.sign_body(KEYS["lb1"], "lb1", body)
    assert client("/sbft/replicas/lb1/heartbeat", "POST", body).status_int == 200
    replay = client("/sbft/replicas/lb1/heartbeat", "POST", body)
    assert replay.status_int == 401 and replay.json["nonce"] == "n4"
    assert "replayed" in replay.json["error"]["message"]


def test_a_heartbeat_forged_with_the_published_nonce_is_401(client, app):
    body = {"seq": 9, "service_ok": False, "counters": {}, "nonce": "n3", "mac": "00" * 16}
    response = client("/sbft/replicas/lb3/heartbeat", "POST", body)
    assert response.status_int == 401 and "MAC does not verify" in response.text
    assert app.cluster.health["lb3"].heartbeats == 0


# --- evidence and wire reports in heartbeats -------------------------------------------------

def test_evidence_in_heartbeats_marks_the_liar_byzantine(client, app):
    response = heartbeat(client, app, evidence=[evidence(1000), evidence(2000), evidence(3000)])
    assert response.status_int == 200
    assert app.cluster.state("lb3") == "byzantine"
    assert "lb3" not in app.cluster.view.members
    assert app.changed[-1] is not None  # the new view went to the switches


def test_peers_of_the_voting_block_leave_out_byzantine_replicas(client, app):
    for name, address in (("lb2", "10.254.0.12"), ("lb3", "10.254.0.13")):
        app.agent_addresses[name] = address
    app.cluster.mark_byzantine("lb3", NOW, "test")
    assert heartbeat(client, app).json["voting"]["peers"] == {"lb1": "10.254.0.11",
                                                              "lb2": "10.254.0.12"}


def test_wire_reports_of_two_backups_convict_the_primary_and_name_the_taint(client, app):
    wire = [{"client": "10.0.0.31", "port": 40000, "epoch": 1, "start": 10, "end": 20}]
    assert heartbeat(client, app, "lb2", wire=wire).status_int == 200
    assert app.cluster.state("lb1") == "up"
    reply = heartbeat(client, app, "lb3", wire=wire).json
    assert app.cluster.state("lb1") == "byzantine"
    assert (reply["primary"], reply["epoch"]) == ("lb2", 2)
    assert reply["voting"]["reset"] == [["10.0.0.31", 40000]]


@pytest.mark.parametrize("extra, message", [
    ({"evidence": "00"}, "evidence must be a list"),
    ({"evidence": [[]]}, "each evidence item"),
    ({"evidence": [["zz"]]}, "evidence batches must be hex"),
    ({"evidence": [["00"]] * (rest.MAX_EVIDENCE + 1)}, "evidence must be a list"),
    ({"evidence": [["00"] * (rest.MAX_BATCHES + 1)]}, "each evidence item"),
    ({"wire": {}}, "wire must be a list"),
    ({"wire": [{"client": "10.0.0.31", "port": 1}]}, "each wire report"),
    ({"wire": [{"client": "10.0.0.31", "port": 1, "epoch": 1, "start": 0, "end": 1,
                "generation": -1}]}, "wire generation"),
    ({"wire": [{"client": "10.0.0.31", "port": 1, "epoch": 1, "start": 0, "end": 1,
                "generation": 1, "more": 2}]}, "each wire report"),
    ({"wire": [{"client": "host", "port": 1, "epoch": 1, "start": 0, "end": 1}]},
     "wire client must be an IPv4 address"),
    ({"wire": [{"client": "10.0.0.31", "port": 0, "epoch": 1, "start": 0, "end": 1}]},
     "wire port must be"),
    ({"wire": [{"client": "10.0.0.31", "port": 1, "epoch": 1, "start": -1, "end": 1}]},
     "wire start and end"),
    ({"nonce": 5}, "nonce must be a string"),
    ({"mac": "x" * 129}, "mac must be a string"),
])
def test_malformed_voting_fields_are_400(client, app, extra, message):
    response = client("/sbft/replicas/lb1/heartbeat", "POST",
                      {"seq": 1, "service_ok": True, **extra})
    assert response.status_int == 400 and message in response.json["error"]["message"]
    assert app.referee.auth_failures["lb1"] == 0  # rejected before authentication


def test_parse_heartbeat_decodes_evidence_and_wire_reports():
    beat = rest.parse_heartbeat(json.dumps({
        "seq": 1, "service_ok": True, "nonce": "n", "mac": "ab", "evidence": [["00ff", "01"]],
        "wire": [{"client": "10.0.0.31", "port": 40000, "epoch": 2, "start": 0,
                  "end": 0xFFFFFFFF}]}).encode())
    assert (beat.nonce, beat.mac) == ("n", "ab")
    assert beat.evidence == ((b"\x00\xff", b"\x01"),)
    assert beat.wire == ((CLIENT, 40000, 2, 0, 0xFFFFFFFF, None),)  # no generation said
    beat = rest.parse_heartbeat(json.dumps({
        "seq": 1, "service_ok": True, "wire": [{"client": "10.0.0.31", "port": 40000,
                                                "epoch": 2, "start": 0, "end": 1,
                                                "generation": 3}]}).encode())
    assert beat.wire == ((CLIENT, 40000, 2, 0, 1, 3),)


# --- readmit -------------------------------------------------------------------------------------

def error_of(response, code):
    assert response.status_int == code and response.content_type == "application/json"
    assert set(response.json) == {"error"} and response.json["error"]["code"] == code
    return response.json["error"]["message"]


def test_readmitting_a_replica_that_is_not_byzantine_is_409(client, app):
    message = error_of(client("/sbft/replicas/lb3/readmit", "POST", {}, remote=LOOPBACK), 409)
    assert message == "lb3 is not byzantine (state up)"
    assert app.changed == []


def test_readmitting_an_unknown_replica_is_404(client):
    message = error_of(client("/sbft/replicas/lb9/readmit", "POST", {}, remote=LOOPBACK), 404)
    assert message == "no replica named 'lb9'; configured: ['lb1', 'lb2', 'lb3']"


def test_readmit_is_post_only(client):
    response = client("/sbft/replicas/lb3/readmit")
    assert error_of(response, 405) == "method GET not allowed; use POST"
    assert response.headers["Allow"] == "POST"


def test_a_readmitted_replica_rejoins_with_a_clean_record(client, app):
    heartbeat(client, app, evidence=[evidence(1000), evidence(2000), evidence(3000)])
    assert app.cluster.state("lb3") == "byzantine"
    response = client("/sbft/replicas/lb3/readmit", "POST", {}, remote=LOOPBACK)
    assert response.status_int == 200
    body = response.json
    assert (body["name"], body["state"], body["role"]) == ("lb3", "up", "backup")
    assert body["votes"]["suspicion"] == 0.0 and body["votes"]["divergences"] == 3
    assert app.cluster.view.members == ("lb1", "lb2", "lb3")
    assert app.cluster.history[-1].change == "up"
    assert error_of(client("/sbft/replicas/lb3/readmit", "POST", {}, remote=LOOPBACK), 409)


# --- the app's wiring of the voting options (through Ryu's own CONF) ------------------------------

@pytest.fixture
def ryu_conf():
    """Ryu's global CONF with [sbft] overrides, cleared afterwards."""
    conf = app_module.CONF
    conf(args=[], default_config_files=[], default_config_dirs=[])
    overridden = []

    def override(**values):
        for name, value in values.items():
            conf.set_override(name, value, group="sbft")
            overridden.append(name)
    yield override
    for name in overridden:
        conf.clear_override(name, group="sbft")


@pytest.mark.parametrize("unvoted, serve_below", [("stop", 2), ("serve", None)])
def test_unvoted_stop_makes_the_cluster_serve_only_with_f_plus_1_members(ryu_conf, unvoted,
                                                                         serve_below):
    ryu_conf(mode="active", voting="on", unvoted=unvoted,
             replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()])
    sbft = app_module.SbftApp(wsgi=WSGIApplication())
    assert sbft.cluster.serve_below == serve_below
    assert sbft.referee.judge is not None and set(sbft.referee.nonces) == set(KEYS)


def test_without_voting_the_cluster_always_serves(ryu_conf):
    ryu_conf(unvoted="stop")
    sbft = app_module.SbftApp(wsgi=WSGIApplication())
    assert sbft.cluster.serve_below is None and sbft.referee.judge is None
