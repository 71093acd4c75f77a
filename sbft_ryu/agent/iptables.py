"""The agent's iptables rules: generated as data, installed and removed as one list.

The replica's replies from the service port leave through mangle POSTROUTING (after conntrack,
so the agent never confuses conntrack) and jump to the agent's own chain, ``sbft-out``::

    backup (and at start):  sbft-out:  -j NFQUEUE --queue-num N
    primary, generation G:  sbft-out:  -m mark --mark G -j CONNMARK --save-mark
                                       -m connmark --mark G -j ACCEPT
                                       -j NFQUEUE --queue-num N

A primary's agent accepts the first reply of a connection in userspace with packet mark G and
``NF_REPEAT``; the packet re-enters the chain, its mark is saved on the connection, and every
later packet of that connection is accepted in the kernel (the verdict cache of IPS engines).
Demotion replaces the chain with the backup version in one ``iptables-restore --noflush``, so
cached verdicts stop matching at once and every reply goes back to the queue, where a backup
drops it. Without a reader the kernel drops queued packets (no ``--queue-bypass``): a backup
whose agent dies stays silent. The replica's own probe over ``lo`` is never queued.
"""

import subprocess
from dataclasses import dataclass

OUT_CHAIN = "sbft-out"
COMMENT = "sbft-agent"
MARK_BASE = 0x5BF00000
MARK_GENERATIONS = 0x000FFFFF


def fast_mark(generation):
    """The packet/connection mark for verdicts cached in one primary generation (epoch)."""
    return MARK_BASE | (generation & MARK_GENERATIONS)


@dataclass(frozen=True)
class RuleSpec:
    service_port: int
    queue_num: int


def jump_rule(spec):
    """The rule in mangle POSTROUTING that sends service replies to the agent's chain."""
    return ["POSTROUTING", "-p", "tcp", "--sport", str(spec.service_port), "!", "-o", "lo",
            "-m", "comment", "--comment", COMMENT, "-j", OUT_CHAIN]


def out_chain(spec, mark=None):
    """The body of sbft-out: with a mark, cached verdicts for that generation are accepted."""
    rules = []
    if mark is not None:
        rules.append(["-m", "mark", "--mark", hex(mark), "-j", "CONNMARK", "--save-mark"])
        rules.append(["-m", "connmark", "--mark", hex(mark), "-j", "ACCEPT"])
    rules.append(["-j", "NFQUEUE", "--queue-num", str(spec.queue_num)])
    return rules


def restore_input(spec, mark=None):
    """iptables-restore --noflush input that (re)creates sbft-out with exactly this body."""
    lines = ["*mangle", f":{OUT_CHAIN} - [0:0]"]
    lines += [" ".join([f"-A {OUT_CHAIN}", *rule]) for rule in out_chain(spec, mark)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Rules:
    """Installs the rules on enter and removes exactly them on exit (a context manager)."""

    def __init__(self, spec, run=subprocess.run):
        self.spec = spec
        self._run = run
        self.mark = None

    def __enter__(self):
        self._remove_jumps()  # leftovers of an agent that was killed
        self._restore(None)
        self._iptables("-A", *jump_rule(self.spec))
        return self

    def __exit__(self, *exc):
        self._remove_jumps()
        self._iptables("-F", OUT_CHAIN, check=False)
        self._iptables("-X", OUT_CHAIN, check=False)

    def set_fast_path(self, mark):
        """Cache verdicts for ``mark`` (primary) or none (``None``: backup)."""
        self._restore(mark)
        self.mark = mark

    def fast_path_packets(self):
        """Packets accepted by the cached-verdict rule since it was installed (0 if none)."""
        if self.mark is None:
            return 0
        out = self._iptables("-L", OUT_CHAIN, "2", "-v", "-x", "-n", check=False).stdout
        fields = out.split()
        return int(fields[0]) if fields and fields[0].isdigit() else 0

    def _restore(self, mark):
        self._run(["iptables-restore", "--noflush"], input=restore_input(self.spec, mark),
                  text=True, check=True, capture_output=True, timeout=10)

    def _remove_jumps(self):
        for _ in range(16):  # bounded: each call removes one copy
            if self._iptables("-D", *jump_rule(self.spec), check=False).returncode != 0:
                break

    def _iptables(self, *args, check=True):
        return self._run(["iptables", "-w", "5", "-t", "mangle", *args], text=True,
                         check=check, capture_output=True, timeout=10)
