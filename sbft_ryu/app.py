"""The Ryu app: a thin adapter between OpenFlow events, the cluster state and the decisions.

``ryu-manager [--config-file FILE] sbft_ryu.app``. Each handler finds the switch, reads the
event with the switch's translator (:mod:`sbft_ryu.ofp`), and hands it with the current
monotonic time to the :class:`~sbft_ryu.core.Core`, which decides; what the Core sends comes
back through :meth:`SbftApp._send`, translated for the switch's OpenFlow version. Failure
policy: a bad configuration or flows file, or a state file that cannot be used (unreadable,
corrupt, of a newer format, in a directory that cannot be written), stops the process with one
line before any switch is touched; an OpenFlow handler's error (:func:`of_handler`) or a failed
liveness round is logged with its switch and counted; an OpenFlow error from a switch is logged
and counted. A connecting switch is not wiped: its tables are read and only the difference is
sent (:meth:`~sbft_ryu.core.Core.tables_read`).

Several controllers (``[sbft] coordination = etcd://...``): the state lives in etcd
(:mod:`sbft_ryu.etcd_store`) and a :class:`~sbft_ryu.coordination.Coordinator` elects one
leader. Every controller connects to the switch, reads it and records heartbeats; only the
acting leader sends anything that changes the switch (:meth:`SbftApp._send` drops it
otherwise) or nudges agents, and it claims the OpenFlow 1.3 MASTER role with its term as the
generation id while the others are SLAVE, so the switch itself refuses a deposed leader. An
OpenFlow 1.0 switch is refused with one line (its role request has no generation id).
"""

import functools
import logging
import socket
import time
from dataclasses import dataclass

from eventlet import tpool
from ryu import cfg
from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                    set_ev_cls)
from ryu.lib import dpid as dpid_lib
from ryu.lib import hub

from sbft_ryu import config as sbft_config
from sbft_ryu import beatwire, election, metrics, ofp, rest, udp_server, views
from sbft_ryu.coordination import Coordinator, Hooks
from sbft_ryu.etcd_store import Etcd, EtcdStore, key_prefix
from sbft_ryu.core import (REJECTED, SLOW, Core, NotByzantine, Resync,
                           with_stored_secret)
from sbft_ryu.flowfile import FlowSyntaxError
from sbft_ryu.model import (Converge, EnablePacketIn, ReadTables, RequestPorts,
                            RoleRequest)
from sbft_ryu.ofp import TranslationError, make_translator
from sbft_ryu.referee import AuthError, SourceError
from sbft_ryu.store import FileStore, NullStore, StateError

CONF = cfg.CONF
sbft_config.register_opts(CONF)

# Liveness is re-checked when the earliest heartbeat deadline passes (plus this slack), and at
# least every MAX_TICK_S; between heartbeats nothing else can change it.
TICK_SLACK_S = 0.002
MAX_TICK_S = 0.05
# What a controller that does not lead may still send: it reads the switch and states its role.
READ_ONLY = (EnablePacketIn, RequestPorts, ReadTables, RoleRequest)
# OpenFlow 1.3's error (type ROLE_REQUEST_FAILED, code STALE): a generation id older than the
# switch's.
ROLE_STALE = (11, 0)
# etcd requests time out after this (at least) or a quarter of the lease: a keepalive stuck on
# a member that lost its raft leader must leave time to retry on another before the fence.
ETCD_TIMEOUT_S = 0.3

# Ryu logs every HTTP request through this logger at INFO; heartbeats alone would make that
# 20 lines per second per replica. Raise it with --default-log-level or a log config file.
ACCESS_LOGGER = "ryu.lib.hub"


class SwitchLog(logging.LoggerAdapter):
    """Prefixes every line with the switch it concerns (formatting stays lazy)."""

    def process(self, msg, kwargs):
        return f"dpid={self.extra['dpid']}: {msg}", kwargs


@dataclass
class Switch:
    """A connected switch as Ryu knows it: where to send, and how to speak its version."""

    datapath: object
    translator: object
    log: logging.LoggerAdapter
    barrier_xid: int = None  # of the last barrier sent: its reply acknowledges every batch


def _event_dpid(ev):
    """The datapath id an OpenFlow event concerns, as a string for the log (or "?")."""
    datapath = getattr(ev, "datapath", None) or getattr(getattr(ev, "msg", None), "datapath",
                                                        None)
    dpid = getattr(datapath, "id", None)
    return "?" if dpid is None else dpid_lib.dpid_to_str(dpid)


def of_handler(handler):
    """An OpenFlow event handler whose error is logged with its switch and counted
    (``handler_error``); Ryu's event loop then goes on with the next event."""
    @functools.wraps(handler)
    def wrapper(self, ev):
        try:
            return handler(self, ev)
        except Exception:
            self.counters["handler_error"] += 1
            self.logger.exception("dpid=%s: %s failed on %s", _event_dpid(ev),
                                  handler.__name__, type(ev).__name__)
            return None
    return wrapper


class SbftApp(app_manager.RyuApp):
    OFP_VERSIONS = list(ofp.SUPPORTED_VERSIONS)
    _CONTEXTS = {"wsgi": WSGIApplication}
    coordinator = None  # (an instance attribute once built; tests build apps without it)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
        try:
            self.config = sbft_config.load_config(CONF)
        except (sbft_config.ConfigError, FlowSyntaxError) as exc:
            self.logger.error("sbft: %s", exc)
            raise SystemExit(2) from None
        self.switches = {}  # dpid -> Switch
        self.coordinator = None  # with coordination: the election
        self._nudge_socket = None
        self._udp_answers = beatwire.AnswerCache()
        self._udp_server = udp_server.UdpHeartbeatServer(self._udp_fast, self._udp_slow)
        try:
            self.core = self._restored_core()
        except (StateError, election.LeaderRecordError) as exc:
            self.logger.error("sbft: %s", exc)
            raise SystemExit(2) from None
        self.registry = metrics.make_registry(self._metrics_source)
        rest.register(kwargs["wsgi"], self)
        self.logger.info("sbft: vip %s:%d (vmac %s), %d replicas %s, spares %s, mode %s, "
                         "flows from %s (%d entries), heartbeat timeout %gs",
                         self.config.vip, self.config.service_port, self.config.vmac,
                         len(self.config.replicas), [r.name for r in self.config.replicas],
                         [r.name for r in self.config.spares], self.config.mode,
                         self.config.flows_source, len(self.config.flows),
                         self.config.heartbeat_timeout)
        self._warn_unauthenticated()

    def _restored_core(self):
        """The Core, with the state of the last run when there is one (StateError if it
        cannot be used). Writes go through eventlet's thread pool: an fsync must not stall the
        hub (heartbeats, the ticker and OpenFlow all run on it)."""
        if self.config.coordination:
            return self._coordinated_core()
        path = self.config.state_file
        store = FileStore(path, lock=hub.Semaphore(1), run=tpool.execute) if path \
            else NullStore()
        state = None
        if path:
            store.check_writable()
            state = store.load()
        self.config = with_stored_secret(self.config, state, path, self.logger)
        core = Core(self.config, send=self._send, nudge=self._nudge_agents,
                    logger=self.logger, lock=hub.Semaphore(1), store=store, wall=time.time)
        try:
            core.restore(state, time.monotonic())
        except OSError as exc:
            raise StateError(path, f"cannot be written ({exc.strerror or exc})") from None
        self.logger.info("sbft: state file %s (%s)", path or "none: state_file is empty",
                         "restored" if state else "first start" if path else "not kept")
        return core

    def _coordinated_core(self):
        """The Core of one of several controllers: its state comes from etcd when it takes
        over (coordination.Coordinator), not now. Keys of an unknown format stop it here
        (StateError); an etcd that does not answer does not (it retries)."""
        config = self.config
        etcd = Etcd(config.coordination, max(ETCD_TIMEOUT_S, config.leader_lease / 4))
        store = EtcdStore(etcd, key_prefix(config.vip), lambda: self.coordinator.may_write(),
                          lambda reason: self.coordinator.refused_write(reason))
        self.coordinator = Coordinator(config, etcd, store, config.advertise_url,
                                       hooks=_LeaderHooks(self), logger=self.logger)
        self.coordinator.check_at_start()  # StateError, LeaderRecordError: the app stops
        core = Core(config, send=self._send, nudge=self._nudge_agents, logger=self.logger,
                    lock=hub.Semaphore(1), store=store, wall=time.time)
        core.restore(None, time.monotonic())  # nothing written: a follower until elected
        self.logger.info("sbft: coordination %s (lease %ds), this controller is %s (id %s); "
                         "state in etcd key %s, state_file not used", config.coordination_url,
                         config.leader_lease, config.advertise_url, self.coordinator.id,
                         store.key)
        return core

    def _controller_status(self):
        if self.coordinator is None:
            return views.STANDALONE_STATUS
        return self.coordinator.status(time.monotonic())

    def _acting(self):
        """Whether this controller may change the switch and nudge agents now."""
        return self.coordinator is None or self.coordinator.acting(time.monotonic())

    def _role_request(self):
        """The role to claim on a switch now: MASTER with our term when leading, SLAVE of the
        known leader's term, or None (no term known yet: a SLAVE request of generation 0 could
        be refused as stale; nothing is sent until one is known)."""
        if self.coordinator is None:
            return None
        role, leader, term, _ = self._controller_status()
        if role == election.LEADER:
            return RoleRequest("master", term)
        # only of a leader known now: a term that ended may be older than the switch's
        return RoleRequest("slave", term) if term and leader else None

    # the core's state, for REST and metrics (and tests)
    cluster = property(lambda self: self.core.cluster)
    referee = property(lambda self: self.core.referee)
    counters = property(lambda self: self.core.counters)
    agent_addresses = property(lambda self: self.core.agent_addresses)

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._ticker))
        if self.coordinator is not None:
            self.threads.append(hub.spawn(self.coordinator.run, hub.sleep))
        if self.config.heartbeat_port and self.config.replica_keys:
            slow = self._udp_heartbeats()
            if slow is not None:
                self.threads.append(slow)
        return thread

    def _warn_unauthenticated(self):
        security = views.security_view(self.config, self.referee)
        if security["unauthenticated_replicas"]:
            self.logger.warning(
                "sbft: heartbeats of %s are not authenticated (no replica_key, no "
                "replica_source): whoever reaches the API can speak for them%s",
                ", ".join(security["unauthenticated_replicas"]),
                "; they get no active-mode secret" if self.config.mode == sbft_config.ACTIVE
                else "")
        if self.config.mode == sbft_config.ACTIVE and not self.config.replica_keys:
            self.logger.warning(
                "sbft: active mode without replica keys: the secret travels in clear to the "
                "pinned sources, exposed to whoever can reach the API from such an address or "
                "listen on the management network")

    # ---- OpenFlow events -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    @of_handler
    def _switch_features(self, ev):
        datapath = ev.msg.datapath
        dpid = datapath.id
        log = SwitchLog(self.logger, {"dpid": dpid_lib.dpid_to_str(dpid)})
        switch = Switch(datapath, make_translator(datapath.ofproto.OFP_VERSION), log)
        if self.coordinator is not None and switch.translator.name != "1.3":
            self.counters["switch_refused"] += 1
            log.error("refused: OpenFlow %s has no role request with a generation id; several "
                      "controllers (coordination) need OpenFlow 1.3 (ovs-vsctl set bridge BR "
                      "protocols=OpenFlow13)", switch.translator.name)
            return
        self.switches[dpid] = switch
        log.info("connected (OpenFlow %s, %s)", switch.translator.name,
                 "service switch" if self.core.is_service(dpid) else "flows file only")
        role = self._role_request()
        if role is not None:
            self._send(dpid, [role])
        if not self.core.switch_connected(dpid, switch.translator.name, log, time.monotonic()):
            return
        ports = switch.translator.ports_in_features(ev.msg)
        if ports is not None:
            self._ports(switch, ports)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    @of_handler
    def _port_desc(self, ev):
        switch = self.switches.get(ev.msg.datapath.id)
        if switch is not None:
            self._ports(switch, ev.msg.body)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    @of_handler
    def _flow_stats(self, ev):
        self._tables_reply("flows", ev.msg)

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    @of_handler
    def _group_desc(self, ev):
        self._tables_reply("groups", ev.msg)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    @of_handler
    def _port_status(self, ev):
        switch = self.switches.get(ev.msg.datapath.id)
        if switch is not None:
            port, up = switch.translator.port_status(ev.msg)
            self.core.port_status(ev.msg.datapath.id, port, up, time.monotonic())

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @of_handler
    def _packet_in(self, ev):
        msg = ev.msg
        switch = self.switches.get(msg.datapath.id)
        if switch is not None:
            self.core.packet_in(msg.datapath.id, msg.data,
                                switch.translator.packet_in_port(msg))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    @of_handler
    def _barrier_reply(self, ev):
        """Only the last barrier's reply counts: a switch applies messages in order, so it
        acknowledges everything sent before it."""
        switch = self.switches.get(ev.msg.datapath.id)
        if switch is not None and switch.datapath is ev.msg.datapath \
                and ev.msg.xid == switch.barrier_xid:
            self.core.switch_confirmed(ev.msg.datapath.id, time.monotonic())

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    @of_handler
    def _switch_gone(self, ev):
        dpid = ev.datapath.id
        switch = self.switches.get(dpid)
        if dpid is None or switch is None or switch.datapath is not ev.datapath:
            return  # never connected, or an older connection of a switch that is back
        del self.switches[dpid]
        self.core.switch_gone(dpid, time.monotonic())

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    @of_handler
    def _of_error(self, ev):
        msg = ev.msg
        if self.coordinator is not None and (msg.type, msg.code) == ROLE_STALE:
            # a race, not a fault: a newer leader claimed the switch before this request
            self.counters["role_stale"] += 1
            self.logger.warning("dpid=%s: role request refused as stale: a newer leader has "
                                "claimed the switch", dpid_lib.dpid_to_str(msg.datapath.id))
            return
        self.counters["of_error"] += 1
        self.logger.error("dpid=%s: OFPErrorMsg type=0x%02x code=0x%02x data=%s",
                          dpid_lib.dpid_to_str(msg.datapath.id), msg.type, msg.code,
                          bytes(msg.data[:64]).hex())

    # ---- REST entry points (called by rest.SbftRestController; RyuApp owns .events) -------

    def api_health(self):
        status = self._controller_status()
        # a follower decides nothing: its replica states are what it heard (heartbeats; it
        # takes no ports from a switch it may not converge), not the tier's view
        decided = self.core.decided() and status[0] != election.FOLLOWER
        return views.health_view(self.config, self.cluster, self.core.seen, time.monotonic(),
                                 self.referee, decided, status)

    def api_replicas(self):
        return views.replicas_view(self.config, self.cluster, time.monotonic(), self.referee)

    def api_replica(self, name):
        return views.replica_view(self.config, self.cluster, name, time.monotonic(),
                                  self.referee)

    def api_events(self):
        return views.events_view(self.cluster, time.monotonic())

    def api_heartbeat(self, name, beat, address=None):
        try:
            nonce, reset = self.core.heartbeat(name, beat, address, time.monotonic())
        except SourceError as exc:
            raise rest.ApiError(403, str(exc)) from None
        except AuthError as exc:
            raise rest.ApiError(401, str(exc), extra={"nonce": exc.nonce}) from None
        return self._heartbeat_reply(name, nonce, reset)

    def udp_heartbeat(self, datagram, address):
        """A UDP heartbeat datagram → the signed answer to send back, or None (no answer)."""
        heard = self.core.udp_heartbeat(datagram, address, time.monotonic())
        if heard is None:
            return None
        if isinstance(heard, Resync):
            return beatwire.resync_datagram(self.referee.keys[heard.name], *heard)
        name, seq, nonce, reset, wanted = heard
        if not wanted:
            return None
        return beatwire.answer_datagram(self.referee.keys[name], name, seq,
                                        self._heartbeat_reply(name, nonce, reset),
                                        self._udp_answers)

    def _heartbeat_reply(self, name, nonce, reset):
        keyed = name in self.referee.keys
        return views.heartbeat_reply(self.config, self.cluster, name, nonce,
                                     self.agent_addresses, reset,
                                     self.referee.secret_field(name),
                                     self.config.heartbeat_port if keyed else None,
                                     self.core.roles_released(), self._controller_status())

    def api_readmit(self, name):
        try:
            self.core.readmit(name, time.monotonic())
        except NotByzantine as exc:
            raise rest.ApiError(409, str(exc)) from None
        return self.api_replica(name)

    def api_metrics_text(self):
        return metrics.exposition(self.registry)

    # ---- internals --------------------------------------------------------------------------

    def _metrics_source(self):
        return self.api_health(), dict(self.counters)

    def _ticker(self):
        while True:
            now = time.monotonic()
            deadline = self.core.next_deadline(now)
            delay = MAX_TICK_S if deadline is None else deadline - now + TICK_SLACK_S
            hub.sleep(min(max(delay, TICK_SLACK_S), MAX_TICK_S))
            try:
                self.core.tick(time.monotonic())
            except Exception:  # keep expiring heartbeats whatever one round did
                self.counters["handler_error"] += 1
                self.logger.exception("sbft: liveness check failed")

    def _udp_heartbeats(self):
        """Serve UDP heartbeats on heartbeat_port, bound to the REST API's address
        (``--wsapi-host``), in a native thread (udp_server): a datagram that does not verify
        gets no answer."""
        try:
            return self._udp_server.start(CONF.wsapi_host or "0.0.0.0",
                                          self.config.heartbeat_port, hub.spawn)
        except OSError as exc:
            self.logger.error("sbft: cannot listen for UDP heartbeats on port %d (%s): "
                              "agents stay on HTTP", self.config.heartbeat_port, exc)
            return None

    def _udp_fast(self, datagram, address, now):
        """In the UDP thread: the answer to a steady heartbeat, None (no answer), or SLOW."""
        heard = self.core.udp_steady(datagram, address, now)
        if heard == SLOW:
            return udp_server.SLOW
        if heard == REJECTED:
            return None
        if isinstance(heard, Resync):
            return beatwire.resync_datagram(self.referee.keys[heard.name], *heard)
        name, seq, nonce, wanted = heard
        if not wanted:
            return None
        # a steady beat's answer depends on nothing else (no voting: no peers, no resets)
        status = self._controller_status()
        depends = (self.cluster.view, self.cluster.state(name), nonce,
                   self.core.roles_released(),
                   status[0], status[2])
        payload = self._udp_answers.keyed(
            name, depends, lambda: self._heartbeat_reply(name, nonce, ()))
        return beatwire.answer_from_payload(self.referee.keys[name], name, seq, payload)

    def _udp_slow(self, datagram, address):
        """On the hub: a UDP heartbeat processed in full (it may change the view)."""
        self.counters["heartbeat_udp_slow"] += 1
        try:
            return self.udp_heartbeat(datagram, address)
        except Exception:  # one bad datagram must not end the channel
            self.counters["handler_error"] += 1
            self.logger.exception("sbft: UDP heartbeat from %s failed", address)
            return None

    def _tables_reply(self, kind, msg):
        switch = self.switches.get(msg.datapath.id)
        if switch is None or switch.datapath is not msg.datapath:
            return
        found = switch.translator.tables_reply(kind, msg)
        if found is not None:
            self.core.tables_read(msg.datapath.id, found, time.monotonic())

    def _ports(self, switch, ports):
        self.core.set_ports(switch.datapath.id,
                            {port.port_no: switch.translator.port_usable(port) for port in ports},
                            time.monotonic())

    def _nudge_agents(self, addresses):
        """Tell every agent to ask for its role now (a UDP datagram carrying nothing: the role
        itself only travels in heartbeat answers), instead of at its next heartbeat."""
        port = self.config.agent_notify_port
        if not port or not addresses or not self._acting():
            return
        if self._nudge_socket is None:
            self._nudge_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._nudge_socket.setblocking(False)
        for address in addresses:
            try:
                self._nudge_socket.sendto(b"sbft-nudge", (address, port))
            except OSError:  # best effort: the next heartbeat brings the role anyway
                self.counters["nudge_error"] += 1

    def _send(self, dpid, messages):
        """Translate the whole batch first, so a translation error sends nothing."""
        if not messages:
            return True
        switch = self.switches[dpid]
        allowed = True
        if not self._acting():  # fenced: reads and role claims only
            kept = [m for m in messages if isinstance(m, READ_ONLY)]
            allowed = len(kept) == len(messages)
            if not allowed:
                self.counters["fenced_messages"] += len(messages) - len(kept)
                messages = kept
            if not messages:
                return False
        try:
            encoded = switch.translator.translate(messages)
        except TranslationError as exc:
            self.counters["translation_error"] += 1
            switch.log.error("cannot express for this switch, nothing sent: %s", exc)
            return False
        barriers = [msg for msg in encoded if type(msg).__name__ == "OFPBarrierRequest"]
        if barriers:  # a reply while the batch is half sent (send_msg may yield when the
            switch.barrier_xid = None  # queue is full) acknowledges nothing
        for msg in encoded:
            msg.datapath = switch.datapath
            switch.datapath.send_msg(msg)  # (gives it its xid)
        if barriers:
            switch.barrier_xid = barriers[-1].xid
        self.counters["of_messages_sent"] += len(encoded)
        for message in messages:
            if isinstance(message, Converge):
                changes = sum(type(msg).__name__ != "OFPBarrierRequest" for msg in encoded)
                self.counters["converge_changes"] += changes
                switch.log.info("tables read: %d entries found, %d changes sent",
                                len(message.found), changes)
        return allowed


class _LeaderHooks(Hooks):
    """What the app does when its role among several controllers changes (called from the
    coordinator's green thread)."""

    def __init__(self, app):
        self.app = app

    def restore(self, state, term):
        self.app.core.take_over(state, time.monotonic(), election.service_cookie(term))

    def lead(self, term):
        """Claim MASTER on every switch, then read and converge it as after a restart."""
        app = self.app
        for dpid, switch in list(app.switches.items()):
            app._send(dpid, [RoleRequest("master", term)])
            app.core.switch_connected(dpid, switch.translator.name, switch.log,
                                      time.monotonic())
        app.logger.info("sbft: leading (term %d): %d switches claimed, service flows cookie "
                        "0x%x", term, len(app.switches), election.service_cookie(term))

    def follow(self, term):
        for dpid in list(self.app.switches):
            self.app._send(dpid, [RoleRequest("slave", term)])
