"""The agent's iptables rules: generated as data, installed and removed as one list.

Two chains of the agent's own, each entered by one jump rule (comment ``sbft-agent``) for the
service port, never for ``lo`` (the replica's probe of its own proxy)::

    raw PREROUTING (before conntrack)      -> sbft-in:   client packets reaching this replica
    mangle POSTROUTING (after conntrack)   -> sbft-out:  this replica's replies

    backup (and at start)   sbft-in:   -j DROP
                            sbft-out:  -j NFQUEUE --queue-num N
    primary                 sbft-in:   (empty: accept)
                            sbft-out:  depends on the verdict cache:
        role (default)        -j ACCEPT
        connection            -m mark --mark G -j CONNMARK --save-mark
                              -m mark --mark G -j ACCEPT
                              -m connmark --mark G -j ACCEPT
                              -j NFQUEUE --queue-num N
        none                  -j NFQUEUE --queue-num N
    active mode, any role   sbft-in:   -j NFQUEUE --queue-num N   (the same queue: in order)
                            sbft-out:  -m mark --mark R -j ACCEPT  (the agent's own replays)
                                       -j NFQUEUE --queue-num N
                            sbft-wire: (raw PREROUTING, from the service port: the switch's
                                       copies of the primary's segments)
                                       -m length --length 0:128 -j NFQUEUE  (voting: all)
                                       -j DROP

In passive mode a backup's stack could only answer the mirrored traffic with RSTs and
half-open connections (its sequence numbers are not the primary's), so its agent discards that
traffic at the door; stale state would otherwise make a newly promoted replica re-send
SYN-ACKs of connections the old primary owned. Whatever a backup sends anyway goes to the
queue, where it is dropped.

The verdict cache keeps a primary's replies out of userspace. Every reply of a passive primary
gets the same verdict, so the default caches it per role epoch: one ACCEPT rule, no conntrack.
``connection`` caches it per connection as IPS engines do: the agent accepts a connection's
first reply with packet mark G and ``NF_REPEAT``, the repeated packet saves its mark on the
connection and every later packet is accepted in the kernel (the repeated packet itself is
accepted by its packet mark: one without a conntrack entry, like a stack's RST for an unknown
connection, cannot keep a connmark and would otherwise circle). It needs conntrack on every
packet of the replica (measured about 10% of throughput here) and buys nothing in passive mode;
it is kept for comparison. ``none`` verdicts every reply in userspace.

Role changes replace both chains in one ``iptables-restore --noflush`` (each table commits
atomically), so on demotion cached verdicts stop at once. Without a reader the kernel drops
queued packets (no ``--queue-bypass``) and the DROP stays: a backup whose agent dies stays
silent.
"""

import subprocess
from dataclasses import dataclass, replace

IN_CHAIN = "sbft-in"
OUT_CHAIN = "sbft-out"
WIRE_CHAIN = "sbft-wire"
COMMENT = "sbft-agent"
MARK_BASE = 0x5BF00000
MARK_GENERATIONS = 0x000FFFFF
REPLAY_MARK = 0x5BE00001  # packets a new primary's agent re-sends itself (already translated)


def fast_mark(generation):
    """The packet/connection mark for verdicts cached in one primary generation (epoch)."""
    return MARK_BASE | (generation & MARK_GENERATIONS)


CACHES = ("role", "connection", "none")
MODES = ("passive", "active")


@dataclass(frozen=True)
class RuleSpec:
    service_port: int
    queue_num: int
    cache: str = "role"  # the verdict cache (passive mode), one of CACHES
    mode: str = "passive"  # active: every packet, both directions, through the queue
    voting: bool = False  # active mode: the switch's copies of the primary's replies queued

    def __post_init__(self):
        if self.cache not in CACHES:
            raise ValueError(f"verdict cache must be one of {CACHES}, got {self.cache!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def jump_rules(spec):
    """(table, rule) pairs in the built-in chains that lead to the agent's chains."""
    port = str(spec.service_port)
    tag = ["-m", "comment", "--comment", COMMENT]
    return [("raw", ["PREROUTING", "-p", "tcp", "--dport", port, "!", "-i", "lo", *tag,
                     "-j", IN_CHAIN]),
            ("raw", ["PREROUTING", "-p", "tcp", "--sport", port, "!", "-i", "lo", *tag,
                     "-j", WIRE_CHAIN]),
            ("mangle", ["POSTROUTING", "-p", "tcp", "--sport", port, "!", "-o", "lo", *tag,
                        "-j", OUT_CHAIN])]


def in_chain(spec, primary):
    if spec.mode == "active":  # every replica's stack must follow every client packet
        return [["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)]]
    return [] if primary else [["-j", "DROP"]]


WIRE_ACK_LENGTH = "0:128"  # IP length of the primary's segments without (much) data


def wire_chain(spec):
    """Packets *from* the service port arriving here: the switch's copies of the primary's
    segments. With voting every one is queued (compared by the agent); otherwise, in active
    mode, only short ones (its pure ACKs: what it acknowledged to the client, for the
    agent's count of client bytes this replica lacks), sparing the agent the data segments
    of downloads; in passive mode nothing legitimate."""
    queue = ["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)]
    if spec.mode == "active" and spec.voting:
        return [queue]
    if spec.mode == "active":
        return [["-m", "length", "--length", WIRE_ACK_LENGTH, *queue], ["-j", "DROP"]]
    return [["-j", "DROP"]]


def out_chain(spec, primary=False, mark=None):
    """The body of sbft-out for a role (``mark``: the generation of a connection cache)."""
    queue = ["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)]
    if spec.mode == "active":
        return [["-m", "mark", "--mark", hex(REPLAY_MARK), "-j", "ACCEPT"], queue]
    if not primary or spec.cache == "none":
        return [queue]
    if spec.cache == "role":
        return [["-j", "ACCEPT"]]
    return [["-m", "mark", "--mark", hex(mark), "-j", "CONNMARK", "--save-mark"],
            ["-m", "mark", "--mark", hex(mark), "-j", "ACCEPT"],
            ["-m", "connmark", "--mark", hex(mark), "-j", "ACCEPT"],
            queue]


def restore_input(spec, primary=False, mark=None):
    """iptables-restore --noflush input that (re)creates both chains with exactly this body."""
    lines = []
    for table, chains in (("raw", ((IN_CHAIN, in_chain(spec, primary)),
                                   (WIRE_CHAIN, wire_chain(spec)))),
                          ("mangle", ((OUT_CHAIN, out_chain(spec, primary, mark)),))):
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain, _ in chains]
        for chain, rules in chains:
            lines += [" ".join([f"-A {chain}", *rule]) for rule in rules]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def operator_rules(spec):
    """Static rules for ``--no-iptables`` operation, which nothing switches on a role change:
    every reply goes to the queue (and is verdicted in userspace), nothing is dropped at the
    door; in active mode the client's packets go to the same queue too."""
    queue = ["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)]
    rules = [("mangle", ["POSTROUTING", "-p", "tcp", "--sport", str(spec.service_port), "!",
                         "-o", "lo", *queue])]
    if spec.mode == "active":
        rules.insert(0, ("raw", ["PREROUTING", "-p", "tcp", "--dport", str(spec.service_port),
                                 "!", "-i", "lo", *queue]))
    return rules


def parse_counters(save_output):
    """Kernel counters from ``iptables-save -c``: packets dropped at the door, replies accepted
    by a cached verdict."""
    counters = {"ingress_dropped": 0, "kernel_accepted": 0}
    for line in save_output.splitlines():
        if not line.startswith("["):
            continue
        packets = line[1:line.find(":")]
        if not packets.isdigit():
            continue
        words = line.split()
        if words[1:5] == ["-A", IN_CHAIN, "-j", "DROP"]:
            counters["ingress_dropped"] += int(packets)
        elif (words[1:] == ["-A", OUT_CHAIN, "-j", "ACCEPT"]
              or (words[1:3] == ["-A", OUT_CHAIN] and "connmark" in words
                  and words[-2:] == ["-j", "ACCEPT"])):
            counters["kernel_accepted"] += int(packets)
    return counters


class Rules:
    """Installs the rules on enter and removes exactly them on exit (a context manager)."""

    def __init__(self, spec, run=subprocess.run):
        self.spec = spec
        self._run = run
        self.primary = False
        self.mark = None  # the mark the kernel rules carry
        self._asked = None  # the mark the agent asked for (kept across mode changes)

    def __enter__(self):
        self._remove_jumps()  # leftovers of an agent that was killed
        self._restore(False, None)
        for table, rule in jump_rules(self.spec):
            self._iptables(table, "-A", *rule)
        return self

    def __exit__(self, *exc):
        self._remove_jumps()
        for table, chain in (("raw", IN_CHAIN), ("raw", WIRE_CHAIN), ("mangle", OUT_CHAIN)):
            self._iptables(table, "-F", chain, check=False)
            self._iptables(table, "-X", chain, check=False)

    def set_mode(self, mode, voting=False):
        """Re-create the chains for ``mode`` (the controller's), keeping the current role.
        Nothing changes here if the kernel refuses the new rules."""
        spec = replace(self.spec, mode=mode, voting=voting)
        self._restore(self.primary, self._effective_mark(spec, self.primary, self._asked),
                      spec)
        self.spec = spec
        self.mark = self._effective_mark(spec, self.primary, self._asked)

    def set_role(self, primary, mark=None):
        """Primary: open the door and cache verdicts (``mark``: the connection cache's
        generation, used only by a passive primary with that cache); backup: close both."""
        effective = self._effective_mark(self.spec, primary, mark)
        self._restore(primary, effective)
        self.primary, self.mark, self._asked = primary, effective, mark

    @staticmethod
    def _effective_mark(spec, primary, mark):
        return (mark if primary and spec.cache == "connection" and spec.mode == "passive"
                else None)

    def kernel_counters(self):
        out = self._run(["iptables-save", "-c"], text=True, capture_output=True, timeout=10,
                        check=False).stdout
        return parse_counters(out)

    def _restore(self, primary, mark, spec=None):
        self._run(["iptables-restore", "--noflush"],
                  input=restore_input(spec or self.spec, primary, mark),
                  text=True, check=True, capture_output=True, timeout=10)

    def _remove_jumps(self):
        for table, rule in jump_rules(self.spec):
            for _ in range(16):  # bounded: each call removes one copy
                if self._iptables(table, "-D", *rule, check=False).returncode != 0:
                    break

    def _iptables(self, table, *args, check=True):
        return self._run(["iptables", "-w", "5", "-t", table, *args], text=True,
                         check=check, capture_output=True, timeout=10)
