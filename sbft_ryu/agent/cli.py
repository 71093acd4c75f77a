"""``sbft-agent``: the NFQUEUE agent on one LB replica (also ``python -m sbft_ryu.agent``).

    sbft-agent --name lb1 --controller http://10.254.0.254:8080 --service-port 5555 --queue-num 1

``main()`` turns argv into a frozen :class:`AgentConfig` and runs :class:`Agent`, which installs
the iptables rules (unless ``--no-iptables``), binds the queue in the main thread, and runs the
heartbeat and probe loops in two daemon threads until SIGTERM or SIGINT; then it unbinds the
queue and removes exactly the rules it added.
"""

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Optional

from sbft_ryu.agent import active, heartbeat, iptables, leader, nfq, packet, probe, udp, vote

LOG = logging.getLogger("sbft.agent")
THREAD_JOIN_S = 2.0
MAX_CONTROLLERS = 7
KERNEL_COUNTERS_EVERY_S = 5.0  # iptables-save is a process and a whole-ruleset dump
QUEUE_DROPS_EVERY_S = 1.0  # one small /proc file


@dataclass(frozen=True)
class AgentConfig:
    name: str
    controller: str
    service_port: int = 5555
    queue_num: int = 1
    interval: Optional[float] = None  # None: use the controller's heartbeat_interval_s
    http_timeout: float = 0.25
    vip: Optional[str] = None  # None: learned from the controller
    probe_path: str = ""
    probe_interval: float = 0.1
    probe_timeout: float = 0.1
    iptables: bool = True
    verdict_cache: str = "role"
    notify_port: int = 5556
    emulate_skew: Optional[str] = None  # tests only: "ISN:TS_MS", see agent/faults.py
    key_file: Optional[str] = None  # this replica's key (hex): signs heartbeats and votes
    fault: Optional[str] = None  # tests only: behave as a faulty replica, see --fault
    heartbeat_port: Optional[int] = None  # UDP heartbeats (keyed): None learns it, 0: HTTP
    log_level: str = "INFO"

    @property
    def controllers(self):
        """The controllers' URLs (``--controller`` is one URL or a comma-separated list)."""
        return tuple(self.controller.split(","))


def _positive(text):
    value = float(text)
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 60], got {text}")
    return value


def _port(text):
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text}")
    return value


def _controllers(text):
    """``--controller``: one URL, or several separated by commas (no two alike); kept as
    given, split by AgentConfig.controllers. Each URL is checked where it always was, when
    the agent starts (a fatal line naming it)."""
    urls = text.split(",")
    if len(urls) > MAX_CONTROLLERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_CONTROLLERS} controllers, got "
                                         f"{len(urls)}")
    if len(set(urls)) != len(urls):
        raise argparse.ArgumentTypeError(f"a controller is listed twice in {text!r}")
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="sbft-agent", description="NFQUEUE agent of an sbft_ryu load-balancer replica: "
        "lets only the primary's replies out and reports health to the controller.")
    parser.add_argument("--name", required=True, help="this replica's name in the config")
    parser.add_argument("--controller", required=True, metavar="URL[,URL...]",
                        type=_controllers,
                        help="controller REST base URL, e.g. http://10.254.0.254:8080; several "
                        "controllers (one leader through etcd): their URLs separated by commas")
    parser.add_argument("--service-port", type=_port, default=5555)
    parser.add_argument("--queue-num", type=int, default=1, choices=range(0, 65536),
                        metavar="N", help="NFQUEUE number (default 1)")
    parser.add_argument("--interval", type=_positive, default=None,
                        help="heartbeat interval in seconds (default: the controller's)")
    parser.add_argument("--http-timeout", type=_positive, default=0.25)
    parser.add_argument("--vip", default=None, help="service address (default: learned from "
                        "the controller)")
    parser.add_argument("--probe-path", default="", help="HTTP path the proxy answers itself "
                        "with 200 (HAProxy monitor-uri); empty: TCP connect probe")
    parser.add_argument("--probe-interval", type=_positive, default=0.1)
    parser.add_argument("--probe-timeout", type=_positive, default=0.1)
    parser.add_argument("--notify-port", type=int, default=5556, choices=range(0, 65536),
                        metavar="PORT", help="UDP port for the controller's role-change "
                        "nudges (0: off; default 5556)")
    parser.add_argument("--no-iptables", dest="iptables", action="store_false",
                        help="install no rules: the operator installs --print-rules' static "
                        "rules, and every reply is verdicted in userspace")
    parser.add_argument("--verdict-cache", choices=iptables.CACHES, default="role",
                        help="how a primary's verdict is cached in the kernel: per role epoch "
                        "(default), per connection (conntrack), or not at all (every reply "
                        "verdicted in userspace)")
    parser.add_argument("--emulate-skew", metavar="ISN:TS_MS", default=None,
                        help="tests only (needs SBFT_TEST_FAULTS=1): behave as if this host's "
                        "stack had another ISN and timestamp clock offset (Mininet hosts share "
                        "one kernel)")
    parser.add_argument("--key-file", default=None,
                        help="file holding this replica's key in hex (the controller's "
                        "replica_key): signs heartbeats, reports and votes")
    parser.add_argument("--heartbeat-port", type=int, default=None, choices=range(0, 65536),
                        metavar="PORT", help="the controller's UDP heartbeat port, used with "
                        "--key-file (default: the port the controller names; 0: HTTP only)")
    parser.add_argument("--fault", default=None, metavar="FAULT",
                        help="tests only (needs SBFT_TEST_FAULTS=1): tamper-wire (armed by "
                        "SIGUSR1) sends altered replies past the vote, as a compromised host; "
                        "false-accuse reports made-up divergences; forge-reports also signs "
                        "in another replica's name")
    parser.add_argument("--print-rules", action="store_true",
                        help="print the static rules for --no-iptables operation and exit")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if args.emulate_skew is not None or args.fault is not None:
        from sbft_ryu.agent import faults  # the seam: loaded only for these options

        try:
            faults.check(args.emulate_skew, args.fault, os.environ)
        except faults.Refused as exc:
            parser.error(str(exc))
    print_rules = args.__dict__.pop("print_rules")
    return AgentConfig(**vars(args)), print_rules


class Agent:
    def __init__(self, config):
        self.config = config
        self.stop = threading.Event()
        self.state = heartbeat.RoleState()
        self.queue = nfq.ReplyQueue(self.state)  # the current handler; ActiveQueue if active
        self.runner = nfq.QueueRunner(config.queue_num, self.queue)
        self.spec = iptables.RuleSpec(config.service_port, config.queue_num,
                                      config.verdict_cache)
        self.rules = None
        # counters of the agent's kernel rules, read every KERNEL_COUNTERS_EVERY_S
        self.kernel = {"ingress_dropped": 0, "kernel_accepted": 0}
        self._kernel_last = {}
        self._kernel_read_at = 0.0
        self._drops_read_at = 0.0
        self.probe = probe.ServiceProbe(config.service_port, config.probe_path,
                                        config.probe_timeout, config.probe_interval,
                                        host=config.vip)
        self.heartbeats = None  # the first controller's heartbeat loop
        self.others = []  # the other controllers' loops (--controller URL1,URL2,...)
        self.gate = None  # which answers are obeyed (agent.leader.Gate), shared by the loops
        self._sockets = []  # raw and vote sockets, closed on exit
        self._vote = None
        self._raw = None
        self.key = _read_key(config.key_file) if config.key_file else None
        self.faults = None  # tests only: what --emulate-skew and --fault change
        if config.emulate_skew is not None or config.fault is not None:
            from sbft_ryu.agent import faults

            self.faults = faults.TestFaults(config.emulate_skew, config.fault,
                                            config.service_port)

    def counters(self):
        counters = self.queue.snapshot()
        counters.update(self.kernel)
        counters["probe_failures"] = self.probe.failures
        counters["controller_failures"] = (
            sum(beat.failures for beat in [self.heartbeats, *self.others])
            if self.heartbeats else 0)
        return counters

    def _observe(self):
        """Probe-thread tick: learn the VIP, read the kernel's cached-verdict counter."""
        answer = None
        if self.heartbeats:
            # the VIP is configuration, the same on every controller: from the answer obeyed,
            # else from any (the probe needs it before a leader decides, which needs the probe)
            answers = [self.gate.answer] if self.others else []
            answers += [beat.answer for beat in [self.heartbeats, *self.others]]
            answer = next((a for a in answers if a is not None and a.vip), None)
        if self.probe.host is None and answer is not None and answer.vip:
            self.probe.host = answer.vip
        now = time.monotonic()
        if now - self._drops_read_at >= QUEUE_DROPS_EVERY_S:
            self._drops_read_at = now
            self._read_queue_drops()
        if self.rules is not None and now - self._kernel_read_at >= KERNEL_COUNTERS_EVERY_S:
            self._kernel_read_at = now
            try:
                self._accumulate(self.rules.kernel_counters())
            except Exception:  # counters are informative; never stop probing for them
                LOG.debug("reading kernel counters failed", exc_info=True)

    def _read_queue_drops(self):
        """The kernel's drops on this agent's queue (client bytes a backup may have missed
        for good): counted while the queue is bound, kept monotonic across rebinds."""
        try:
            with open(nfq.NFQ_PROC, encoding="ascii") as handle:
                drops = nfq.queue_drops(handle.read(), self.config.queue_num)
        except OSError:
            return
        if drops is not None:
            self._accumulate({"nfq_dropped": drops[0], "nfq_user_dropped": drops[1]})

    def _accumulate(self, reading):
        """Keep the kernel counters monotonic: a role change re-creates the chains and zeroes
        their rule counters, so a reading below the last one starts a new run."""
        for key, value in reading.items():
            last = self._kernel_last.get(key, 0)
            self.kernel[key] = self.kernel.get(key, 0) + (value if value < last else
                                                          value - last)
            self._kernel_last[key] = value

    def run(self):
        config = self.config
        clients = [heartbeat.ControllerClient(url, config.name, config.http_timeout)
                   for url in config.controllers]
        rules_cm = (iptables.Rules(self.spec) if config.iptables
                    else contextlib.nullcontext(None))
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop.set())
        if self.faults is not None:
            self.faults.install_signals()
        wakeup = self._wakeup_socket()
        with rules_cm as rules:
            self.rules = rules
            threads = self._heartbeat_threads(clients, wakeup)
            threads.append(threading.Thread(target=self.probe.run,
                                            args=(self.stop, self._observe),
                                            name="probe", daemon=True))
            LOG.info("started: queue %d, service port %d, controller %s, iptables %s, "
                     "verdict cache %s, nudges on udp/%s", config.queue_num,
                     config.service_port, config.controller,
                     "installed" if rules else "left to the operator",
                     config.verdict_cache if rules else "none", config.notify_port or "off")
            for thread in threads:
                thread.start()
            try:
                self.runner.serve(self.stop)
            finally:
                self.stop.set()
                for thread in threads:
                    thread.join(THREAD_JOIN_S)
                for client in clients:
                    client.close()
                for sock in [wakeup, *self._sockets]:
                    if sock is not None:
                        sock.close()
        LOG.info("stopped: counters %s", self.counters())
        return 0

    def _heartbeat_threads(self, clients, wakeup):
        """One heartbeat loop per controller (so a controller that does not answer delays no
        other's heartbeats), sharing one Gate: only a leader's (or a standalone controller's)
        answers are applied. Returns their threads (and the nudge fan-out's), not started."""
        several = len(clients) > 1
        gate = leader.Gate() if several else None
        events = [threading.Event() for _ in clients] if several and wakeup else None
        beats = []
        for index, client in enumerate(clients):
            reports = self.reports
            if several:  # evidence goes to the controller obeyed, which acts on it
                reports = (lambda index=index: self.reports() if gate.obeyed == index else [])
            beats.append(heartbeat.Heartbeats(
                client, self.state, self.probe, self.counters, self.rules,
                self.config.interval, connection_cache=self.spec.cache == "connection",
                wakeup=events[index] if events else wakeup, on_mode=self.set_mode,
                on_role=self.runner.wake, key=self.key, name=self.config.name,
                reports=reports, on_answer=self.on_answer, udp=self._udp_channel(client),
                gate=gate, index=index,
                label=f"controller {self.config.controllers[index]}: " if several else ""))
        if gate is not None:
            gate.apply = beats[0].apply_answer  # (mode and role live in shared objects)
        self.heartbeats, self.others, self.gate = beats[0], beats[1:], beats[0].gate
        threads = [threading.Thread(target=beat.run, args=(self.stop,),
                                    name=f"heartbeat-{index}", daemon=True)
                   for index, beat in enumerate(beats)]
        if events:
            fanout = leader.NudgeFanout(wakeup, events, time.monotonic,
                                        heartbeat.MIN_NUDGE_GAP_S, heartbeat.STOP_CHECK_S)
            threads.append(threading.Thread(target=fanout.run, args=(self.stop,),
                                            name="nudges", daemon=True))
        return threads

    def set_mode(self, answer):
        """The controller's mode (from a heartbeat Answer): swap the packet handler, then the
        rules, so that no packet of the new rules meets the old handler."""
        mode = answer.mode
        voting_on = False
        if mode == "active":
            params = answer.active
            secret, wscale, voting_on = params.secret, params.wscale, params.voting
            if not secret:
                raise ValueError("the controller's answer carries no active-mode secret")
            if wscale is None:
                raise ValueError("the controller's answer carries no valid window scale")
            if voting_on and self.key is None:
                raise ValueError("the controller votes on replies: this agent needs --key-file")
            adapter = self.faults.packet_adapter() if self.faults is not None else None
            translator = active.Translator(secret, self.config.service_port, wscale)
            engine = sock = None
            if voting_on:
                sock = self._vote_socket(answer.vote_port)
                make_engine = (self.faults.vote_engine if self.faults is not None
                               else vote.VoteEngine)
                engine = make_engine(self.config.name, self.key, translator.own_output,
                                     sock.sendto)
            self.queue = nfq.ActiveQueue(self.state, translator, adapter,
                                         self._replay_sender(), engine, sock)
        elif mode == "passive":
            self.queue = nfq.ReplyQueue(self.state)
        else:
            raise ValueError(f"unknown mode {mode!r} from the controller")
        previous = self.runner.swap(self.queue)
        if self.rules is not None:
            try:
                self.rules.set_mode(mode, voting_on)
            except Exception:
                self.queue = previous
                self.runner.swap(previous)
                raise
        LOG.info("mode %s%s", mode, f" (emulating skew {self.config.emulate_skew})"
                 if mode == "active" and self.config.emulate_skew else "")

    def _vote_socket(self, port):
        """The UDP socket votes arrive on (one per agent, kept across mode changes)."""
        if self._vote is None:
            self._vote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._vote.setblocking(False)
            self._vote.bind(("0.0.0.0", port))
            self._sockets.append(self._vote)
        return self._vote

    def on_answer(self, answer):
        """Every heartbeat Answer: the voting configuration for the packet thread."""
        queue = self.queue
        engine = getattr(queue, "vote", None)
        if answer.voting is None or engine is None:
            return
        queue.translator.generation = answer.voting.generation  # for connections from now on
        engine.configure(answer.voting)
        if answer.reset != queue.reset:
            queue.reset = answer.reset
            self.runner.wake()  # the packet thread resets them now

    def reports(self):
        """Evidence the vote engine gathered, for the next heartbeat."""
        engine = getattr(self.queue, "vote", None)
        return engine.take_reports(64) if engine is not None else []

    def _replay_sender(self):
        """A function sending an already translated packet past the agent's own queue (one
        raw socket, opened at the first replay, marked so that sbft-out accepts it as is)."""
        def send(payload):
            if self._raw is None:
                self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, iptables.REPLAY_MARK)
                self._sockets.append(self._raw)
            self._raw.sendto(payload, (socket.inet_ntoa(payload[packet.DST]), 0))
        return send

    def _wakeup_socket(self):
        """The UDP socket the controller nudges after a role change (so the agent asks now
        instead of at its next heartbeat); None when disabled."""
        if not self.config.notify_port:
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("0.0.0.0", self.config.notify_port))
        return sock


    def _udp_channel(self, client):
        """UDP heartbeats for a keyed agent, unless --heartbeat-port 0."""
        port = self.config.heartbeat_port
        if self.key is None or port == 0:
            return None
        return udp.UdpChannel(client.host, self.key, self.config.name, port)


def _read_key(path):
    with open(path, encoding="ascii") as handle:
        key = bytes.fromhex(handle.read().strip())
    if not 16 <= len(key) <= 64:
        raise ValueError(f"{path}: a key must be 16 to 64 bytes of hex")
    return key


def main(argv=None):
    config, print_rules = parse_args(argv)
    if print_rules:
        spec = iptables.RuleSpec(config.service_port, config.queue_num, config.verdict_cache)
        for mode in iptables.MODES:
            print(f"# static rules for --no-iptables, {mode} mode: every reply is verdicted "
                  "in userspace")
            for table, rule in iptables.operator_rules(replace(spec, mode=mode)):
                print(f"iptables -t {table} -A " + " ".join(rule))
        return 0
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format=f"%(asctime)s sbft-agent[{config.name}] %(levelname)s "
                               "%(message)s")
    try:
        return Agent(config).run()
    except Exception as exc:
        LOG.error("fatal: %s", exc, exc_info=config.log_level == "DEBUG")
        return 1


if __name__ == "__main__":
    sys.exit(main())
