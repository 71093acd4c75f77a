"""REST API on Ryu's WSGI server (``--wsapi-host``/``--wsapi-port``, default 0.0.0.0:8080).

Each path has one method-agnostic route; the handler checks the method itself, because Ryu's
router answers a wrong method with 404 where a client expects 405 and an ``Allow`` header. Every
error, including unknown paths under ``/sbft/``, is JSON: ``{"error": {"code", "message"}}``.
Handlers only parse input and call the app; views build the bodies.
"""

import functools
import ipaddress
import json
import logging
import math
from typing import NamedTuple, Optional

from ryu.app.wsgi import ControllerBase, Response, route

from sbft_ryu import api_token, views
from sbft_ryu.protocol import MAX_BATCH_HEX, MAX_BATCHES, MAX_EVIDENCE, MAX_WIRE

APP_KEY = "sbft_app"
LOG = logging.getLogger(__name__)
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_.-]{0,31}"
MAX_BODY = 64 * 1024
MAX_COUNTERS = 64
HEARTBEAT_KEYS = ("seq", "service_ok", "counters", "nonce", "mac", "evidence", "wire")


class Heartbeat(NamedTuple):
    """A validated heartbeat body. ``nonce``/``mac`` authenticate it (protocol.body_signed);
    ``evidence`` lists signed vote batches (hex) that show a disagreement; ``wire`` lists
    connections whose primary packets on the wire differed from this replica's output."""

    seq: int
    service_ok: bool
    counters: dict
    nonce: Optional[str] = None
    mac: Optional[str] = None
    evidence: tuple = ()
    wire: tuple = ()
    body: Optional[dict] = None


class ApiError(Exception):
    def __init__(self, code, message, headers=None, extra=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}  # more fields for the error body (e.g. a fresh nonce)


def json_response(body, status=200, headers=None, indent=1):
    text = json.dumps(body, indent=indent) if indent else json.dumps(body, separators=(",", ":"))
    response = Response(status=status, content_type="application/json", charset="utf-8",
                        body=(text + "\n").encode("utf-8"))
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def api(*methods):
    """Allow ``methods`` only (405 + Allow otherwise) and turn errors into the JSON envelope."""
    allowed = ", ".join(methods)

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, req, **kwargs):
            try:
                if req.method not in methods and not (req.method == "HEAD" and "GET" in methods):
                    raise ApiError(405, f"method {req.method} not allowed; use {allowed}",
                                   {"Allow": allowed})
                return handler(self, req, **kwargs)
            except ApiError as exc:
                LOG.info("REST %s %s -> %d: %s", req.method, req.path, exc.code, exc.message)
                return json_response({**views.error_body(exc.code, exc.message), **exc.extra},
                                     exc.code, exc.headers)
            except Exception:  # a bug: log it with the request, answer 500, keep serving
                LOG.exception("REST %s %s failed", req.method, req.path)
                return json_response(views.error_body(500, "internal error (see controller log)"),
                                     500)
        return wrapper
    return decorate


def operator_action(handler):
    """A state-changing request that is not a heartbeat: the caller's credential is checked
    (api_token.check) before anything else, so a denied request learns nothing (not even
    whether the replica exists) and changes nothing."""
    @functools.wraps(handler)
    def wrapper(self, req, **kwargs):
        try:
            api_token.check(self.app.config.api_token, req.headers.get("Authorization"),
                            req.remote_addr)
        except api_token.Denied as exc:
            raise ApiError(exc.code, exc.message, exc.headers) from None
        return handler(self, req, **kwargs)
    return wrapper


def parse_heartbeat(body):
    """Validate a heartbeat body: ``{"seq": int, "service_ok": bool, "counters": {str: num}}``."""
    if len(body) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object with keys seq, service_ok, counters")
    unknown = sorted(set(data) - set(HEARTBEAT_KEYS))
    if unknown:
        raise ApiError(400, f"unknown keys {unknown}; expected {list(HEARTBEAT_KEYS)}")
    seq = data.get("seq")
    if not _is_int(seq) or seq < 0:
        raise ApiError(400, f"seq must be a non-negative integer, got {seq!r}")
    service_ok = data.get("service_ok")
    if not isinstance(service_ok, bool):
        raise ApiError(400, f"service_ok must be true or false, got {service_ok!r}")
    counters = data.get("counters", {})
    if not isinstance(counters, dict) or len(counters) > MAX_COUNTERS:
        raise ApiError(400, f"counters must be an object of at most {MAX_COUNTERS} entries")
    for key, value in counters.items():
        if len(key) > 64 or not _is_number(value) or value < 0:
            raise ApiError(400, f"counter {key[:64]!r} must be a non-negative number, "
                                f"got {value!r}")
    for key in ("nonce", "mac"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 128):
            raise ApiError(400, f"{key} must be a string of at most 128 characters")
    return Heartbeat(seq, service_ok, counters, data.get("nonce"), data.get("mac"),
                     _evidence(data.get("evidence", [])), _wire(data.get("wire", [])), data)


def _evidence(items):
    if not isinstance(items, list) or len(items) > MAX_EVIDENCE:
        raise ApiError(400, f"evidence must be a list of at most {MAX_EVIDENCE} items")
    out = []
    for item in items:
        if (not isinstance(item, list) or not 0 < len(item) <= MAX_BATCHES
                or not all(isinstance(b, str) and len(b) <= MAX_BATCH_HEX for b in item)):
            raise ApiError(400, f"each evidence item must be a list of 1..{MAX_BATCHES} hex "
                                "strings (signed vote batches)")
        try:
            out.append(tuple(bytes.fromhex(b) for b in item))
        except ValueError:
            raise ApiError(400, "evidence batches must be hex") from None
    return tuple(out)


def _wire(items):
    if not isinstance(items, list) or len(items) > MAX_WIRE:
        raise ApiError(400, f"wire must be a list of at most {MAX_WIRE} items")
    out = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"generation"} != {
                "client", "port", "epoch", "start", "end"}:
            raise ApiError(400, "each wire report must be {client, port, epoch, start, end} "
                                "and optionally generation")
        try:
            client = ipaddress.IPv4Address(item["client"]).packed
        except (ValueError, TypeError):
            raise ApiError(400, "wire client must be an IPv4 address") from None
        if not (_is_int(item["port"]) and 0 < item["port"] < 65536 and _is_int(item["epoch"])
                and item["epoch"] >= 0):
            raise ApiError(400, "wire port must be 1..65535 and epoch a non-negative integer")
        if not all(_is_int(item[k]) and 0 <= item[k] <= 0xFFFFFFFF for k in ("start", "end")):
            raise ApiError(400, "wire start and end must be 32-bit sequence numbers")
        generation = item.get("generation")
        if generation is not None and not (_is_int(generation) and
                                           0 <= generation <= 0xFFFFFFFF):
            raise ApiError(400, "wire generation must be a 32-bit non-negative integer")
        out.append((client, item["port"], item["epoch"], item["start"], item["end"],
                    generation))
    return tuple(out)


def _body(req):
    """The request body, at most MAX_BODY + 1 bytes, read straight from the stream (webob's
    ``req.body`` first copies it into a seekable buffer: measurable at 20 heartbeats/s per
    replica)."""
    length = req.content_length
    if length is None:  # chunked: eventlet decodes it; read no more than the limit + 1
        return req.body_file_raw.read(MAX_BODY + 1)
    return req.body_file_raw.read(min(length, MAX_BODY + 1))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class SbftRestController(ControllerBase):
    def __init__(self, req, link, data, **config):
        super().__init__(req, link, data, **config)
        self.app = data[APP_KEY]

    @route("sbft_health", "/sbft/health")
    @api("GET")
    def health(self, req, **_):
        return json_response(self.app.api_health())

    @route("sbft_replicas", "/sbft/replicas")
    @api("GET")
    def replicas(self, req, **_):
        return json_response({"replicas": self.app.api_replicas()})

    @route("sbft_replica", "/sbft/replicas/{name}", requirements={"name": NAME_PATTERN})
    @api("GET")
    def replica(self, req, name, **_):
        return json_response(self.app.api_replica(self._known(name)))

    @route("sbft_heartbeat", "/sbft/replicas/{name}/heartbeat",
           requirements={"name": NAME_PATTERN})
    @api("POST")
    def heartbeat(self, req, name, **_):
        name = self._known(name)
        beat = parse_heartbeat(_body(req))
        return json_response(self.app.api_heartbeat(name, beat, req.remote_addr), indent=None)

    @route("sbft_readmit", "/sbft/replicas/{name}/readmit", requirements={"name": NAME_PATTERN})
    @api("POST")
    @operator_action
    def readmit(self, req, name, **_):
        return json_response(self.app.api_readmit(self._known(name)))

    @route("sbft_events", "/sbft/events")
    @api("GET")
    def events(self, req, **_):
        return json_response(self.app.api_events())

    @route("sbft_metrics", "/metrics")
    @api("GET")
    def metrics(self, req, **_):
        body, content_type = self.app.api_metrics_text()
        response = Response(status=200, body=body)
        response.headers["Content-Type"] = content_type
        return response

    def _known(self, name):
        if self.app.config.replica(name) is None:
            names = [replica.name for replica in self.app.config.nodes]
            raise ApiError(404, f"no replica named {name!r}; configured: {names}")
        return name


class SbftFallbackController(ControllerBase):
    """JSON 404 for any other path under /sbft/ (registered last: Routes matches in order)."""

    @route("sbft_not_found", "/sbft/{tail:.*}")
    @api("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    def not_found(self, req, tail, **_):
        raise ApiError(404, f"no such resource /sbft/{tail}; see /sbft/health")


def register(wsgi_app, app):
    """Mount the API on Ryu's WSGIApplication, serving ``app`` (the SbftApp)."""
    wsgi_app.register(SbftRestController, {APP_KEY: app})
    wsgi_app.register(SbftFallbackController, {APP_KEY: app})
