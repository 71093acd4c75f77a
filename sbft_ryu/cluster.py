"""Runtime state of the replica cluster: liveness, the sticky primary, its successor and the
epoch.

One :class:`ClusterState` is owned by the Ryu app and passed to whoever needs it. Every input
(a port status, a heartbeat, the passage of time) takes ``now`` from the caller (a monotonic
clock), re-evaluates liveness and returns the new :class:`ClusterView` when it changed, so the
caller knows when to re-derive flows. Nothing here reads a clock or talks to a switch.
"""

from collections import deque
from dataclasses import dataclass
from typing import Optional, Tuple

UP = "up"
DOWN = "down"
BYZANTINE = "byzantine"
PRIMARY = "primary"
BACKUP = "backup"
NO_ROLE = "none"

_HISTORY = 64  # transitions kept for REST


@dataclass(frozen=True)
class ClusterView:
    """What the switch must know: who receives service traffic and who may answer."""

    members: Tuple[str, ...]  # replicas that get mirrored traffic, in configured order
    primary: Optional[str]
    epoch: int


@dataclass(frozen=True)
class Transition:
    at: float  # monotonic seconds
    replica: Optional[str]
    change: str  # e.g. "up", "down: heartbeat silence", "primary"
    epoch: int


class ReplicaHealth:
    """Everything the controller knows about one replica (mutable, owned by ClusterState)."""

    __slots__ = ("link_up", "last_heartbeat", "seq", "service_ok", "counters",
                 "heartbeats", "agent_restarts", "acked_epoch", "byzantine", "down_reason")

    def __init__(self):
        self.link_up = False
        self.last_heartbeat = None
        self.seq = None
        self.service_ok = None
        self.counters = {}
        self.heartbeats = 0
        self.agent_restarts = 0
        self.acked_epoch = None  # the epoch the agent was last told
        self.byzantine = False
        self.down_reason = "no switch port seen"


class ClusterState:
    """``startup_grace``: the first election waits until every replica is up or this many
    seconds have passed since the first one came up, so that a replica that merely booted
    first does not keep the primary role (it is sticky) ahead of the configured order."""

    def __init__(self, replicas, heartbeat_timeout, startup_grace=0.0, serve_below=None,
                 by_seniority=False):
        """``serve_below``: with fewer members than this (f + 1 when voting), elect no primary
        (the operator chose to stop serving rather than serve unvoted replies); None: serve.

        ``by_seniority`` (active mode): a failed primary's successor is the member that has
        been up the longest, the configured order breaking ties (every replica up at the
        first election ties). A replica that (re)joined holds only the connections that began
        after it; promoting it while an older backup is up would lose all the others."""
        self.replicas = tuple(replicas)
        self.by_seniority = by_seniority
        self._up_since = {}  # name -> when it last came up (members only)
        self._first_elected_at = None
        self.heartbeat_timeout = heartbeat_timeout
        self.startup_grace = startup_grace
        self.serve_below = serve_below
        self.epoch_primary = {}  # epoch -> its primary (wire reports name an epoch)
        self._first_up_at = None
        self.health = {replica.name: ReplicaHealth() for replica in self.replicas}
        self._ports = {}  # dpid -> {port_no: up}
        self._by_port = {replica.port: replica.name for replica in self.replicas}
        self.view = ClusterView(members=(), primary=None, epoch=0)
        self.history = deque(maxlen=_HISTORY)
        self.recorded = 0  # transitions ever recorded (history keeps the last _HISTORY)
        self._up = {replica.name: False for replica in self.replicas}

    # ---- inputs -------------------------------------------------------------------------------

    def set_ports(self, dpid, ports, now):
        """Replace what one switch reports: ``ports`` maps port number → link usable (bool)."""
        self._ports[dpid] = dict(ports)
        return self._refresh_links(now)

    def port_status(self, dpid, port, up, now):
        self._ports.setdefault(dpid, {})[port] = up
        return self._refresh_links(now)

    def switch_gone(self, dpid, now):
        self._ports.pop(dpid, None)
        return self._refresh_links(now)

    def heartbeat(self, name, seq, service_ok, counters, now):
        """Record an agent's report; returns the new view if this changed it, else None."""
        health = self.health[name]
        if health.seq is not None and seq < health.seq:
            health.agent_restarts += 1
        health.seq = seq
        health.last_heartbeat = now
        health.service_ok = service_ok
        health.counters = dict(counters)
        health.heartbeats += 1
        changed = self.evaluate(now)
        health.acked_epoch = self.view.epoch
        return changed

    def evaluate(self, now):
        """Re-derive liveness and the primary at ``now``; the new view if it changed."""
        changed = False
        for replica in self.replicas:
            up, reason = self._liveness(replica.name, now)
            health = self.health[replica.name]
            if up != self._up[replica.name]:
                self._up[replica.name] = up
                if up:
                    self._up_since[replica.name] = now
                else:
                    self._up_since.pop(replica.name, None)
                if up and self._first_up_at is None:
                    self._first_up_at = now
                health.down_reason = None if up else reason
                self._record(now, replica.name, UP if up else f"{DOWN}: {reason}")
                changed = True
            elif not up:
                health.down_reason = reason
        if not changed and not self._first_election_due(now):
            return None
        return self._elect(now)

    def mark_byzantine(self, name, now, reason):
        health = self.health[name]
        if health.byzantine:
            return None
        health.byzantine = True
        health.down_reason = f"{BYZANTINE}: {reason}"
        self._record(now, name, f"{BYZANTINE}: {reason}")
        self._up[name] = False
        return self._elect(now)

    def readmit(self, name, now):
        health = self.health[name]
        if not health.byzantine:
            return None
        health.byzantine = False
        self._record(now, name, "readmitted by operator")
        return self.evaluate(now) or self._elect(now)

    # ---- queries ------------------------------------------------------------------------------

    def next_deadline(self, now):
        """The earliest time at which liveness can change without a new input: a heartbeat
        going silent or the startup grace ending (None: nothing pending)."""
        deadlines = []
        if self.heartbeat_timeout:
            deadlines += [health.last_heartbeat + self.heartbeat_timeout
                          for name, health in self.health.items()
                          if self._up[name] and health.last_heartbeat is not None]
        if self._starting(now):
            deadlines.append(self._first_up_at + self.startup_grace)
        return min(deadlines) if deadlines else None

    def is_up(self, name):
        return self._up[name]

    def state(self, name):
        if self.health[name].byzantine:
            return BYZANTINE
        return UP if self._up[name] else DOWN

    def role(self, name):
        if name == self.view.primary:
            return PRIMARY
        return BACKUP if self._up[name] else NO_ROLE

    def status(self):
        """ok: a primary and every replica up; degraded: a primary, some replica not; down."""
        if self.view.primary is None:
            return "down"
        return "ok" if all(self._up.values()) else "degraded"

    def transitions_since(self, count):
        """Transitions recorded after the first ``count`` (as many as history still holds)."""
        missing = self.recorded - count
        return list(self.history)[-missing:] if missing > 0 else []

    def heartbeat_age(self, name, now):
        last = self.health[name].last_heartbeat
        return None if last is None else max(0.0, now - last)

    # ---- internals ----------------------------------------------------------------------------

    def _refresh_links(self, now):
        for replica in self.replicas:
            self.health[replica.name].link_up = any(
                ports.get(replica.port, False) for ports in self._ports.values())
        return self.evaluate(now)

    def _liveness(self, name, now):
        health = self.health[name]
        if health.byzantine:
            return False, BYZANTINE
        if not health.link_up:
            return False, "switch port down"
        if not self.heartbeat_timeout:
            return True, None
        if health.last_heartbeat is None:
            return False, "no heartbeat yet"
        if now - health.last_heartbeat > self.heartbeat_timeout:
            return False, "heartbeat silence"
        if not health.service_ok:
            return False, "service probe failed"
        return True, None

    def _starting(self, now):
        """Before the first election, while some replica is missing and the grace runs."""
        return (self.view.epoch == 0 and self._first_up_at is not None
                and now < self._first_up_at + self.startup_grace
                and not all(self._up.values()))

    def _first_election_due(self, now):
        return (self.view.epoch == 0 and self.view.primary is None
                and any(self._up.values()) and not self._starting(now))

    def _elect(self, now):
        members = tuple(r.name for r in self.replicas if self._up[r.name])
        primary = self.view.primary
        if primary not in members:  # sticky: a healthy primary keeps its role
            primary = self._successor(members)
        if self._starting(now):
            primary = None  # let the configured order decide, not who booted first
        if self.serve_below and len(members) < self.serve_below:
            primary = None  # too few replicas to vote, and unvoted replies are not wanted
        epoch = self.view.epoch + (primary != self.view.primary)
        new = ClusterView(members=members, primary=primary, epoch=epoch)
        if new == self.view:
            return None
        if primary is not None and self._first_elected_at is None:
            self._first_elected_at = now
        if primary != self.view.primary:
            self._record(now, primary, PRIMARY if primary else "no primary", epoch)
            self.epoch_primary[epoch] = primary
            for old in [e for e in self.epoch_primary if e < epoch - _HISTORY]:
                del self.epoch_primary[old]
        self.view = new
        return new

    def _successor(self, members):
        if not members:
            return None
        if not self.by_seniority or self._first_elected_at is None:
            return members[0]
        start = self._first_elected_at
        order = {name: i for i, name in enumerate(members)}
        return min(members, key=lambda name: (max(self._up_since.get(name, start), start),
                                              order[name]))

    def _record(self, now, name, change, epoch=None):
        self.recorded += 1
        self.history.append(Transition(at=now, replica=name, change=change,
                                       epoch=self.view.epoch if epoch is None else epoch))
