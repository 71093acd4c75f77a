"""Tests for sbft_ryu.rest: the real Ryu WSGI application, driven with webob requests."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import webob
from ryu.app.wsgi import WSGIApplication

from sbft_ryu import metrics, rest, views
from sbft_ryu.cluster import ClusterState

NOW = 10.0
DPID = 1


class FakeApp:
    """What rest.py calls on the SbftApp (``config`` and the ``api_*`` entry points), built on
    a real ClusterState and the real views, with a fixed clock; records heartbeat calls."""

    def __init__(self, config):
        self.config = config
        self.cluster = ClusterState(config.replicas, config.heartbeat_timeout)
        self.cluster.set_ports(DPID, {1: True, 2: True, 3: True}, NOW)
        self.seen = {DPID: (True, "1.3")}
        self.calls = []
        self.registry = metrics.make_registry(lambda: (self.api_health(), {"heartbeat": 1}))

    def api_health(self):
        return views.health_view(self.config, self.cluster, self.seen, NOW)

    def api_replicas(self):
        return views.replicas_view(self.config, self.cluster, NOW)

    def api_replica(self, name):
        return views.replica_view(self.config, self.cluster, name, NOW)

    def api_events(self):
        return views.events_view(self.cluster, NOW)

    def api_heartbeat(self, name, beat, address):
        assert isinstance(beat, rest.Heartbeat)
        self.calls.append((name, beat.seq, beat.service_ok, beat.counters, address))
        self.cluster.heartbeat(name, beat.seq, beat.service_ok, beat.counters, NOW)
        return views.heartbeat_reply(self.config, self.cluster, name,  # as to a pinned agent
                                     secret={"secret": self.config.active_secret.hex()})

    def api_metrics_text(self):
        return metrics.exposition(self.registry)


@pytest.fixture
def app(default_config):
    # port state only, so the replicas are up (lb1 primary, epoch 1) without heartbeats
    return FakeApp(dataclasses.replace(default_config, heartbeat_timeout=0.0))


@pytest.fixture
def client(app):
    wsgi = WSGIApplication()
    rest.register(wsgi, app)

    def request(path, method="GET", body=None, **kwargs):
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        req = webob.Request.blank(path, method=method, body=body,
                                  content_type="application/json", **kwargs)
        return req.get_response(wsgi)

    return request


def error_of(response, code):
    assert response.status_int == code
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]["message"]


BEAT = {"seq": 3, "service_ok": True, "counters": {"mirrored": 10, "load": 0.5}}
HEARTBEAT = "/sbft/replicas/lb1/heartbeat"


# --- reads ----------------------------------------------------------------------------------


def test_health(client):
    response = client("/sbft/health")
    assert response.status_int == 200
    assert response.content_type == "application/json"
    body = response.json
    assert {"status", "primary", "epoch", "switches", "replicas"} <= set(body)
    assert (body["status"], body["primary"], body["epoch"]) == ("ok", "lb1", 1)
    assert body["switches"] == [{"dpid": "0000000000000001", "connected": True,
                                 "ofp_version": "1.3"}]
    assert [r["name"] for r in body["replicas"]] == ["lb1", "lb2", "lb3"]
    for replica in body["replicas"]:
        assert {"name", "ip", "mac", "port", "state", "role"} <= set(replica)
    assert {key: body["replicas"][1][key] for key in ("name", "ip", "mac", "port", "state",
                                                       "role")} == {
        "name": "lb2", "ip": "10.0.0.12", "mac": "00:00:00:00:01:02", "port": 2,
        "state": "up", "role": "backup"}


def test_replicas(client):
    response = client("/sbft/replicas")
    assert response.status_int == 200
    assert [(r["name"], r["role"]) for r in response.json["replicas"]] == [
        ("lb1", "primary"), ("lb2", "backup"), ("lb3", "backup")]


def test_one_replica(client):
    response = client("/sbft/replicas/lb1")
    assert response.status_int == 200
    body = response.json
    assert (body["name"], body["ip"], body["port"], body["state"], body["role"]) == (
        "lb1", "10.0.0.11", 1, "up", "primary")


def test_events(client):
    response = client("/sbft/events")
    assert response.status_int == 200
    assert response.json["events"][0] == {"age_s": 0.0, "replica": "lb1", "change": "primary",
                                          "epoch": 1}


def test_unknown_replica_is_404_naming_it(client):
    message = error_of(client("/sbft/replicas/lb9"), 404)
    assert message == "no replica named 'lb9'; configured: ['lb1', 'lb2', 'lb3']"


def test_wrong_method_is_405_with_allow(client):
    response = client("/sbft/health", method="POST", body={})
    assert error_of(response, 405) == "method POST not allowed; use GET"
    assert response.headers["Allow"] == "GET"


@pytest.mark.parametrize("path", ["/sbft/nope", "/sbft/replicas/1bad", "/sbft/replicas/lb1/x"])
def test_unknown_path_is_json_404(client, path):
    message = error_of(client(path), 404)
    assert message == f"no such resource {path}; see /sbft/health"


def test_unknown_path_with_other_method_is_json_404(client):
    assert error_of(client("/sbft/nope", method="DELETE"), 404).startswith("no such resource")


def test_metrics(client):
    response = client("/metrics")
    assert response.status_int == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    assert "sbft_epoch 1.0" in text
    assert 'sbft_replica_up{replica="lb1"} 1.0' in text


# --- heartbeats -----------------------------------------------------------------------------


def test_heartbeat_is_recorded_and_answered(client, app):
    response = client(HEARTBEAT, method="POST", body=BEAT,
                      environ={"REMOTE_ADDR": "10.0.0.11"})
    assert response.status_int == 200
    body = response.json
    assert (body["role"], body["epoch"], body["primary"]) == ("primary", 1, "lb1")
    assert body["heartbeat_interval_s"] == 0.05
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, "10.0.0.11")]
    assert app.cluster.health["lb1"].heartbeats == 1


def test_passive_heartbeat_answer_has_exactly_the_passive_keys(client, app):
    body = client(HEARTBEAT, method="POST", body=BEAT).json
    assert body == {"decided": True, "role": "primary", "epoch": 1, "primary": "lb1",
                    "state": "up", "heartbeat_interval_s": 0.05, "mode": "passive",
                    "vip": "10.0.0.100", "service_port": 5555,
                    "controller": {"role": "standalone", "term": 0}}
    assert "active" not in body


SECRET = bytes(range(0x10, 0x30))


@pytest.mark.parametrize("wscale", [0, 7, 14])
def test_active_heartbeat_answer_carries_the_secret_and_the_window_scale(app, wscale):
    app.config = dataclasses.replace(app.config, mode="active", active_secret=SECRET,
                                     active_wscale=wscale)
    wsgi = WSGIApplication()
    rest.register(wsgi, app)
    response = webob.Request.blank(HEARTBEAT, method="POST", body=json.dumps(BEAT).encode(),
                                   content_type="application/json").get_response(wsgi)
    assert response.status_int == 200
    body = response.json
    assert body["mode"] == "active"
    assert body["active"] == {"secret": SECRET.hex(), "wscale": wscale, "voting": False}
    assert bytes.fromhex(body["active"]["secret"]) == SECRET
    passive = views.heartbeat_reply(dataclasses.replace(app.config, mode="passive"),
                                    app.cluster, "lb1")
    assert body == {**passive, "mode": "active", "active": body["active"]}


def test_heartbeat_reply_of_every_replica_has_the_same_active_block(app):
    config = dataclasses.replace(app.config, mode="active", active_secret=SECRET)
    replies = [views.heartbeat_reply(config, app.cluster, name,
                                     secret={"secret": SECRET.hex()})
               for name in ("lb1", "lb2", "lb3")]
    assert [reply["role"] for reply in replies] == ["primary", "backup", "backup"]
    assert all(reply["active"] == {"secret": SECRET.hex(), "wscale": 7, "voting": False}
               for reply in replies)


def test_an_active_reply_carries_no_secret_unless_given_one(app):
    config = dataclasses.replace(app.config, mode="active", active_secret=SECRET)
    reply = views.heartbeat_reply(config, app.cluster, "lb1")
    assert reply["active"] == {"wscale": 7, "voting": False}
    assert SECRET.hex() not in json.dumps(reply)


def test_passive_heartbeat_reply_never_shows_the_secret(app):
    config = dataclasses.replace(app.config, active_secret=SECRET)
    reply = views.heartbeat_reply(config, app.cluster, "lb1")
    assert "active" not in reply
    assert SECRET.hex() not in json.dumps(reply)


def test_the_secret_is_in_no_other_view(client, app):
    app.config = dataclasses.replace(app.config, mode="active", active_secret=SECRET)
    for path in ("/sbft/health", "/sbft/replicas", "/sbft/replicas/lb1", "/sbft/events",
                 "/metrics"):
        response = client(path)
        assert response.status_int == 200, path
        assert SECRET.hex().encode() not in response.body, path


def test_heartbeat_passes_the_client_address_of_each_request(client, app):
    client(HEARTBEAT, method="POST", body=BEAT, environ={"REMOTE_ADDR": "10.0.0.11"})
    client("/sbft/replicas/lb2/heartbeat", method="POST", body=BEAT,
           environ={"REMOTE_ADDR": "10.254.0.12"})
    assert [(call[0], call[4]) for call in app.calls] == [("lb1", "10.0.0.11"),
                                                          ("lb2", "10.254.0.12")]


def test_heartbeat_without_a_remote_address_passes_none(client, app):
    assert client(HEARTBEAT, method="POST", body=BEAT).status_int == 200
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, None)]


def test_heartbeat_counters_are_optional(client, app):
    response = client("/sbft/replicas/lb2/heartbeat", method="POST",
                      body={"seq": 0, "service_ok": False}, environ={"REMOTE_ADDR": "10.0.0.12"})
    assert response.status_int == 200
    assert app.calls == [("lb2", 0, False, {}, "10.0.0.12")]


@pytest.mark.parametrize("body, code, message", [
    (b"{not json", 400, "body is not valid JSON: "),
    (b"\xff\xfe", 400, "body is not valid JSON: "),
    ([1, 2], 400, "body must be a JSON object with keys seq, service_ok, counters"),
    ({**BEAT, "sequence": 1}, 400,
     "unknown keys ['sequence']; expected ['seq', 'service_ok', 'counters', 'nonce', 'mac', "
     "'evidence', 'wire']"),
    ({**BEAT, "seq": -1}, 400, "seq must be a non-negative integer, got -1"),
    ({**BEAT, "seq": "3"}, 400, "seq must be a non-negative integer, got '3'"),
    ({**BEAT, "seq": True}, 400, "seq must be a non-negative integer, got True"),
    ({**BEAT, "seq": 3.0}, 400, "seq must be a non-negative integer, got 3.0"),
    ({"service_ok": True}, 400, "seq must be a non-negative integer, got None"),
    ({**BEAT, "service_ok": 1}, 400, "service_ok must be true or false, got 1"),
    ({**BEAT, "service_ok": "true"}, 400, "service_ok must be true or false, got 'true'"),
    ({**BEAT, "counters": [1]}, 400, "counters must be an object of at most 64 entries"),
    ({**BEAT, "counters": {"rx": -1}}, 400, "counter 'rx' must be a non-negative number, got -1"),
    ({**BEAT, "counters": {"rx": "NaN"}}, 400,
     "counter 'rx' must be a non-negative number, got 'NaN'"),
    (b'{"seq": 1, "service_ok": true, "counters": {"rx": NaN}}', 400,
     "counter 'rx' must be a non-negative number, got nan"),
    ({**BEAT, "counters": {"rx": True}}, 400,
     "counter 'rx' must be a non-negative number, got True"),
    ({**BEAT, "counters": {f"c{i}": i for i in range(65)}}, 400,
     "counters must be an object of at most 64 entries"),
    ({**BEAT, "counters": {"x" * 65: 1}}, 400,
     f"counter '{'x' * 64}' must be a non-negative number, got 1"),
    (b" " * (64 * 1024 + 1), 413, "body larger than 65536 bytes"),
])
def test_bad_heartbeat_is_rejected_and_not_recorded(client, app, body, code, message):
    before = app.cluster.health["lb1"].heartbeats
    got = error_of(client(HEARTBEAT, method="POST", body=body), code)
    if message.endswith(": "):  # the JSON decoder's own explanation follows
        assert got.startswith(message)
    else:
        assert got == message
    assert app.calls == []
    assert app.cluster.health["lb1"].heartbeats == before


def test_heartbeat_get_is_405_allow_post(client, app):
    response = client(HEARTBEAT)
    assert error_of(response, 405) == "method GET not allowed; use POST"
    assert response.headers["Allow"] == "POST"
    assert app.calls == []


def test_heartbeat_for_unknown_replica_is_404(client, app):
    message = error_of(client("/sbft/replicas/lb9/heartbeat", method="POST", body=BEAT), 404)
    assert message == "no replica named 'lb9'; configured: ['lb1', 'lb2', 'lb3']"
    assert app.calls == []


def test_handler_crash_is_json_500(client, app, monkeypatch):
    monkeypatch.setattr(app, "api_health", lambda: 1 / 0)
    assert error_of(client("/sbft/health"), 500) == "internal error (see controller log)"


# --- parse_heartbeat ------------------------------------------------------------------------


def test_parse_heartbeat_accepted_shape():
    data = {"seq": 0, "service_ok": True, "counters": {"a": 1, "b": 2.5}}
    beat = rest.parse_heartbeat(json.dumps(data).encode())
    assert isinstance(beat, rest.Heartbeat)
    assert beat == rest.Heartbeat(0, True, {"a": 1, "b": 2.5}, None, None, (), (), data)
    assert beat[:3] == (beat.seq, beat.service_ok, beat.counters) == (0, True, {"a": 1, "b": 2.5})
    assert beat.body == data  # what a MAC covers


def test_parse_heartbeat_defaults_counters():
    beat = rest.parse_heartbeat(b'{"seq": 7, "service_ok": false}')
    assert beat[:3] == (7, False, {})
    assert (beat.nonce, beat.mac, beat.evidence, beat.wire) == (None, None, (), ())


def test_parse_heartbeat_accepts_the_limits():
    counters = {f"{i:064d}": i for i in range(rest.MAX_COUNTERS)}
    body = json.dumps({"seq": 2 ** 63, "service_ok": True, "counters": counters}).encode()
    assert rest.parse_heartbeat(body)[:3] == (2 ** 63, True, counters)


def test_parse_heartbeat_error_is_api_error():
    with pytest.raises(rest.ApiError) as info:
        rest.parse_heartbeat(b"[]")
    assert info.value.code == 400


# --- the heartbeat body: read from the stream, bounded ---------------------------------------


class Stream:
    """A wsgi.input that records how much was asked for and how much it gave."""

    def __init__(self, data):
        self.data = data
        self.position = 0
        self.asked = []

    def read(self, size=-1):
        self.asked.append(size)
        end = len(self.data) if size is None or size < 0 else self.position + size
        chunk = self.data[self.position:end]
        self.position += len(chunk)
        return chunk

    def readline(self, size=-1):  # webob may wrap the stream; never needed here
        raise AssertionError("readline")


def padded(size, beat=BEAT):
    """A valid heartbeat of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    text = json.dumps(beat).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


def post_raw(app, path, stream, content_length=None, **environ):
    """POST with an explicit wsgi.input and CONTENT_LENGTH (None: no Content-Length header,
    as with a chunked request)."""
    wsgi = WSGIApplication()
    rest.register(wsgi, app)
    env = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json",
           "wsgi.input": stream, **environ}
    if content_length is not None:
        env["CONTENT_LENGTH"] = str(content_length)
    req = webob.Request.blank(path, environ=env)
    if content_length is None:
        req.environ.pop("CONTENT_LENGTH", None)
    return req.get_response(wsgi)


def test_heartbeat_of_exactly_max_body_is_accepted(client, app):
    body = padded(rest.MAX_BODY)
    assert len(body) == rest.MAX_BODY == 64 * 1024
    response = client(HEARTBEAT, method="POST", body=body)
    assert response.status_int == 200
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, None)]


def test_heartbeat_of_max_body_plus_one_is_413(client, app):
    body = padded(rest.MAX_BODY + 1)
    assert error_of(client(HEARTBEAT, method="POST", body=body), 413) == \
        "body larger than 65536 bytes"
    assert app.calls == []


def test_heartbeat_reads_at_most_max_body_plus_one_bytes_of_a_huge_body(app):
    stream = Stream(b" " * (10 * 1024 * 1024))
    response = post_raw(app, HEARTBEAT, stream, content_length=len(stream.data))
    assert error_of(response, 413) == "body larger than 65536 bytes"
    assert stream.position == rest.MAX_BODY + 1
    assert app.calls == []


def test_heartbeat_reads_exactly_the_content_length(app):
    body = padded(300)
    stream = Stream(body + b"garbage after the declared length")
    response = post_raw(app, HEARTBEAT, stream, content_length=len(body))
    assert response.status_int == 200
    assert stream.position == len(body)
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, None)]


def test_heartbeat_shorter_content_length_cuts_the_body(app):
    body = json.dumps(BEAT).encode()
    response = post_raw(app, HEARTBEAT, Stream(body), content_length=len(body) - 1)
    assert error_of(response, 400).startswith("body is not valid JSON: ")
    assert app.calls == []


def test_heartbeat_with_content_length_zero_is_400(app):
    stream = Stream(json.dumps(BEAT).encode())
    response = post_raw(app, HEARTBEAT, stream, content_length=0)
    assert error_of(response, 400).startswith("body is not valid JSON: ")
    assert stream.position == 0
    assert app.calls == []


def test_chunked_heartbeat_without_content_length_is_read_through_req_body(app):
    # a server that decodes chunked bodies says so with wsgi.input_terminated (PEP 3333 note);
    # the body then comes through webob's req.body
    response = post_raw(app, HEARTBEAT, Stream(json.dumps(BEAT).encode()),
                        **{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert response.status_int == 200
    assert response.json["role"] == "primary"
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, None)]


@pytest.mark.parametrize("size, code", [(rest.MAX_BODY, 200), (rest.MAX_BODY + 1, 413)])
def test_chunked_heartbeat_limits(app, size, code):
    response = post_raw(app, HEARTBEAT, Stream(padded(size)),
                        **{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    assert response.status_int == code
    assert len(app.calls) == (code == 200)


def test_chunked_heartbeat_as_ryus_eventlet_server_passes_it(app):
    # eventlet.wsgi: no CONTENT_LENGTH, Transfer-Encoding: chunked, wsgi.input decodes the
    # chunks, no wsgi.input_terminated
    response = post_raw(app, HEARTBEAT, Stream(json.dumps(BEAT).encode()),
                        HTTP_TRANSFER_ENCODING="chunked")
    assert response.status_int == 200
    assert app.calls == [("lb1", 3, True, {"mirrored": 10, "load": 0.5}, None)]


class StreamOnly:
    """A request whose ``body`` (webob's copying read) must not be used."""

    def __init__(self, content_length, stream):
        self.content_length = content_length
        self.body_file_raw = stream

    @property
    def body(self):
        raise AssertionError("req.body used although the length is known")


def test_body_reads_the_stream_when_the_length_is_known():
    stream = Stream(b"x" * 100)
    assert rest._body(StreamOnly(10, stream)) == b"x" * 10
    assert stream.asked == [10]
    stream = Stream(b"x" * (rest.MAX_BODY + 100))
    assert rest._body(StreamOnly(rest.MAX_BODY + 100, stream)) == b"x" * (rest.MAX_BODY + 1)
    assert stream.asked == [rest.MAX_BODY + 1]
    stream = Stream(b"x" * (rest.MAX_BODY + 100))
    assert rest._body(StreamOnly(rest.MAX_BODY, stream)) == b"x" * rest.MAX_BODY
    assert stream.asked == [rest.MAX_BODY]


def test_body_without_a_length_reads_the_stream_up_to_the_limit():
    stream = Stream(b'{"seq": 1}')
    req = SimpleNamespace(content_length=None, body_file_raw=stream)
    assert rest._body(req) == b'{"seq": 1}'
    assert stream.asked == [rest.MAX_BODY + 1]


# --- response formatting ---------------------------------------------------------------------


def test_heartbeat_answer_is_compact_json(client, app):
    response = client(HEARTBEAT, method="POST", body=BEAT)
    assert response.status_int == 200
    assert response.content_type == "application/json"
    reply = views.heartbeat_reply(app.config, app.cluster, "lb1")
    assert response.body == (json.dumps(reply, separators=(",", ":")) + "\n").encode()
    assert b" " not in response.body and response.body.count(b"\n") == 1


@pytest.mark.parametrize("path", ["/sbft/health", "/sbft/replicas", "/sbft/replicas/lb1",
                                  "/sbft/events"])
def test_other_answers_keep_indent_1(client, path):
    response = client(path)
    assert response.status_int == 200
    assert response.body == (json.dumps(response.json, indent=1) + "\n").encode()
    assert response.body.startswith(b'{\n "')


def test_heartbeat_errors_keep_indent_1(client):
    response = client(HEARTBEAT, method="POST", body=b"[]")
    assert response.status_int == 400
    assert response.body == (json.dumps(response.json, indent=1) + "\n").encode()


def test_json_response_formats():
    body = {"a": [1, 2], "b": "é"}
    assert rest.json_response(body).body == (json.dumps(body, indent=1) + "\n").encode()
    assert rest.json_response(body, indent=None).body == \
        b'{"a":[1,2],"b":"\\u00e9"}\n'
    response = rest.json_response(body, 201, {"X-Test": "1"}, indent=None)
    assert (response.status_int, response.headers["X-Test"]) == (201, "1")
