"""Who may speak to the controller: the operator's token, pinned sources, the sealed
active-mode secret, and UDP heartbeats (sbft_ryu.api_token, referee, seal, beatwire, the app's
entry points). Real SbftApp entry points on a real Core, fixed clock, no network."""

import itertools
import json
import logging
import zlib
from types import SimpleNamespace

import pytest
import webob
from ryu.app.wsgi import WSGIApplication

from sbft_ryu import api_token, beatwire, protocol, rest, seal, udp_server, views
from sbft_ryu import app as app_module
from sbft_ryu.agent.heartbeat import Answer
from sbft_ryu.cluster import BYZANTINE, ClusterState
from sbft_ryu.config import ConfigError, build_config
from sbft_ryu.core import Core
from sbft_ryu.referee import Referee

NOW = 50.0
KEYS = {"lb1": b"\x01" * 32, "lb2": b"\x02" * 32}
SECRET = bytes(range(16, 48))
TOKEN = "s3cret-token-0123456789"
LOOPBACK, MGMT = "127.0.0.1", "10.254.0.13"


def make_app(raw, monkeypatch, tmp_path, token=True, **options):
    if token:
        path = tmp_path / "token"
        path.write_text(TOKEN + "\n")
        raw["api_token_file"] = str(path)
    raw.update(heartbeat_timeout="0", active_secret=SECRET.hex(),
               replica_key=[f"{n} {k.hex()}" for n, k in KEYS.items()],
               replica_source=["lb3 10.254.0.13"], **options)
    config = build_config(raw)
    monkeypatch.setattr(app_module, "time", SimpleNamespace(monotonic=lambda: NOW))
    sbft = object.__new__(app_module.SbftApp)
    sbft.config = config
    sbft.logger = logging.getLogger("test.sbft.speak")
    sbft.core = Core(config, send=lambda *a: True, logger=sbft.logger)
    sbft._udp_answers = beatwire.AnswerCache()
    sbft.core.cluster = ClusterState(config.replicas, 0.0)
    sbft.cluster.set_ports(1, {1: True, 2: True, 3: True}, NOW)  # lb1 primary, epoch 1
    counter = itertools.count(1)
    sbft.core.referee = Referee(config, new_nonce=lambda: f"n{next(counter)}")
    return sbft


@pytest.fixture
def app(raw, monkeypatch, tmp_path):
    return make_app(raw, monkeypatch, tmp_path)


def client_of(app):
    wsgi = WSGIApplication()
    rest.register(wsgi, app)

    def request(path, method="GET", body=None, remote=MGMT, headers=None):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        req = webob.Request.blank(path, method=method, body=data, headers=headers or {},
                                  content_type="application/json",
                                  environ={"REMOTE_ADDR": remote})
        return req.get_response(wsgi)
    return request


@pytest.fixture
def client(app):
    return client_of(app)


# --- config -----------------------------------------------------------------------------------

def test_config_reads_the_token_sources_and_port_and_hides_the_token(raw, tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    raw.update(api_token_file=str(path), replica_source=["lb1 10.254.0.11"],
               heartbeat_port="6000")
    config = build_config(raw)
    assert (config.api_token, config.replica_sources, config.heartbeat_port) == (
        TOKEN.encode(), {"lb1": "10.254.0.11"}, 6000)
    assert TOKEN not in repr(config)
    assert build_config({}).api_token is None and build_config({}).heartbeat_port == 5558


@pytest.mark.parametrize("option, value, expected", [
    ("replica_source", ["lb9 10.254.0.9"], "[sbft] replica_source = 'lb9 10.254.0.9': expected "
                                            "NAME IP with NAME one of ['lb1', 'lb2', 'lb3']"),
    ("replica_source", ["lb1 10.254.0.11", "lb1 10.254.0.12"], "one source per replica"),
    ("replica_source", ["lb1 10.254.0.11", "lb2 10.254.0.11"], "a distinct address per "
                                                               "replica"),
    ("replica_source", ["lb1 nowhere"], "an IPv4 address"),
    ("heartbeat_port", "5557", "a port other than vote_port and agent_notify_port"),
    ("api_token_file", "/nonexistent/token", "a readable file holding the token"),
])
def test_config_errors_name_the_option(raw, option, value, expected):
    raw[option] = value
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert info.value.option == option and expected in str(info.value)


def test_a_short_token_is_refused_without_printing_it(raw, tmp_path):
    path = tmp_path / "token"
    path.write_text("tiny-x7q\n")
    raw["api_token_file"] = str(path)
    with pytest.raises(ConfigError, match="at least 16") as info:
        build_config(raw)
    assert "tiny-x7q" not in str(info.value)


# --- the operator's token -----------------------------------------------------------------------

def test_readmit_needs_the_bearer_token_checked_before_404_and_409(client, app):
    for path in ("/sbft/replicas/lb3/readmit", "/sbft/replicas/nobody/readmit"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            response = client(path, "POST", {}, remote=LOOPBACK, headers=headers)
            assert response.status_int == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json["error"]["code"] == 401
            assert TOKEN not in response.text
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client("/sbft/replicas/nobody/readmit", "POST", {}, headers=good).status_int == 404
    assert client("/sbft/replicas/lb3/readmit", "POST", {}, headers=good).status_int == 409


def test_a_denied_readmit_changes_nothing_and_a_good_one_readmits(client, app):
    app.core._changed(app.cluster.mark_byzantine("lb3", NOW, "test"), NOW)
    response = client("/sbft/replicas/lb3/readmit", "POST", {},
                      headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert response.status_int == 401 and app.cluster.state("lb3") == BYZANTINE
    response = client("/sbft/replicas/lb3/readmit", "POST", {},
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_int == 200 and app.cluster.state("lb3") == "up"


def test_without_a_token_file_operator_actions_come_from_loopback_only(raw, monkeypatch,
                                                                       tmp_path):
    app = make_app(raw, monkeypatch, tmp_path, token=False)
    client = client_of(app)
    response = client("/sbft/replicas/lb3/readmit", "POST", {}, remote=MGMT)
    assert response.status_int == 403 and "loopback only" in response.json["error"]["message"]
    assert client("/sbft/replicas/lb3/readmit", "POST", {}, remote=LOOPBACK).status_int == 409
    assert client("/sbft/replicas/lb3/readmit", "POST", {}, remote="::1").status_int == 409
    assert app.api_health()["security"]["operator_actions"] == "loopback only"


def test_check_compares_in_constant_time_and_tolerates_garbage():
    token = TOKEN.encode()
    api_token.check(token, f"bearer  {TOKEN} ", MGMT)
    for header in (None, "", "Bearer", "Bearer é", "Bearer " + TOKEN + "x"):
        with pytest.raises(api_token.Denied) as info:
            api_token.check(token, header, LOOPBACK)
        assert info.value.code == 401
    with pytest.raises(api_token.Denied):
        api_token.check(None, None, "not an address")


# --- pinned sources and the secret ---------------------------------------------------------------

def beat_body(seq=1, service_ok=True):
    return {"seq": seq, "service_ok": service_ok, "counters": {}}


def test_a_pinned_replicas_heartbeat_from_elsewhere_is_403_and_changes_nothing(raw, monkeypatch,
                                                                            tmp_path):
    app = make_app(raw, monkeypatch, tmp_path, mode="active")
    client = client_of(app)
    response = client("/sbft/replicas/lb3/heartbeat", "POST", beat_body(service_ok=False),
                      remote="10.254.0.12")
    assert response.status_int == 403 and response.json["error"]["code"] == 403
    assert app.cluster.health["lb3"].heartbeats == 0 and app.agent_addresses == {}
    assert SECRET.hex() not in response.text
    response = client("/sbft/replicas/lb3/heartbeat", "POST", beat_body(), remote=MGMT)
    assert response.status_int == 200 and app.cluster.health["lb3"].heartbeats == 1
    assert response.json["active"]["secret"] == SECRET.hex()  # in clear to its pinned source
    assert "heartbeat_port" not in response.json  # keyless: HTTP only


def test_the_secret_goes_sealed_to_a_keyed_agent_and_nowhere_unauthenticated(raw, monkeypatch,
                                                                             tmp_path):
    raw["replica_source"] = []
    app = make_app(raw, monkeypatch, tmp_path, mode="active")
    app.core.referee.sources = {}
    client = client_of(app)
    response = client("/sbft/replicas/lb3/heartbeat", "POST", beat_body())  # nobody's
    assert response.status_int == 200 and "secret" not in response.json["active"]
    assert SECRET.hex() not in response.text
    body = beat_body()
    body["nonce"] = app.referee.nonces["lb1"]
    body["mac"] = protocol.sign_body(KEYS["lb1"], "lb1", body)
    answer = client("/sbft/replicas/lb1/heartbeat", "POST", body).json
    assert "secret" not in answer["active"] and SECRET.hex() not in json.dumps(answer)
    assert answer["heartbeat_port"] == 5558
    sealed = bytes.fromhex(answer["active"]["sealed"])
    assert seal.unseal(KEYS["lb1"], "lb1", sealed) == SECRET
    parsed = Answer.parse(answer, key=KEYS["lb1"], name="lb1")
    assert parsed.active.secret == SECRET
    assert Answer.parse(answer, key=KEYS["lb2"], name="lb1").active.secret == b""
    assert Answer.parse(answer).active.secret == b""


def test_a_sealed_secret_opens_only_for_its_replica_and_key():
    blob = seal.seal(KEYS["lb1"], "lb1", SECRET)
    assert seal.unseal(KEYS["lb1"], "lb1", blob) == SECRET
    for key, name, data in ((KEYS["lb2"], "lb1", blob), (KEYS["lb1"], "lb2", blob),
                            (KEYS["lb1"], "lb1", blob[:-1] + bytes([blob[-1] ^ 1])),
                            (KEYS["lb1"], "lb1", blob[:5])):
        with pytest.raises(ValueError):
            seal.unseal(key, name, data)


def test_health_says_who_is_authenticated_and_how(app):
    health = app.api_health()
    assert health["security"] == {"unauthenticated_replicas": [],
                                  "operator_actions": "bearer token", "heartbeat_port": 5558}
    assert [(r["name"], r["authenticated"], r["authenticated_by"])
            for r in health["replicas"]] == [("lb1", True, "key"), ("lb2", True, "key"),
                                             ("lb3", True, "source")]


def test_without_keys_or_sources_health_and_the_log_warn(raw, monkeypatch, tmp_path, caplog):
    raw.update(mode="active")
    config = build_config(raw)
    sbft = object.__new__(app_module.SbftApp)
    sbft.config = config
    sbft.logger = logging.getLogger("test.sbft.speak.warn")
    sbft.core = Core(config, send=lambda *a: True, logger=sbft.logger)
    with caplog.at_level(logging.WARNING, logger="test.sbft.speak.warn"):
        sbft._warn_unauthenticated()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "lb1, lb2, lb3 are not authenticated" in messages[0]
    assert "exposed to whoever can reach the API" in messages[1]
    health = views.health_view(config, sbft.core.cluster, {}, NOW, sbft.core.referee)
    assert health["security"]["unauthenticated_replicas"] == ["lb1", "lb2", "lb3"]
    assert health["replicas"][0]["authenticated"] is False
    assert health["security"]["heartbeat_port"] is None  # no keys: no UDP channel


# --- UDP heartbeats -----------------------------------------------------------------------------

def datagram(app, name="lb2", seq=1, service_ok=True, key=None, nonce=None, counters=None):
    return beatwire.beat_datagram(key or KEYS[name], name, seq, service_ok,
                                  nonce or app.referee.nonces[name], counters or {"a": 1})[0]


def test_a_udp_heartbeat_counts_and_gets_a_signed_answer_to_that_beat(app):
    reply = app.udp_heartbeat(datagram(app, seq=7, counters={"accepted": 3}), "10.254.0.12")
    answer = beatwire.open_answer(KEYS["lb2"], "lb2", 7, reply)
    assert (answer["role"], answer["nonce"], answer["heartbeat_port"]) == (
        "backup", app.referee.nonces["lb2"], 5558)
    health = app.cluster.health["lb2"]
    assert (health.heartbeats, health.seq, health.counters) == (1, 7, {"accepted": 3})
    assert app.agent_addresses == {"lb2": "10.254.0.12"}
    with pytest.raises(beatwire.BeatWireError):  # not an answer to another beat
        beatwire.open_answer(KEYS["lb2"], "lb2", 8, reply)
    with pytest.raises(beatwire.BeatWireError):  # nor to another replica
        beatwire.open_answer(KEYS["lb1"], "lb1", 7, reply)


@pytest.mark.parametrize("forge", ["wrong-key", "keyless-name", "stale-nonce", "replay",
                                   "older", "flipped-bit", "garbage", "too-large"])
def test_a_udp_heartbeat_that_fails_authentication_gets_no_answer_and_changes_nothing(app,
                                                                                     forge):
    """A MAC that does not verify: no answer. A verified beat outside the session (stale
    nonce, replayed, older): a signed RESYNC (to start a session over HTTP). Neither changes
    anything."""
    app.udp_heartbeat(datagram(app, seq=5), MGMT)
    before = (app.cluster.health["lb2"].heartbeats, app.referee.last_seq["lb2"],
              app.cluster.health["lb2"].service_ok, dict(app.referee.nonces))
    data = {
        "wrong-key": lambda: datagram(app, seq=6, service_ok=False, key=b"\x09" * 32),
        "keyless-name": lambda: beatwire.beat_datagram(b"\x09" * 32, "lb3", 1, False, "x",
                                                       {})[0],
        "stale-nonce": lambda: datagram(app, seq=6, service_ok=False, nonce="old"),
        "replay": lambda: datagram(app, seq=5, service_ok=False),
        "older": lambda: datagram(app, seq=4, service_ok=False),
        "flipped-bit": lambda: bytes([b ^ (i == 30) for i, b in
                                      enumerate(datagram(app, seq=6, service_ok=False))]),
        "garbage": lambda: b"SBH1" + bytes(40),
        "too-large": lambda: b"x" * 1300,
    }[forge]()
    reply = app.udp_heartbeat(data, MGMT)
    if forge in ("stale-nonce", "replay", "older"):
        assert beatwire.is_resync(KEYS["lb2"], "lb2", reply)
        assert beatwire.open_answer(KEYS["lb2"], "lb2", 0, reply) is beatwire.RESYNCED
    else:
        assert reply is None
    assert before == (app.cluster.health["lb2"].heartbeats, app.referee.last_seq["lb2"],
                      app.cluster.health["lb2"].service_ok, dict(app.referee.nonces))
    assert app.counters["heartbeat_udp_rejected"] == 1


def test_a_udp_beat_that_asks_for_no_answer_counts_and_gets_none(app):
    data = beatwire.beat_datagram(KEYS["lb2"], "lb2", 3, True, app.referee.nonces["lb2"], {},
                                  answer=False)[0]
    assert app.udp_heartbeat(data, MGMT) is None
    assert app.cluster.health["lb2"].heartbeats == 1 and app.referee.last_seq["lb2"] == 3


def test_steady_beats_take_the_fast_path_and_others_the_hub(app):
    app.udp_heartbeat(datagram(app, seq=1), MGMT)  # (the first: on the hub)
    reply = app._udp_fast(datagram(app, seq=2, counters={"x": 2}), MGMT, NOW + 0.05)
    assert beatwire.open_answer(KEYS["lb2"], "lb2", 2, reply)["role"] == "backup"
    health = app.cluster.health["lb2"]
    assert (health.seq, health.last_heartbeat, health.counters) == (2, NOW + 0.05, {"x": 2})
    quiet = beatwire.beat_datagram(KEYS["lb2"], "lb2", 3, True, app.referee.nonces["lb2"],
                                   {}, answer=False)[0]
    assert app._udp_fast(quiet, MGMT, NOW + 0.1) is None and health.seq == 3
    changed = datagram(app, seq=4, service_ok=False)  # may change the view: the hub's
    assert app._udp_fast(changed, MGMT, NOW + 0.15) is udp_server.SLOW
    assert health.seq == 3 and app.referee.last_seq["lb2"] == 3  # nothing changed
    replayed = app._udp_fast(datagram(app, seq=3), MGMT, NOW)  # changes nothing, and
    assert beatwire.is_resync(KEYS["lb2"], "lb2", replayed)  # sends the agent to HTTP once
    assert app.counters["heartbeat_udp_rejected"] == 1


def test_a_udp_beat_without_counters_keeps_the_last_ones(app):
    app.udp_heartbeat(datagram(app, seq=1, counters={"claims": 4}), MGMT)
    data, carried = beatwire.beat_datagram(
        KEYS["lb2"], "lb2", 2, True, app.referee.nonces["lb2"],
        {f"counter_{i:03d}_{j}": i * 7919 + j for i in range(64) for j in range(1)}
        | {f"{i:x}{'y' * 30}{i * 31337}": i * 104729 for i in range(64)})
    assert len(data) <= beatwire.MAX_DATAGRAM and not carried
    assert app.udp_heartbeat(data, MGMT) is not None
    assert app.cluster.health["lb2"].counters == {"claims": 4}


def test_the_answer_cache_compresses_again_only_when_the_answer_changes():
    cache = beatwire.AnswerCache()
    first = beatwire.answer_datagram(KEYS["lb1"], "lb1", 1, {"role": "backup"}, cache)
    again = beatwire.answer_datagram(KEYS["lb1"], "lb1", 2, {"role": "backup"}, cache)
    assert beatwire.open_answer(KEYS["lb1"], "lb1", 2, again) == {"role": "backup"}
    assert first[:-24] != again[:-24] or first != again  # (another sequence number)
    changed = beatwire.answer_datagram(KEYS["lb1"], "lb1", 3, {"role": "primary"}, cache)
    assert beatwire.open_answer(KEYS["lb1"], "lb1", 3, changed) == {"role": "primary"}


def test_an_answer_too_large_for_a_datagram_says_use_http(app):
    big = {"reset": [["10.0.0.1", port] for port in range(1000)]}
    data = beatwire.answer_datagram(KEYS["lb1"], "lb1", 3, big)
    assert len(data) <= beatwire.MAX_DATAGRAM
    assert beatwire.open_answer(KEYS["lb1"], "lb1", 3, data) is None


def test_a_verified_payload_that_inflates_too_far_is_refused():
    bomb = zlib.compress(b"[" + b"0," * 20000 + b"0]")
    data = beatwire._pack(beatwire.BEAT, "lb1", KEYS["lb1"], bomb)
    with pytest.raises(beatwire.BeatWireError, match="beyond the limit"):
        beatwire.open_beat(KEYS, data)


def test_a_pinned_keyed_replicas_udp_beat_from_elsewhere_is_ignored(app):
    app.core.referee.sources["lb2"] = "10.254.0.12"
    assert app.udp_heartbeat(datagram(app, seq=1), "10.254.0.99") is None
    assert app.udp_heartbeat(datagram(app, seq=2), "10.254.0.12") is not None
