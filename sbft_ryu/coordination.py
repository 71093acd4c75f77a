"""The election's I/O: one round at a time against etcd, the role decided by :mod:`election`.

:meth:`Coordinator.step` is one round (the app runs it in a green thread, :meth:`run`):

* leading: renew the lease when due (a quarter of it); an expired lease or a refused state
  write ends the term; an etcd that does not answer does not, until the fence (see
  :class:`~sbft_ryu.election.Election`) — another member may answer the next keepalive. A
  leader fenced while etcd stalled (electing its own leader extends every lease) finds its
  key still on its live lease when etcd answers again, and leads again in the same term;
  any other ended term lets its lease go at once (revoke), so the others need not wait;
* following: read the leader key (every ``Election.poll_s``); another controller's key: follow
  it (the app tells the switches this controller is SLAVE of that term); no key: campaign, i.e.
  grant a lease and create the key only if still absent; on success, take over: load the state
  from etcd, restore it (``hooks.restore``), only then act (``ready``), and have the app claim
  MASTER on every switch and converge it as after a restart (``hooks.lead``).

A leader key or a state of an unknown format version is refused with one line (and never
overwritten: this controller then does not campaign). etcd unreachable: one line, then one
every RETRY_LOG_S while it lasts, and the controller stays a follower without a leader;
nothing crashes and nothing exits.
"""

import logging
import os
import socket
import time

from sbft_ryu import election
from sbft_ryu.election import FOLLOWER, LEADER, Election, LeaderRecordError
from sbft_ryu.etcd_store import EtcdError, key_prefix
from sbft_ryu.store import StateError

RETRY_LOG_S = 5.0

LOG = logging.getLogger(__name__)


def controller_id():
    """Unique per controller process: host, pid and 4 random bytes."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"


class Hooks:
    """What the app does when the role changes (all no-ops here)."""

    def restore(self, state, term):
        """Taking over: restore ``state`` (None: none stored yet); before any action."""

    def lead(self, term):
        """Took over: claim the switches (MASTER, generation ``term``) and converge them."""

    def follow(self, term):
        """A (new) leader of ``term`` is known: be SLAVE of that generation."""

    def stepped_down(self, reason):
        """No longer the leader."""


class Coordinator:
    def __init__(self, config, etcd, store, url, hooks=None, logger=LOG, ident=None,
                 clock=time.monotonic):
        self.election = Election(config.leader_lease)
        self.etcd = etcd
        self.store = store
        self.url = url
        self.id = ident or controller_id()
        self.leader_key = key_prefix(config.vip) + "leader"
        self.coordination = config.coordination_url
        self.hooks = hooks or Hooks()
        self.logger = logger
        self.clock = clock
        self.ready = False  # the takeover is done: this leader may act
        self.refused = None  # why this controller will not campaign (unknown format)
        self._lease = None
        self._unreachable_since = None
        self._unreachable_logged = None
        self._logged_reason = None

    # ---- what the app asks ----------------------------------------------------------------

    def acting(self, now):
        """Whether this controller may send flow-mods, nudge agents and answer as leader."""
        return self.ready and self.election.leading(now)

    def status(self, now):
        """(role, leader URL or None, term, reason) for /sbft/health and heartbeat answers."""
        e = self.election
        if self.acting(now):
            return LEADER, e.leader, e.term, e.reason
        if e.role == LEADER and e.leading(now):
            return FOLLOWER, e.leader, e.term, "elected, taking over"
        if e.role == LEADER:
            return FOLLOWER, None, e.term, "fenced: no keepalive answered in time"
        return FOLLOWER, e.leader, e.term, self.refused or e.reason

    def may_write(self):
        """The store may write: elected and not fenced (the takeover writes before ready)."""
        return self.election.leading(self.clock())

    def refused_write(self, reason):
        """The store's write failed: step down now (the next step revokes the lease)."""
        self._step_down(reason)

    def check_at_start(self):
        """One look before the switches connect: StateError or LeaderRecordError (the app
        stops with its one line) for keys of an unknown format; False (with one line) when
        etcd does not answer; True otherwise."""
        try:
            found = self.etcd.get(self.leader_key)
            if found is not None:
                election.read_leader_record(found[0], self.leader_key)
            self.store.load()
        except EtcdError as exc:
            self._unreachable(exc, self.clock())
            return False
        return True

    # ---- the loop ------------------------------------------------------------------------

    def run(self, sleep):
        """Forever: one step, then sleep as long as it says (an error is logged and retried)."""
        while True:
            try:
                delay = self.step(self.clock())
            except Exception:  # the election must outlive any one bad round
                self.logger.exception("sbft: election round failed")
                delay = self.election.poll_s
            sleep(max(0.01, delay))

    def step(self, now):
        """One round at ``now`` (monotonic); returns the seconds until the next one."""
        e = self.election
        if e.check(now):
            self._step_down(e.reason)
        if e.role == LEADER:
            return self._keep(now)
        try:
            found = self.etcd.get(self.leader_key)
        except EtcdError as exc:
            return self._unreachable(exc, now)
        self._reachable()
        if found is not None:
            return self._seen(found, now)
        self._lease = None  # (the key is gone: so is whatever lease we held)
        if self.refused:
            e.no_leader(self.refused)
            return e.poll_s
        return self._campaign(now)

    def _keep(self, now):
        e = self.election
        if not e.keepalive_due(now):
            return min(e.kept_at + e.ttl * election.KEEPALIVE_FRACTION - now, e.poll_s)
        try:
            ttl = self.etcd.keepalive(self._lease)
        except EtcdError as exc:
            self._unreachable(exc, now)
            return e.poll_s
        self._reachable()
        if ttl > 0:
            e.kept(now)
        else:
            self._step_down("lease lost: etcd says it expired")
        return e.poll_s

    def _seen(self, found, now):
        value, meta = found
        e = self.election
        try:
            ident, url = election.read_leader_record(value, self.leader_key)
        except LeaderRecordError as exc:
            e.no_leader(str(exc))
            self._log_reason(logging.ERROR, str(exc))
            return e.poll_s
        if ident == self.id:
            return self._own_key(meta, now)
        if e.following(url, meta["create_revision"]):
            self._log_reason(logging.INFO, f"following the leader {url} (term "
                                           f"{meta['create_revision']})")
            self.hooks.follow(meta["create_revision"])
        return e.poll_s

    def _own_key(self, meta, now):
        """Our key of a term we stopped acting in. Still on our live lease (etcd stalled, e.g.
        electing its own leader, and extended the lease meanwhile): nobody else can have led,
        so lead again in the same term (taking over afresh). Otherwise let it go at once."""
        e = self.election
        if not self.refused and meta["lease"] == self._lease:
            try:
                ttl = self.etcd.keepalive(self._lease)
            except EtcdError as exc:
                return self._unreachable(exc, now)
            if ttl > 0:
                e.elected(now, meta["create_revision"], self.url)  # ``now``: before the send
                self.logger.info("sbft: leading again (term %d): etcd answered before the "
                                 "lease ended", e.term)
                self._take_over(e.term)
                return e.poll_s
        try:
            self.etcd.revoke(meta["lease"])
        except EtcdError:
            pass  # it expires by itself
        self._lease = None
        return e.poll_s

    def _campaign(self, now):
        e = self.election
        try:
            lease = self.etcd.grant(e.ttl)
        except EtcdError as exc:
            return self._unreachable(exc, now)
        try:
            created, revision = self.etcd.create(
                self.leader_key, election.leader_record(self.id, self.url), lease)
        except EtcdError as exc:
            self._lease = lease  # revoked (or expired) in the next rounds
            return self._unreachable(exc, now)
        if not created:
            self._lease = lease
            return 0.0  # someone else was faster: read who
        self._lease = lease
        e.elected(now, revision, self.url)  # the lease was granted after ``now``
        self.logger.info("sbft: elected leader (term %d, lease %gs) at %s", revision, e.ttl,
                         self.url)
        self._take_over(revision)
        return e.poll_s

    def _take_over(self, term):
        try:
            state = self.store.load()
            self.store.term = term
            self.hooks.restore(state, term)
        except (StateError, EtcdError) as exc:
            if isinstance(exc, StateError):
                self.refused = f"{exc}: refused (this controller will not lead)"
                self.logger.error("sbft: %s", self.refused)
            self._step_down(f"takeover failed: {exc}")
            return
        if not self.election.leading(self.clock()):  # fenced or deposed during the restore
            return
        self.ready = True
        self.hooks.lead(term)

    def _step_down(self, reason):
        was_leading = self.ready or self.store.term is not None \
            or self.election.role == LEADER
        self.ready = False
        self.store.term = None
        if self.election.role == LEADER:
            self.election.lost(reason)
        if was_leading:
            self.logger.warning("sbft: no longer the leader: %s", reason)
            self._logged_reason = reason
            self.hooks.stepped_down(reason)

    def _unreachable(self, exc, now):
        reason = f"etcd unreachable: {exc}"
        self.election.no_leader(reason)
        if self._unreachable_since is None:
            self._unreachable_since = now
            self._unreachable_logged = now
            self.logger.error("sbft: %s; this controller does not lead and retries every "
                              "%gs", reason, self.election.poll_s)
        elif now - self._unreachable_logged >= RETRY_LOG_S:
            self._unreachable_logged = now
            self.logger.error("sbft: etcd still unreachable after %.0fs, retrying: %s",
                              now - self._unreachable_since, exc)
        return self.election.poll_s

    def _reachable(self):
        if self._unreachable_since is not None:
            self._unreachable_since = None
            self.logger.info("sbft: etcd answers again (%s)", ", ".join(self.etcd.endpoints))

    def _log_reason(self, level, reason):
        if reason != self._logged_reason:
            self._logged_reason = reason
            self.logger.log(level, "sbft: %s", reason)
