"""Runtime state of the replica cluster: liveness, the voting set and its spares, the sticky
primary, its successor, the epoch and each replica's generation.

The *voting set* holds at most n (the configured members) names; the up ones are the view's
``members``. A spare (configured with ``spare`` lines, or a member that lost its place) stays
outside it with no role until it is promoted: at once when a member is convicted, or when a
member has been down for ``spare_after`` seconds. Every entry of a replica into ``members``
(first start, return after a crash or a link flap, readmission, promotion) starts a new
*generation* of it, so evidence from before can be told apart.

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
# Active mode: a backup whose agent reports more client bytes missing than this (bytes the
# client was acknowledged that its stack has not received) is passed over while one within it
# is up. A backup level with the primary still misses what is in flight towards it at the
# moment of its heartbeat (a few hundred KiB at most here); one that lost bytes misses them
# for good, and its count only grows.
IN_SYNC_BYTES = 1 << 20


@dataclass(frozen=True)
class ClusterView:
    """What the switch must know: who receives service traffic and who may answer."""

    members: Tuple[str, ...]  # replicas that get mirrored traffic, in configured order
    primary: Optional[str]
    epoch: int


@dataclass(frozen=True)
class Promotion:
    at: float  # monotonic seconds
    replica: str
    replacing: Optional[str]  # the member whose place it took (None: a free place)
    reason: str
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
                 by_seniority=False, spares=(), spare_after=5.0):
        """``serve_below``: with fewer members than this (f + 1 when voting), elect no primary
        (the operator chose to stop serving rather than serve unvoted replies); None: serve.

        ``by_seniority`` (active mode): a failed primary's successor is the member missing the
        fewest client bytes the client was acknowledged (its agent's ``bytes_missing``; within
        IN_SYNC_BYTES counts as none), then the one that has been in the voting set the
        longest, the configured order breaking ties (every replica up at the first election
        ties). A replica that (re)joined or was promoted holds only
        the connections that began after it; promoting it while an older backup is up would
        lose all the others.

        ``spares``: replicas outside the voting set; ``spare_after``: seconds a member may be
        down before an up spare takes its place (n stays ``len(replicas)``)."""
        self.replicas = tuple(replicas)
        self.spares = tuple(spares)
        self.nodes = self.replicas + self.spares
        self.n = len(self.replicas)
        self.spare_after = spare_after
        self.by_seniority = by_seniority
        # seniority as a join order (election rounds), which means the same in a restarted
        # process; monotonic timestamps would not
        self._member_since = {}  # name -> the round it last entered the members in
        self._round = 0  # elections that let a replica in
        self._first_elected_round = None
        self.resuming = False  # restored from storage, not decided yet (see restore)
        self._resume_at = None
        self.heartbeat_timeout = heartbeat_timeout
        self.startup_grace = startup_grace
        self.serve_below = serve_below
        self.epoch_primary = {}  # epoch -> its primary (wire reports name an epoch)
        self._first_up_at = None
        self.health = {replica.name: ReplicaHealth() for replica in self.nodes}
        self._ports = {}  # dpid -> {port_no: up}
        self.view = ClusterView(members=(), primary=None, epoch=0)
        self.history = deque(maxlen=_HISTORY)
        self.recorded = 0  # transitions ever recorded (history keeps the last _HISTORY)
        self._up = {replica.name: False for replica in self.nodes}
        self.voters = {replica.name for replica in self.replicas}  # the voting set
        self._down_since = {}  # voter -> when it was last seen go (or stay) down
        self._vacated = []  # members convicted whose place no spare took yet
        self.generation = {replica.name: 0 for replica in self.nodes}
        self.generation_epoch = {}  # name -> the epoch its current generation began in
        self.promotions = deque(maxlen=_HISTORY)
        self.promoted = {replica.name: 0 for replica in self.nodes}  # promotions per replica

    # ---- inputs -------------------------------------------------------------------------------

    def set_ports(self, dpid, ports, now):
        """Replace what one switch reports: ``ports`` maps port number → link usable (bool).
        After a restart, the first report opens the window in which the stored members
        have to show they are up (``heartbeat_timeout``)."""
        self._ports[dpid] = dict(ports)
        if self.resuming and self._resume_at is None:
            self._resume_at = now + self.heartbeat_timeout
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
        for replica in self.nodes:
            up, reason = self._liveness(replica.name, now)
            health = self.health[replica.name]
            if up != self._up[replica.name]:
                self._up[replica.name] = up
                if up and self._first_up_at is None and replica.name in self.voters:
                    self._first_up_at = now
                health.down_reason = None if up else reason
                self._record(now, replica.name, UP if up else f"{DOWN}: {reason}")
                changed = True
            elif not up:
                health.down_reason = reason
        if self.resuming:
            if not self._resume_due(now):
                return None
            self._resumed(now)
            changed = True
        changed = self._rebalance(now) or changed
        if not changed and not self._first_election_due(now):
            return None
        return self._elect(now)

    def mark_byzantine(self, name, now, reason):
        health = self.health[name]
        if health.byzantine:
            return None
        if self.resuming:  # evidence before the decision: decide first, then convict
            self._resumed(now)
        health.byzantine = True
        health.down_reason = f"{BYZANTINE}: {reason}"
        self._record(now, name, f"{BYZANTINE}: {reason}")
        self._up[name] = False
        if name in self.voters:  # its place goes to a spare at once
            self.voters.discard(name)
            self._vacated.append(name)
        self._rebalance(now)
        return self._elect(now)

    def readmit(self, name, now):
        """The operator's word that ``name`` is repaired: it rejoins the voting set if a place
        is free, else it is a spare."""
        health = self.health[name]
        if not health.byzantine:
            return None
        if self.resuming:
            self._resumed(now)
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
        if self.resuming and self._resume_at is not None:
            deadlines.append(self._resume_at)
        if self._may_replace(now) and self._candidates():
            deadlines += [since + self.spare_after for name, since in self._down_since.items()
                          if name in self.voters]
        return min(deadlines) if deadlines else None

    def state(self, name):
        if self.health[name].byzantine:
            return BYZANTINE
        return UP if self._up[name] else DOWN

    def role(self, name):
        """Spares have no role: only members are mirrored to and vote."""
        if name == self.view.primary:
            return PRIMARY
        return BACKUP if name in self.view.members else NO_ROLE

    def is_spare(self, name):
        return name not in self.voters and not self.health[name].byzantine

    def spare_names(self):
        return [r.name for r in self.nodes if self.is_spare(r.name)]

    def status(self):
        """ok: a primary and n members up; degraded: a primary, fewer members; down."""
        if self.view.primary is None:
            return "down"
        return "ok" if len(self.view.members) >= self.n else "degraded"

    def transitions_since(self, count):
        """Transitions recorded after the first ``count`` (as many as history still holds)."""
        missing = self.recorded - count
        return list(self.history)[-missing:] if missing > 0 else []

    def steady_heartbeat(self, name, seq, counters, now):
        """A heartbeat that changes nothing but its replica's age, sequence number and counters
        (``counters`` None: unchanged): what :meth:`heartbeat` records, without evaluating
        (Core.udp_steady decides when that holds)."""
        health = self.health[name]
        health.seq = seq
        health.last_heartbeat = now
        if counters is not None:
            health.counters = dict(counters)
        health.heartbeats += 1
        health.acked_epoch = self.view.epoch

    def heartbeat_age(self, name, now):
        last = self.health[name].last_heartbeat
        return None if last is None else max(0.0, now - last)

    # ---- durable state ------------------------------------------------------------------------

    def snapshot(self):
        """What a restarted controller needs to carry on (plain JSON-able values, no clock)."""
        names = [r.name for r in self.nodes]
        return {
            "epoch": self.view.epoch, "primary": self.view.primary,
            "members": list(self.view.members),
            "voters": [name for name in names if name in self.voters],
            "vacated": list(self._vacated),
            "generation": dict(self.generation),
            "generation_epoch": dict(self.generation_epoch),
            "promoted": dict(self.promoted),
            "epoch_primary": {str(epoch): name for epoch, name in self.epoch_primary.items()},
            "byzantine": {name: self.health[name].down_reason for name in names
                          if self.health[name].byzantine},
            "seniority": {"member_since": dict(self._member_since), "round": self._round,
                          "first_elected_round": self._first_elected_round},
        }

    def restore(self, state, now):
        """Take up a snapshot of an earlier process (ValueError if malformed). With an
        epoch, the stored view stands, undecided (``resuming``), until the stored members
        showed they are up or ``heartbeat_timeout`` passed after the switch reported its
        ports; then the sticky election goes on from it. Names no longer configured are
        dropped; returns them."""
        known = {r.name for r in self.nodes}
        mentioned = (set(state["members"]) | set(state["voters"]) | set(state["generation"])
                     | set(state["byzantine"]) | set(state["promoted"]))
        members = tuple(r.name for r in self.nodes if r.name in state["members"]
                        and r.name in state["voters"])
        primary = state["primary"] if state["primary"] in members else None
        epoch = int(state["epoch"])
        if epoch < 0:
            raise ValueError(f"negative epoch {epoch}")
        self.voters = {name for name in state["voters"] if name in known}
        self._vacated = [name for name in state["vacated"] if name in known]
        for name in known:
            self.generation[name] = int(state["generation"].get(name, 0))
            self.promoted[name] = int(state["promoted"].get(name, 0))
        self.generation_epoch = {name: int(value) for name, value
                                 in state["generation_epoch"].items() if name in known}
        self.epoch_primary = {int(e): name for e, name in state["epoch_primary"].items()
                              if name is None or name in known}
        for name in known:  # a running follower taking over may have convicted on its own
            health = self.health[name]
            if health.byzantine and name not in state["byzantine"]:
                health.byzantine = False
                health.down_reason = None
        for name, reason in state["byzantine"].items():
            if name in known:
                health = self.health[name]
                health.byzantine = True
                health.down_reason = str(reason or BYZANTINE)
                self.voters.discard(name)
        seniority = state["seniority"]
        self._member_since = {name: int(value) for name, value
                              in seniority["member_since"].items() if name in known}
        self._round = int(seniority["round"])
        first = seniority["first_elected_round"]
        self._first_elected_round = None if first is None else int(first)
        self.view = ClusterView(members=members, primary=primary, epoch=epoch)
        self.resuming = epoch > 0
        self._resume_at = None
        self._record(now, primary, f"restored (epoch {epoch}, primary {primary}, members "
                                   f"{list(members)})")
        return sorted(mentioned - known - {None})

    @property
    def decided(self):
        return not self.resuming

    def _resume_due(self, now):
        return self._resume_at is not None and (
            now >= self._resume_at or all(self._up[name] for name in self.view.members))

    def _resumed(self, now):
        self.resuming = False
        self._record(now, self.view.primary, "decided after restart")

    # ---- internals ----------------------------------------------------------------------------

    def _refresh_links(self, now):
        for replica in self.nodes:
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
                and not all(self._up[name] for name in self.voters))

    def _first_election_due(self, now):
        return (self.view.epoch == 0 and self.view.primary is None
                and any(self._up[name] for name in self.voters) and not self._starting(now))

    def _candidates(self):
        """Up replicas outside the voting set, in configured order: who can be promoted."""
        return [r.name for r in self.nodes if self._up[r.name] and r.name not in self.voters]

    def _rebalance(self, now):
        """Give up spares the places of convicted members and of members down for
        ``spare_after``; members come back into free places. True if the set changed."""
        for name in self.voters:
            if self._up[name]:
                self._down_since.pop(name, None)
            else:
                self._down_since.setdefault(name, now)
        changed = False
        candidates = self._candidates()
        while candidates and len(self.voters) < self.n:
            name = candidates.pop(0)
            if name in self._vacated:  # readmitted, and its own place is still free
                self._vacated.remove(name)
                self.voters.add(name)
            else:
                replacing = self._vacated.pop(0) if self._vacated else None
                self._promote(name, replacing, f"replacing {replacing} (convicted)"
                              if replacing else "a place in the voting set is free", now)
            changed = True
        if not self._may_replace(now):
            return changed
        for name in [r.name for r in self.nodes if r.name in self.voters]:
            since = self._down_since.get(name)
            if not candidates or since is None or now - since < self.spare_after:
                continue
            self.voters.discard(name)
            del self._down_since[name]
            self._record(now, name, f"spare: down for {self.spare_after:g} s, its place "
                                    f"goes to {candidates[0]}")
            self._promote(candidates.pop(0), name,
                          f"replacing {name} (down for {self.spare_after:g} s)", now)
            changed = True
        return changed

    def _may_replace(self, now):
        """Down members are replaced once the tier has started (not for being slow to boot)."""
        return (self.spare_after is not None and not self._starting(now)
                and (self.view.epoch > 0 or self._first_election_due(now)))

    def _promote(self, name, replacing, reason, now):
        self.voters.add(name)
        self.promoted[name] += 1
        self.promotions.append(Promotion(now, name, replacing, reason, self.view.epoch))
        self._record(now, name, f"promoted: {reason}")

    def _elect(self, now):
        members = tuple(r.name for r in self.nodes if self._up[r.name] and r.name in self.voters)
        joined = [name for name in members if name not in self.view.members]
        if joined:  # a new generation: seniority starts with this round
            self._round += 1
        for name in joined:
            self._member_since[name] = self._round
            self.generation[name] += 1
        primary = self.view.primary
        if primary not in members:  # sticky: a healthy primary keeps its role
            primary = self._successor(members)
        if self._starting(now):
            primary = None  # let the configured order decide, not who booted first
        if self.serve_below and len(members) < self.serve_below:
            primary = None  # too few replicas to vote, and unvoted replies are not wanted
        epoch = self.view.epoch + (primary != self.view.primary)
        for name in members:
            if name not in self.view.members:
                self.generation_epoch[name] = epoch
        new = ClusterView(members=members, primary=primary, epoch=epoch)
        if new == self.view:
            return None
        if primary is not None and self._first_elected_round is None:
            self._first_elected_round = self._round
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
        if not self.by_seniority or self._first_elected_round is None:
            return members[0]
        start = self._first_elected_round
        order = {name: i for i, name in enumerate(members)}
        return min(members, key=lambda name: (self._missing(name),
                                              max(self._member_since.get(name, start), start),
                                              order[name]))

    def _missing(self, name):
        """Client bytes ``name`` lacks (its agent's last heartbeat; 0 within IN_SYNC_BYTES): a
        successor missing acknowledged bytes must reset those connections, so the backup
        missing the fewest goes first, then seniority."""
        missing = self.health[name].counters.get("bytes_missing", 0)
        if not isinstance(missing, int) or isinstance(missing, bool) or missing < 0:
            return 0
        return missing if missing > IN_SYNC_BYTES else 0

    def _record(self, now, name, change, epoch=None):
        self.recorded += 1
        self.history.append(Transition(at=now, replica=name, change=change,
                                       epoch=self.view.epoch if epoch is None else epoch))
