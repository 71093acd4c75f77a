"""Heartbeats to the controller and the role they bring back.

Every interval the agent POSTs ``{"seq", "service_ok", "counters"}`` to
``/sbft/replicas/<name>/heartbeat`` over a kept-alive HTTP connection and applies the role in
the answer; a keyed agent with a session sends most heartbeats as UDP datagrams instead
(:mod:`sbft_ryu.agent.udp`, :meth:`Heartbeats._udp_turn` says when). If the controller cannot
be reached, or answers that it has not decided yet (a restarted controller before it has seen
the members), the agent keeps its last role (fail-static) and says so once in its log; the
switch's reply filter and the controller's failover cover a primary that is cut off. Role
changes are applied in the order that never lets a demoted replica's kernel keep accepting
replies after its agent has stopped doing so. With several controllers one such loop runs per
controller, each with its own session, and only a leader's answers are applied
(:mod:`sbft_ryu.agent.leader`).
"""

import http.client
import json
import logging
import math
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

from sbft_ryu import seal
from sbft_ryu.beatwire import RESYNCED
from sbft_ryu.agent import leader
from sbft_ryu.agent.iptables import fast_mark
from sbft_ryu.agent.udp import NO_ANSWER, UdpMiss
from sbft_ryu.agent.vote import VoteConfig
from sbft_ryu.protocol import MAX_EVIDENCE, MAX_WIRE, sign_body

PRIMARY = "primary"
BACKUP = "backup"
NO_ROLE = "none"
ROLES = (PRIMARY, BACKUP, NO_ROLE)

LOG = logging.getLogger("sbft.agent")
MIN_NUDGE_GAP_S = 0.005
REPORTS_KEPT = 64  # evidence waiting to reach the controller (the newest kept)
STOP_CHECK_S = 0.1
UDP_MISSES = 2  # asked-for UDP answers missing in a row before a beat goes over HTTP
ANSWER_EVERY = 4  # a UDP beat asks for an answer this often (and after a nudge or a miss)
COUNTERS_EVERY_S = 1.0  # counters too large for a datagram travel over HTTP this often


class RoleState:
    """What the packet path reads (one attribute read each) and the heartbeat loop writes."""

    __slots__ = ("role", "epoch", "primary", "fast_mark", "primary_name")

    def __init__(self):
        self.role = NO_ROLE
        self.epoch = None
        self.primary = False  # the hot path's only question
        self.fast_mark = None  # mark for kernel-cached verdicts while primary (None: none)
        self.primary_name = None


@dataclass(frozen=True)
class ActiveParams:
    """Active mode's parameters in an answer (checked when the mode is applied)."""

    secret: bytes  # b"": missing or not hex
    wscale: Optional[int]  # None: not an integer
    voting: bool


@dataclass(frozen=True)
class Answer:
    """The controller's answer to a heartbeat, parsed once (with every default) by the
    heartbeat thread; what the agent applies and reads, never the JSON itself."""

    role: str
    epoch: Optional[int] = None
    primary: Optional[str] = None  # the primary's name
    nonce: Optional[str] = None
    interval: Optional[float] = None  # heartbeat_interval_s, when a finite number
    vip: Optional[str] = None
    mode: Optional[str] = None
    active: Optional[ActiveParams] = None
    mode_key: tuple = (None, "null")  # a change of mode (or of its parameters) changes it
    voting: Optional[VoteConfig] = None  # None: the answer carries no voting configuration
    reset: frozenset = frozenset()  # (client address, port) a primary resets
    heartbeat_port: Optional[int] = None  # the controller's UDP heartbeat port (keyed agents)
    decided: bool = True  # False: a restarted controller not decided yet (keep the role)
    controller_role: str = leader.STANDALONE  # what the controller is (agent.leader.claim)
    term: Optional[int] = None  # its leader term, when it leads

    @classmethod
    def parse(cls, body, key=None, name=None):
        """From an answer body whose role is one of ROLES (ValueError on a malformed voting
        configuration); ``key`` and ``name`` open a sealed active-mode secret."""
        params = body.get("active")
        active = None
        if isinstance(params, dict) or body.get("mode") == "active":
            params = params if isinstance(params, dict) else {}
            secret = _secret(params, key, name)
            try:
                wscale = int(params.get("wscale", 7))
            except (TypeError, ValueError):
                wscale = None
            active = ActiveParams(secret, wscale, bool(params.get("voting")))
        voting = body.get("voting")
        config, reset = None, frozenset()
        if isinstance(voting, dict):
            config = VoteConfig.of(
                required=voting.get("required"), f=voting.get("f", 1),
                hold_s=voting.get("hold_s", 0.2), port=voting.get("port", VoteConfig.port),
                peers=voting.get("peers") or {}, primary=body.get("primary"),
                epoch=body.get("epoch") or 0, generation=voting.get("generation", 0),
                unvoted=voting.get("unvoted"))
            try:
                reset = frozenset((socket.inet_aton(client), port)
                                  for client, port in voting.get("reset") or ())
            except (OSError, TypeError):
                raise ValueError("the controller's reset list is malformed") from None
        controller_role, term = leader.claim(body)
        return cls(role=body.get("role", NO_ROLE), epoch=body.get("epoch"),
                   primary=body.get("primary"), nonce=body.get("nonce"),
                   interval=_seconds(body.get("heartbeat_interval_s")),
                   vip=body.get("vip"), mode=body.get("mode"), active=active,
                   mode_key=(body.get("mode"), json.dumps(body.get("active"), sort_keys=True)),
                   voting=config, reset=reset, decided=body.get("decided") is not False,
                   heartbeat_port=_port(body.get("heartbeat_port")),
                   controller_role=controller_role, term=term)

    @property
    def vote_port(self):
        return self.voting.port if self.voting is not None else VoteConfig.port


class ControllerUnreachable(Exception):
    pass


class ControllerRejected(Exception):
    def __init__(self, status, message, answer=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.answer = answer if isinstance(answer, dict) else {}


class ControllerClient:
    """POSTs heartbeats over one kept-alive connection; reconnects after any failure."""

    def __init__(self, base_url, name, timeout):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"controller URL must be http://HOST:PORT, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 8080
        self.path = f"/sbft/replicas/{urllib.parse.quote(name)}/heartbeat"
        self.timeout = timeout
        self._conn = None

    def heartbeat(self, body):
        data = json.dumps(body).encode("utf-8")
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
            self._conn.request("POST", self.path, body=data,
                               headers={"Content-Type": "application/json"})
            response = self._conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ControllerUnreachable(str(exc) or type(exc).__name__) from None
        try:
            answer = json.loads(payload.decode("utf-8"))
        except ValueError:
            answer = None
        if response.status != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise ControllerRejected(response.status, message or payload[:200], answer)
        if not isinstance(answer, dict) or answer.get("role") not in ROLES:
            raise ControllerRejected(response.status, f"unexpected answer {payload[:200]!r}")
        return answer

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _secret(params, key, name):
    """The active-mode secret of an answer: sealed for this agent (opened with its key), or
    in clear (a pinned agent); b"" when absent or not this agent's."""
    try:
        if "sealed" in params:
            if key is None:
                return b""
            return seal.unseal(key, name, bytes.fromhex(params["sealed"]))
        return bytes.fromhex(params.get("secret", ""))
    except (TypeError, ValueError):
        return b""


def _port(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and \
        0 < value < 65536 else None


def _seconds(value):
    """A finite float from a JSON number, or None (bools, NaN, inf and huge ints are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class Heartbeats:
    """The heartbeat loop; ``run(stop)`` in its own thread."""

    def __init__(self, client, state, probe, counters, rules=None, interval=None,
                 clock=time.monotonic, connection_cache=False, wakeup=None, on_mode=None,
                 on_role=None, key=None, name=None, reports=None, on_answer=None, udp=None,
                 gate=None, index=0, label=""):
        self.client = client
        self.state = state
        self.probe = probe
        self.counters = counters  # callable → dict
        self.rules = rules
        self.connection_cache = connection_cache
        self.wakeup = wakeup  # a UDP socket: the controller's nudge after a role change
        # called with the Answer when the controller's mode (or its active parameters) change
        self.on_mode = on_mode
        self.on_role = on_role  # called after every change of role (e.g. to wake the queue)
        self.on_answer = on_answer  # called with every Answer (the voting configuration)
        self.key = key  # this replica's key: heartbeats are signed with the last nonce
        self.name = name
        self.nonce = None
        self.reports = reports  # callable → [(kind, item)] evidence for the controller
        self._unsent = []
        self._sending = []  # the share of _unsent the current heartbeat carries
        self.mode = None
        self._last_nudge = float("-inf")
        self.fixed_interval = interval
        self.interval = interval or 0.05
        self.clock = clock
        self.controller_ok = None
        self.answer = None  # the last Answer
        self.sent = 0
        self.failures = 0
        # keyed agents: heartbeats over UDP (agent.udp.UdpChannel) once a session exists
        self.udp = udp
        self.udp_sent = 0
        self.udp_misses = 0  # in a row; UDP_MISSES of them: the next beat goes over HTTP
        self._http_at = float("-inf")  # the last heartbeat answered over HTTP
        self._http_next = False  # the controller asked for HTTP (its answer did not fit)
        self.nudged = False
        self.undecided = 0  # answers "not decided yet" (the role was kept)
        # several controllers: one loop each, sharing one Gate (which answers are obeyed, and
        # the lock under which they are applied); alone, a gate of its own
        self.gate = gate if gate is not None else leader.Gate(self.apply_answer)
        self.index = index
        self.label = label  # "URL: " in log lines when there are several controllers
        self.ignored = 0  # answers not obeyed (a follower's, a deposed leader's)

    def run(self, stop):
        seq = 0
        next_at = self.clock()
        while not stop.is_set():
            try:
                self.beat(seq)
            except Exception:  # e.g. iptables-restore failed: log, count, retry next beat
                self.failures += 1
                LOG.exception("heartbeat round failed; retrying at the next interval")
            seq += 1
            next_at += self.interval
            delay = next_at - self.clock()
            if delay < 0:  # fell behind (slow controller): do not burst to catch up
                next_at, delay = self.clock(), 0
            if self._wait(stop, delay):
                next_at = self.clock()  # nudged: beat now, then resume the rhythm
                self.nudged = True  # (the beat asks for its answer: the role may change)

    def _wait(self, stop, delay):
        """Sleep ``delay`` unless nudged; True if a nudge arrived. However many datagrams
        come (the port is open to anyone), nudged beats are at least MIN_NUDGE_GAP_S apart,
        and ``stop`` is seen within STOP_CHECK_S."""
        if self.wakeup is None:
            stop.wait(delay)
            return False
        if isinstance(self.wakeup, threading.Event):  # several loops: agent.leader.NudgeFanout
            return self._wait_event(stop, delay)
        deadline = self.clock() + delay
        while not stop.is_set():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self.wakeup], [], [], min(remaining, STOP_CHECK_S))
            if not ready:
                continue
            for _ in range(64):  # drain what is queued; bounded
                try:
                    self.wakeup.recv(64)
                except OSError:
                    break
            gap = self._last_nudge + MIN_NUDGE_GAP_S - self.clock()
            if gap > 0:
                stop.wait(gap)
            self._last_nudge = self.clock()
            return True
        return False

    def _wait_event(self, stop, delay):
        deadline = self.clock() + delay
        while not stop.is_set():
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            if self.wakeup.wait(min(remaining, STOP_CHECK_S)):
                self.wakeup.clear()
                return True
        return False

    def beat(self, seq):
        body = self._exchange(seq)
        if body is None:
            return
        self.sent += 1
        answer = Answer.parse(body, self.key, self.name)
        self.answer = answer
        self.nonce = answer.nonce
        if self.udp is not None and self.udp.port is None and answer.heartbeat_port:
            self.udp.port = answer.heartbeat_port  # learned from the controller
        if self.fixed_interval is None and answer.interval is not None:
            self.interval = min(max(answer.interval, 0.005), 10.0)
        if not answer.decided:
            self.undecided += 1
            self._controller(None, f"controller not decided yet (restarted, or a switch "
                                   f"applying a change): keeping role {self.state.role}")
            return
        gate = self.gate
        with gate.lock:  # one answer applied at a time, whichever controller's loop has it
            if not gate.decide(self.index, answer):
                self.ignored += 1
                self._controller(answer.controller_role,
                                 f"controller is {answer.controller_role} (term {answer.term},"
                                 f" obeyed term {gate.highest}): its answers keep the session "
                                 f"only; role {self.state.role}")
                return
            self._controller(True, "controller reachable")
            gate.apply(answer)

    def apply_answer(self, answer):
        """Apply an Answer in the one fixed order: mode, voting configuration, role."""
        if answer.mode is not None and answer.mode_key != self.mode and self.on_mode is not None:
            self.mode = None  # should on_mode fail, the next answer tries again
            self.on_mode(answer)  # before the role: a promotion must find the mode's rules
            if self.rules is not None and self.state.primary:
                self.state.fast_mark = self.rules.mark
        self.mode = answer.mode_key
        if self.on_answer is not None:
            self.on_answer(answer)  # the voting configuration, before the role
        self.apply(answer.role, answer.epoch, answer.primary)

    def _body(self, seq):
        body = {"seq": seq, "service_ok": self.probe.ok(self.clock()),
                "counters": self.counters()}
        if self._unsent:
            evidence = [raws for kind, raws in self._sending if kind == "evidence"]
            wire = [w for kind, w in self._sending if kind == "wire"]
            if evidence:
                body["evidence"] = [[raw.hex() for raw in raws] for raws in evidence]
            if wire:
                body["wire"] = [_wire_report(*report) for report in wire]
        if self.key is not None:
            if self.nonce is not None:
                body["nonce"] = self.nonce
            body["mac"] = sign_body(self.key, self.name, body)
        return body

    def _exchange(self, seq):
        """One heartbeat (and, when the controller asks for its nonce first, one retry): the
        answer, or None after logging why not."""
        if self.reports is not None:
            self._unsent.extend(self.reports())
            del self._unsent[:-REPORTS_KEPT]
        self._sending = _share(self._unsent)
        if self._udp_turn():
            answer = self._udp_exchange(seq)
            if answer is not RESYNCED:
                return answer
            # outside the controller's session (it restarted): this beat goes over HTTP now
        for attempt in range(2):
            try:
                answer = self.client.heartbeat(self._body(seq))
                sent = set(map(id, self._sending))  # the rest goes with the next heartbeat
                self._unsent = [item for item in self._unsent if id(item) not in sent]
                self._http_at, self._http_next, self.udp_misses = self.clock(), False, 0
                return answer
            except ControllerRejected as exc:
                nonce = exc.answer.get("nonce")
                if exc.status == 401 and attempt == 0 and isinstance(nonce, str):
                    self.nonce = nonce  # sign with this one
                    continue
                self.failures += 1
                self._controller(False, f"controller rejected the heartbeat ({exc}): keeping "
                                        f"role {self.state.role}")
                return None
            except ControllerUnreachable as exc:
                self.failures += 1
                self._controller(False, f"controller unreachable ({exc}): keeping role "
                                        f"{self.state.role} (fail-static)")
                return None
        return None

    def _udp_turn(self):
        """Whether this beat goes over UDP: a keyed agent with a session (its nonce) and the
        controller's port, nothing for HTTP only (evidence, wire reports, counters that did
        not fit for a second), and answers coming back."""
        udp = self.udp
        return (udp is not None and udp.port is not None and self.nonce is not None
                and not self._unsent and not self._http_next and self.udp_misses < UDP_MISSES
                and (udp.carried_counters or self.clock() - self._http_at < COUNTERS_EVERY_S))

    def _udp_exchange(self, seq):
        want = (self.udp_misses > 0 or self.nudged or self.udp_sent % ANSWER_EVERY == 0)
        self.udp_sent += 1
        self.nudged = False
        try:
            answer = self.udp.exchange(seq, self.probe.ok(self.clock()), self.nonce,
                                       self.counters(), _udp_wait(self.interval), want)
        except UdpMiss:
            self.udp_misses += 1  # the beat itself may well have counted: no failure yet
            return None
        if answer is NO_ANSWER:
            return None
        self.udp_misses = 0
        if answer is RESYNCED:
            return answer
        if answer is None:
            self._http_next = True
            return None
        if not isinstance(answer, dict) or answer.get("role") not in ROLES:
            self._http_next = True
            return None
        return answer

    def apply(self, role, epoch, primary_name):
        state = self.state
        state.primary_name = primary_name
        if role == state.role and (epoch == state.epoch or role != PRIMARY):
            state.epoch = epoch  # a backup follows epochs silently
            return
        LOG.info("role %s -> %s (epoch %s, primary %s)", state.role, role, epoch, primary_name)
        if role == PRIMARY:
            state.primary = True  # userspace accepts from now on
            if self.rules is not None:
                mark = fast_mark(epoch or 0) if self.connection_cache else None
                state.fast_mark = None  # plain accepts until the kernel rule for ``mark`` exists
                self.rules.set_role(True, mark)
                state.fast_mark = self.rules.mark
        else:
            state.primary = False  # userspace drops from now on
            if self.rules is not None and self.rules.primary:
                self.rules.set_role(False)  # door closed, cached verdicts stop matching
            state.fast_mark = None
        state.role, state.epoch = role, epoch
        if self.on_role is not None:
            self.on_role()

    def _controller(self, ok, message):
        if ok == self.controller_ok:
            return
        self.controller_ok = ok  # (None: not decided yet; a role name: not obeyed; at INFO)
        (LOG.warning if ok is False else LOG.info)("%s%s", self.label, message)


def _udp_wait(interval):
    """How long a UDP beat waits for its answer: most of the interval, at most 0.25 s."""
    return min(max(0.8 * interval, 0.005), 0.25)


def _wire_report(client, port, epoch, start, end, generation=None):
    report = {"client": socket.inet_ntoa(client), "port": port, "epoch": epoch,
              "start": start, "end": end}
    if generation is not None:
        report["generation"] = generation  # the agent's when it saw it
    return report


def _share(unsent, evidence=MAX_EVIDENCE, wire=MAX_WIRE):
    """The reports one heartbeat carries (at most ``evidence`` evidence items and ``wire``
    wire reports, the oldest first), within the controller's limits."""
    share, counts = [], {"evidence": 0, "wire": 0}
    limits = {"evidence": evidence, "wire": wire}
    for item in unsent:
        kind = item[0]
        if counts.get(kind, 0) < limits.get(kind, 0):
            counts[kind] += 1
            share.append(item)
    return share
