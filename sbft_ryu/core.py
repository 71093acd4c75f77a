"""The controller's decisions in one object, testable without Ryu (FAUCET's ValvesManager shape).

:class:`Core` owns the :class:`~sbft_ryu.cluster.ClusterState` and the
:class:`~sbft_ryu.referee.Referee`. Every event (a switch connecting or leaving, its ports, a
packet-in, an agent's heartbeat, the operator's readmission, the passage of time) comes in with
``now`` from the caller; what goes out is the new cluster view (returned) and version-neutral
descriptions of OpenFlow messages, handed to the ``send(dpid, messages) -> bool`` function the
Core was built with (the Ryu app translates and sends them; tests record them). A batch of
service flows counts as installed on a switch only when ``send`` says it went out. Nothing here
reads a clock, opens a socket or knows an OpenFlow version.

The Core also keeps the durable state (:mod:`sbft_ryu.store`): every change is written before
anything acts on it (flows sent, agents told), and a restarted Core takes it up with
:meth:`Core.restore`. Until the restored view is decided (and whenever the current view is not
yet on disk) heartbeats are answered "not decided" (:meth:`Core.decided`), and agents keep
their roles. So are they while a service switch has not acknowledged (its barrier reply,
:meth:`Core.switch_confirmed`) the flows of the last change (:meth:`Core.roles_released`): the
switch drops the old primary's replies before the new primary opens its door.

The voting policy lives here too: :func:`members_needed` (how many members must be up to vote,
convict and check the wire) and :func:`serve_below` (the operator's ``unvoted = stop``).
"""

import contextlib
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from sbft_ryu import beatwire, decide, voting
from sbft_ryu.cluster import BYZANTINE, UP, ClusterState
from sbft_ryu.config import ACTIVE, STOP
from sbft_ryu.model import Converge, EnablePacketIn, ReadTables, RequestPorts
from sbft_ryu.referee import AuthError, Referee
from sbft_ryu.store import NotWritten, NullStore, StateError

READMISSIONS_KEPT = 64
# A switch that has not acknowledged a change of the service flows after this long releases
# the roles anyway: a hung switch must not keep the tier without a primary.
SWITCH_CONFIRM_S = 1.0

LOG = logging.getLogger(__name__)


def members_needed(n, f):
    """Members up needed to vote, to convict a liar, and for the wire check.

    A reply byte needs f + 1 matching outputs (then at least one is honest): the primary's plus
    f backups' votes. Convicting a liar needs n - f replicas agreeing against it (one more
    member up than that), and the wire check needs f + 1 backups reporting (f + 2 up)."""
    return f + 1, n - f + 1, f + 2


def serve_below(config):
    """With fewer members up than this, no primary is elected: the vote quorum when voting and
    the operator chose ``unvoted = stop`` rather than unvoted replies; None: always serve."""
    if config.voting and config.unvoted == STOP:
        return members_needed(len(config.replicas), config.f)[0]
    return None


SLOW, REJECTED = "slow", "rejected"  # udp_steady: for the hub; no answer


class Resync(NamedTuple):
    """A UDP heartbeat that verified but is not in its replica's session: nothing changed;
    the agent is told to start a new one over HTTP."""

    name: str
    seq: int


def with_stored_secret(config, state, path, logger=LOG):
    """The config with the active-mode secret of an earlier run when none is configured (so
    connections in flight survive a restart); a configured one wins."""
    stored = (state or {}).get("active_secret")
    if config.active_secret_configured:
        if stored and stored != config.active_secret.hex():
            logger.warning("sbft: the configured active_secret differs from the one in the "
                           "state file; the configured one is used")
        return config
    if not stored:
        return config
    try:
        secret = bytes.fromhex(stored)
    except (TypeError, ValueError):
        raise StateError(path, "corrupt (active_secret is not hex)") from None
    return dataclasses.replace(config, active_secret=secret)


class NotByzantine(ValueError):
    """The operator asked to readmit a replica that is not marked byzantine."""


@dataclass
class SwitchRecord:
    """What the core knows of one connected switch."""

    service: bool  # carries the service flows (else the flows file only)
    log: logging.LoggerAdapter  # names the switch
    installed: tuple = None  # service flows on the switch (None: its tables not read yet)
    ports: dict = field(default_factory=dict)  # port number -> usable
    # when the last change of its service flows went out, until the switch acknowledged it
    # (None: nothing unacknowledged)
    unconfirmed_since: float = None


class Core:
    """``send(dpid, messages)`` sends a batch to a connected switch, True when it went out;
    ``nudge(addresses)`` tells the agents at ``addresses`` that their role may have changed;
    ``lock`` serialises state writes and flow batches (both may yield, and the next batch is
    computed from what the last one installed); ``store`` keeps the state (load/save);
    ``wall()`` dates convictions and readmissions for the operator (never used to decide)."""

    def __init__(self, config, send, nudge=lambda addresses: None, logger=LOG, lock=None,
                 store=None, wall=None):
        self.config = config
        self.cluster = ClusterState(
            config.replicas, config.heartbeat_timeout, config.startup_grace,
            serve_below=serve_below(config), by_seniority=config.mode == ACTIVE,
            spares=config.spares, spare_after=config.spare_after)
        self.referee = Referee(config)
        self.switches = {}  # dpid -> SwitchRecord, connected switches only
        self.seen = {}  # dpid -> (connected, OpenFlow version name), for REST
        self.counters = Counter()
        self.agent_addresses = {}  # replica -> address its last heartbeat came from
        self.logger = logger
        self._send = send
        self._nudge = nudge
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._logged = 0  # cluster transitions already logged
        self.store = store if store is not None else NullStore()
        self._wall = wall or (lambda: 0.0)
        self._saved = None  # the state last written
        self._durable_view = None  # the view that state holds
        self._sent_view = self.cluster.view  # the view the switches were last converged to
        self.byzantine_at = {}  # replica -> wall time it was convicted
        self.readmissions = []  # {"replica", "at"}, the last READMISSIONS_KEPT
        self._restored_at = None
        self.cookie = decide.SERVICE_COOKIE  # of the service flows this controller installs

    # ---- durable state ------------------------------------------------------------------------

    def restore(self, state, now):
        """Take up the state an earlier process stored (None: a first start), then write it
        back as this configuration sees it. StateError if it is malformed."""
        if state is not None:
            try:
                self._take_up(state, now)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StateError(self.store.path, f"corrupt ({type(exc).__name__}: {exc})") \
                    from None
        with self._lock:
            self._persist()

    def take_over(self, state, now, cookie):
        """A follower becomes the leader: take up the state the last leader stored (None:
        none yet; this controller's own view stands) and write it back with this term; its
        flows carry ``cookie``. Heartbeats recorded while following are kept (the takeover
        starts warm). Switches are converged afterwards (switch_connected again)."""
        self.cookie = cookie
        self._saved = None  # whatever a follower computed was never written
        for record in self.switches.values():
            record.installed = None  # re-read and converged by the new leader
            record.unconfirmed_since = None
        self.restore(state, now)

    def _take_up(self, state, now):
        known = {r.name for r in self.config.nodes}
        dropped = self.cluster.restore(state["cluster"], now)
        self.byzantine_at = {name: float(at) for name, at in state["byzantine_at"].items()
                             if name in known}
        self.readmissions = [{"replica": str(r["replica"]), "at": float(r["at"])}
                             for r in state["readmissions"] if r["replica"] in known]
        self.referee.restored_tainted = [[str(client), int(port)]
                                         for client, port in state["tainted"]]
        self._restored_at = now
        self._sent_view = self.cluster.view
        if dropped:
            self.logger.warning("sbft: state of replicas no longer configured dropped: %s",
                                ", ".join(dropped))
        view = self.cluster.view
        self.logger.info("sbft: restored from %s: epoch %d, primary %s, members %s, "
                         "byzantine %s%s", self.store.path, view.epoch, view.primary,
                         list(view.members), sorted(self.byzantine_at) or "none",
                         "; undecided until the members report" if self.cluster.resuming
                         else "")

    def state(self):
        """Everything a restarted controller needs (plain JSON-able values)."""
        cluster = self.cluster.snapshot()
        for name in cluster["byzantine"]:  # dated when first written (the conviction)
            if name not in self.byzantine_at:
                self.byzantine_at[name] = self._wall()
        state = {"cluster": cluster,
                 "byzantine_at": {name: at for name, at in self.byzantine_at.items()
                                  if name in cluster["byzantine"]},
                 "readmissions": list(self.readmissions),
                 "tainted": self.referee.tainted(self.cluster.view.epoch + 1)}
        if not self.config.active_secret_configured:
            state["active_secret"] = self.config.active_secret.hex()
        return state

    def decided(self):
        """Whether heartbeats get a role: the view is decided (not a restored one still
        waiting for its members, not before the first election) and on disk."""
        view = self.cluster.view
        return self.cluster.decided and view.epoch > 0 and view == self._durable_view

    def roles_released(self):
        """Whether heartbeat answers carry roles: the view is decided and every service switch
        acknowledged the flows of the last change. Until then agents keep their roles: a
        primary whose agent died keeps answering on its host (it fails open), so the new
        primary must not open its door before the switch drops the old one's replies (both
        would answer a client's SYN)."""
        return self.decided() and not self._unconfirmed()

    def _unconfirmed(self):
        """Whether a switch has yet to acknowledge a change (also read from the UDP thread:
        iterates a copy)."""
        return any(record.unconfirmed_since is not None
                   for record in list(self.switches.values()))

    def _persist(self):
        """Write the state if it changed (under the lock; returns once it is on disk). False
        when the store may not write (a controller that does not lead): act on nothing."""
        view = self.cluster.view
        state = self.state()
        if state != self._saved:
            try:
                self.store.save(state)
            except NotWritten:
                self.counters["state_not_written"] += 1
                return False
            self._saved = state
            self.counters["state_writes"] += 1
        self._durable_view = view
        return True

    # ---- switches -------------------------------------------------------------------------------

    def is_service(self, dpid):
        return self.config.dpid is None or self.config.dpid == dpid

    def switch_connected(self, dpid, version, log, now):
        """A switch finished its handshake: enable packet-ins, ask for its ports and read its
        tables (converged in tables_read). True if that went out."""
        record = SwitchRecord(self.is_service(dpid), log)
        self.switches[dpid] = record
        self.seen[dpid] = (True, version)
        return self._send(dpid, [EnablePacketIn(), RequestPorts(), ReadTables()])

    def tables_read(self, dpid, found, now):
        """A switch's tables as ReadTables read them: send only what differs from the flows
        file and (on the service switch) the current view's service flows. Nothing at all
        when a restarted controller finds what it left (the view it restored)."""
        record = self.switches.get(dpid)
        if record is None:
            return False
        with self._lock:
            if not self._persist():  # write-ahead: what is installed is stored first
                return False
            view = self.cluster.view
            flows = decide.intended_flows(self.config, view, record.service, self.cookie)
            if not self._send(dpid, [Converge(flows, found)]):
                return False
            record.installed = decide.service_flows(self.config, view, self.cookie) \
                if record.service else ()
        if record.service and record.ports:  # the ports it reported meanwhile count now
            self._changed(self.cluster.set_ports(dpid, record.ports, now), now)
        return True

    def switch_gone(self, dpid, now):
        record = self.switches.pop(dpid, None)
        if record is None:
            return None
        self.seen[dpid] = (False, self.seen.get(dpid, (False, None))[1])
        record.log.warning("disconnected")
        if record.unconfirmed_since is not None:
            self._nudge_when_released()
        if record.service:
            return self._changed(self.cluster.switch_gone(dpid, now), now)
        return None

    def switch_confirmed(self, dpid, now):
        """The switch answered the barrier that ended the last batch sent to it: everything
        sent before has been applied. When no switch has a change left unacknowledged, the
        agents are nudged to fetch their (now released) roles."""
        record = self.switches.get(dpid)
        if record is None or record.unconfirmed_since is None:
            return
        self.counters["switch_confirmed"] += 1
        record.unconfirmed_since = None
        self._nudge_when_released()

    def set_ports(self, dpid, ports, now):
        """Every port of a switch: ``ports`` maps port number → usable. A service switch's
        ports count only once its tables are converged (tables_read): until then a replica
        behind it is not up, so no view is acted upon that the switch does not hold yet."""
        record = self.switches.get(dpid)
        if record is None:
            return None
        record.ports = dict(ports)
        if record.service and record.installed is not None:
            return self._changed(self.cluster.set_ports(dpid, record.ports, now), now)
        return None

    def port_status(self, dpid, port, up, now):
        record = self.switches.get(dpid)
        if record is None:
            return None
        if record.ports.get(port) != up:
            record.log.info("port %d %s", port, "up" if up else "down")
        record.ports[port] = up
        self.counters["port_status"] += 1
        if record.service and record.installed is not None:
            return self._changed(self.cluster.port_status(dpid, port, up, now), now)
        return None

    def packet_in(self, dpid, data, in_port):
        """Answer ARP for the VIP on the service switch; other packet-ins are ignored."""
        record = self.switches.get(dpid)
        if record is None or not record.service:
            return
        self.counters["packet_in"] += 1
        reply = decide.arp_reply(self.config, data, in_port)
        if reply is not None:
            self.counters["arp_reply"] += 1
            self._send(dpid, [reply])

    # ---- agents and the operator ----------------------------------------------------------------

    def heartbeat(self, name, beat, address, now):
        """An agent's report (validated by rest.parse_heartbeat). Authentication first: a
        rejected heartbeat changes nothing and raises AuthError. Then liveness, then the
        evidence and wire reports it carries, and the conviction of every replica they show
        lying. Returns (the nonce the next heartbeat must sign, the connections a new primary
        resets)."""
        try:
            nonce = self.referee.authenticate(name, beat, address)
        except AuthError:
            self.counters["heartbeat_unauthenticated"] += 1
            raise
        return nonce, self._heard(name, beat, address, now)

    def udp_heartbeat(self, datagram, address, now):
        """A UDP heartbeat (:mod:`sbft_ryu.beatwire`) from ``address``: (name, seq, nonce, the
        connections a new primary resets, whether it wants an answer) when it verifies and
        moves its session forward; Resync when it verifies outside the session; None when it
        does not verify (no answer). Only the first changes anything."""
        try:
            name, beat = beatwire.open_beat(self.referee.keys, datagram)
        except beatwire.BeatWireError:
            self.counters["heartbeat_udp_rejected"] += 1
            return None
        source = self.referee.sources.get(name)
        if source is not None and address != source:
            self.counters["heartbeat_udp_rejected"] += 1
            return None
        if not self.referee.accept_datagram(name, beat.nonce, beat.seq):
            self.counters["heartbeat_udp_rejected"] += 1
            return Resync(name, beat.seq)
        self.counters["heartbeat_udp"] += 1
        return name, beat.seq, beat.nonce, self._heard(name, beat, address, now), beat.answer

    def udp_steady(self, datagram, address, now):
        """The fast path of a UDP heartbeat, called from the UDP thread (udp_server), not the
        hub: when the datagram verifies, moves its session forward and is *steady* (its
        replica is up and reports the same service state, no judge counts its comparisons,
        the view is not a restored one still undecided), it is recorded without evaluating
        the view (nothing in it can change the view; silences are the ticker's) and it
        returns (name, seq, nonce, whether it wants an answer). REJECTED when it does not
        verify, Resync when it is not in the session (nothing changed); SLOW (nothing changed)
        for the hub to process in full."""
        try:
            name, beat = beatwire.open_beat(self.referee.keys, datagram)
        except beatwire.BeatWireError:
            self.counters["heartbeat_udp_rejected"] += 1
            return REJECTED
        health = self.cluster.health[name]
        source = self.referee.sources.get(name)
        if (self.referee.judge is not None or not self.cluster.decided
                or self.cluster.state(name) != UP
                or health.service_ok != beat.service_ok or health.seq is None
                or beat.seq < health.seq or (source is not None and address != source)):
            return SLOW
        if not self.referee.accept_datagram(name, beat.nonce, beat.seq):
            self.counters["heartbeat_udp_rejected"] += 1
            return Resync(name, beat.seq)
        self.counters["heartbeat_udp"] += 1
        self.counters["heartbeat"] += 1
        self.agent_addresses[name] = address
        self.cluster.steady_heartbeat(name, beat.seq, beat.counters, now)
        return name, beat.seq, beat.nonce, beat.answer

    def _heard(self, name, beat, address, now):
        """An authenticated heartbeat's effects; returns the connections a new primary
        resets."""
        self.counters["heartbeat"] += 1
        if address:
            self.agent_addresses[name] = address
        counters = beat.counters  # None (a UDP beat they did not fit in): the last ones stand
        if counters is None:
            counters = self.cluster.health[name].counters
        self._changed(self.cluster.heartbeat(name, beat.seq, beat.service_ok, counters,
                                             now), now)
        self.referee.compared(name, counters, now)
        guilty = (self.referee.evidence(name, beat.evidence, now)
                  | self.referee.wire(name, beat.wire, self.cluster.epoch_primary, now))
        for culprit in sorted(guilty):
            self.logger.warning("sbft: replica=%s is byzantine (reported by %s)", culprit,
                                name)
            self._changed(self.cluster.mark_byzantine(
                culprit, now, "its output disagreed with the majority"), now)
        return self.referee.tainted(self.cluster.view.epoch)

    def readmit(self, name, now):
        """The operator readmits a replica marked byzantine (it rejoins as a backup, or as a
        spare when no place is free); NotByzantine if it is not marked."""
        state = self.cluster.state(name)
        if state != BYZANTINE:
            raise NotByzantine(f"{name} is not byzantine (state {state})")
        self.referee.readmit(name)
        self.logger.warning("sbft: replica=%s readmitted by the operator", name)
        self.readmissions = [*self.readmissions, {"replica": name, "at": self._wall()}][
            -READMISSIONS_KEPT:]
        self.byzantine_at.pop(name, None)
        return self._changed(self.cluster.readmit(name, now), now)

    # ---- time -----------------------------------------------------------------------------------

    def next_deadline(self, now):
        """When liveness can next change without an event, or an unacknowledged switch
        change runs out of patience (None: nothing pending)."""
        deadlines = [record.unconfirmed_since + SWITCH_CONFIRM_S
                     for record in self.switches.values()
                     if record.unconfirmed_since is not None]
        liveness = self.cluster.next_deadline(now)
        if liveness is not None:
            deadlines.append(liveness)
        return min(deadlines) if deadlines else None

    def tick(self, now):
        """Re-check liveness at ``now`` (heartbeats going silent, the startup grace ending,
        the decision after a restart)."""
        if self._restored_at is not None and now - self._restored_at > voting.TAINT_S:
            self.referee.restored_tainted = []  # as old as the judge's own would be
            self._restored_at = None
        self._release_unconfirmed(now)
        return self._changed(self.cluster.evaluate(now), now)

    def _release_unconfirmed(self, now):
        late = [record for record in self.switches.values()
                if record.unconfirmed_since is not None
                and now - record.unconfirmed_since >= SWITCH_CONFIRM_S]
        for record in late:
            self.counters["switch_confirm_late"] += 1
            record.log.warning("no barrier reply %.1f s after a change of the service flows: "
                               "agents get their roles anyway", SWITCH_CONFIRM_S)
            record.unconfirmed_since = None
        if late:
            self._nudge_when_released()

    # ---- internals ------------------------------------------------------------------------------

    def _changed(self, view, now):
        """After every cluster input: log its transitions, tell the referee the voting set,
        write the state if it changed; with a new view, converge every service switch whose
        tables were read, then nudge the agents (in that order: write-ahead; when a switch got
        a change, the nudge waits for its acknowledgement, see roles_released)."""
        self._log_transitions()
        self.referee.sync(self.cluster.voters, self.cluster.generation,
                          self.cluster.generation_epoch, now)
        with self._lock:
            if not self._persist():
                return view  # not the leader: nothing acts on a view it did not store
            current = self.cluster.view  # (another input may have moved it on meanwhile)
            if current == self._sent_view:
                return view
            self._sent_view = current
            self.logger.info("sbft: epoch %d, primary %s, members %s", current.epoch,
                             current.primary, list(current.members))
            wanted = decide.service_flows(self.config, current, self.cookie)
            for dpid, record in list(self.switches.items()):
                if record.service and record.installed is not None:
                    batch = decide.update_batch(record.installed, wanted)
                    before = record.unconfirmed_since
                    if batch and before is None:  # it ends with a barrier: switch_confirmed
                        record.unconfirmed_since = now
                    if self._send(dpid, batch):
                        record.installed = wanted
                    else:
                        record.unconfirmed_since = before
        self._nudge_when_released()
        return view

    def _nudge_when_released(self):
        """Tell every agent to fetch its role now, unless a switch has yet to acknowledge a
        change (its acknowledgement nudges them then)."""
        if not self._unconfirmed():
            self._nudge(list(self.agent_addresses.values()))

    def _log_transitions(self):
        for transition in self.cluster.transitions_since(self._logged):
            self.logger.info("sbft: replica=%s %s (epoch %d)", transition.replica,
                             transition.change, transition.epoch)
        self._logged = self.cluster.recorded
