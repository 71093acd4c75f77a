"""The controller's decisions in one object, testable without Ryu (FAUCET's ValvesManager shape).

:class:`Core` owns the :class:`~sbft_ryu.cluster.ClusterState` and the
:class:`~sbft_ryu.referee.Referee`. Every event (a switch connecting or leaving, its ports, a
packet-in, an agent's heartbeat, the operator's readmission, the passage of time) comes in with
``now`` from the caller; what goes out is the new cluster view (returned) and version-neutral
descriptions of OpenFlow messages, handed to the ``send(dpid, messages) -> bool`` function the
Core was built with (the Ryu app translates and sends them; tests record them). A batch of
service flows counts as installed on a switch only when ``send`` says it went out. Nothing here
reads a clock, opens a socket or knows an OpenFlow version.

The voting policy lives here too: :func:`members_needed` (how many members must be up to vote,
convict and check the wire) and :func:`serve_below` (the operator's ``unvoted = stop``).
"""

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from sbft_ryu import beatwire, decide
from sbft_ryu.cluster import BYZANTINE, UP, ClusterState
from sbft_ryu.config import ACTIVE, STOP
from sbft_ryu.model import EnablePacketIn, RequestPorts
from sbft_ryu.referee import AuthError, Referee

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


class NotByzantine(ValueError):
    """The operator asked to readmit a replica that is not marked byzantine."""


@dataclass
class SwitchRecord:
    """What the core knows of one connected switch."""

    service: bool  # carries the service flows (else the flows file only)
    log: logging.LoggerAdapter  # names the switch
    installed: tuple = ()  # service flows currently on the switch
    ports: dict = field(default_factory=dict)  # port number -> usable


class Core:
    """``send(dpid, messages)`` sends a batch to a connected switch, True when it went out;
    ``nudge(addresses)`` tells the agents at ``addresses`` that their role may have changed;
    ``lock`` serialises flow batches (a send may yield, and the next batch is computed from
    what the last one installed)."""

    def __init__(self, config, send, nudge=lambda addresses: None, logger=LOG, lock=None):
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

    # ---- switches -------------------------------------------------------------------------------

    def is_service(self, dpid):
        return self.config.dpid is None or self.config.dpid == dpid

    def switch_connected(self, dpid, version, log, now):
        """A switch finished its handshake: enable packet-ins, ask for its ports, install the
        flows file (and, on the service switch, the service flows). True if that went out."""
        record = SwitchRecord(self.is_service(dpid), log)
        self.switches[dpid] = record
        self.seen[dpid] = (True, version)
        with self._lock:
            batch = decide.connect_batch(self.config, self.cluster.view, record.service)
            if not self._send(dpid, [EnablePacketIn(), RequestPorts(), *batch]):
                return False
            record.installed = (decide.service_flows(self.config, self.cluster.view)
                                if record.service else ())
        return True

    def switch_gone(self, dpid, now):
        record = self.switches.pop(dpid, None)
        if record is None:
            return None
        self.seen[dpid] = (False, self.seen.get(dpid, (False, None))[1])
        record.log.warning("disconnected")
        if record.service:
            return self._changed(self.cluster.switch_gone(dpid, now), now)
        return None

    def set_ports(self, dpid, ports, now):
        """Every port of a switch: ``ports`` maps port number → usable."""
        record = self.switches.get(dpid)
        if record is None:
            return None
        record.ports = dict(ports)
        if record.service:
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
        if record.service:
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
        hub: (name, nonce) when the datagram verifies, moves its session forward and is
        *steady* (its replica is up and reports the same service state, no judge counts its
        comparisons), recorded without evaluating the view (nothing in it can change the view;
        silences are the ticker's): (name, seq, nonce, whether it wants an answer). REJECTED
        when it does not verify, Resync when it is not in the session (nothing changed);
        SLOW (nothing changed) for the hub to process in full."""
        try:
            name, beat = beatwire.open_beat(self.referee.keys, datagram)
        except beatwire.BeatWireError:
            self.counters["heartbeat_udp_rejected"] += 1
            return REJECTED
        health = self.cluster.health[name]
        source = self.referee.sources.get(name)
        if (self.referee.judge is not None or self.cluster.state(name) != UP
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
        return self._changed(self.cluster.readmit(name, now), now)

    # ---- time -----------------------------------------------------------------------------------

    def next_deadline(self, now):
        """When liveness can next change without an event (None: nothing pending)."""
        return self.cluster.next_deadline(now)

    def tick(self, now):
        """Re-check liveness at ``now`` (heartbeats going silent, the startup grace ending)."""
        return self._changed(self.cluster.evaluate(now), now)

    # ---- internals ------------------------------------------------------------------------------

    def _changed(self, view, now):
        """After every cluster input: log its transitions, tell the referee the voting set;
        with a new view, converge every service switch and nudge the agents."""
        self._log_transitions()
        self.referee.sync(self.cluster.voters, self.cluster.generation,
                          self.cluster.generation_epoch, now)
        if view is None:
            return None
        self.logger.info("sbft: epoch %d, primary %s, members %s", view.epoch, view.primary,
                         list(view.members))
        wanted = decide.service_flows(self.config, view)
        for dpid, record in list(self.switches.items()):
            if record.service:
                with self._lock:
                    if self._send(dpid, decide.update_batch(record.installed, wanted)):
                        record.installed = wanted
        self._nudge(list(self.agent_addresses.values()))
        return view

    def _log_transitions(self):
        for transition in self.cluster.transitions_since(self._logged):
            self.logger.info("sbft: replica=%s %s (epoch %d)", transition.replica,
                             transition.change, transition.epoch)
        self._logged = self.cluster.recorded
