"""etcd as the controllers' shared store: the few v3 calls they need, and the state kept there.

:class:`Etcd` speaks etcd's HTTP/JSON gateway through ``etcd3gw`` (it works under eventlet's
monkey patching, so a request yields to the hub instead of blocking it). It tries the
configured endpoints in order and sticks to the last one that answered; an endpoint that
cannot be reached, times out or has no quorum ("no leader", 5xx) passes the request to the
next, and when none answers :class:`EtcdError` names each endpoint's failure.

:class:`EtcdStore` has :class:`~sbft_ryu.store.FileStore`'s ``load()`` / ``save(state)``: the
state (the same JSON, with the same format version) lives under ``/sbft/<vip>/state``. Every
write is one transaction that compares the leader key's create revision with this leader's
term and the state's mod revision with the one it last read or wrote: a deposed leader's write
fails, a write on top of a state someone else changed fails, and either makes this controller
step down (``on_refused``) and raises :class:`~sbft_ryu.store.NotWritten`, so the caller acts
on nothing it could not write (write-ahead, as with the file).
"""

import base64

from sbft_ryu.store import NotWritten, StateError, encode_state, parse_state

# Answers that mean "this member cannot serve now": try the next endpoint.
_UNAVAILABLE = ("ConnectionFailedError", "ConnectionTimeoutError", "InternalServerError")


class EtcdError(Exception):
    """No endpoint answered (the message names each one's failure), or etcd refused."""


def _b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _short(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__  # (a timeout has no text)
    return text[:160] + ("..." if len(text) > 160 else "")


def key_prefix(vip):
    """Where one service's controllers keep their keys (several services may share etcd)."""
    return f"/sbft/{vip}/"


class Etcd:
    """``endpoints``: (host, port) pairs; ``timeout``: seconds per request and endpoint."""

    def __init__(self, endpoints, timeout, make_client=None):
        if make_client is None:
            import etcd3gw

            make_client = etcd3gw.client
        self.endpoints = tuple(f"{host}:{port}" for host, port in endpoints)
        self._clients = [make_client(host=host, port=port, api_path="/v3/", timeout=timeout)
                         for host, port in endpoints]
        self._current = 0

    def _call(self, path, payload):
        failures = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            client = self._clients[index]
            try:
                answer = client.post(client.get_url(path), json=payload)
            except Exception as exc:  # etcd3gw wraps requests' errors in its own types
                if type(exc).__name__ not in _UNAVAILABLE:
                    raise EtcdError(f"{self.endpoints[index]}: {_short(exc)}") from None
                failures.append(f"{self.endpoints[index]}: {_short(exc)}")
                continue
            self._current = index
            return answer
        raise EtcdError("; ".join(failures))

    def get(self, key):
        """(value bytes, metadata with int create_revision, mod_revision, lease) or None."""
        answer = self._call("/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        item = kvs[0]
        meta = {name: int(item.get(name, 0)) for name in
                ("create_revision", "mod_revision", "lease")}
        return base64.b64decode(item.get("value", "")), meta

    def grant(self, ttl):
        """A new lease of ``ttl`` seconds; its id."""
        return int(self._call("/lease/grant", {"TTL": int(ttl), "ID": 0})["ID"])

    def keepalive(self, lease):
        """Renew ``lease``: its remaining TTL, or -1 when it is gone."""
        answer = self._call("/lease/keepalive", {"ID": lease})
        return int((answer.get("result") or {}).get("TTL", -1))

    def revoke(self, lease):
        """End ``lease`` (its keys go with it); a lease already gone is not an error."""
        try:
            self._call("/kv/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    def txn(self, compare, success):
        """One transaction: (succeeded, the store's revision after it)."""
        answer = self._call("/kv/txn", {"compare": compare, "success": success,
                                        "failure": []})
        return bool(answer.get("succeeded", False)), int(answer["header"]["revision"])

    def create(self, key, value, lease):
        """Create ``key`` only if absent, attached to ``lease``: (created, its create
        revision when created)."""
        return self.txn([{"key": _b64(key), "result": "EQUAL", "target": "CREATE",
                          "create_revision": 0}],
                        [{"request_put": {"key": _b64(key), "value": _b64(value),
                                          "lease": lease}}])


class EtcdStore:
    """The state under ``<prefix>state``. ``may_write()``: whether this controller leads now;
    ``on_refused(reason)``: called when a write fails (then it must step down). ``term`` (the
    leader key's create revision) is set by the takeover before the first write."""

    def __init__(self, etcd, prefix, may_write, on_refused):
        self.key = prefix + "state"
        self.leader_key = prefix + "leader"
        self.path = f"etcd key {self.key}"  # for StateError messages and the log
        self._etcd = etcd
        self._may_write = may_write
        self._on_refused = on_refused
        self.term = None
        self.mod_revision = 0  # of the state as last read or written (0: absent)
        self.writes = 0

    def load(self):
        """The stored state or None; remembers its mod revision for the next write. StateError
        for a state this controller cannot use; EtcdError when etcd does not answer."""
        found = self._etcd.get(self.key)
        if found is None:
            self.mod_revision = 0
            return None
        value, meta = found
        state = parse_state(value, self.path)
        self.mod_revision = meta["mod_revision"]
        return state

    def save(self, state):
        if self.term is None or not self._may_write():
            raise NotWritten("not the leader")
        compare = [{"key": _b64(self.leader_key), "result": "EQUAL", "target": "CREATE",
                    "create_revision": self.term},
                   {"key": _b64(self.key), "result": "EQUAL", "target": "MOD",
                    "mod_revision": self.mod_revision}]
        put = [{"request_put": {"key": _b64(self.key), "value": _b64(encode_state(state))}}]
        try:
            written, revision = self._etcd.txn(compare, put)
        except EtcdError as exc:
            reason = f"state write failed: {exc}"
        else:
            if written:
                self.mod_revision = revision
                self.writes += 1
                return
            reason = ("state write refused: the leader key or the state changed under this "
                      "controller (deposed)")
        self.term = None
        self._on_refused(reason)
        raise NotWritten(reason)


__all__ = ["Etcd", "EtcdError", "EtcdStore", "NotWritten", "StateError", "key_prefix"]
