"""Which controller an agent obeys when it reports to several (``--controller URL1,URL2``).

Every controller gets the agent's heartbeats (so a new leader already knows who is alive) over
its own authenticated session, but only a leader's answer (or a standalone controller's, one
that coordinates with nobody) may change the agent's role, mode or voting configuration. A
follower's answer only keeps its session alive. Two controllers can both claim to lead for a
moment (a deposed leader that has not fenced itself yet): the higher term wins, and once a
term has been obeyed no lower one is obeyed again. While no leader answers, the agent keeps
its role (fail-static, as with one controller that cannot be reached).
"""

import select
import threading

LEADER = "leader"
FOLLOWER = "follower"
STANDALONE = "standalone"
UNKNOWN = "unknown"  # a malformed "controller" block: never obeyed


def claim(body):
    """(role, term) a heartbeat answer claims: its ``"controller"`` block; none at all is a
    standalone controller (older controllers send none)."""
    block = body.get("controller")
    if block is None:
        return STANDALONE, None
    if not isinstance(block, dict):
        return UNKNOWN, None
    role = block.get("role")
    term = block.get("term")
    if isinstance(term, bool) or not isinstance(term, int) or term < 0:
        term = None
    if role not in (LEADER, FOLLOWER, STANDALONE):
        role = UNKNOWN
    return role, term


def obeys(role, term, highest):
    """Pure: whether an answer claiming ``role`` in ``term`` is obeyed, given the highest
    leader term obeyed so far (None: none); returns (obeyed, the highest term from now on)."""
    if role == STANDALONE:
        return True, highest
    if role != LEADER or term is None:
        return False, highest
    if highest is not None and term < highest:
        return False, highest  # a deposed leader still answering as one
    return True, term


class Gate:
    """Shared by the heartbeat loops of one agent (one per controller): decides under one lock
    which answers are obeyed, and applies them one at a time (``apply``)."""

    def __init__(self, apply=None):
        self.lock = threading.RLock()
        self.apply = apply  # callable(Answer): the one place roles and modes change
        self.highest = None  # the highest leader term obeyed
        self.obeyed = None  # the index of the controller whose answer was obeyed last
        self.answer = None  # that answer
        self.ignored = 0  # answers not obeyed (followers, stale leaders, malformed)

    def decide(self, index, answer):
        """Whether ``answer`` (from controller ``index``) is obeyed; call with ``lock`` held,
        then ``apply`` it."""
        obeyed, self.highest = obeys(answer.controller_role, answer.term, self.highest)
        if obeyed:
            self.obeyed, self.answer = index, answer
        else:
            self.ignored += 1
        return obeyed


class NudgeFanout:
    """Several heartbeat loops, one nudge port: a nudge (from any controller: the port is open
    to anyone, and a nudge only makes the agent ask now) wakes every loop, so the answers, not
    the nudge, decide. Bursts are drained; nudges are at least ``min_gap`` apart."""

    def __init__(self, sock, events, clock, min_gap, stop_check):
        self.sock = sock
        self.events = list(events)
        self.clock = clock
        self.min_gap = min_gap
        self.stop_check = stop_check
        self.nudges = 0
        self._last = float("-inf")

    def run(self, stop):
        while not stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], self.stop_check)
            if not ready:
                continue
            for _ in range(64):  # drain what is queued; bounded
                try:
                    self.sock.recv(64)
                except OSError:
                    break
            gap = self._last + self.min_gap - self.clock()
            if gap > 0:
                stop.wait(gap)
            self._last = self.clock()
            self.nudges += 1
            for event in self.events:
                event.set()
