"""The Ryu app: a thin adapter between OpenFlow events, the cluster state and the decisions.

``ryu-manager [--config-file FILE] sbft_ryu.app``. Each handler finds the switch, feeds the
event to :class:`~sbft_ryu.cluster.ClusterState` with the current monotonic time, and sends
whatever :mod:`sbft_ryu.decide` derives, translated for the switch's OpenFlow version. Failure
policy: a bad configuration or flows file stops the process before any switch is touched; a
handler error is logged with its switch and counted; an OpenFlow error from a switch is logged
and counted.
"""

import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from ryu import cfg
from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                    set_ev_cls)
from ryu.lib import dpid as dpid_lib
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_0, ofproto_v1_3

from sbft_ryu import config as sbft_config
from sbft_ryu import decide, metrics, rest, views
from sbft_ryu.cluster import ClusterState
from sbft_ryu.referee import AuthError, Referee
from sbft_ryu.flowfile import FlowSyntaxError
from sbft_ryu.model import EnablePacketIn, RequestPorts
from sbft_ryu.ofp import TranslationError, make_translator

CONF = cfg.CONF
sbft_config.register_opts(CONF)

# Liveness is re-checked when the earliest heartbeat deadline passes (plus this slack), and at
# least every MAX_TICK_S; between heartbeats nothing else can change it.
TICK_SLACK_S = 0.002
MAX_TICK_S = 0.05
# Ryu logs every HTTP request through this logger at INFO; heartbeats alone would make that
# 20 lines per second per replica. Raise it with --default-log-level or a log config file.
ACCESS_LOGGER = "ryu.lib.hub"
OFP_NAMES = {ofproto_v1_0.OFP_VERSION: "1.0", ofproto_v1_3.OFP_VERSION: "1.3"}
_PORT_DOWN = 1  # OFPPC_PORT_DOWN and OFPPS_LINK_DOWN are bit 0 in both 1.0 and 1.3


class SwitchLog(logging.LoggerAdapter):
    """Prefixes every line with the switch it concerns (formatting stays lazy)."""

    def process(self, msg, kwargs):
        return f"dpid={self.extra['dpid']}: {msg}", kwargs


@dataclass
class Switch:
    datapath: object
    translator: object
    service: bool
    log: logging.LoggerAdapter
    installed: tuple = ()  # service flows currently on the switch
    ports: dict = field(default_factory=dict)


def port_usable(port):
    return not (port.config & _PORT_DOWN) and not (port.state & _PORT_DOWN)


class SbftApp(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_0.OFP_VERSION, ofproto_v1_3.OFP_VERSION]
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
        try:
            self.config = sbft_config.load_config(CONF)
        except (sbft_config.ConfigError, FlowSyntaxError) as exc:
            self.logger.error("sbft: %s", exc)
            raise SystemExit(2) from None
        quorum = self.config.f + 1  # a reply byte needs f + 1 matching outputs
        self.cluster = ClusterState(
            self.config.replicas, self.config.heartbeat_timeout, self.config.startup_grace,
            serve_below=quorum if self.config.voting and self.config.unvoted == "stop" else None,
            by_seniority=self.config.mode == "active", spares=self.config.spares,
            spare_after=self.config.spare_after)
        self.referee = Referee(self.config)
        self.switches = {}  # dpid -> Switch
        self.seen = {}  # dpid -> (connected, OpenFlow version) for REST
        self.counters = Counter()
        self._logged = 0  # cluster transitions already logged
        self.agent_addresses = {}  # replica -> address its last heartbeat came from
        self._nudge_socket = None
        self._lock = hub.Semaphore(1)  # one batch at a time: sends may yield
        self.registry = metrics.make_registry(self._metrics_source)
        rest.register(kwargs["wsgi"], self)
        self.logger.info("sbft: vip %s:%d (vmac %s), %d replicas %s, spares %s, mode %s, "
                         "flows from %s (%d entries), heartbeat timeout %gs",
                         self.config.vip, self.config.service_port, self.config.vmac,
                         len(self.config.replicas), [r.name for r in self.config.replicas],
                         [r.name for r in self.config.spares], self.config.mode,
                         self.config.flows_source, len(self.config.flows),
                         self.config.heartbeat_timeout)

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._ticker))
        return thread

    # ---- OpenFlow events -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, ev):
        datapath = ev.msg.datapath
        dpid = datapath.id
        log = SwitchLog(self.logger, {"dpid": dpid_lib.dpid_to_str(dpid)})
        version = OFP_NAMES.get(datapath.ofproto.OFP_VERSION)
        service = self.config.dpid is None or self.config.dpid == dpid
        switch = Switch(datapath, make_translator(datapath.ofproto.OFP_VERSION), service, log)
        self.switches[dpid] = switch
        self.seen[dpid] = (True, version)
        log.info("connected (OpenFlow %s, %s)", version,
                 "service switch" if service else "flows file only")
        with self._lock:
            batch = decide.connect_batch(self.config, self.cluster.view, service)
            if not self._send(switch, [EnablePacketIn(), RequestPorts(), *batch]):
                return
            switch.installed = decide.service_flows(self.config, self.cluster.view) \
                if service else ()
        if datapath.ofproto.OFP_VERSION == ofproto_v1_0.OFP_VERSION:
            self._ports(switch, ev.msg.ports.values())

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev):
        switch = self.switches.get(ev.msg.datapath.id)
        if switch is not None:
            self._ports(switch, ev.msg.body)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        switch = self.switches.get(ev.msg.datapath.id)
        if switch is None:
            return
        desc = ev.msg.desc
        ofp = ev.msg.datapath.ofproto
        up = ev.msg.reason != ofp.OFPPR_DELETE and port_usable(desc)
        if switch.ports.get(desc.port_no) != up:
            switch.log.info("port %d %s", desc.port_no, "up" if up else "down")
        switch.ports[desc.port_no] = up
        self.counters["port_status"] += 1
        if switch.service:
            self._changed(self.cluster.port_status(ev.msg.datapath.id, desc.port_no, up,
                                                   time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        switch = self.switches.get(msg.datapath.id)
        if switch is None or not switch.service:
            return
        self.counters["packet_in"] += 1
        in_port = (msg.in_port if msg.datapath.ofproto.OFP_VERSION == ofproto_v1_0.OFP_VERSION
                   else msg.match.get("in_port"))
        reply = decide.arp_reply(self.config, msg.data, in_port)
        if reply is not None:
            self.counters["arp_reply"] += 1
            self._send(switch, [reply])

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _switch_gone(self, ev):
        dpid = ev.datapath.id
        switch = self.switches.get(dpid)
        if dpid is None or switch is None or switch.datapath is not ev.datapath:
            return
        del self.switches[dpid]
        self.seen[dpid] = (False, self.seen.get(dpid, (False, None))[1])
        switch.log.warning("disconnected")
        if switch.service:
            self._changed(self.cluster.switch_gone(dpid, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _of_error(self, ev):
        msg = ev.msg
        self.counters["of_error"] += 1
        self.logger.error("dpid=%s: OFPErrorMsg type=0x%02x code=0x%02x data=%s",
                          dpid_lib.dpid_to_str(msg.datapath.id), msg.type, msg.code,
                          bytes(msg.data[:64]).hex())

    # ---- REST entry points (called by rest.SbftRestController; RyuApp owns .events) -------

    def api_health(self):
        return views.health_view(self.config, self.cluster, self.seen, time.monotonic(),
                                 self.referee)

    def api_replicas(self):
        return views.replicas_view(self.config, self.cluster, time.monotonic(), self.referee)

    def api_replica(self, name):
        return views.replica_view(self.config, self.cluster, name, time.monotonic(),
                                  self.referee)

    def api_events(self):
        return views.events_view(self.cluster, time.monotonic())

    def api_heartbeat(self, name, beat, address=None):
        """An agent's report (validated by rest.parse_heartbeat). Authentication first: a
        rejected heartbeat changes nothing."""
        try:
            nonce = self.referee.authenticate(name, beat)
        except AuthError as exc:
            self.counters["heartbeat_unauthenticated"] += 1
            raise rest.ApiError(401, str(exc), extra={"nonce": exc.nonce}) from None
        self.counters["heartbeat"] += 1
        now = time.monotonic()
        if address:
            self.agent_addresses[name] = address
        self._changed(self.cluster.heartbeat(name, beat.seq, beat.service_ok, beat.counters,
                                             now))
        self.referee.compared(name, beat.counters, now)
        guilty = (self.referee.evidence(name, beat.evidence, now)
                  | self.referee.wire(name, beat.wire, self.cluster.epoch_primary, now))
        for culprit in sorted(guilty):
            self.logger.warning("sbft: replica=%s is byzantine (reported by %s)", culprit,
                                name)
            self._changed(self.cluster.mark_byzantine(
                culprit, now, "its output disagreed with the majority"))
        return views.heartbeat_reply(self.config, self.cluster, name, nonce,
                                     self.agent_addresses,
                                     self.referee.tainted(self.cluster.view.epoch))

    def api_readmit(self, name):
        """The operator readmits a replica marked byzantine (it rejoins as a backup)."""
        if self.cluster.state(name) != "byzantine":
            raise rest.ApiError(409, f"{name} is not byzantine (state {self.cluster.state(name)})")
        self.referee.readmit(name)
        self.logger.warning("sbft: replica=%s readmitted by the operator", name)
        self._changed(self.cluster.readmit(name, time.monotonic()))
        return self.api_replica(name)

    def api_metrics_text(self):
        return metrics.exposition(self.registry)

    # ---- internals --------------------------------------------------------------------------

    def _metrics_source(self):
        return self.api_health(), dict(self.counters)

    def _ticker(self):
        while True:
            now = time.monotonic()
            deadline = self.cluster.next_deadline(now)
            delay = MAX_TICK_S if deadline is None else deadline - now + TICK_SLACK_S
            hub.sleep(min(max(delay, TICK_SLACK_S), MAX_TICK_S))
            try:
                self._changed(self.cluster.evaluate(time.monotonic()))
            except Exception:  # keep expiring heartbeats whatever one round did
                self.counters["handler_error"] += 1
                self.logger.exception("sbft: liveness check failed")

    def _ports(self, switch, ports):
        switch.ports = {port.port_no: port_usable(port) for port in ports}
        if switch.service:
            self._changed(self.cluster.set_ports(switch.datapath.id, switch.ports,
                                                 time.monotonic()))

    def _changed(self, view):
        self._log_transitions()
        self.referee.sync(self.cluster.voters, self.cluster.generation,
                          self.cluster.generation_epoch, time.monotonic())
        if view is None:
            return
        self.logger.info("sbft: epoch %d, primary %s, members %s", view.epoch, view.primary,
                         list(view.members))
        wanted = decide.service_flows(self.config, view)
        for switch in list(self.switches.values()):
            if switch.service:
                self._converge(switch, wanted)
        self._nudge_agents()

    def _nudge_agents(self):
        """Tell every agent to ask for its role now (a UDP datagram carrying nothing: the role
        itself only travels in heartbeat answers), instead of at its next heartbeat."""
        port = self.config.agent_notify_port
        if not port or not self.agent_addresses:
            return
        if self._nudge_socket is None:
            self._nudge_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._nudge_socket.setblocking(False)
        for address in self.agent_addresses.values():
            try:
                self._nudge_socket.sendto(b"sbft-nudge", (address, port))
            except OSError:  # best effort: the next heartbeat brings the role anyway
                self.counters["nudge_error"] += 1

    def _converge(self, switch, wanted):
        with self._lock:
            if self._send(switch, decide.update_batch(switch.installed, wanted)):
                switch.installed = wanted

    def _log_transitions(self):
        for transition in self.cluster.transitions_since(self._logged):
            self.logger.info("sbft: replica=%s %s (epoch %d)", transition.replica,
                             transition.change, transition.epoch)
        self._logged = self.cluster.recorded

    def _send(self, switch, messages):
        """Translate the whole batch first, so a translation error sends nothing."""
        if not messages:
            return True
        try:
            encoded = switch.translator.translate(messages)
        except TranslationError as exc:
            self.counters["translation_error"] += 1
            switch.log.error("cannot express for this switch, nothing sent: %s", exc)
            return False
        for msg in encoded:
            msg.datapath = switch.datapath
            switch.datapath.send_msg(msg)
        self.counters["of_messages_sent"] += len(encoded)
        return True
