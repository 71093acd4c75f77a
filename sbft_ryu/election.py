"""Who leads: the pure half of the election through etcd (no I/O, no clock; ``now`` comes in).

Several controllers (``[sbft] coordination = etcd://...``) race to create one key,
``/sbft/<vip>/leader``, attached to an etcd lease of ``leader_lease`` seconds; the one whose
create succeeds leads until its lease ends. Its *term* is the key's create revision: etcd's
revision only grows, so a later leader always has a higher term (the OpenFlow 1.3 role
request's generation id, and the agents' "highest term wins").

:class:`Election` is one controller's view of that race and decides its role. The leader
*fences itself*: it stops acting (no flow-mods, no leader answers) once its last answered
keepalive, counted from when that keepalive was **sent**, is older than the lease minus a
margin, on its own monotonic clock. etcd can only delete the key (and let a follower win) a
full lease after it last refreshed it, which is after we sent that keepalive, so the old leader
has stopped before any follower could start.

:func:`leader_record` / :func:`read_leader_record` are the key's value (with a format version:
a controller refuses a key written by a format it does not know). :func:`service_cookie` is
the flow cookie of each term.
"""

import json
from dataclasses import dataclass
from typing import Optional

from sbft_ryu.decide import SERVICE_COOKIE

LEADER, FOLLOWER, STANDALONE = "leader", "follower", "standalone"
FORMAT_VERSION = 1

# A leader renews its lease this often (fraction of the lease), so one lost keepalive does
# not end its term; it stops acting FENCE_MARGIN before the lease could run out.
KEEPALIVE_FRACTION = 0.25
FENCE_MARGIN_FRACTION = 0.2
MIN_FENCE_MARGIN_S = 0.1
# A follower looks for a vanished leader key this often (at most; shorter with a short lease).
POLL_S = 0.1

# The service flows of standalone controllers (as before several controllers existed) ...
STANDALONE_COOKIE = SERVICE_COOKIE
# ... and of a leader: this prefix and its term in the low 48 bits, so `ovs-ofctl dump-flows`
# tells which term installed a flow.
LEADER_COOKIE_PREFIX = 0x5BF8 << 48
TERM_MASK = (1 << 48) - 1


class LeaderRecordError(ValueError):
    """The leader key holds something this controller cannot read or a newer format."""


def service_cookie(term):
    """The cookie of the service flows a controller installs: per term when it leads
    (``term`` > 0), the historical constant standalone (``term`` 0)."""
    if not term:
        return STANDALONE_COOKIE
    return LEADER_COOKIE_PREFIX | (term & TERM_MASK)


def leader_record(controller_id, url):
    """The leader key's value (bytes)."""
    return json.dumps({"format": FORMAT_VERSION, "id": controller_id, "url": url},
                      sort_keys=True).encode()


def read_leader_record(data, key):
    """(id, url) from a leader key's value; LeaderRecordError names the key and the reason."""
    try:
        record = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LeaderRecordError(f"etcd key {key}: not a leader record (not JSON)") from None
    version = record.get("format") if isinstance(record, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise LeaderRecordError(f"etcd key {key}: not a leader record (no format version)")
    if version != FORMAT_VERSION:
        raise LeaderRecordError(f"etcd key {key} was written by format version {version}; "
                                f"this controller speaks {FORMAT_VERSION}: refused")
    if not isinstance(record.get("id"), str) or not isinstance(record.get("url"), str):
        raise LeaderRecordError(f"etcd key {key}: not a leader record (no id or url)")
    return record["id"], record["url"]


@dataclass
class Election:
    """One controller's role. ``ttl``: the lease in seconds. Every method takes the monotonic
    time (or the time a request was sent) from the caller."""

    ttl: float
    role: str = FOLLOWER
    term: int = 0  # the leader's term (ours when leading), 0: no leader known
    leader: Optional[str] = None  # the leader's URL, None: none known
    reason: str = "starting: etcd not asked yet"
    kept_at: Optional[float] = None  # when the last answered keepalive was sent (leading)

    @property
    def margin(self):
        return max(MIN_FENCE_MARGIN_S, self.ttl * FENCE_MARGIN_FRACTION)

    @property
    def poll_s(self):
        return min(POLL_S, self.ttl / 8)

    def fence_at(self):
        """When a leader stops acting unless a keepalive is answered before (None: not
        leading)."""
        if self.role != LEADER or self.kept_at is None:
            return None
        return self.kept_at + self.ttl - self.margin

    def leading(self, now):
        """Whether this controller may act as the leader at ``now``: elected and not fenced."""
        fence = self.fence_at()
        return fence is not None and now < fence

    def keepalive_due(self, now):
        return self.role == LEADER and now >= self.kept_at + self.ttl * KEEPALIVE_FRACTION

    # ---- what etcd answered (each returns True when the role changed) -----------------------

    def elected(self, sent_at, term, url):
        """Our create of the leader key (sent at ``sent_at``) succeeded at revision ``term``."""
        changed = self.role != LEADER
        self.role, self.term, self.leader = LEADER, int(term), url
        self.kept_at = sent_at
        self.reason = "elected"
        return changed

    def kept(self, sent_at):
        """A keepalive sent at ``sent_at`` was answered with a live lease."""
        if self.role == LEADER:
            self.kept_at = max(self.kept_at, sent_at)

    def check(self, now):
        """Step down when fenced (no keepalive answered in time). True if it did."""
        if self.role == LEADER and not self.leading(now):
            self.lost(f"lease lost: no keepalive answered for {now - self.kept_at:.2f}s "
                      f"(fenced {self.margin:.2f}s before the {self.ttl:g}s lease ends)")
            return True
        return False

    def lost(self, reason):
        """The lease or the key is gone, or a write was refused: follow (nobody known)."""
        changed = self.role == LEADER
        self.role, self.leader, self.kept_at = FOLLOWER, None, None
        self.reason = reason
        return changed

    def following(self, url, term):
        """Another controller leads (its key seen). True when the leader or term changed."""
        changed = (self.leader, self.term) != (url, int(term))
        if self.role == LEADER:  # our key is not ours any more
            self.lost("another controller holds the leader key")
        self.leader, self.term = url, int(term)
        self.reason = "following"
        return changed

    def no_leader(self, reason):
        """A follower that knows of no leader (etcd unreachable, key refused, ...). A leader
        keeps leading until fenced: its keepalive may still be answered by another member."""
        if self.role != LEADER:
            self.leader = None
            self.reason = reason
